//! SORT and THREAD (RFC 5256, with SORT=DISPLAY from RFC 5957): the order and the thread trees
//! of the messages a search matched, computed from a few header fields per message. Knows no I/O
//! and no session: the caller extracts [`Fields`] from each message and renders the answer.
//!
//! Hand-written: no crate implements RFC 5256's base subject or its REFERENCES algorithm (a
//! variant of Jamie Zawinski's threading with IMAP's own pruning, grouping and ordering rules).

use std::collections::HashMap;

use imap_codec::imap_types::extensions::sort::{SortCriterion, SortKey};

/// What SORT and THREAD look at in one message.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    /// Sequence number (1-based) or UID: what the answer lists, and the last tie-breaker.
    pub id: u32,
    /// Position in the mailbox (sequence order), the tie-breaker of RFC 5256 (3).
    pub seq: u32,
    pub arrival: i64,
    /// The Date: header in UTC, or the arrival when it is missing or invalid (RFC 5256 2.2).
    pub sent: i64,
    pub size: u64,
    /// Decoded Subject (encoded words decoded), empty if none.
    pub subject: String,
    /// addr-mailbox (local part) of the first From/To/Cc address (RFC 5256 SORT FROM/TO/CC).
    pub from: String,
    pub to: String,
    pub cc: String,
    /// RFC 5957: the display name of the first From/To address, else its addr-spec.
    pub display_from: String,
    pub display_to: String,
    pub message_id: Option<String>,
    /// References, or else the first message id of In-Reply-To (RFC 5256 REFERENCES 1.B).
    pub references: Vec<String>,
}

/// RFC 5256 2.1: the base subject, and whether the subject was a reply or a forward (a
/// `Re:`/`Fwd:` leader, a `(fwd)` trailer or a `[fwd: ...]` wrapper was removed).
pub fn base_subject(subject: &str) -> (String, bool) {
    // (1) whitespace runs (tabs, folding) become one space
    let mut s = String::with_capacity(subject.len());
    for c in subject.chars() {
        let c = if c.is_whitespace() { ' ' } else { c };
        if c == ' ' && (s.is_empty() || s.ends_with(' ')) {
            if s.is_empty() {
                s.push(' ');
            }
            continue;
        }
        s.push(c);
    }
    let mut refwd = false;
    loop {
        // (2) trailing "(fwd)" and whitespace
        loop {
            let t = s.trim_end_matches(' ');
            // `get`: the cut may fall inside a multi-byte character (then it is no "(fwd)")
            let tail = t.len().checked_sub(5).and_then(|i| t.get(i..));
            if tail.is_some_and(|x| x.eq_ignore_ascii_case("(fwd)")) {
                s = t[..t.len() - 5].to_owned();
                refwd = true;
            } else if t.len() != s.len() {
                s = t.to_owned();
            } else {
                break;
            }
        }
        // (3)-(5) leaders and blobs
        loop {
            let t = s.trim_start_matches(' ');
            if let Some(rest) = strip_refwd(t) {
                s = rest.to_owned();
                refwd = true;
                continue;
            }
            if let Some(rest) = strip_blob(t) {
                if !rest.trim_matches(' ').is_empty() {
                    s = rest.to_owned();
                    continue;
                }
            }
            if t.len() != s.len() {
                s = t.to_owned();
                continue;
            }
            break;
        }
        // (6) "[fwd: ...]"
        if s.len() >= 6
            && s.get(..5).is_some_and(|x| x.eq_ignore_ascii_case("[fwd:"))
            && s.ends_with(']')
        {
            s = s[5..s.len() - 1].to_owned();
            refwd = true;
            continue;
        }
        break;
    }
    (s, refwd)
}

/// subj-blob = "[" *BLOBCHAR "]" *WSP; the text after it.
fn strip_blob(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('[')?;
    let end = rest.find([']', '['])?;
    if rest.as_bytes()[end] != b']' {
        return None;
    }
    Some(rest[end + 1..].trim_start_matches(' '))
}

