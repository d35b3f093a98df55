//! The SMTP command parser as the session uses it (smtp-proto's `Request::parse` on one line).
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in data.split_inclusive(|&b| b == b'\n') {
        let mut it = line.iter();
        let _ = smtp_proto::Request::parse(&mut it);
    }
});
