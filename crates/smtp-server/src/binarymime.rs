//! BINARYMIME (RFC 3030 3): a message sent with `BODY=BINARYMIME` (over BDAT only) may carry
//! MIME parts in the `binary` transfer encoding — any octet, no line structure. Postern turns
//! such a message into a plain 8-bit MIME message as it is received: every part whose content is
//! not line-safe (a NUL, a bare CR or LF, a line over 998 octets) is re-encoded in base64, and its
//! Content-Transfer-Encoding says so. Everything after acceptance (the checks, DKIM, the queue,
//! relays that never heard of BINARYMIME, IMAP clients, POP3) then sees an ordinary message;
//! base64 loses nothing, and IMAP's BINARY fetch gives the original octets back.
//!
//! Hand-written over `mail-parser`'s part offsets: no crate converts transfer encodings in place
//! (mail-builder builds messages from scratch, which would rewrite every header).

use mail_parser::{HeaderName, MessageParser, MimeHeaders, PartType};

/// Why a BINARYMIME message cannot be made into an 8-bit one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BinaryProblem {
    /// The header section is not CRLF lines of text (binary content belongs in a body part).
    #[error("binary octets in the header section")]
    Header,
    /// A part declared base64, quoted-printable or 7bit holds binary octets; or binary octets
    /// are outside any part (preamble, epilogue) or inside an attached message.
    #[error("binary octets where the MIME structure allows none")]
    Structure,
}

/// True if `body` is already fit for 8BITMIME: no NUL, CR and LF only as CRLF, lines of at most
/// 998 octets.
fn line_safe(body: &[u8]) -> bool {
    let mut line = 0usize;
    for (i, &b) in body.iter().enumerate() {
        match b {
            0 => return false,
            b'\r' if body.get(i + 1) != Some(&b'\n') => return false,
            b'\n' if i == 0 || body[i - 1] != b'\r' => return false,
            b'\n' => line = 0,
            b'\r' => {}
            _ => {
                line += 1;
                if line > 998 {
                    return false;
                }
            }
        }
    }
    true
}

/// base64 in lines of 76 characters, CRLF between them (RFC 2045 6.8).
fn base64_lines(data: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = Vec::with_capacity(text.len() + text.len() / 38 + 2);
    for (i, chunk) in text.as_bytes().chunks(76).enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(chunk);
    }
    out
}