/// *subj-blob subj-refwd, subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
fn strip_refwd(s: &str) -> Option<&str> {
    let mut rest = s;
    while let Some(r) = strip_blob(rest) {
        rest = r;
    }
    let lower = rest.get(..3).unwrap_or(rest).to_ascii_lowercase();
    let n = if lower.starts_with("re") {
        2
    } else if lower.starts_with("fwd") {
        3
    } else if lower.starts_with("fw") {
        2
    } else {
        return None;
    };
    let mut rest = rest[n..].trim_start_matches(' ');
    if let Some(r) = strip_blob(rest) {
        rest = r;
    }
    rest.strip_prefix(':')
}

/// The comparison key of i;unicode-casemap (RFC 5051): each character in title case (upper
/// case stands in for it), then canonically decomposed, so that "Été" sorts with "ete" and
/// before "Grüße", as Dovecot sorts it.
pub fn casemap_key(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    s.chars().flat_map(char::to_uppercase).nfd().collect()
}

/// SORT (RFC 5256 3): the messages in the order of the criteria, the sequence number last.
pub fn sort(items: &mut [Fields], criteria: &[SortCriterion]) {
    // every string key computed once per message, not once per comparison
    let keys: HashMap<u32, [String; 6]> = items
        .iter()
        .map(|f| {
            let subject = if criteria.iter().any(|c| c.key == SortKey::Subject) {
                casemap_key(&base_subject(&f.subject).0)
            } else {
                String::new()
            };
            let k = [
                subject,
                casemap_key(&f.from),
                casemap_key(&f.to),
                casemap_key(&f.cc),
                casemap_key(&f.display_from),
                casemap_key(&f.display_to),
            ];
            (f.seq, k)
        })
        .collect();
    items.sort_by(|a, b| {
        let (ka, kb) = (&keys[&a.seq], &keys[&b.seq]);
        for c in criteria {
            let field = |n: usize| ka[n].cmp(&kb[n]);
            let o = match c.key {
                SortKey::Arrival => a.arrival.cmp(&b.arrival),
                SortKey::Date => a.sent.cmp(&b.sent),
                SortKey::Size => a.size.cmp(&b.size),
                SortKey::Subject => field(0),
                SortKey::From => field(1),
                SortKey::To => field(2),
                SortKey::Cc => field(3),
                SortKey::DisplayFrom => field(4),
                SortKey::DisplayTo => field(5),
            };
            let o = if c.reverse { o.reverse() } else { o };
            if o != std::cmp::Ordering::Equal {
                return o;
            }
        }
        a.seq.cmp(&b.seq)
    });
}

/// A thread tree: a message (an index into the items) or a dummy, with its replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub msg: Option<usize>,
    pub children: Vec<Node>,
}

/// THREAD=ORDEREDSUBJECT (RFC 5256 4): messages grouped by base subject; each group is its
/// earliest message with the others (by sent date) as its children; groups by their first
/// message's sent date.
pub fn thread_orderedsubject(items: &[Fields]) -> Vec<Node> {
    let mut order: Vec<(String, usize)> = items
        .iter()
        .enumerate()
        .map(|(i, f)| (casemap_key(&base_subject(&f.subject).0), i))
        .collect();
    order.sort_by(|(sa, a), (sb, b)| {
        sa.cmp(sb)
            .then(items[*a].sent.cmp(&items[*b].sent))
            .then(items[*a].seq.cmp(&items[*b].seq))
    });
    let mut threads: Vec<Node> = Vec::new();
    let mut current: Option<&str> = None;
    for (subject, i) in &order {
        if current == Some(subject.as_str()) {
            if let Some(t) = threads.last_mut() {
                t.children.push(Node {
                    msg: Some(*i),
                    children: Vec::new(),
                });
            }
        } else {
            threads.push(Node {
                msg: Some(*i),
                children: Vec::new(),
            });
            current = Some(subject.as_str());
        }
    }
    threads.sort_by(|a, b| {
        let (a, b) = (&items[a.msg.unwrap_or(0)], &items[b.msg.unwrap_or(0)]);
        a.sent.cmp(&b.sent).then(a.seq.cmp(&b.seq))
    });
    threads
}

struct Container {
    msg: Option<usize>,
    parent: Option<usize>,
    children: Vec<usize>,
}

/// Whether `target` is `from` or below it.
fn reaches(cs: &[Container], from: usize, target: usize) -> bool {
    let mut stack = vec![from];
    let mut steps = 0usize;
    while let Some(c) = stack.pop() {
        if c == target {
            return true;
        }
        steps += 1;
        if steps > cs.len() {
            // a loop would have been refused when linking; never walk forever regardless
            return true;
        }
        stack.extend(cs[c].children.iter().copied());
    }
    false
}

