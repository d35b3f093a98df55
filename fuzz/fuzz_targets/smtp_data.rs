//! The DATA reader: dot-unstuffing, the end-of-data marker, bare CR/LF (smuggling), the size cap.
//! The input is cut into chunks at the positions its first byte chooses, as a network would.
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;
use postern_smtp::data::DataReader;

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = (step as usize % 64) + 1;
    let mut r = DataReader::new(4096);
    let mut pos = 0;
    while pos < rest.len() {
        let end = (pos + step).min(rest.len());
        let (used, done) = r.feed(&rest[pos..end]);
        assert!(used <= end - pos, "consumed more than it was given");
        assert!(done || used == end - pos, "stopped early without the end marker");
        pos += used;
        if done {
            break;
        }
    }
    if let Ok(msg) = r.finish() {
        assert!(msg.len() <= 4096, "accepted past the cap");
        // what is stored never contains a bare CR or LF
        for (i, &b) in msg.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && msg[i - 1] == b'\r', "bare LF stored");
            }
            if b == b'\r' {
                assert!(msg.get(i + 1) == Some(&b'\n'), "bare CR stored");
            }
        }
    }
});
