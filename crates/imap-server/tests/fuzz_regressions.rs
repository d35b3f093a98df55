//! Inputs the fuzz targets found (fuzz/, docs/fuzzing.md), each a test named after its artifact.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use postern_imap::mime::{Parsed, Spec};

fn input(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fuzz_regressions/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What the `mime` target does with an input (FETCH BODYSTRUCTURE, ENVELOPE, sections), timed.
fn fetch_everything(data: &[u8]) -> (usize, Duration) {
    let t = Instant::now();
    let p = Parsed::new(data);
    let mut out = Vec::new();
    p.body_structure(&mut out, true);
    p.body_structure(&mut out, false);
    p.envelope(&mut out);
    for path in [&[][..], &[1], &[1, 2], &[2, 1, 1], &[3, 3, 3, 3]] {
        for spec in [Spec::Full, Spec::Header, Spec::Text, Spec::Mime] {
            out.extend(p.section(path, &spec).unwrap_or_default());
        }
    }
    (out.len(), t.elapsed())
}

/// mime, 2026-11-23, in the first minutes of an hour-long run: mail-parser 0.11 turns this
/// 305-byte message into a multipart whose part list names itself and its parent ([0, 1]), and
/// BODYSTRUCTURE followed the cycle to depth 50 with two branches per level: past 4 GB of
/// memory and 39 s before libFuzzer killed it. Any user could have sent it to any address.
#[test]
fn oom_25107ae7ebab12b9fda30f854b8111d4058e6637() {
    let data = input("oom-25107ae7ebab12b9fda30f854b8111d4058e6637");
    let (len, took) = fetch_everything(&data);
    assert!(
        len < 64 * 1024,
        "output of {len} bytes for a {}-byte message",
        data.len()
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let p = Parsed::new(&data);
    let mut out = Vec::new();
    p.body_structure(&mut out, false);
    let text = String::from_utf8(out).unwrap();
    // still a well-formed description: balanced parentheses, a multipart around a part
    let depth = text.chars().try_fold(0i32, |d, c| match c {
        '(' => Some(d + 1),
        ')' if d > 0 => Some(d - 1),
        ')' => None,
        _ => Some(d),
    });
    assert_eq!(depth, Some(0), "{text}");
    assert!(
        text.starts_with("((") && text.contains("(\"TEXT\" \"PLAIN\""),
        "{text}"
    );
}

/// Deep multipart nesting (40 levels) stays fast and small too.
#[test]
fn many_nested_multiparts_stay_bounded() {
    let mut msg = String::from("Content-Type: multipart/mixed; boundary=b0\r\n\r\n");
    for i in 1..40 {
        msg.push_str(&format!(
            "--b{}\r\nContent-Type: multipart/mixed; boundary=b{i}\r\n\r\n",
            i - 1
        ));
    }
    msg.push_str("--b39\r\nContent-Type: text/plain\r\n\r\nx\r\n");
    let (len, took) = fetch_everything(msg.as_bytes());
    assert!(len < 1024 * 1024, "{len}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}
