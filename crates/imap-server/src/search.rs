//! SEARCH evaluation (RFC 3501 6.4.4) over a mailbox snapshot. Keys that need the message
//! (headers, body, sent date) parse it once, lazily, per message.

use chrono::{DateTime, NaiveDate, Utc};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::SequenceSet;
use postern_store::MessageMeta;

use crate::mime::Parsed;

/// Resolves a sequence set against a snapshot: returns the 0-based indices it names, ascending,
/// deduplicated. `uid` selects UID semantics (RFC 3501 6.4.8: UIDs not present are ignored).
pub fn resolve(set: &SequenceSet, msgs: &[MessageMeta], uid: bool) -> Vec<usize> {
    use imap_codec::imap_types::sequence::{SeqOrUid, Sequence};
    let mut out = Vec::new();
    if msgs.is_empty() {
        return out;
    }
    let largest = if uid {
        msgs.last().map_or(0, |m| m.uid)
    } else {
        msgs.len() as u32
    };
    let val = |s: &SeqOrUid| match s {
        SeqOrUid::Asterisk => largest,
        SeqOrUid::Value(v) => v.get(),
    };
    for seq in set.0.as_ref() {
        let (a, b) = match seq {
            Sequence::Single(s) => (val(s), val(s)),
            Sequence::Range(x, y) => {
                let (x, y) = (val(x), val(y));
                (x.min(y), x.max(y))
            }
        };
        if uid {
            let start = msgs.partition_point(|m| m.uid < a);
            let end = msgs.partition_point(|m| m.uid <= b);
            out.extend(start..end);
        } else {
            let a = a.max(1) as usize;
            let b = (b as usize).min(msgs.len());
            if a <= b {
                out.extend(a - 1..b);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The (low, high) UID ranges a UID set names, `*` being `largest` (QRESYNC's known UIDs and
/// the UID FETCH set whose expunges VANISHED reports: UIDs that no longer exist count too).
pub fn uid_ranges(set: &SequenceSet, largest: u32) -> Vec<(u32, u32)> {
    use imap_codec::imap_types::sequence::{SeqOrUid, Sequence};
    let val = |s: &SeqOrUid| match s {
        SeqOrUid::Asterisk => largest,
        SeqOrUid::Value(v) => v.get(),
    };
    set.0
        .as_ref()
        .iter()
        .map(|seq| match seq {
            Sequence::Single(s) => (val(s), val(s)),
            Sequence::Range(x, y) => (val(x).min(val(y)), val(x).max(val(y))),
        })
        .collect()
}

pub fn in_ranges(ranges: &[(u32, u32)], uid: u32) -> bool {
    ranges.iter().any(|&(a, b)| uid >= a && uid <= b)
}

/// Ascending numbers as a sequence set on the wire, runs compressed: `1:3,7,9:10`.
pub fn compress(ids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < ids.len() {
        let start = ids[i];
        let mut end = start;
        while i + 1 < ids.len() && ids[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = ids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// Whether a search uses the MODSEQ key (CONDSTORE: the answer then carries the highest MODSEQ
/// of the matches, RFC 7162 3.1.5).
pub fn uses_modseq(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::ModSequence { .. } => true,
        SearchKey::And(keys) => keys.as_ref().iter().any(uses_modseq),
        SearchKey::Not(k) => uses_modseq(k),
        SearchKey::Or(a, b) => uses_modseq(a) || uses_modseq(b),
        _ => false,
    }
}

/// What `SEARCH RETURN (...)` asks for (ESEARCH, RFC 4731); none named means ALL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReturnOptions {
    pub min: bool,
    pub max: bool,
    pub all: bool,
    pub count: bool,
}

/// ESEARCH's `[UID] SEARCH RETURN (options) criteria`, which imap-codec does not parse: the
/// RETURN clause is cut out of the command (it comes before any literal, on the first line)
/// and its options are returned beside the plain SEARCH that is left. None when the command is
/// not a SEARCH with RETURN; `Some(Err)` for options that are malformed or not supported (SAVE:
/// SEARCHRES is not offered).
pub fn split_return(cmd: &[u8]) -> Option<Result<(Vec<u8>, ReturnOptions), &'static str>> {
    let line_end = cmd
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(cmd.len());
    let line = &cmd[..line_end];
    let mut words = line.splitn(4, |&b| b == b' ');
    let _tag = words.next()?;
    let mut word = words.next()?;
    let mut consumed = line.len() - line.splitn(2, |&b| b == b' ').nth(1)?.len();
    if word.eq_ignore_ascii_case(b"UID") {
        consumed += word.len() + 1;
        word = words.next()?;
    }
    if !word.eq_ignore_ascii_case(b"SEARCH") {
        return None;
    }
    consumed += word.len() + 1;
    let rest = line.get(consumed..)?;
    if rest.len() < 7 || !rest[..7].eq_ignore_ascii_case(b"RETURN ") {
        return None;
    }
    let after = &rest[7..];
    let Some(list) = after.strip_prefix(b"(") else {
        return Some(Err("RETURN needs a parenthesized list"));
    };
    let Some(close) = list.iter().position(|&b| b == b')') else {
        return Some(Err("RETURN list is not closed"));
    };
    let mut opts = ReturnOptions::default();
    for o in list[..close]
        .split(|&b| b == b' ')
        .filter(|o| !o.is_empty())
    {
        match o.to_ascii_uppercase().as_slice() {
            b"MIN" => opts.min = true,
            b"MAX" => opts.max = true,
            b"ALL" => opts.all = true,
            b"COUNT" => opts.count = true,
            b"SAVE" => return Some(Err("SAVE is not supported (no SEARCHRES)")),
            _ => return Some(Err("Unknown RETURN option")),
        }
    }
    if opts == ReturnOptions::default() {
        opts.all = true;
    }
    let tail = &list[close + 1..];
    let tail = tail.strip_prefix(b" ").unwrap_or(tail);
    let mut out = Vec::with_capacity(cmd.len());
    out.extend_from_slice(&line[..consumed]);
    out.extend_from_slice(tail);
    out.extend_from_slice(&cmd[line_end..]);
    Some(Ok((out, opts)))
}

/// True if a message sequence set names a number past the last message: RFC 3501 9
/// (seq-number) makes such a set invalid (BAD), not an empty match. A range with `*` (`1:*`,
/// `5:*`) always names the last message and stays valid, also in an empty mailbox.
pub fn seq_out_of_range(set: &SequenceSet, exists: usize) -> bool {
    use imap_codec::imap_types::sequence::{SeqOrUid, Sequence};
    let past = |s: &SeqOrUid| matches!(s, SeqOrUid::Value(v) if v.get() as usize > exists);
    set.0.as_ref().iter().any(|seq| match seq {
        Sequence::Single(s) => past(s),
        Sequence::Range(SeqOrUid::Asterisk, _) | Sequence::Range(_, SeqOrUid::Asterisk) => false,
        Sequence::Range(a, b) => past(a) || past(b),
    })
}

/// Context for evaluating keys on one message.
pub struct Candidate<'a> {
    pub index: usize,
    pub meta: &'a MessageMeta,
    pub all: &'a [MessageMeta],
    /// Loads the raw message (None if its blob cannot be read).
    pub body: &'a dyn Fn(&MessageMeta) -> Option<Vec<u8>>,
    /// The message is \Recent in this session.
    pub recent: bool,
}

struct Lazy<'a> {
    c: &'a Candidate<'a>,
    raw: Option<Option<Vec<u8>>>,
}

impl Lazy<'_> {
    fn raw(&mut self) -> Option<&[u8]> {
        if self.raw.is_none() {
            self.raw = Some((self.c.body)(self.c.meta));
        }
        self.raw.as_ref().and_then(|r| r.as_deref())
    }
}

fn contains_ci(hay: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return true;
    }
    hay.to_lowercase().contains(&needle.to_lowercase())
}

fn astr(a: &imap_codec::imap_types::core::AString<'_>) -> String {
    String::from_utf8_lossy(a.as_ref()).into_owned()
}

fn date_of(ts: i64) -> NaiveDate {
    DateTime::<Utc>::from_timestamp(ts, 0)
        .map(|d| d.date_naive())
        .unwrap_or_default()
}

pub fn matches(key: &SearchKey<'_>, c: &Candidate<'_>) -> bool {
    let mut lazy = Lazy { c, raw: None };
    eval(key, c, &mut lazy)
}

fn eval(key: &SearchKey<'_>, c: &Candidate<'_>, lazy: &mut Lazy<'_>) -> bool {
    let m = c.meta;
    let header = |lazy: &mut Lazy<'_>, name: &str, needle: &str| -> bool {
        lazy.raw()
            .and_then(|r| Parsed::new(r).header_text(name))
            .is_some_and(|v| contains_ci(&v, needle))
    };
    let address = |lazy: &mut Lazy<'_>, name: &str, needle: &str| -> bool {
        lazy.raw()
            .and_then(|r| Parsed::new(r).address_text(name))
            .is_some_and(|v| contains_ci(&v, needle))
    };
    match key {
        SearchKey::And(keys) => keys.as_ref().iter().all(|k| eval(k, c, lazy)),
        SearchKey::SequenceSet(set) => resolve(set, c.all, false).binary_search(&c.index).is_ok(),
        SearchKey::Uid(set) => resolve(set, c.all, true).binary_search(&c.index).is_ok(),
        SearchKey::All => true,
        SearchKey::Answered => m.has_flag("\\Answered"),
        SearchKey::Deleted => m.has_flag("\\Deleted"),
        SearchKey::Draft => m.has_flag("\\Draft"),
        SearchKey::Flagged => m.has_flag("\\Flagged"),
        SearchKey::Seen => m.has_flag("\\Seen"),
        SearchKey::Unanswered => !m.has_flag("\\Answered"),
        SearchKey::Undeleted => !m.has_flag("\\Deleted"),
        SearchKey::Undraft => !m.has_flag("\\Draft"),
        SearchKey::Unflagged => !m.has_flag("\\Flagged"),
        SearchKey::Unseen => !m.has_flag("\\Seen"),
        SearchKey::Keyword(k) => m.has_flag(k.inner()),
        SearchKey::Unkeyword(k) => !m.has_flag(k.inner()),
        // RFC 3501 6.4.4: NEW is RECENT UNSEEN, OLD is NOT RECENT
        SearchKey::Recent => c.recent,
        SearchKey::New => c.recent && !m.has_flag("\\Seen"),
        SearchKey::Old => !c.recent,
        SearchKey::Larger(n) => m.size > u64::from(*n),
        SearchKey::Smaller(n) => m.size < u64::from(*n),
        SearchKey::Before(d) => date_of(m.internal_date) < *d.as_ref(),
        SearchKey::On(d) => date_of(m.internal_date) == *d.as_ref(),
        SearchKey::Since(d) => date_of(m.internal_date) >= *d.as_ref(),
        SearchKey::SentBefore(d) | SearchKey::SentOn(d) | SearchKey::SentSince(d) => {
            let Some(sent) = lazy.raw().and_then(|r| Parsed::new(r).sent_date()) else {
                return false;
            };
            match key {
                SearchKey::SentBefore(_) => sent < *d.as_ref(),
                SearchKey::SentOn(_) => sent == *d.as_ref(),
                _ => sent >= *d.as_ref(),
            }
        }
        SearchKey::From(s) => address(lazy, "From", &astr(s)),
        SearchKey::To(s) => address(lazy, "To", &astr(s)),
        SearchKey::Cc(s) => address(lazy, "Cc", &astr(s)),
        SearchKey::Bcc(s) => address(lazy, "Bcc", &astr(s)),
        SearchKey::Subject(s) => header(lazy, "Subject", &astr(s)),
        SearchKey::Header(name, value) => header(lazy, &astr(name), &astr(value)),
        SearchKey::Body(s) => {
            let needle = astr(s);
            lazy.raw()
                .is_some_and(|r| contains_ci(&Parsed::new(r).body_text(), &needle))
        }
        SearchKey::Text(s) => {
            let needle = astr(s);
            lazy.raw().is_some_and(|r| {
                let p = Parsed::new(r);
                contains_ci(&p.header_block(), &needle) || contains_ci(&p.body_text(), &needle)
            })
        }
        SearchKey::Not(k) => !eval(k, c, lazy),
        SearchKey::Or(a, b) => eval(a, c, lazy) || eval(b, c, lazy),
        // RFC 7162 3.1.5: MODSEQ at least n. Postern keeps one MODSEQ per message, not one per
        // flag, so a metadata item name (`"/flags/\\seen" all`) compares the message's.
        SearchKey::ModSequence { modseq, .. } => m.modseq >= *modseq,
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metas(uids: &[u32]) -> Vec<MessageMeta> {
        uids.iter()
            .map(|&uid| MessageMeta {
                uid,
                flags: vec![],
                modseq: 1,
                size: 10,
                internal_date: 0,
                blob_id: String::new(),
            })
            .collect()
    }

    #[test]
    fn sequence_sets() {
        let m = metas(&[3, 5, 9, 10]);
        let s = |t: &str| SequenceSet::try_from(t).unwrap();
        assert_eq!(resolve(&s("1:*"), &m, false), vec![0, 1, 2, 3]);
        assert_eq!(resolve(&s("*:2"), &m, false), vec![1, 2, 3]);
        assert_eq!(resolve(&s("2,2,9"), &m, false), vec![1]);
        assert_eq!(resolve(&s("4:9"), &m, true), vec![1, 2]);
        assert_eq!(resolve(&s("*"), &m, true), vec![3]);
        // "n:*" with n larger than every UID still names the last message (RFC 3501 6.4.8)
        assert_eq!(resolve(&s("100:*"), &m, true), vec![3]);
        assert!(resolve(&s("1"), &[], true).is_empty());
    }

    #[test]
    fn esearch_return_clause() {
        let ok = |c: &str| split_return(c.as_bytes()).unwrap().unwrap();
        let (cmd, o) = ok("a SEARCH RETURN (MIN COUNT) UNSEEN\r\n");
        assert_eq!(cmd, b"a SEARCH UNSEEN\r\n");
        assert!(o.min && o.count && !o.max && !o.all);
        let (cmd, o) = ok("t UID search return () TEXT {5}\r\nhello\r\n");
        assert_eq!(cmd, b"t UID search TEXT {5}\r\nhello\r\n");
        assert!(o.all && !o.count);
        assert!(split_return(b"a SEARCH UNSEEN\r\n").is_none());
        assert!(split_return(b"a FETCH 1 RETURN (MIN)\r\n").is_none());
        assert!(split_return(b"a SEARCH RETURN (SAVE) ALL\r\n")
            .unwrap()
            .is_err());
        assert!(split_return(b"a SEARCH RETURN (MIN ALL\r\n")
            .unwrap()
            .is_err());
        assert!(split_return(b"a SEARCH RETURN MIN ALL\r\n")
            .unwrap()
            .is_err());
        assert!(split_return(b"a").is_none() && split_return(b"").is_none());
    }

    #[test]
    fn sets_on_the_wire() {
        assert_eq!(compress(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(compress(&[5]), "5");
        assert_eq!(compress(&[]), "");
        assert_eq!(
            compress(&[u32::MAX - 1, u32::MAX]),
            format!("{}:{}", u32::MAX - 1, u32::MAX)
        );
        let s = |t: &str| SequenceSet::try_from(t).unwrap();
        let r = uid_ranges(&s("3:1,7,20:*"), 25);
        assert_eq!(r, vec![(1, 3), (7, 7), (20, 25)]);
        assert!(in_ranges(&r, 2) && in_ranges(&r, 25) && !in_ranges(&r, 5));
    }
}