fn unlink(cs: &mut [Container], child: usize) {
    if let Some(p) = cs[child].parent.take() {
        cs[p].children.retain(|&c| c != child);
    }
}

fn link(cs: &mut [Container], parent: usize, child: usize) {
    unlink(cs, child);
    cs[child].parent = Some(parent);
    cs[parent].children.push(child);
}

/// THREAD=REFERENCES (RFC 5256 4): threads from Message-ID, References and In-Reply-To, dummies
/// pruned, roots with the same base subject gathered, every level ordered by sent date.
pub fn thread_references(items: &[Fields]) -> Vec<Node> {
    let mut cs: Vec<Container> = Vec::with_capacity(items.len() * 2);
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let new = |cs: &mut Vec<Container>| {
        cs.push(Container {
            msg: None,
            parent: None,
            children: Vec::new(),
        });
        cs.len() - 1
    };
    for (i, f) in items.iter().enumerate() {
        // (1.A) this message's container; a missing or duplicate Message-ID gets its own
        let me = match f.message_id.as_deref().filter(|id| !id.is_empty()) {
            Some(id) => match ids.get(id) {
                Some(&c) if cs[c].msg.is_none() => c,
                Some(_) => new(&mut cs),
                None => {
                    let c = new(&mut cs);
                    ids.insert(id, c);
                    c
                }
            },
            None => new(&mut cs),
        };
        cs[me].msg = Some(i);
        // (1.B) the references, linked parent to child where no link and no loop exists
        let mut prev: Option<usize> = None;
        for r in &f.references {
            let c = match ids.get(r.as_str()) {
                Some(&c) => c,
                None => {
                    let c = new(&mut cs);
                    ids.insert(r.as_str(), c);
                    c
                }
            };
            if let Some(p) = prev {
                if p != c && cs[c].parent.is_none() && !reaches(&cs, c, p) && !reaches(&cs, p, c) {
                    link(&mut cs, p, c);
                }
            }
            prev = Some(c);
        }
        // (1.C) the last reference is the parent, replacing a guessed one; never a loop
        unlink(&mut cs, me);
        if let Some(p) = prev {
            if p != me && !reaches(&cs, me, p) {
                link(&mut cs, p, me);
            }
        }
    }
    // (2) the root set
    let roots: Vec<usize> = (0..cs.len()).filter(|&c| cs[c].parent.is_none()).collect();
    // (4) dummies pruned
    let roots = prune(&mut cs, roots, true);
    let mut tree: Vec<Node> = roots.iter().map(|&r| to_node(&cs, r)).collect();
    // (5) ordered by sent date
    order(&mut tree, items);
    // (6) roots with the same base subject gathered
    let tree = gather_subjects(tree, items);
    // (7) every level ordered by sent date
    let mut tree = tree;
    order(&mut tree, items);
    tree
}

fn prune(cs: &mut [Container], list: Vec<usize>, at_root: bool) -> Vec<usize> {
    let mut out = Vec::with_capacity(list.len());
    for c in list {
        let kids = std::mem::take(&mut cs[c].children);
        let kids = prune(cs, kids, false);
        for &k in &kids {
            cs[k].parent = Some(c);
        }
        cs[c].children = kids;
        if cs[c].msg.is_some() {
            out.push(c);
        } else if cs[c].children.is_empty() {
            // a dummy without children goes
        } else if !at_root || cs[c].children.len() == 1 {
            // its children take its place (at the root only if there is one)
            let kids = std::mem::take(&mut cs[c].children);
            for &k in &kids {
                cs[k].parent = cs[c].parent;
            }
            out.extend(kids);
        } else {
            out.push(c);
        }
    }
    out
}

fn to_node(cs: &[Container], c: usize) -> Node {
    Node {
        msg: cs[c].msg,
        children: cs[c].children.iter().map(|&k| to_node(cs, k)).collect(),
    }
}

/// The message a node stands for in ordering and subjects: its own, or its first child's.
fn first_msg(n: &Node) -> Option<usize> {
    n.msg.or_else(|| n.children.first().and_then(first_msg))
}