/// The message with every part that is not line-safe re-encoded in base64. A message that is
/// line-safe already comes back unchanged.
pub fn downgrade(raw: &[u8]) -> Result<Vec<u8>, BinaryProblem> {
    if line_safe(raw) {
        return Ok(raw.to_vec());
    }
    let header_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .ok_or(BinaryProblem::Header)?;
    if !line_safe(&raw[..header_end]) {
        return Err(BinaryProblem::Header);
    }
    let msg = MessageParser::new()
        .parse(raw)
        .ok_or(BinaryProblem::Structure)?;
    // (start, end, replacement) edits of `raw`, applied in order
    let mut edits: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    for part in &msg.parts {
        let (start, end) = (part.offset_body as usize, part.offset_end as usize);
        let Some(body) = raw.get(start..end) else {
            return Err(BinaryProblem::Structure);
        };
        match &part.body {
            PartType::Multipart(_) => continue,
            PartType::Message(_) if !line_safe(body) => return Err(BinaryProblem::Structure),
            PartType::Message(_) => continue,
            _ => {}
        }
        if line_safe(body) {
            continue;
        }
        // the part's own header lines must be text lines: they are rewritten below
        if !raw
            .get(part.offset_header as usize..start)
            .is_some_and(line_safe)
        {
            return Err(BinaryProblem::Structure);
        }
        let cte = part
            .headers
            .iter()
            .find(|h| h.name == HeaderName::ContentTransferEncoding);
        let declared = part
            .content_transfer_encoding()
            .map(|c| c.trim().to_ascii_lowercase());
        if !matches!(declared.as_deref(), None | Some("binary") | Some("8bit")) {
            return Err(BinaryProblem::Structure);
        }
        match cte {
            // the value (after "Content-Transfer-Encoding:") up to the end of its line
            Some(h) => {
                let (vs, ve) = (h.offset_start as usize, h.offset_end as usize);
                let line_end = raw[vs..]
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .map_or(ve, |p| vs + p);
                edits.push((vs, line_end.max(vs), b" base64".to_vec()));
            }
            None => {
                // a new header line at the end of the part's header section
                let at = (part.offset_header as usize..start)
                    .rev()
                    .find(|&i| raw.get(i..i + 4) == Some(b"\r\n\r\n"))
                    .map(|i| i + 2)
                    .ok_or(BinaryProblem::Structure)?;
                edits.push((at, at, b"Content-Transfer-Encoding: base64\r\n".to_vec()));
            }
        }
        let mut encoded = base64_lines(body);
        if end == raw.len() {
            encoded.extend_from_slice(b"\r\n");
        }
        edits.push((start, end, encoded));
    }
    edits.sort_by_key(|e| (e.0, e.1));
    let mut out = Vec::with_capacity(raw.len() * 4 / 3 + 1024);
    let mut at = 0;
    for (s, e, r) in edits {
        if s < at {
            return Err(BinaryProblem::Structure);
        }
        out.extend_from_slice(&raw[at..s]);
        out.extend_from_slice(&r);
        at = e;
    }
    out.extend_from_slice(&raw[at..]);
    // whatever is left outside the parts (preamble, epilogue, boundaries) must be line-safe
    if !line_safe(&out) {
        return Err(BinaryProblem::Structure);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded_parts(raw: &[u8]) -> Vec<Vec<u8>> {
        let m = MessageParser::new().parse(raw).unwrap();
        m.parts
            .iter()
            .filter(|p| !matches!(p.body, PartType::Multipart(_)))
            .map(|p| p.contents().to_vec())
            .collect()
    }

    #[test]
    fn binary_parts_become_base64_and_decode_to_the_same_octets() {
        let blob: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let mut raw = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: bin\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n".to_vec();
        raw.extend_from_slice(&blob);
        raw.extend_from_slice(
            b"\r\n--XX\r\nContent-Type: application/x-raw\r\n\r\n\x00\x01\n\r\x02",
        );
        raw.extend_from_slice(b"\r\n--XX--\r\n");
        let out = downgrade(&raw).unwrap();
        assert!(line_safe(&out), "{}", String::from_utf8_lossy(&out));
        let parts = decoded_parts(&out);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], b"hello");
        assert_eq!(parts[1], blob);
        assert_eq!(parts[2], b"\x00\x01\n\r\x02");
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains("Content-Transfer-Encoding: base64\r\n\r\n"),
            "{text}"
        );
        assert!(!text.contains("binary"), "{text}");
        // headers outside the converted parts are untouched
        assert!(text.starts_with("From: a@example.test\r\nTo: b@example.test\r\nSubject: bin\r\n"));
    }

    #[test]
    fn a_single_part_binary_message() {
        let mut raw = b"From: a@example.test\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: BINARY\r\n\r\n".to_vec();
        raw.extend_from_slice(b"\x89PNG\r\n\x1a\n\x00\x00");
        let out = downgrade(&raw).unwrap();
        assert!(line_safe(&out) && out.ends_with(b"\r\n"));
        assert_eq!(
            decoded_parts(&out),
            vec![b"\x89PNG\r\n\x1a\n\x00\x00".to_vec()]
        );
    }

    #[test]
    fn line_safe_messages_are_unchanged_and_bad_structure_is_refused() {
        let plain = b"From: a@example.test\r\n\r\nline\r\n".to_vec();
        assert_eq!(downgrade(&plain).unwrap(), plain);
        // binary octets in the header section
        assert_eq!(
            downgrade(b"From: a\x00@example.test\r\n\r\nx\r\n"),
            Err(BinaryProblem::Header)
        );
        // a part that says base64 but holds binary
        let mut raw = b"From: a@example.test\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
        raw.extend_from_slice(b"\x00\x01");
        assert_eq!(downgrade(&raw), Err(BinaryProblem::Structure));
        // a bare LF in a binary part's header lines (found by the fuzz target)
        let raw = b"From: a@example.test\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Transfer-Encoding: binary\n\r\n\r\r\n\r\n\x00\x01\n\r\x02\r\n--b--\r\n";
        assert_eq!(downgrade(raw), Err(BinaryProblem::Structure));
        // a line over 998 octets in an 8bit part is folded into base64
        let mut raw = b"From: a@example.test\r\nContent-Transfer-Encoding: 8bit\r\n\r\n".to_vec();
        raw.extend(std::iter::repeat_n(b'x', 2000));
        raw.extend_from_slice(b"\r\n");
        let out = downgrade(&raw).unwrap();
        assert!(line_safe(&out));
        let mut want = vec![b'x'; 2000];
        want.extend_from_slice(b"\r\n");
        assert_eq!(decoded_parts(&out), vec![want]);
    }
}
