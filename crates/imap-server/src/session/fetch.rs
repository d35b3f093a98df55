//! FETCH (RFC 3501 6.4.5): message data items, body sections and partial fetches, with \Seen
//! set in one transaction first.

use super::*;

impl Session {
    pub(super) async fn fetch(
        &mut self,
        sel: &mut Selected,
        tag: &str,
        set: &imap_codec::imap_types::sequence::SequenceSet,
        items: &[MessageDataItemName<'static>],
        uid: bool,
        cond: Conditions,
    ) -> Flow {
        self.refresh_view(sel, uid).await;
        let read_only = sel.read_only;
        let mut indices = resolve(set, &sel.msgs, uid);
        if !uid
            && (seq_out_of_range(set, sel.msgs.len())
                || (!sel.msgs.is_empty() && indices.is_empty()))
        {
            return self.bad(tag, "Invalid message sequence number");
        }
        // CONDSTORE (RFC 7162 3.1.4): MODSEQ asked for, or CHANGEDSINCE (which implies it)
        let wants_modseq = cond.changed_since.is_some()
            || items
                .iter()
                .any(|i| matches!(i, MessageDataItemName::ModSeq));
        if wants_modseq {
            self.condstore_on(Some(sel.modseq));
        }
        if let Some(since) = cond.changed_since {
            if cond.vanished {
                // RFC 7162 3.2.6: the expunged UIDs of the set, before the FETCH responses
                let largest = sel
                    .msgs
                    .last()
                    .map_or(0, |m| m.uid)
                    .max(sel.mailbox.uidnext.saturating_sub(1));
                let ranges = uid_ranges(set, largest);
                let gone = match self.srv.store.vanished_since(sel.mailbox.id, since).await {
                    Ok(v) if v.complete => v
                        .uids
                        .into_iter()
                        .filter(|&u| in_ranges(&ranges, u))
                        .filter(|&u| sel.msgs.binary_search_by_key(&u, |m| m.uid).is_err())
                        .collect(),
                    Ok(_) => missing_uids(&ranges, &sel.msgs, largest),
                    Err(e) => return self.store_failed(tag, e),
                };
                if !gone.is_empty() {
                    self.conn
                        .line(&format!("* VANISHED (EARLIER) {}", compress(&gone)));
                }
            }
            indices.retain(|&i| sel.msgs[i].modseq > since);
        }
        let needs_body = items.iter().any(|i| {
            matches!(
                i,
                MessageDataItemName::Body
                    | MessageDataItemName::BodyExt { .. }
                    | MessageDataItemName::BodyStructure
                    | MessageDataItemName::Envelope
                    | MessageDataItemName::Rfc822
                    | MessageDataItemName::Rfc822Header
                    | MessageDataItemName::Rfc822Text
                    | MessageDataItemName::Binary { .. }
                    | MessageDataItemName::BinarySize { .. }
            )
        });
        let sets_seen = !read_only
            && items.iter().any(|i| {
                matches!(
                    i,
                    MessageDataItemName::BodyExt { peek: false, .. }
                        | MessageDataItemName::Binary { peek: false, .. }
                        | MessageDataItemName::Rfc822
                        | MessageDataItemName::Rfc822Text
                )
            });
        // Mark \Seen first, in one transaction, so the FLAGS we report are the stored ones.
        if sets_seen {
            let unseen: Vec<u32> = indices
                .iter()
                .map(|&i| sel.msgs[i].uid)
                .filter(|u| {
                    sel.msgs
                        .iter()
                        .find(|m| m.uid == *u)
                        .is_some_and(|m| !m.has_flag("\\Seen"))
                })
                .collect();
            if !unseen.is_empty() {
                let (acct, id) = (self.account(), sel.mailbox.id);
                match self
                    .srv
                    .store
                    .store_flags(acct, id, &unseen, FlagOp::Add, &["\\Seen".to_owned()], None)
                    .await
                {
                    Ok(changed) => {
                        for c in changed.messages {
                            if let Ok(i) = sel.msgs.binary_search_by_key(&c.uid, |m| m.uid) {
                                sel.msgs[i].flags = c.flags;
                                sel.msgs[i].modseq = c.modseq;
                            }
                        }
                    }
                    Err(e) => return self.store_failed(tag, e),
                }
            }
        }
        let mut flags_reported = false;
        // Bodies of messages this session still lists are kept for it (see ViewPin), so a read
        // fails only on a real fault; that message gets no FETCH response, never an empty body.
        let mut unreadable = 0usize;
        let mut unknown_cte = false;
        for &i in &indices {
            let m = &sel.msgs[i];
            let raw = if needs_body {
                match self.srv.store.body(&m.blob_id).await {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::error!(blob = %m.blob_id, error = %e, "message blob unreadable");
                        unreadable += 1;
                        continue;
                    }
                }
            } else {
                None
            };
            let parsed = raw.as_deref().map(Parsed::new);
            let mut out = format!("* {} FETCH (", i + 1).into_bytes();
            let mut first = true;
            let mut sep = |out: &mut Vec<u8>| {
                if !first {
                    out.push(b' ');
                }
                first = false;
            };
            if uid {
                sep(&mut out);
                out.extend_from_slice(format!("UID {}", m.uid).as_bytes());
            }
            for item in items {
                match item {
                    MessageDataItemName::Uid if !uid => {
                        sep(&mut out);
                        out.extend_from_slice(format!("UID {}", m.uid).as_bytes());
                    }
                    MessageDataItemName::Flags => {
                        sep(&mut out);
                        flags_reported = true;
                        out.extend_from_slice(
                            format!("FLAGS {}", flags_list(&m.flags, sel.recent.has(m.uid)))
                                .as_bytes(),
                        );
                    }
                    MessageDataItemName::InternalDate => {
                        sep(&mut out);
                        out.extend_from_slice(
                            format!("INTERNALDATE \"{}\"", wire::internal_date(m.internal_date))
                                .as_bytes(),
                        );
                    }
                    MessageDataItemName::Rfc822Size => {
                        sep(&mut out);
                        out.extend_from_slice(format!("RFC822.SIZE {}", m.size).as_bytes());
                    }
                    MessageDataItemName::Envelope => {
                        sep(&mut out);
                        out.extend_from_slice(b"ENVELOPE ");
                        match &parsed {
                            Some(p) => p.envelope(&mut out),
                            None => {
                                out.extend_from_slice(b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)")
                            }
                        }
                    }
                    MessageDataItemName::Body | MessageDataItemName::BodyStructure => {
                        let ext = matches!(item, MessageDataItemName::BodyStructure);
                        sep(&mut out);
                        out.extend_from_slice(if ext { b"BODYSTRUCTURE " } else { b"BODY " });
                        match &parsed {
                            Some(p) => p.body_structure(&mut out, ext),
                            None => out.extend_from_slice(
                                b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)",
                            ),
                        }
                    }
                    MessageDataItemName::Rfc822 => {
                        sep(&mut out);
                        out.extend_from_slice(b"RFC822 ");
                        wire::literal(&mut out, raw.as_deref().unwrap_or_default());
                    }
                    MessageDataItemName::Rfc822Header => {
                        sep(&mut out);
                        out.extend_from_slice(b"RFC822.HEADER ");
                        let h = parsed
                            .as_ref()
                            .and_then(|p| p.section(&[], &Spec::Header))
                            .unwrap_or_default();
                        wire::literal(&mut out, &h);
                    }
                    MessageDataItemName::Rfc822Text => {
                        sep(&mut out);
                        out.extend_from_slice(b"RFC822.TEXT ");
                        let t = parsed
                            .as_ref()
                            .and_then(|p| p.section(&[], &Spec::Text))
                            .unwrap_or_default();
                        wire::literal(&mut out, &t);
                    }
                    MessageDataItemName::BodyExt {
                        section, partial, ..
                    } => {
                        sep(&mut out);
                        let (path, spec, label) = section_spec(section.as_ref());
                        let data = parsed
                            .as_ref()
                            .and_then(|p| p.section(&path, &spec))
                            .unwrap_or_default();
                        match partial {
                            Some((origin, len)) => {
                                let start = (*origin as usize).min(data.len());
                                let end = start.saturating_add(len.get() as usize).min(data.len());
                                out.extend_from_slice(
                                    format!("BODY[{label}]<{origin}> ").as_bytes(),
                                );
                                wire::literal(&mut out, &data[start..end]);
                            }
                            None => {
                                out.extend_from_slice(format!("BODY[{label}] ").as_bytes());
                                wire::literal(&mut out, &data);
                            }
                        }
                    }
                    MessageDataItemName::Binary {
                        section, partial, ..
                    } => {
                        let path: Vec<u32> = section.iter().map(|n| n.get()).collect();
                        let label = path_label(&path);
                        let (data, decoded) = match parsed.as_ref().map(|p| p.binary_section(&path))
                        {
                            Some(Ok(d)) => d.unwrap_or_default(),
                            Some(Err(_)) | None => {
                                unknown_cte = true;
                                continue;
                            }
                        };
                        sep(&mut out);
                        let (data, origin) = match partial {
                            Some((origin, len)) => {
                                let start = (*origin as usize).min(data.len());
                                let end = start.saturating_add(len.get() as usize).min(data.len());
                                (&data[start..end], format!("<{origin}>"))
                            }
                            None => (&data[..], String::new()),
                        };
                        out.extend_from_slice(format!("BINARY[{label}]{origin} ").as_bytes());
                        wire::literal8(&mut out, data, decoded);
                    }
                    MessageDataItemName::BinarySize { section } => {
                        let path: Vec<u32> = section.iter().map(|n| n.get()).collect();
                        let size = match parsed.as_ref().map(|p| p.binary_section(&path)) {
                            Some(Ok(d)) => d.map_or(0, |d| d.0.len()),
                            Some(Err(_)) | None => {
                                unknown_cte = true;
                                continue;
                            }
                        };
                        sep(&mut out);
                        out.extend_from_slice(
                            format!("BINARY.SIZE[{}] {size}", path_label(&path)).as_bytes(),
                        );
                    }
                    _ => {}
                }
            }
            if sets_seen && !flags_reported {
                sep(&mut out);
                out.extend_from_slice(
                    format!("FLAGS {}", flags_list(&m.flags, sel.recent.has(m.uid))).as_bytes(),
                );
            }
            // a flag change (\Seen set by this FETCH) carries its MODSEQ once CONDSTORE is on
            if wants_modseq || (self.condstore && sets_seen) {
                sep(&mut out);
                out.extend_from_slice(format!("MODSEQ ({})", m.modseq).as_bytes());
            }
            out.extend_from_slice(b")\r\n");
            self.conn.out().extend_from_slice(&out);
            if self.conn.out().len() > 1 << 20 && self.conn.flush().await.is_err() {
                return Flow::Close;
            }
        }
        if unknown_cte {
            // RFC 3516 4.3
            return self.no(
                tag,
                "[UNKNOWN-CTE] A part's content transfer encoding cannot be decoded",
            );
        }
        if unreadable > 0 {
            return self.no(
                tag,
                "[SERVERBUG] Some messages could not be read; try again",
            );
        }
        self.ok(
            tag,
            if uid {
                "UID FETCH completed"
            } else {
                "FETCH completed"
            },
        )
    }
}