/// Siblings by sent date (a dummy by its first child's, after its children are ordered), ties
/// by sequence number.
fn order(nodes: &mut [Node], items: &[Fields]) {
    for n in nodes.iter_mut() {
        order(&mut n.children, items);
    }
    nodes.sort_by_key(|n| first_msg(n).map(|i| (items[i].sent, items[i].seq)));
}

fn gather_subjects(roots: Vec<Node>, items: &[Fields]) -> Vec<Node> {
    let subject_of = |n: &Node| -> Option<(String, bool)> {
        let (s, refwd) = base_subject(&items[first_msg(n)?].subject);
        (!s.is_empty()).then(|| (casemap_key(&s), refwd))
    };
    // (6.B) one root per subject: a dummy before a message, a non-reply before a reply
    let mut table: HashMap<String, usize> = HashMap::new();
    for (i, r) in roots.iter().enumerate() {
        let Some((s, refwd)) = subject_of(r) else {
            continue;
        };
        match table.get(&s) {
            None => {
                table.insert(s, i);
            }
            Some(&o) => {
                let old = &roots[o];
                let old_refwd = subject_of(old).is_some_and(|x| x.1);
                if (r.msg.is_none() && old.msg.is_some())
                    || (old_refwd && !refwd && old.msg.is_some() == r.msg.is_some())
                {
                    table.insert(s, i);
                }
            }
        }
    }
    // (6.C) the others merged into it
    let mut slots: Vec<Option<Node>> = roots.into_iter().map(Some).collect();
    for i in 0..slots.len() {
        let Some((s, refwd)) = slots[i].as_ref().and_then(subject_of) else {
            continue;
        };
        let Some(&t) = table.get(&s) else { continue };
        if t == i {
            continue;
        }
        let (Some(this), Some(mut target)) = (slots[i].take(), slots[t].take()) else {
            continue;
        };
        let target_refwd = subject_of(&target).is_some_and(|x| x.1);
        let merged = match (target.msg.is_none(), this.msg.is_none()) {
            (true, true) => {
                target.children.extend(this.children);
                target
            }
            (true, false) => {
                target.children.push(this);
                target
            }
            (false, true) => {
                let mut this = this;
                this.children.push(target);
                this
            }
            (false, false) if !target_refwd && refwd => {
                target.children.push(this);
                target
            }
            (false, false) if target_refwd && !refwd => {
                let mut this = this;
                this.children.push(target);
                this
            }
            (false, false) => Node {
                msg: None,
                children: vec![target, this],
            },
        };
        slots[t] = Some(merged);
    }
    slots.into_iter().flatten().collect()
}

