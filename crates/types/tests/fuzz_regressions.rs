//! Inputs the fuzz targets found (fuzz/, docs/fuzzing.md), each a test named after its artifact.
#![forbid(unsafe_code)]

use postern_types::{Domain, EmailAddress};

fn input(name: &str) -> String {
    let path = format!(
        "{}/tests/fuzz_regressions/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    String::from_utf8(bytes).expect("the input is UTF-8")
}

/// What the `address` target asserts for every input it accepts.
fn canonical_form_is_stable(s: &str) {
    if let Ok(a) = EmailAddress::parse(s) {
        let again = EmailAddress::parse(a.as_str()).expect("a canonical address parses again");
        assert_eq!(again, a);
        assert_eq!(format!("{}@{}", a.local_part(), a.domain()), a.as_str());
        assert!(Domain::parse(a.domain()).is_ok());
    }
}

/// A 64-octet local part with a 'Ⱦ' (U+023E, 2 octets) was accepted, then kept lower-cased as
/// 'ⱦ' (U+2C66, 3 octets): a stored 65-octet address that no longer parsed.
#[test]
fn crash_b1253a732186c562fdd8be82c18faf00349f863a() {
    let s = input("crash-b1253a732186c562fdd8be82c18faf00349f863a");
    assert_eq!(s.rsplit_once('@').unwrap().0.len(), 64);
    assert!(
        EmailAddress::parse(&s).is_err(),
        "65 octets once lower-cased"
    );
    canonical_form_is_stable(&s);
}

#[test]
fn lengthening_case_folds_are_checked_after_folding() {
    // 62 ASCII + 'Ⱦ' = 64 octets as written, 65 once lower-cased: refused.
    let long = format!("{}\u{23e}@example.org", "a".repeat(62));
    assert!(EmailAddress::parse(&long).is_err());
    // 61 ASCII + 'Ⱦ' = 63 → 64 octets: accepted, and stable.
    let fits = format!("{}\u{23e}@example.org", "a".repeat(61));
    let a = EmailAddress::parse(&fits).expect("64 octets once lower-cased");
    assert_eq!(a.local_part().len(), 64);
    canonical_form_is_stable(&fits);
    // 'İ' lower-cases to 'i' + U+0307 (two characters): still a valid, stable local part.
    canonical_form_is_stable("\u{130}stanbul@example.org");
}
