//! Commands of the selected state (RFC 3501 6.4) but FETCH: keeping the session's view in step
//! with other sessions (untagged EXISTS, EXPUNGE or VANISHED, FETCH FLAGS with MODSEQ), EXPUNGE,
//! SEARCH and ESEARCH, SORT and THREAD, STORE (with UNCHANGEDSINCE), COPY and MOVE, IDLE.

use super::*;

impl Session {
    /// Brings the selected mailbox's view up to date and reports the differences as untagged
    /// responses. With `allow_expunge` false (during FETCH, STORE, SEARCH: RFC 3501 7.4.1) expunged
    /// messages stay in the view until a later command may report them.
    pub(super) async fn refresh(&mut self, allow_expunge: bool) {
        if let Some(mut sel) = self.selected.take() {
            self.refresh_view(&mut sel, allow_expunge).await;
            self.selected = Some(sel);
        }
    }

    /// [`Session::refresh`] of a mailbox a command holds.
    pub(super) async fn refresh_view(&mut self, sel: &mut Selected, allow_expunge: bool) {
        let Ok(Some(modseq)) = self.srv.store.mailbox_modseq(sel.mailbox.id).await else {
            return;
        };
        if modseq == sel.modseq {
            return;
        }
        let mark = sel.pin.mark();
        // the list with the MODSEQ it is at (one snapshot), not the one polled above: a change
        // made in between is in the list, and the next poll does not report it again
        let Ok((fresh, state)) = self.srv.store.mailbox_snapshot(sel.mailbox.id).await else {
            return;
        };
        let modseq = state.highest_modseq;
        let mut out = Vec::new();
        // A keyword first seen now is announced before any FETCH that shows it.
        if learn_keywords(&mut sel.keywords, fresh.iter().flat_map(|m| m.flags.iter())) {
            out.extend_from_slice(flags_announcement(&sel.keywords, sel.read_only).as_bytes());
        }
        // Expunges, highest sequence number first so that the numbers stay right; with QRESYNC
        // one VANISHED of their UIDs instead (RFC 7162 3.2.10).
        let mut kept = Vec::with_capacity(sel.msgs.len());
        let mut any_deferred = false;
        let mut vanished = Vec::new();
        for i in (0..sel.msgs.len()).rev() {
            let uid = sel.msgs[i].uid;
            if fresh.binary_search_by_key(&uid, |m| m.uid).is_err() {
                if allow_expunge {
                    if self.qresync {
                        vanished.push(uid);
                    } else {
                        out.extend_from_slice(format!("* {} EXPUNGE\r\n", i + 1).as_bytes());
                    }
                    continue;
                }
                any_deferred = true;
            }
            kept.push(sel.msgs[i].clone());
        }
        kept.reverse();
        if !vanished.is_empty() {
            vanished.reverse();
            out.extend_from_slice(format!("* VANISHED {}\r\n", compress(&vanished)).as_bytes());
        }
        // Flag changes of messages still present (with CONDSTORE, every MODSEQ change).
        for (i, m) in kept.iter_mut().enumerate() {
            if let Ok(j) = fresh.binary_search_by_key(&m.uid, |f| f.uid) {
                let f = &fresh[j];
                let report = if self.condstore {
                    f.modseq != m.modseq
                } else {
                    f.flags != m.flags
                };
                m.modseq = f.modseq;
                if report {
                    m.flags = f.flags.clone();
                    let recent = sel.recent.has(m.uid);
                    self.flags_fetch(&mut out, i + 1, Some(m.uid), &m.flags, recent, m.modseq);
                }
            }
        }
        // New messages.
        let last = kept.last().map_or(0, |m| m.uid);
        let before = kept.len();
        kept.extend(fresh.iter().filter(|m| m.uid > last).cloned());
        let grew = kept.len() != before;
        let max_uid = kept.last().map_or(0, |m| m.uid);
        sel.msgs = kept;
        if grew {
            // RFC 3501 7.3.2: RECENT goes with EXISTS
            sel.learn_recent(&self.srv.store, max_uid).await;
            out.extend_from_slice(format!("* {} EXISTS\r\n", sel.msgs.len()).as_bytes());
            if !self.rev2 {
                // IMAP4rev2 has no RECENT (RFC 9051)
                out.extend_from_slice(format!("* {} RECENT\r\n", sel.recent_count()).as_bytes());
            }
        }
        if !any_deferred {
            sel.modseq = modseq;
            // Nothing expunged is listed any more: its bodies may go.
            sel.pin.synced_at(mark);
        }
        self.conn.out().extend_from_slice(&out);
    }

