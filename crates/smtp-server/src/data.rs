//! The DATA reader (RFC 5321 4.1.1.4, 4.5.2): a push parser that finds the end of the message and
//! undoes dot-stuffing, written to be immune to SMTP smuggling.
//!
//! Hand-written rather than smtp-proto's `DataReceiver` because the smuggling policy is the point:
//! the end of data is recognised **only** as `<CRLF>.<CRLF>` (the CRLF that ended the DATA command
//! counts as the first one). A bare LF or a bare CR never ends a line, so `\n.\n`, `\n.\r\n`,
//! `\r.\r\n` and friends stay inside the one message, which is then refused as a whole because it
//! contains bare line endings. Bytes after the end stay unread for the next command (pipelining).
//! Memory is bounded: beyond `max_size` octets the body is no longer kept, only scanned for the end.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF).
    LineStart,
    /// Inside a line.
    Text,
    /// After a CR inside a line.
    Cr,
    /// After a '.' at the start of a line.
    Dot,
    /// After ".\r" at the start of a line.
    DotCr,
}

/// What was wrong with a complete message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProblem {
    TooBig,
    BareLineEnding,
    Nul,
}

/// Checks a message that arrived in BDAT chunks (RFC 3030): the length delimits it, so there is
/// no end marker to confuse, but the same content rules as DATA apply (no bare CR or LF, no NUL).
/// A BINARYMIME message meets them after `binarymime::downgrade` re-encoded its binary parts.
pub fn check_chunked(body: &[u8]) -> Result<(), DataProblem> {
    let mut prev = 0u8;
    for (i, &b) in body.iter().enumerate() {
        match b {
            0 => return Err(DataProblem::Nul),
            b'\n' if prev != b'\r' => return Err(DataProblem::BareLineEnding),
            b'\r' if body.get(i + 1).is_some_and(|&n| n != b'\n') => {
                return Err(DataProblem::BareLineEnding)
            }
            _ => {}
        }
        prev = b;
    }
    if body.last() == Some(&b'\r') {
        return Err(DataProblem::BareLineEnding);
    }
    Ok(())
}

#[derive(Debug)]
pub struct DataReader {
    state: State,
    body: Vec<u8>,
    max_size: usize,
    size: usize,
    bare: bool,
    nul: bool,
}

impl DataReader {
    pub fn new(max_size: usize) -> Self {
        DataReader {
            state: State::LineStart,
            body: Vec::with_capacity(8192.min(max_size)),
            max_size,
            size: 0,
            bare: false,
            nul: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len());
        if self.size <= self.max_size {
            self.body.extend_from_slice(bytes);
        } else if self.body.capacity() > 0 {
            // over the cap: the message will be refused, so its bytes are not kept
            self.body = Vec::new();
        }
    }

