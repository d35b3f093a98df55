//! Response encoding. Hand-written rather than built from `imap-types` response values: FETCH
//! answers stream message bytes straight from the blob store as literals, and building the typed
//! response tree (envelopes, body structures) for every message would cost an allocation per field
//! for nothing. The helpers here are the only places that decide between atom, quoted string,
//! literal and NIL, so every string a client sees is encoded by the same rules (RFC 3501 4.3, 9).

/// Appends `s` as an IMAP string: quoted if it is short 7-bit text without CR/LF, else a literal.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    let quotable = s.len() <= 1024
        && s.iter()
            .all(|&b| b != b'\r' && b != b'\n' && b != 0 && b < 0x80);
    if quotable {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, s);
    }
}

/// Appends `s` as a synchronizing-free server literal `{n}\r\n<bytes>`.
pub fn literal(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
    out.extend_from_slice(s);
}

/// BINARY's data (RFC 3516 4.2): a literal8 (`~{n}`) when it holds a NUL, which a plain
/// literal may not, or when an encoding was undone and 8-bit octets came out (as Dovecot
/// answers); otherwise a plain literal, which every client reads.
pub fn literal8(out: &mut Vec<u8>, s: &[u8], decoded: bool) {
    if s.contains(&0) || (decoded && s.iter().any(|&b| b >= 0x80)) {
        out.push(b'~');
    }
    literal(out, s);
}

/// An nstring: NIL or a string.
pub fn nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// A mailbox name for LIST/STATUS replies, quoted. Names are checked to hold no control
/// characters, and only UTF8=ACCEPT or IMAP4rev2 clients get 8-bit ones (as RFC 6855 3's
/// quoted UTF-8, which such clients read); others see modified UTF-7 names made by the session.
pub fn mailbox(out: &mut Vec<u8>, name: &str) {
    if name.eq_ignore_ascii_case("INBOX") {
        out.extend_from_slice(b"INBOX");
    } else if name.len() <= 1024 && !name.chars().any(char::is_control) {
        out.push(b'"');
        for &b in name.as_bytes() {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        string(out, name.as_bytes());
    }
}

/// RFC 3501 date-time: "dd-Mon-yyyy hh:mm:ss +zzzz" (UTC).
pub fn internal_date(ts: i64) -> String {
    use chrono::TimeZone;
    let dt = chrono::Utc
        .timestamp_opt(ts, 0)
        .single()
        .unwrap_or_else(|| chrono::Utc.timestamp_opt(0, 0).unwrap());
    dt.format("%d-%b-%Y %H:%M:%S +0000").to_string()
}

/// Encodes a Unicode mailbox name in modified UTF-7 (RFC 3501 5.1.3).
pub fn utf7_encode(name: &str) -> String {
    let mut out = String::new();
    let mut pending: Vec<u16> = Vec::new();
    let flush = |out: &mut String, pending: &mut Vec<u16>| {
        if pending.is_empty() {
            return;
        }
        let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
        use base64::Engine;
        let enc = base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes);
        out.push('&');
        out.push_str(&enc.replace('/', ","));
        out.push('-');
        pending.clear();
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut out, &mut pending);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut out, &mut pending);
    out
}

/// Decodes a modified UTF-7 mailbox name; None if it is not valid modified UTF-7.
pub fn utf7_decode(name: &str) -> Option<String> {
    use base64::Engine;
    let mut out = String::new();
    let mut rest = name;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let end = after.find('-')?;
        let chunk = &after[..end];
        if chunk.is_empty() {
            out.push('&');
        } else {
            let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(chunk.replace(',', "/"))
                .ok()?;
            if bytes.len() % 2 != 0 {
                return None;
            }
            let units: Vec<u16> = bytes
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            out.push_str(&String::from_utf16(&units).ok()?);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if out.chars().any(|c| c.is_control()) {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings() {
        let mut o = Vec::new();
        string(&mut o, b"a \"b\" \\");
        assert_eq!(o, b"\"a \\\"b\\\" \\\\\"");
        o.clear();
        string(&mut o, b"x\r\ny");
        assert_eq!(o, b"{4}\r\nx\r\ny");
        o.clear();
        nstring(&mut o, None);
        assert_eq!(o, b"NIL");
    }

    #[test]
    fn utf7() {
        // RFC 3501 5.1.3 example
        assert_eq!(
            utf7_encode("~peter/mail/台北/日本語"),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        );
        assert_eq!(
            utf7_decode("~peter/mail/&U,BTFw-/&ZeVnLIqe-").unwrap(),
            "~peter/mail/台北/日本語"
        );
        assert_eq!(utf7_encode("a&b"), "a&-b");
        assert_eq!(utf7_decode("a&-b").unwrap(), "a&b");
        assert!(utf7_decode("&Jjo").is_none());
        assert!(utf7_decode("&AAA-").is_none());
    }

    #[test]
    fn dates() {
        assert_eq!(internal_date(0), "01-Jan-1970 00:00:00 +0000");
    }
}