    pub(super) async fn expunge(
        &mut self,
        sel: &mut Selected,
        tag: &str,
        only: Option<Vec<u32>>,
    ) -> Flow {
        if sel.read_only {
            return self.no(tag, "[READ-ONLY] Mailbox is read-only");
        }
        let id = sel.mailbox.id;
        let mut only = only;
        if let Some(o) = only.as_mut() {
            o.sort_unstable();
        }
        match self
            .srv
            .store
            .expunge(self.account(), id, only.as_deref(), false)
            .await
        {
            Ok(_) => {
                self.refresh_view(sel, true).await;
                self.ok(tag, "EXPUNGE completed")
            }
            Err(e) => self.store_failed(tag, e),
        }
    }

    /// The messages of the view a search key matches: indices, in sequence order.
    ///
    /// The matcher asks for a body only when the key needs one; bodies are read asynchronously
    /// (they may be rows of a database), so each message is first tried without: if the matcher
    /// asked, its body is read and the message tried again with it.
    async fn search_hits(
        &self,
        sel: &Selected,
        key: &imap_codec::imap_types::search::SearchKey<'_>,
    ) -> Vec<usize> {
        let mut hits = Vec::new();
        for (i, m) in sel.msgs.iter().enumerate() {
            let recent = sel.recent.has(m.uid);
            let try_with = |body: Option<Vec<u8>>, asked: &std::sync::atomic::AtomicBool| {
                let load = |_: &MessageMeta| {
                    asked.store(true, std::sync::atomic::Ordering::Relaxed);
                    body.clone()
                };
                matches(
                    key,
                    &Candidate {
                        index: i,
                        meta: m,
                        all: &sel.msgs,
                        body: &load,
                        recent,
                    },
                )
            };
            let asked = std::sync::atomic::AtomicBool::new(false);
            let mut hit = try_with(None, &asked);
            if asked.load(std::sync::atomic::Ordering::Relaxed) {
                let raw = self.srv.store.body(&m.blob_id).await.ok();
                hit = try_with(raw, &asked);
            }
            if hit {
                hits.push(i);
            }
        }
        hits
    }

    /// RFC 7162 3.1.5: SEARCH (and SORT) with MODSEQ answer with the highest MODSEQ of what
    /// matched (nothing when nothing did).
    fn modseq_suffix(
        &mut self,
        sel: &Selected,
        key: &imap_codec::imap_types::search::SearchKey<'_>,
        hits: &[usize],
    ) -> String {
        if !uses_modseq(key) {
            return String::new();
        }
        self.condstore_on(Some(sel.modseq));
        match hits.iter().map(|&i| sel.msgs[i].modseq).max() {
            Some(top) => format!(" (MODSEQ {top})"),
            None => String::new(),
        }
    }

