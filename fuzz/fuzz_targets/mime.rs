//! Message parsing as FETCH uses it: BODYSTRUCTURE, ENVELOPE, sections and header filters.
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;
use postern_imap::mime::{filter_headers, Parsed, Spec};

fuzz_target!(|data: &[u8]| {
    let p = Parsed::new(data);
    let mut out = Vec::new();
    p.body_structure(&mut out, true);
    p.body_structure(&mut out, false);
    p.envelope(&mut out);
    let _ = p.section(&[1], &Spec::Text);
    let _ = p.section(&[1, 2], &Spec::Header);
    let _ = p.section(&[], &Spec::Mime);
    let _ = p.header_text("subject");
    let _ = p.body_text();
    let _ = p.sent_date();
    let _ = filter_headers(data, &["From".to_owned(), "To".to_owned()], true);
});
