//! Message parsing as FETCH uses it: BODYSTRUCTURE, ENVELOPE, sections and header filters; and
//! as SORT and THREAD use it: the input split at "\n\n\n\n" into up to 32 messages, their header
//! fields sorted by every key and threaded by both algorithms (each message in each answer
//! exactly once).
#![no_main]
#![forbid(unsafe_code)]
use imap_codec::imap_types::extensions::sort::{SortCriterion, SortKey};
use libfuzzer_sys::fuzz_target;
use postern_imap::mime::{filter_headers, header_end, Parsed, Spec};
use postern_imap::sort;

fuzz_target!(|data: &[u8]| {
    let p = Parsed::new(data);
    let mut out = Vec::new();
    p.body_structure(&mut out, true);
    p.body_structure(&mut out, false);
    p.envelope(&mut out);
    let _ = p.section(&[1], &Spec::Text);
    let _ = p.section(&[1, 2], &Spec::Header);
    let _ = p.section(&[2, 1, 1], &Spec::Full);
    let _ = p.section(&[], &Spec::Mime);
    let _ = p.header_text("subject");
    let _ = p.body_text();
    let _ = p.sent_date();
    let _ = filter_headers(data, &["From".to_owned(), "To".to_owned()], true);

    let mut items = Vec::new();
    let mut rest = data;
    while items.len() < 32 && !rest.is_empty() {
        let cut = rest.windows(4).position(|w| w == b"\n\n\n\n");
        let (m, tail) = match cut {
            Some(c) => (&rest[..c], &rest[c + 4..]),
            None => (rest, &[][..]),
        };
        rest = tail;
        let n = items.len() as u32 + 1;
        let mut f = sort::Fields {
            id: n,
            seq: n,
            arrival: i64::from(n),
            sent: i64::from(n),
            size: m.len() as u64,
            ..Default::default()
        };
        Parsed::new(&m[..header_end(m)]).sort_fields(&mut f);
        let _ = sort::base_subject(&f.subject);
        items.push(f);
    }
    let keys = [
        SortKey::Arrival,
        SortKey::Cc,
        SortKey::Date,
        SortKey::From,
        SortKey::Size,
        SortKey::Subject,
        SortKey::To,
        SortKey::DisplayFrom,
        SortKey::DisplayTo,
    ];
    for (i, key) in keys.into_iter().enumerate() {
        let mut sorted = items.clone();
        sort::sort(&mut sorted, &[SortCriterion { reverse: i % 2 == 0, key }]);
        assert_eq!(sorted.len(), items.len());
    }
    for threads in [
        sort::thread_references(&items),
        sort::thread_orderedsubject(&items),
    ] {
        let text = sort::render(&threads, &items);
        let mut ids: Vec<u32> = text
            .split(|c: char| !c.is_ascii_digit())
            .filter(|x| !x.is_empty())
            .map(|x| x.parse().unwrap())
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=items.len() as u32).collect::<Vec<_>>(), "{text}");
    }
});
