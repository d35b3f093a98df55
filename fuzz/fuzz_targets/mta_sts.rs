//! The hand-written MTA-STS pieces of outbound delivery (RFC 8461): the policy body parser, the
//! `_mta-sts` TXT record's id, and the MX pattern match that decides which hosts may receive mail
//! under an `enforce` policy. Invariants: a parsed policy has STSv1 lines and lower-case patterns;
//! an id is 1-32 alphanumerics; a host matches a pattern only if it is that name or one label
//! under a `*.` suffix.
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;
use postern_queue::mta_sts::{mx_matches, parse_policy, record_id, Mode};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = parse_policy(s) {
        assert!(p.mx.iter().all(|m| *m == m.to_ascii_lowercase()));
        assert!(p.mode == Mode::None || !p.mx.is_empty());
        assert!(p.max_age <= 31_557_600);
        assert!(p.lines.iter().any(|l| l.starts_with("version")));
    }
    if let Some(id) = record_id(s) {
        assert!(!id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
    let (pattern, host) = s.split_once(' ').unwrap_or((s, "mx.example.test"));
    if mx_matches(pattern, host) {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(suffix) => {
                let (label, rest) = host.split_once('.').expect("a matched host has a label");
                assert!(!label.is_empty() && rest == suffix);
            }
            None => assert_eq!(host, pattern),
        }
    }
});