/// A part path as FETCH echoes it: `1.2.3`.
fn path_label(path: &[u32]) -> String {
    path.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

pub(super) fn astring_text(a: &AString<'_>) -> String {
    String::from_utf8_lossy(a.as_ref()).into_owned()
}

/// Turns a FETCH section into (part path, what, the label to echo in the response).
pub(super) fn section_spec(section: Option<&Section<'_>>) -> (Vec<u32>, Spec, String) {
    pub(super) fn path_of(p: Option<&imap_codec::imap_types::fetch::Part>) -> Vec<u32> {
        p.map(|p| p.0.as_ref().iter().map(|n| n.get()).collect())
            .unwrap_or_default()
    }
    pub(super) fn label(path: &[u32], what: &str) -> String {
        let mut s: Vec<String> = path.iter().map(u32::to_string).collect();
        if !what.is_empty() {
            s.push(what.to_owned());
        }
        s.join(".")
    }
    let names = |v: &imap_codec::imap_types::core::Vec1<AString<'_>>| -> Vec<String> {
        v.as_ref().iter().map(astring_text).collect()
    };
    match section {
        None => (Vec::new(), Spec::Full, String::new()),
        Some(Section::Part(p)) => {
            let path = path_of(Some(p));
            let l = label(&path, "");
            (path, Spec::Full, l)
        }
        Some(Section::Header(p)) => {
            let path = path_of(p.as_ref());
            let l = label(&path, "HEADER");
            (path, Spec::Header, l)
        }
        Some(Section::HeaderFields(p, f)) => {
            let path = path_of(p.as_ref());
            let n = names(f);
            let l = label(
                &path,
                &format!("HEADER.FIELDS ({})", n.join(" ").to_ascii_uppercase()),
            );
            (path, Spec::HeaderFields(n), l)
        }
        Some(Section::HeaderFieldsNot(p, f)) => {
            let path = path_of(p.as_ref());
            let n = names(f);
            let l = label(
                &path,
                &format!("HEADER.FIELDS.NOT ({})", n.join(" ").to_ascii_uppercase()),
            );
            (path, Spec::HeaderFieldsNot(n), l)
        }
        Some(Section::Text(p)) => {
            let path = path_of(p.as_ref());
            let l = label(&path, "TEXT");
            (path, Spec::Text, l)
        }
        Some(Section::Mime(p)) => {
            let path = path_of(Some(p));
            let l = label(&path, "MIME");
            (path, Spec::Mime, l)
        }
    }
}
