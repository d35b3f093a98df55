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

/// What `SEARCH RETURN (...)` asks for (ESEARCH, RFC 4731); none named means ALL. SAVE
/// (SEARCHRES, RFC 5182) keeps the result for `$`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReturnOptions {
    pub min: bool,
    pub max: bool,
    pub all: bool,
    pub count: bool,
    pub save: bool,
}

impl ReturnOptions {
    /// Whether an ESEARCH response is due: not when SAVE was the only option (RFC 5182 2.4).
    pub fn answers(&self) -> bool {
        self.min || self.max || self.all || self.count
    }

    /// Of the matches (`ids`, ascending), what SAVE keeps: only the smallest and/or largest
    /// when SAVE came with MIN and/or MAX alone, else all (RFC 5182 2.4).
    pub fn saved(&self, ids: &[u32]) -> Vec<u32> {
        if (self.min || self.max) && !self.all && !self.count {
            let mut out = Vec::new();
            if let (true, Some(&f)) = (self.min, ids.first()) {
                out.push(f);
            }
            if let (true, Some(&l)) = (self.max, ids.last()) {
                if out.last() != Some(&l) {
                    out.push(l);
                }
            }
            out
        } else {
            ids.to_vec()
        }
    }
}

/// SEARCHRES (RFC 5182): the `$` of a command, replaced by the saved result before the command
/// is decoded (imap-codec knows no `$`). `uids` are the saved messages' UIDs and `seqs` their
/// sequence numbers in the session's view, both ascending. `$` as the message set of FETCH,
/// STORE, COPY, MOVE or UID EXPUNGE becomes the UIDs (UID command) or the sequence numbers; in
/// SEARCH, SORT or THREAD criteria `UID $` becomes `UID uids`, and a bare `$` becomes
/// `UID uids` too (the same messages). Only the first line is looked at, outside quoted
/// strings. Returns None when there is no `$`, else the command and whether the set was empty
/// (the command then acts on no message: a placeholder set stands in for the syntax).
pub fn substitute_saved(cmd: &[u8], uids: &[u32], seqs: &[u32]) -> Option<(Vec<u8>, bool)> {
    let line_end = cmd
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(cmd.len());
    let line = &cmd[..line_end];
    if !line.contains(&b'$') {
        return None;
    }
    // tokens (start, end) outside quoted strings; parentheses are their own tokens
    let mut tokens: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b' ' => i += 1,
            b'(' | b')' => {
                tokens.push((i, i + 1));
                i += 1;
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < line.len() && line[i] != b'"' {
                    i += if line[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(line.len());
                tokens.push((start, i));
            }
            _ => {
                let start = i;
                while i < line.len() && !matches!(line[i], b' ' | b'(' | b')' | b'"') {
                    i += 1;
                }
                tokens.push((start, i));
            }
        }
    }
    let word = |t: usize| tokens.get(t).map(|&(a, b)| &line[a..b]);
    let mut name_at = 1;
    let uid = word(1).is_some_and(|w| w.eq_ignore_ascii_case(b"UID"));
    if uid {
        name_at = 2;
    }
    let name = word(name_at)?.to_ascii_uppercase();
    let criteria = matches!(name.as_slice(), b"SEARCH" | b"SORT" | b"THREAD");
    let set_command = matches!(name.as_slice(), b"FETCH" | b"STORE" | b"COPY" | b"MOVE")
        || (uid && name == b"EXPUNGE");
    if !criteria && !set_command {
        return None;
    }
    let render = |ids: &[u32]| {
        if ids.is_empty() {
            // no message has it: the placeholder matches nothing
            u32::MAX.to_string()
        } else {
            compress(ids)
        }
    };
    let mut out = Vec::with_capacity(cmd.len() + 16);
    let mut copied = 0;
    let mut empty = false;
    let mut found = false;
    for (t, &(a, b)) in tokens.iter().enumerate() {
        if &line[a..b] != b"$" {
            continue;
        }
        let replacement = if set_command {
            if t != name_at + 1 {
                continue;
            }
            let ids = if uid { uids } else { seqs };
            empty = ids.is_empty();
            render(ids)
        } else if t > name_at && word(t - 1).is_some_and(|w| w.eq_ignore_ascii_case(b"UID")) {
            render(uids)
        } else if t > name_at {
            format!("UID {}", render(uids))
        } else {
            continue;
        };
        found = true;
        out.extend_from_slice(&line[copied..a]);
        out.extend_from_slice(replacement.as_bytes());
        copied = b;
    }
    if !found {
        return None;
    }
    out.extend_from_slice(&line[copied..]);
    out.extend_from_slice(&cmd[line_end..]);
    Some((out, empty))
}

