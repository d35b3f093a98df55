//! Shared newtypes: [`Domain`] and [`EmailAddress`] with strict parsing, and re-exported secret types.
//!
//! Addresses are parsed strictly: anything that is not a plain `local@domain` (source routes, IP
//! literals, trailing dots, a second `@`) is refused here, so that no policy built on these types can be
//! tricked into treating a remote address as local (the classic open-relay hacks).
#![forbid(unsafe_code)]

use std::fmt;
use std::net::IpAddr;

pub use secrecy::{ExposeSecret, SecretBox, SecretString};

/// The protocol a listener speaks (and the door a login came through: the auth core takes it typed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Inbound MX on port 25: no AUTH, local recipients only, STARTTLS offered.
    Smtp,
    /// Message submission on port 587 (RFC 6409): STARTTLS, then AUTH required.
    Submission,
    /// Message submission over implicit TLS on port 465 (RFC 8314).
    Submissions,
    /// IMAP with STARTTLS on port 143; LOGINDISABLED until TLS.
    Imap,
    /// IMAP over implicit TLS on port 993.
    Imaps,
    /// POP3 with STLS on port 110; no USER/PASS/AUTH until TLS.
    Pop3,
    /// POP3 over implicit TLS on port 995.
    Pop3s,
    /// The self-service web portal (`/account` over HTTPS on the admin listener): a door for
    /// logins only, never a `[[listener]]` protocol. No app password opens it.
    Web,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Submission => "submission",
            Protocol::Submissions => "submissions",
            Protocol::Imap => "imap",
            Protocol::Imaps => "imaps",
            Protocol::Pop3 => "pop3",
            Protocol::Pop3s => "pop3s",
            Protocol::Web => "web",
        }
    }
    /// The IANA port of the protocol, to which `postern init --port-offset` adds.
    pub fn standard_port(self) -> u16 {
        match self {
            Protocol::Smtp => 25,
            Protocol::Submission => 587,
            Protocol::Submissions => 465,
            Protocol::Imap => 143,
            Protocol::Imaps => 993,
            Protocol::Pop3 => 110,
            Protocol::Pop3s => 995,
            Protocol::Web => 443,
        }
    }
}

impl Protocol {
    /// The protocol named `name` ("smtp", "submission", "imaps" …).
    pub fn from_name(name: &str) -> Option<Protocol> {
        [
            Protocol::Smtp,
            Protocol::Submission,
            Protocol::Submissions,
            Protocol::Imap,
            Protocol::Imaps,
            Protocol::Pop3,
            Protocol::Pop3s,
        ]
        .into_iter()
        .find(|p| p.name() == name)
    }

    /// The family an app password is scoped to: "smtp" (25, 587, 465), "imap" or "pop3".
    pub fn family(self) -> &'static str {
        match self {
            Protocol::Imap | Protocol::Imaps => "imap",
            Protocol::Pop3 | Protocol::Pop3s => "pop3",
            Protocol::Smtp | Protocol::Submission | Protocol::Submissions => "smtp",
            Protocol::Web => "web",
        }
    }
}

/// An IPv4 or IPv6 network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("{s:?}: bad prefix length"))?,
            None => max,
        };
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }

    /// The network a source counts in: /24 for IPv4, /64 for IPv6.
    pub fn network_of(ip: IpAddr) -> Cidr {
        let ip = canonical_ip(ip);
        let prefix = if ip.is_ipv4() { 24 } else { 64 };
        Cidr {
            addr: mask(ip, prefix),
            prefix,
        }
    }

    pub fn host(ip: IpAddr) -> Cidr {
        let ip = canonical_ip(ip);
        Cidr {
            addr: ip,
            prefix: if ip.is_ipv4() { 32 } else { 128 },
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == host {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix as u32)
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix as u32)
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

/// Why an address or domain was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("the address must have the form local@domain")]
    Shape,
    #[error("the local part is empty, too long, or has a character that is not allowed")]
    LocalPart,
    #[error("the domain is not a valid host name (labels of letters, digits and hyphens)")]
    Domain,
}

/// A lower-cased DNS domain name: at least two labels, each 1..=63 of `[a-z0-9-]` not starting or
/// ending with `-`, 253 octets at most. IP literals and trailing dots are refused.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

impl Domain {
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        let lower = s.to_ascii_lowercase();
        if lower.is_empty() || lower.len() > 253 || !lower.contains('.') {
            return Err(AddressError::Domain);
        }
        for label in lower.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(AddressError::Domain);
            }
        }
        // A top-level label made only of digits would make "1.2.3.4" a domain.
        if lower
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(AddressError::Domain);
        }
        Ok(Domain(lower))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Domain({})", self.0)
    }
}

/// An email address `local@domain`. The local part is a dot-atom (RFC 5322 3.2.3) of at most 64
/// octets; UTF-8 is allowed in it (RFC 6531) but quoting is not. Comparison is case-insensitive: the
/// whole address is kept lower-cased, which is how accounts and aliases are looked up.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EmailAddress {
    full: String,
    at: usize,
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_control())
}

