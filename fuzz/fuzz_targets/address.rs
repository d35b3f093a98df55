//! The strict address, domain and CIDR parsers (postern-types, postern-auth) that every policy
//! decision rests on (local or remote, sender ownership, allow lists). What one accepts must be
//! stable: the canonical form parses again to the same value.
#![no_main]
#![forbid(unsafe_code)]
use libfuzzer_sys::fuzz_target;
use postern_auth::guard::Cidr;
use postern_types::{Domain, EmailAddress};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(a) = EmailAddress::parse(s) {
        let again = EmailAddress::parse(a.as_str()).expect("a canonical address parses again");
        assert_eq!(again, a);
        assert_eq!(format!("{}@{}", a.local_part(), a.domain()), a.as_str());
        assert!(Domain::parse(a.domain()).is_ok());
    }
    if let Ok(d) = Domain::parse(s) {
        assert_eq!(Domain::parse(d.as_str()).as_ref(), Ok(&d));
    }
    if let Ok(c) = Cidr::parse(s) {
        let mapped = matches!(c.addr, std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
        if !mapped {
            assert!(c.contains(c.addr), "{s:?} does not contain its own network address");
        }
    }
});