    pub(super) async fn search(
        &mut self,
        sel: &mut Selected,
        tag: &str,
        key: &imap_codec::imap_types::search::SearchKey<'_>,
        uid: bool,
    ) -> Flow {
        self.refresh_view(sel, uid).await;
        let hits = self.search_hits(sel, key).await;
        let suffix = self.modseq_suffix(sel, key, &hits);
        // IMAP4rev2 answers every SEARCH with ESEARCH, ALL when RETURN was not given (RFC 9051
        // 6.4.4)
        let esearch = self.esearch.take().or_else(|| {
            self.rev2.then_some(crate::search::ReturnOptions {
                all: true,
                ..Default::default()
            })
        });
        if let Some(o) = esearch {
            if o.save {
                let uids: Vec<u32> = hits.iter().map(|&i| sel.msgs[i].uid).collect();
                sel.saved = o.saved(&uids);
                if !o.answers() {
                    return self.ok(tag, "SEARCH completed, result saved");
                }
            }
            // RFC 4731: one ESEARCH with what RETURN asked for; MIN, MAX and ALL only if
            // something matched, COUNT always
            let ids: Vec<u32> = hits
                .iter()
                .map(|&i| if uid { sel.msgs[i].uid } else { i as u32 + 1 })
                .collect();
            let mut line = format!("* ESEARCH (TAG \"{tag}\")");
            if uid {
                line.push_str(" UID");
            }
            if let (Some(first), Some(last)) = (ids.first(), ids.last()) {
                if o.min {
                    line.push_str(&format!(" MIN {first}"));
                }
                if o.max {
                    line.push_str(&format!(" MAX {last}"));
                }
            }
            // in Dovecot's order: MIN MAX ALL COUNT
            if o.all && !ids.is_empty() {
                line.push_str(&format!(" ALL {}", compress(&ids)));
            }
            if o.count {
                line.push_str(&format!(" COUNT {}", ids.len()));
            }
            if let Some(m) = suffix.strip_prefix(" (").and_then(|s| s.strip_suffix(')')) {
                line.push(' ');
                line.push_str(m);
            }
            self.conn.line(&line);
            return self.ok(tag, "SEARCH completed");
        }
        let mut line = String::from("* SEARCH");
        for &i in &hits {
            line.push(' ');
            let id = if uid { sel.msgs[i].uid } else { i as u32 + 1 };
            line.push_str(&id.to_string());
        }
        line.push_str(&suffix);
        self.conn.line(&line);
        self.ok(tag, "SEARCH completed")
    }

    /// SORT and THREAD (RFC 5256): the search, then the order or the threads of its matches,
    /// from a few header fields per message (each body read once, one at a time).
    pub(super) async fn sort(
        &mut self,
        sel: &mut Selected,
        tag: &str,
        key: &imap_codec::imap_types::search::SearchKey<'_>,
        uid: bool,
        how: Ordering,
    ) -> Flow {
        self.refresh_view(sel, uid).await;
        let hits = self.search_hits(sel, key).await;
        let suffix = self.modseq_suffix(sel, key, &hits);
        let mut items = Vec::with_capacity(hits.len());
        for &i in &hits {
            let m = &sel.msgs[i];
            let mut f = crate::sort::Fields {
                id: if uid { m.uid } else { i as u32 + 1 },
                seq: i as u32 + 1,
                arrival: m.internal_date,
                sent: m.internal_date,
                size: m.size,
                ..Default::default()
            };
            // Only the header is needed: parse that much, never a large body.
            if let Ok(raw) = self.srv.store.body(&m.blob_id).await {
                let end = header_end(&raw);
                Parsed::new(&raw[..end]).sort_fields(&mut f);
            }
            items.push(f);
        }
        let (name, line) = match how {
            Ordering::Sort(criteria) => {
                crate::sort::sort(&mut items, &criteria);
                let mut line = String::from("* SORT");
                for f in &items {
                    line.push(' ');
                    line.push_str(&f.id.to_string());
                }
                line.push_str(&suffix);
                ("SORT", line)
            }
            Ordering::OrderedSubject | Ordering::References => {
                let threads = if matches!(how, Ordering::References) {
                    crate::sort::thread_references(&items)
                } else {
                    crate::sort::thread_orderedsubject(&items)
                };
                let body = crate::sort::render(&threads, &items);
                let line = if body.is_empty() {
                    "* THREAD".to_owned()
                } else {
                    format!("* THREAD {body}")
                };
                ("THREAD", line)
            }
        };
        self.conn.line(&line);
        let done = match (uid, name) {
            (true, "SORT") => "UID SORT completed",
            (false, "SORT") => "SORT completed",
            (true, _) => "UID THREAD completed",
            (false, _) => "THREAD completed",
        };
        self.ok(tag, done)
    }

