//! The port-25 pieces Postern writes itself around `mail-auth`: removal of forged
//! Authentication-Results fields (a forged "pass" under our name must never survive), the DMARC
//! `pct` tag and relaxed alignment. Invariants: removal is idempotent, never touches the body and
//! never grows the message (for CRLF-only input, what DATA hands over); pct is always 0-100; alignment is symmetric.
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;
use postern_smtp::inbound::{aligned, record_pct, strip_forged_results};

const HOST: &str = "mx.example.test";

fuzz_target!(|data: &[u8]| {
    let out = strip_forged_results(data.to_vec(), HOST);
    assert!(out.len() <= data.len());
    // The rest holds for what DATA hands over: CRLF line endings only (a bare CR or LF is
    // refused with 550 before any check runs).
    let bare = data.iter().enumerate().any(|(i, &b)| {
        (b == b'\n' && (i == 0 || data[i - 1] != b'\r'))
            || (b == b'\r' && data.get(i + 1) != Some(&b'\n'))
    });
    if bare {
        return;
    }
    assert_eq!(strip_forged_results(out.clone(), HOST), out, "removal is not idempotent");
    // the body (after the first empty line) is never touched
    if let Some(p) = data.windows(4).position(|w| w == b"\r\n\r\n") {
        assert!(out.ends_with(&data[p + 2..]), "the body changed");
    }
    // what is left parses to no field of ours
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    // (a message that starts with an empty line has no header at all)
    let head = if text.starts_with("\r\n") {
        ""
    } else {
        text.split("\r\n\r\n").next().unwrap_or("")
    };
    for line in head.split("\r\n") {
        if let Some(v) = line.strip_prefix("authentication-results:") {
            let id = v.split(';').next().unwrap_or("").trim().trim_end_matches('.');
            assert!(id != HOST, "a field claiming our authserv-id survived: {line:?}");
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        assert!(record_pct(s) <= 100);
        let (a, b) = s.split_once(' ').unwrap_or((s, "example.test"));
        assert_eq!(aligned(a, b), aligned(b, a));
    }
});