/// ESEARCH's `[UID] SEARCH RETURN (options) criteria`, which imap-codec does not parse: the
/// RETURN clause is cut out of the command (it comes before any literal, on the first line)
/// and its options are returned beside the plain SEARCH that is left. None when the command is
/// not a SEARCH with RETURN; `Some(Err)` for options that are malformed or unknown.
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
            b"SAVE" => opts.save = true,
            _ => return Some(Err("Unknown RETURN option")),
        }
    }
    if opts == ReturnOptions::default() {
        opts.all = true;
    }
    // RETURN (SAVE) alone answers nothing: `all` stays off
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
        let (_, o) = ok("a SEARCH RETURN (SAVE) ALL\r\n");
        assert!(o.save && !o.answers());
        let (_, o) = ok("a SEARCH RETURN (SAVE MIN MAX) ALL\r\n");
        assert!(o.answers() && o.saved(&[2, 5, 9]) == vec![2, 9] && o.saved(&[4]) == vec![4]);
        let (_, o) = ok("a SEARCH RETURN (SAVE COUNT MIN) ALL\r\n");
        assert_eq!(o.saved(&[2, 5, 9]), vec![2, 5, 9]);
        assert!(split_return(b"a SEARCH RETURN (MIN ALL\r\n")
            .unwrap()
            .is_err());
        assert!(split_return(b"a SEARCH RETURN MIN ALL\r\n")
            .unwrap()
            .is_err());
        assert!(split_return(b"a").is_none() && split_return(b"").is_none());
    }

    #[test]
    fn searchres_dollar() {
        let sub = |c: &str, u: &[u32], q: &[u32]| {
            substitute_saved(c.as_bytes(), u, q).map(|(o, e)| (String::from_utf8(o).unwrap(), e))
        };
        let (uids, seqs) = ([10, 11, 12, 20], [1, 2, 3, 5]);
        assert_eq!(
            sub("a FETCH $ (FLAGS)\r\n", &uids, &seqs),
            Some(("a FETCH 1:3,5 (FLAGS)\r\n".into(), false))
        );
        assert_eq!(
            sub("a UID STORE $ +FLAGS (\\Seen)\r\n", &uids, &seqs),
            Some(("a UID STORE 10:12,20 +FLAGS (\\Seen)\r\n".into(), false))
        );
        assert_eq!(
            sub("a UID EXPUNGE $\r\n", &uids, &seqs).unwrap().0,
            "a UID EXPUNGE 10:12,20\r\n"
        );
        assert_eq!(
            sub("a SEARCH $ UNSEEN\r\n", &uids, &seqs).unwrap().0,
            "a SEARCH UID 10:12,20 UNSEEN\r\n"
        );
        assert_eq!(
            sub("a UID SEARCH OR (UID $) SUBJECT \"$\"\r\n", &uids, &seqs)
                .unwrap()
                .0,
            "a UID SEARCH OR (UID 10:12,20) SUBJECT \"$\"\r\n"
        );
        // empty: a placeholder no message has, and the flag
        assert_eq!(
            sub("a COPY $ Trash\r\n", &[], &[]),
            Some((format!("a COPY {} Trash\r\n", u32::MAX), true))
        );
        // no `$`, `$` inside a quoted string, or where no set goes: untouched
        assert_eq!(sub("a FETCH 1 FLAGS\r\n", &uids, &seqs), None);
        assert_eq!(sub("a SEARCH SUBJECT \"$\"\r\n", &uids, &seqs), None);
        assert_eq!(sub("a SELECT $\r\n", &uids, &seqs), None);
        assert_eq!(sub("a COPY 1 $\r\n", &uids, &seqs), None);
        assert_eq!(sub("a", &uids, &seqs), None);
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