    pub(super) async fn store(
        &mut self,
        sel: &mut Selected,
        tag: &str,
        set: &imap_codec::imap_types::sequence::SequenceSet,
        flags: &[String],
        how: StoreHow,
    ) -> Flow {
        let uid = how.uid;
        self.refresh_view(sel, uid).await;
        if sel.read_only {
            return self.no(tag, "[READ-ONLY] Mailbox is read-only");
        }
        if !uid && seq_out_of_range(set, sel.msgs.len()) {
            return self.bad(tag, "Invalid message sequence number");
        }
        if how.unchanged_since.is_some() {
            self.condstore_on(Some(sel.modseq));
        }
        let indices = resolve(set, &sel.msgs, uid);
        let uids: Vec<u32> = indices.iter().map(|&i| sel.msgs[i].uid).collect();
        let flags: Vec<String> = flags
            .iter()
            .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
            .cloned()
            .collect();
        let (acct, id) = (self.account(), sel.mailbox.id);
        let done = match self
            .srv
            .store
            .store_flags(acct, id, &uids, how.op, &flags, how.unchanged_since)
            .await
        {
            Ok(c) => c,
            Err(e) => return self.store_failed(tag, e),
        };
        let mut out = Vec::new();
        // a keyword this STORE introduced is announced first, even to a .SILENT STORE
        if learn_keywords(
            &mut sel.keywords,
            done.messages.iter().flat_map(|c| c.flags.iter()),
        ) {
            out.extend_from_slice(flags_announcement(&sel.keywords, sel.read_only).as_bytes());
        }
        let expunged = uids
            .len()
            .saturating_sub(done.messages.len() + done.modified.len());
        for c in &done.messages {
            let Ok(i) = sel.msgs.binary_search_by_key(&c.uid, |m| m.uid) else {
                continue;
            };
            sel.msgs[i].flags = c.flags.clone();
            sel.msgs[i].modseq = c.modseq;
            let uid_part = if uid {
                format!("UID {} ", c.uid)
            } else {
                String::new()
            };
            if !how.silent {
                let recent = sel.recent.has(c.uid);
                let shown = uid.then_some(c.uid);
                self.flags_fetch(&mut out, i + 1, shown, &c.flags, recent, c.modseq);
            } else if self.condstore && c.changed {
                // RFC 7162 3.1.3: a changed message's new MODSEQ is sent even to .SILENT
                out.extend_from_slice(
                    format!("* {} FETCH ({uid_part}MODSEQ ({}))\r\n", i + 1, c.modseq).as_bytes(),
                );
            }
        }
        self.conn.out().extend_from_slice(&out);
        if expunged > 0 {
            // RFC 2180 4.2.1: the others were changed; these could not be.
            return self.no(
                tag,
                "[EXPUNGEISSUED] Some of the messages were expunged by another session; the others were updated",
            );
        }
        if !done.modified.is_empty() {
            // RFC 7162 3.1.3: what UNCHANGEDSINCE held back, as UIDs or sequence numbers
            let ids: Vec<u32> = if uid {
                done.modified.clone()
            } else {
                done.modified
                    .iter()
                    .filter_map(|u| sel.msgs.binary_search_by_key(u, |m| m.uid).ok())
                    .map(|i| i as u32 + 1)
                    .collect()
            };
            return self.ok(
                tag,
                &format!("[MODIFIED {}] Conditional STORE failed", compress(&ids)),
            );
        }
        self.ok(tag, "STORE completed")
    }