impl EmailAddress {
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        let (local, domain) = s.rsplit_once('@').ok_or(AddressError::Shape)?;
        if local.contains('@') {
            return Err(AddressError::Shape);
        }
        // The checks apply to the form that is kept and compared: lower-casing can lengthen a
        // UTF-8 local part ('Ⱦ', 2 octets, becomes 'ⱦ', 3), and a canonical address must parse
        // again (found by the `address` fuzz target, see tests/fuzz_regressions.rs).
        let local = local.to_lowercase();
        if local.is_empty()
            || local.len() > 64
            || local.starts_with('.')
            || local.ends_with('.')
            || local.contains("..")
            || !local.chars().all(|c| c == '.' || is_atext(c))
        {
            return Err(AddressError::LocalPart);
        }
        let domain = Domain::parse(domain)?;
        let full = format!("{local}@{}", domain.as_str());
        Ok(EmailAddress {
            at: local.len(),
            full,
        })
    }

    pub fn local_part(&self) -> &str {
        &self.full[..self.at]
    }

    pub fn domain(&self) -> &str {
        &self.full[self.at + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EmailAddress({})", self.full)
    }
}

/// Whether `sender` matches an allow-from entry: the same address, or "@domain" for any address
/// of that domain (not its subdomains).
pub fn sender_allowed(allow_from: &[String], sender: &str) -> bool {
    let sender = sender.to_ascii_lowercase();
    allow_from.iter().any(|a| {
        let a = a.to_ascii_lowercase();
        match a.strip_prefix('@') {
            Some(domain) => sender.rsplit_once('@').is_some_and(|(_, d)| d == domain),
            None => a == sender,
        }
    })
}

/// A TLS client certificate as SASL EXTERNAL sees it: the SHA-256 of its SubjectPublicKeyInfo
/// (lower-case hex; what `postern user cert add` registers, so a renewed certificate with the
/// same key keeps working) and its validity (Unix times).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    pub key_fingerprint: String,
    pub not_before: i64,
    pub not_after: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_addresses_and_lowercases() {
        let a = EmailAddress::parse("Alice.B+tag@Example.TEST").unwrap();
        assert_eq!(a.as_str(), "alice.b+tag@example.test");
        assert_eq!(a.local_part(), "alice.b+tag");
        assert_eq!(a.domain(), "example.test");
    }

    #[test]
    fn refuses_relay_tricks() {
        for bad in [
            "user@example.test.",
            "user@[127.0.0.1]",
            "user@127.0.0.1",
            "user@remote.test@example.test",
            "\"user@remote\"@example.test",
            "@a.test:user@example.test",
            "user",
            "@example.test",
            "user@",
            ".user@example.test",
            "us..er@example.test",
            "user@-bad.test",
            "user@exa mple.test",
            "user@localhost",
            "us er@example.test",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn percent_hack_is_just_a_local_part() {
        // `user%remote.test@example.test` is a local part containing '%': it never routes anywhere.
        let a = EmailAddress::parse("user%remote.test@example.test").unwrap();
        assert_eq!(a.domain(), "example.test");
    }

    #[test]
    fn allow_from_matching() {
        let allow = vec!["billing@a.test".to_owned(), "@b.test".to_owned()];
        assert!(sender_allowed(&allow, "billing@a.test"));
        assert!(sender_allowed(&allow, "Billing@A.test"));
        assert!(!sender_allowed(&allow, "other@a.test"));
        assert!(sender_allowed(&allow, "anyone@b.test"));
        assert!(!sender_allowed(&allow, "x@sub.b.test"));
        assert!(!sender_allowed(&allow, "x@evilb.test"));
    }
}

/// Line endings as the mail protocols frame them: every bare LF and bare CR becomes CRLF
/// (RFC 5322 2.3: CR and LF appear only together). Borrowed when the text already is so.
///
/// Applied once, where a message enters the store from a source that may not follow the rule
/// (IMAP APPEND), so that stored sizes are the sizes sent; POP3 output applies it again for
/// messages stored before, since a client scanning for CRLF.CRLF would otherwise never see the end.
pub fn crlf(data: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let mut clean = true;
    for (i, &b) in data.iter().enumerate() {
        let bare = match b {
            b'\n' => i == 0 || data[i - 1] != b'\r',
            b'\r' => data.get(i + 1) != Some(&b'\n'),
            _ => false,
        };
        if bare {
            clean = false;
            break;
        }
    }
    if clean {
        return std::borrow::Cow::Borrowed(data);
    }
    let mut out = Vec::with_capacity(data.len() + data.len() / 32 + 2);
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if data.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod crlf_tests {
    use super::crlf;

    #[test]
    fn bare_line_ends_become_crlf() {
        assert!(matches!(crlf(b"a\r\nb\r\n"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(&*crlf(b"a\nb\n.\nc"), b"a\r\nb\r\n.\r\nc");
        assert_eq!(&*crlf(b"a\rb\r\n\n"), b"a\r\nb\r\n\r\n");
        assert_eq!(&*crlf(b"\n"), b"\r\n");
        assert_eq!(&*crlf(b"x\r"), b"x\r\n");
        assert_eq!(&*crlf(b""), b"");
    }
}
