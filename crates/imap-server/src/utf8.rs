//! UTF8=ACCEPT (RFC 6855) input that imap-codec does not parse.

/// RFC 6855 4: `APPEND mailbox [flags] [date] UTF8 (~{n}\r\n<message>)`, the form a
/// UTF8=ACCEPT client uses for a message with UTF-8 headers. imap-codec does not parse it, so
/// the `UTF8 (` and its `)` are cut away, leaving the plain literal8 APPEND it means. None when
/// the command is not such an APPEND.
pub fn unwrap_append(cmd: &[u8]) -> Option<Vec<u8>> {
    let eol = cmd.windows(2).position(|w| w == b"\r\n")?;
    let line = &cmd[..eol];
    let mut words = line.splitn(3, |&b| b == b' ');
    let (_tag, name) = (words.next()?, words.next()?);
    if !name.eq_ignore_ascii_case(b"APPEND") {
        return None;
    }
    let open = line
        .windows(7)
        .rposition(|w| w.eq_ignore_ascii_case(b"UTF8 (~"))?;
    let announce = &line[open + 6..];
    let digits = announce.strip_prefix(b"~{")?.strip_suffix(b"}")?;
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let data_end = eol.checked_add(2)?.checked_add(n)?;
    if cmd.get(data_end) != Some(&b')') {
        return None;
    }
    let mut out = Vec::with_capacity(cmd.len());
    out.extend_from_slice(&cmd[..open]);
    out.extend_from_slice(&cmd[open + 6..data_end]);
    out.extend_from_slice(&cmd[data_end + 1..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_append_unwrapped() {
        let got = unwrap_append(b"a APPEND INBOX (\\Seen) UTF8 (~{4}\r\nh\xc3\xa9l)\r\n");
        assert_eq!(
            got.as_deref(),
            Some(&b"a APPEND INBOX (\\Seen) ~{4}\r\nh\xc3\xa9l\r\n"[..])
        );
        let plus = unwrap_append(b"a append Sent utf8 (~{2+}\r\nhi)\r\n");
        assert_eq!(plus.as_deref(), Some(&b"a append Sent ~{2+}\r\nhi\r\n"[..]));
        // not closed, a plain APPEND, another command: untouched
        assert!(unwrap_append(b"a APPEND INBOX UTF8 (~{2}\r\nhi\r\n").is_none());
        assert!(unwrap_append(b"a APPEND INBOX {2}\r\nhi\r\n").is_none());
        assert!(unwrap_append(b"a SEARCH UTF8 (~{2}\r\nhi)\r\n").is_none());
        assert!(unwrap_append(b"a APPEND INBOX UTF8 (~{99999999999999999999}\r\n)").is_none());
    }
}
