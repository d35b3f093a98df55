//! The POP3 command parser (hand-written: no crate of the field parses POP3).
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        let _ = postern_pop3::parse::parse(line);
    }
});