    /// Consumes input up to and including the end-of-data marker. Returns the number of bytes used
    /// and whether the end was reached; unused bytes belong to whatever follows DATA.
    pub fn feed(&mut self, input: &[u8]) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            if b == 0 {
                self.nul = true;
            }
            match self.state {
                State::LineStart | State::Text => match b {
                    b'.' if self.state == State::LineStart => self.state = State::Dot,
                    b'\r' => self.state = State::Cr,
                    b'\n' => {
                        self.bare = true;
                        self.push(b"\n");
                        self.state = State::Text;
                    }
                    _ => {
                        self.push(&[b]);
                        self.state = State::Text;
                    }
                },
                State::Cr => {
                    if b == b'\n' {
                        self.push(b"\r\n");
                        self.state = State::LineStart;
                    } else {
                        self.bare = true;
                        self.push(b"\r");
                        self.state = State::Text;
                        i -= 1; // look at this byte again as text
                    }
                }
                State::Dot => {
                    if b == b'\r' {
                        self.state = State::DotCr;
                    } else {
                        // RFC 5321 4.5.2: a leading dot followed by more text is removed.
                        self.state = State::Text;
                        i -= 1;
                    }
                }
                State::DotCr => {
                    if b == b'\n' {
                        return (i, true);
                    }
                    // ".\rX": the dot is stuffing; the CR is bare.
                    self.bare = true;
                    self.push(b"\r");
                    self.state = State::Text;
                    i -= 1;
                }
            }
        }
        (i, false)
    }

    /// The message (CRLF line endings, dot-stuffing removed), or why it must be refused.
    pub fn finish(self) -> Result<Vec<u8>, DataProblem> {
        if self.size > self.max_size {
            Err(DataProblem::TooBig)
        } else if self.nul {
            Err(DataProblem::Nul)
        } else if self.bare {
            Err(DataProblem::BareLineEnding)
        } else {
            Ok(self.body)
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_content_rules() {
        assert!(check_chunked(b"Subject: x\r\n\r\nbody\r\n.\r\nstill body\r\n").is_ok());
        assert!(check_chunked(b"no final line ending").is_ok());
        assert_eq!(check_chunked(b"a\nb\r\n"), Err(DataProblem::BareLineEnding));
        assert_eq!(check_chunked(b"a\rb\r\n"), Err(DataProblem::BareLineEnding));
        assert_eq!(check_chunked(b"a\r\n\r"), Err(DataProblem::BareLineEnding));
        assert_eq!(check_chunked(b"a\0\r\n"), Err(DataProblem::Nul));
        assert_eq!(check_chunked(b"\n.\n"), Err(DataProblem::BareLineEnding));
    }

    /// Feeds `input` in chunks of every size, checking the result does not depend on chunking.
    fn run(input: &[u8], max: usize) -> (Result<Vec<u8>, DataProblem>, usize, bool) {
        let mut first = None;
        for chunk in 1..=input.len().max(1) {
            let mut r = DataReader::new(max);
            let mut used = 0;
            let mut done = false;
            for piece in input.chunks(chunk) {
                let (n, d) = r.feed(piece);
                used += n;
                if d {
                    done = true;
                    break;
                }
            }
            let res = (r.finish(), used, done);
            if let Some(f) = &first {
                assert_eq!(f, &res, "chunk size {chunk} changed the result");
            } else {
                first = Some(res);
            }
        }
        first.unwrap()
    }

    #[test]
    fn plain_message_and_dot_unstuffing() {
        let (body, used, done) = run(b"Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n", 1000);
        assert!(done);
        assert_eq!(used, b"Subject: x\r\n\r\n..leading dot\r\n.\r\n".len());
        assert_eq!(body.unwrap(), b"Subject: x\r\n\r\n.leading dot\r\n");
    }

    #[test]
    fn empty_message() {
        let (body, used, done) = run(b".\r\n", 10);
        assert!(done);
        assert_eq!(used, 3);
        assert_eq!(body.unwrap(), b"");
    }

    /// Every known smuggling variant: the fake end never ends the message, the pipelined commands
    /// after it stay inside the message, and the message is refused for its bare line ending.
    #[test]
    fn smuggling_variants_never_split_the_message() {
        let fake_ends: &[&[u8]] = &[
            b"\n.\n",
            b"\n.\r\n",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\r\n.\n",
            b"\r\n\x00.\r\n",
            b"\n.\r",
            b"\r.\r",
            b"\r.\n",
        ];
        for fake in fake_ends {
            let mut input = b"Subject: one\r\n\r\nhello".to_vec();
            input.extend_from_slice(fake);
            input.extend_from_slice(b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nsmuggled\r\n.\r\n");
            let (body, used, done) = run(&input, 10_000);
            assert!(done, "{fake:?}");
            assert_eq!(
                used,
                input.len(),
                "{fake:?}: the end must be the real <CRLF>.<CRLF>"
            );
            let problem = body.unwrap_err();
            assert!(
                problem == DataProblem::BareLineEnding || problem == DataProblem::Nul,
                "{fake:?}: {problem:?}"
            );
        }
    }

    #[test]
    fn size_cap_keeps_scanning_without_buffering() {
        let mut input = vec![b'a'; 5000];
        input.extend_from_slice(b"\r\n.\r\n");
        let mut r = DataReader::new(100);
        let (n, done) = r.feed(&input);
        assert!(done);
        assert_eq!(n, input.len());
        assert!(r.body.len() <= 100);
        assert_eq!(r.finish().unwrap_err(), DataProblem::TooBig);
    }

    #[test]
    fn past_the_cap_what_was_kept_is_freed() {
        let mut r = DataReader::new(1000);
        r.feed(&[b'a'; 900]);
        assert_eq!(r.body.len(), 900);
        r.feed(&[b'a'; 200]);
        assert_eq!(
            r.body.capacity(),
            0,
            "an oversized message's bytes are not kept"
        );
        assert_eq!(r.size(), 1100);
        let (_, done) = r.feed(b"\r\n.\r\n");
        assert!(done);
        assert_eq!(r.finish().unwrap_err(), DataProblem::TooBig);
    }

    #[test]
    fn dot_at_line_start_then_cr_text() {
        // ".\rX" inside a message: not an end, bare CR.
        let (body, _, done) = run(b"a\r\n.\rX\r\n.\r\n", 100);
        assert!(done);
        assert_eq!(body.unwrap_err(), DataProblem::BareLineEnding);
    }
}