/// The THREAD answer's body: `(1 2 (3)(4 5))(6)`; a chain of single replies is written as a
/// list, several replies each in parentheses, a dummy as its replies alone.
pub fn render(threads: &[Node], items: &[Fields]) -> String {
    fn body(n: &Node, items: &[Fields], out: &mut String) {
        let mut sep = false;
        if let Some(i) = n.msg {
            out.push_str(&items[i].id.to_string());
            sep = true;
        }
        match n.children.len() {
            0 => {}
            1 => {
                if sep {
                    out.push(' ');
                }
                body(&n.children[0], items, out);
            }
            _ => {
                if sep {
                    out.push(' ');
                }
                for c in &n.children {
                    out.push('(');
                    body(c, items, out);
                    out.push(')');
                }
            }
        }
    }
    let mut out = String::new();
    for t in threads {
        out.push('(');
        body(t, items, &mut out);
        out.push(')');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_subjects_rfc5256_2_1() {
        let cases = [
            ("Hello", "Hello", false),
            ("Re: Hello", "Hello", true),
            ("RE:  re: Fwd:Hello", "Hello", true),
            ("Re[2]: Hello", "Hello", true),
            ("[list] Re: Hello", "Hello", true),
            ("[list] Hello", "Hello", false),
            ("[only a blob]", "[only a blob]", false),
            ("Hello (fwd)", "Hello", true),
            ("[Fwd: Re: Hello]", "Hello", true),
            ("  Hello\t\t world  ", "Hello world", false),
            ("Reply to all", "Reply to all", false),
            ("Fw: [x] Re: [y]  Hello (fwd) (fwd)", "Hello", true),
            ("Ré: accents stay", "Ré: accents stay", false),
            // multi-byte characters where "(fwd)" or "[fwd:" would be cut (a panic once)
            ("Émété", "Émété", false),
            ("été", "été", false),
            ("[fwé]", "[fwé]", false),
            ("[Fwd: é]", "é", true),
            ("", "", false),
        ];
        for (raw, base, refwd) in cases {
            assert_eq!(base_subject(raw), (base.to_owned(), refwd), "{raw:?}");
        }
    }

    fn msg(seq: u32, sent: i64, subject: &str, id: &str, refs: &[&str]) -> Fields {
        Fields {
            id: seq,
            seq,
            sent,
            arrival: sent,
            subject: subject.into(),
            message_id: (!id.is_empty()).then(|| id.to_owned()),
            references: refs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn references_threads() {
        let items = vec![
            msg(1, 10, "Party", "a", &[]),
            msg(2, 20, "Re: Party", "b", &["a"]),
            msg(3, 30, "Other", "c", &[]),
            msg(4, 40, "Re: Party", "d", &["a", "b"]),
            msg(5, 50, "Re: Party", "e", &["a"]),
            // a reply to a message we do not have, same subject as 3: gathered with it
            msg(6, 15, "Re: Other", "f", &["zz"]),
            // without ids at all, different subjects
            msg(7, 5, "Lonely", "", &[]),
            // a loop in References must not loop the algorithm
            msg(8, 60, "Loop", "g", &["h", "g"]),
            msg(9, 70, "Loop2", "h", &["g", "h"]),
        ];
        let t = thread_references(&items);
        let s = render(&t, &items);
        // 7 first (oldest), then 1 with 2 (which has 4) and 5, then 6 under 3's subject
        assert!(s.starts_with("(7)(1 (2 4)(5))"), "{s}");
        assert!(
            s.contains("(3 6)") || s.contains("(6 3)") || s.contains("((3)(6))"),
            "{s}"
        );
        // every message appears exactly once
        let mut nums: Vec<u32> = s
            .split(|c: char| !c.is_ascii_digit())
            .filter(|x| !x.is_empty())
            .map(|x| x.parse().unwrap())
            .collect();
        nums.sort_unstable();
        assert_eq!(nums, (1..=9).collect::<Vec<_>>());
    }

    #[test]
    fn references_rfc_shapes() {
        // a dummy root with two children stays a dummy: ((2)(3))
        let items = vec![
            msg(1, 10, "A", "x1", &[]),
            msg(2, 20, "Re: B", "x2", &["missing"]),
            msg(3, 30, "Re: C", "x3", &["missing"]),
        ];
        assert_eq!(render(&thread_references(&items), &items), "(1)((2)(3))");
    }

    #[test]
    fn orderedsubject() {
        let items = vec![
            msg(1, 30, "B", "", &[]),
            msg(2, 10, "Re: A", "", &[]),
            msg(3, 20, "a", "", &[]),
            msg(4, 40, "re: b", "", &[]),
            msg(5, 50, "A", "", &[]),
        ];
        let t = thread_orderedsubject(&items);
        assert_eq!(render(&t, &items), "(2 (3)(5))(1 4)");
    }

    #[test]
    fn sort_criteria() {
        let mut items = vec![
            msg(1, 30, "b", "", &[]),
            msg(2, 10, "Re: a", "", &[]),
            msg(3, 20, "a", "", &[]),
        ];
        items[0].size = 5;
        items[1].size = 5;
        items[2].size = 1;
        let crit = |k, r| SortCriterion { reverse: r, key: k };
        sort(&mut items, &[crit(SortKey::Subject, false)]);
        assert_eq!(
            items.iter().map(|f| f.id).collect::<Vec<_>>(),
            vec![2, 3, 1]
        );
        sort(
            &mut items,
            &[crit(SortKey::Size, true), crit(SortKey::Date, false)],
        );
        assert_eq!(
            items.iter().map(|f| f.id).collect::<Vec<_>>(),
            vec![2, 1, 3]
        );
        sort(&mut items, &[crit(SortKey::Arrival, true)]);
        assert_eq!(
            items.iter().map(|f| f.id).collect::<Vec<_>>(),
            vec![1, 3, 2]
        );
    }
}