    pub(super) async fn copy(
        &mut self,
        sel: &mut Selected,
        tag: &str,
        set: &imap_codec::imap_types::sequence::SequenceSet,
        dest: &ImapMailbox<'_>,
        uid: bool,
        move_: bool,
    ) -> Flow {
        if move_ && sel.read_only {
            return self.no(tag, "[READ-ONLY] Mailbox is read-only");
        }
        let dst = match self.find_target(tag, dest).await {
            Ok(mb) => mb,
            Err(f) => return f,
        };
        if !uid
            && (seq_out_of_range(set, sel.msgs.len())
                || (!sel.msgs.is_empty() && resolve(set, &sel.msgs, uid).is_empty()))
        {
            return self.bad(tag, "Invalid message sequence number");
        }
        let indices = resolve(set, &sel.msgs, uid);
        let uids: Vec<u32> = indices.iter().map(|&i| sel.msgs[i].uid).collect();
        let (acct, src) = (self.account(), sel.mailbox.id);
        if !move_ {
            // a copy adds to the account's storage; a move does not
            let bytes: u64 = indices.iter().map(|&i| sel.msgs[i].size).sum();
            match self.srv.store.over_quota(acct, bytes).await {
                Ok(false) => {}
                Ok(true) => return self.no(tag, "[OVERQUOTA] Quota exceeded"),
                Err(e) => return self.store_failed(tag, e),
            }
        }
        match self
            .srv
            .store
            .copy_messages(acct, src, &uids, dst.id, move_)
            .await
        {
            Ok((validity, pairs)) => {
                let code = if pairs.is_empty() {
                    String::new()
                } else {
                    let s: Vec<String> = pairs.iter().map(|p| p.0.to_string()).collect();
                    let d: Vec<String> = pairs.iter().map(|p| p.1.to_string()).collect();
                    format!("[COPYUID {validity} {} {}] ", s.join(","), d.join(","))
                };
                if move_ {
                    // RFC 6851 4.3: COPYUID goes in an untagged OK before the EXPUNGEs.
                    if !code.is_empty() {
                        self.conn.line(&format!("* OK {}Moved", code));
                    }
                    self.refresh_view(sel, true).await;
                    self.ok(tag, "MOVE completed")
                } else {
                    self.refresh_view(sel, uid).await;
                    self.ok(tag, &format!("{code}COPY completed"))
                }
            }
            Err(StoreError::Expunged(_)) => {
                // RFC 2180 4.4.1: all or nothing, and the client is told.
                self.refresh_view(sel, uid).await;
                self.no(
                    tag,
                    "[EXPUNGEISSUED] Some of the messages were expunged by another session; nothing was copied",
                )
            }
            Err(e) => self.store_failed(tag, e),
        }
    }

    /// The untagged FETCH that tells a message's flags (changed by another session, or by this
    /// one's STORE): with its UID when given, with MODSEQ once CONDSTORE is on.
    fn flags_fetch(
        &self,
        out: &mut Vec<u8>,
        seq: usize,
        uid: Option<u32>,
        flags: &[String],
        recent: bool,
        modseq: u64,
    ) {
        let uid = uid.map(|u| format!("UID {u} ")).unwrap_or_default();
        let modseq = if self.condstore {
            format!(" MODSEQ ({modseq})")
        } else {
            String::new()
        };
        let flags = flags_list(flags, recent);
        out.extend_from_slice(format!("* {seq} FETCH ({uid}FLAGS {flags}{modseq})\r\n").as_bytes());
    }

    /// IDLE runs unboxed in the session's own future (see `run`), so what it awaits is part of
    /// every idle session's memory for its whole life: the refresh (store reads, the \Recent
    /// claim's write transaction) and the gone-mailbox check run boxed, allocated only while
    /// they run (their inlined state was 4 KiB of every session in IDLE).
    pub(super) async fn idle(&mut self, tag: &str) -> Flow {
        let mut changes = self.srv.store.changes().subscribe(self.account());
        Box::pin(self.refresh(true)).await;
        self.conn.line("+ idling");
        let timeout = Duration::from_secs(self.srv.config.idle_timeout_secs);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.conn.flush().await.is_err() {
                return Flow::Close;
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            tokio::select! {
                input = self.conn.read_line(remaining, 64) => {
                    return match input {
                        Input::Message(line) if line.trim_ascii().eq_ignore_ascii_case(b"DONE") => {
                            self.ok(tag, "IDLE terminated")
                        }
                        Input::Message(_) => self.bad(tag, "Expected DONE"),
                        Input::Timeout => {
                            self.conn.line("* BYE Autologout; idle for too long");
                            Flow::Close
                        }
                        _ => Flow::Close,
                    };
                }
                r = changes.changed() => {
                    if r.is_err() {
                        return Flow::Close;
                    }
                    if Box::pin(self.selected_gone()).await {
                        return self.bye_gone();
                    }
                    Box::pin(self.refresh(true)).await;
                }
                _ = self.shutdown.cancelled() => {
                    self.conn.line("* BYE [UNAVAILABLE] Server shutting down");
                    return Flow::Close;
                }
            }
        }
    }
}
