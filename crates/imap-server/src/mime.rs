//! Message structure for FETCH: ENVELOPE, BODYSTRUCTURE, BODY[section] and BINARY[section]
//! (RFC 3501 6.4.5, 7.4.2; RFC 3516), and the header fields SORT and THREAD use, computed from `mail-parser`'s part tree and byte offsets. Section bytes are always sliced from
//! the stored message, never re-encoded, so BODY[] is byte for byte what was delivered.

use mail_parser::{Address, Message, MessageParser, MimeHeaders, PartType};

use crate::wire::{nstring, string};

/// A parsed message plus the bytes it was parsed from.
pub struct Parsed<'a> {
    raw: &'a [u8],
    msg: Option<Message<'a>>,
}

/// Where a section points to: a part of some (possibly nested) message.
#[derive(Clone, Copy)]
struct Node<'m, 'a> {
    msg: &'m Message<'a>,
    idx: usize,
}

impl<'m, 'a> Node<'m, 'a> {
    fn part(&self) -> &'m mail_parser::MessagePart<'a> {
        &self.msg.parts[self.idx]
    }
}

/// A Content-Transfer-Encoding BINARY cannot undo (RFC 3516 4.3: `NO [UNKNOWN-CTE]`), or
/// content that is not valid in its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownCte;

/// What BODY[...] asks for after the part path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// The whole message or, with a path, the part's content.
    Full,
    Header,
    HeaderFields(Vec<String>),
    HeaderFieldsNot(Vec<String>),
    Text,
    Mime,
}

impl<'a> Parsed<'a> {
    pub fn new(raw: &'a [u8]) -> Parsed<'a> {
        let msg = MessageParser::default().parse(raw);
        Parsed { raw, msg }
    }

    fn root(&self) -> Option<Node<'_, 'a>> {
        self.msg.as_ref().map(|m| Node { msg: m, idx: 0 })
    }

    /// The bytes of a section, or None if the section does not exist (the reply is then empty,
    /// as other servers do, rather than an error for the whole FETCH).
    pub fn section(&self, path: &[u32], spec: &Spec) -> Option<Vec<u8>> {
        let Some(root) = self.root() else {
            // Not parseable as a message at all: treat it as a body without a header.
            return match (path, spec) {
                ([], Spec::Full | Spec::Text) | ([1], Spec::Full) => Some(self.raw.to_vec()),
                ([], Spec::Header | Spec::HeaderFields(_) | Spec::HeaderFieldsNot(_)) => {
                    Some(b"\r\n".to_vec())
                }
                _ => None,
            };
        };
        if path.is_empty() {
            return match spec {
                Spec::Full => Some(self.raw.to_vec()),
                Spec::Mime => None,
                _ => message_section(root, spec),
            };
        }
        let mut node = message_part(root, path[0])?;
        for &n in &path[1..] {
            node = child(node, n)?;
        }
        match spec {
            Spec::Full => Some(body_bytes(node).to_vec()),
            Spec::Mime => Some(header_bytes(node).to_vec()),
            _ => match &node.part().body {
                PartType::Message(nested) => message_section(
                    Node {
                        msg: nested,
                        idx: 0,
                    },
                    spec,
                ),
                _ => None,
            },
        }
    }

    /// BINARY[section] (RFC 3516): the section's content with its Content-Transfer-Encoding
    /// undone (base64, quoted-printable; 7bit, 8bit and binary as they are), no charset
    /// conversion; true beside it when an encoding was undone. `Ok(None)` if the section does
    /// not exist, `Err` for an encoding the server cannot undo (`NO [UNKNOWN-CTE]`).
    pub fn binary_section(&self, path: &[u32]) -> Result<Option<(Vec<u8>, bool)>, UnknownCte> {
        let Some(root) = self.root() else {
            return Ok(matches!(path, [] | [1]).then(|| (self.raw.to_vec(), false)));
        };
        let Some((&first, rest)) = path.split_first() else {
            return Ok(Some((self.raw.to_vec(), false)));
        };
        let Some(mut node) = message_part(root, first) else {
            return Ok(None);
        };
        for &n in rest {
            match child(node, n) {
                Some(c) => node = c,
                None => return Ok(None),
            }
        }
        let body = body_bytes(node);
        let part = node.part();
        if matches!(part.body, PartType::Multipart(_)) {
            return Ok(Some((body.to_vec(), false)));
        }
        let cte = part
            .content_transfer_encoding()
            .unwrap_or("7bit")
            .trim()
            .to_ascii_lowercase();
        match cte.as_str() {
            "7bit" | "8bit" | "binary" => Ok(Some((body.to_vec(), false))),
            "base64" => mail_parser::decoders::base64::base64_decode(body)
                .map(|d| Some((d, true)))
                .ok_or(UnknownCte),
            "quoted-printable" => {
                mail_parser::decoders::quoted_printable::quoted_printable_decode(body)
                    .map(|d| Some((d, true)))
                    .ok_or(UnknownCte)
            }
            _ => Err(UnknownCte),
        }
    }

    /// The ENVELOPE of the top-level message.
    pub fn envelope(&self, out: &mut Vec<u8>) {
        match &self.msg {
            Some(m) => envelope(out, m),
            None => out.extend_from_slice(b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"),
        }
    }

    /// BODYSTRUCTURE (`extended`) or BODY.
    pub fn body_structure(&self, out: &mut Vec<u8>, extended: bool) {
        match self.root() {
            Some(root) => {
                let mut budget = MAX_STRUCTURE_PARTS;
                structure(out, root, extended, 0, &mut budget)
            }
            None => {
                out.extend_from_slice(
                    b"(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" ",
                );
                out.extend_from_slice(
                    format!("{} {})", self.raw.len(), count_lines(self.raw)).as_bytes(),
                );
            }
        }
    }

    /// Header field value (unfolded, raw) of the top-level message, for SEARCH HEADER/SUBJECT...
    pub fn header_text(&self, name: &str) -> Option<String> {
        let m = self.msg.as_ref()?;
        let mut all = String::new();
        for h in m.parts.first()?.headers.iter() {
            if h.name.as_str().eq_ignore_ascii_case(name) {
                let raw = &self.raw[h.offset_start as usize..h.offset_end as usize];
                if !all.is_empty() {
                    all.push(' ');
                }
                all.push_str(
                    &String::from_utf8_lossy(raw)
                        .replace("\r\n", "")
                        .replace('\n', ""),
                );
            }
        }
        if all.is_empty()
            && !m.parts[0]
                .headers
                .iter()
                .any(|h| h.name.as_str().eq_ignore_ascii_case(name))
        {
            return None;
        }
        Some(all)
    }

    /// Decoded text of every text part, for SEARCH BODY/TEXT.
    pub fn body_text(&self) -> String {
        let Some(m) = &self.msg else {
            return String::from_utf8_lossy(self.raw).into_owned();
        };
        let mut out = String::new();
        for p in &m.parts {
            match &p.body {
                PartType::Text(t) | PartType::Html(t) => {
                    out.push_str(t);
                    out.push('\n');
                }
                _ => {}
            }
        }
        out
    }

    /// The header block of the top-level message as text, for SEARCH TEXT.
    pub fn header_block(&self) -> String {
        let end = self
            .msg
            .as_ref()
            .map_or(0, |m| m.parts[0].offset_body as usize)
            .min(self.raw.len());
        String::from_utf8_lossy(&self.raw[..end]).into_owned()
    }

    /// The Date header as a Unix timestamp, for SENTBEFORE/SENTON/SENTSINCE.
    pub fn sent_date(&self) -> Option<chrono::NaiveDate> {
        // RFC 3501 6.4.4: the Date: header's own date, "disregarding time and timezone" (not the
        // UTC day of that instant)
        let d = self.msg.as_ref()?.date()?;
        chrono::NaiveDate::from_ymd_opt(d.year.into(), d.month.into(), d.day.into())
    }

    /// The header fields SORT and THREAD use (RFC 5256, 5957), into `f`; `sent` stays as the
    /// caller set it (the arrival) when the Date: header is missing or invalid.
    pub fn sort_fields(&self, f: &mut crate::sort::Fields) {
        let Some(m) = &self.msg else {
            return;
        };
        if let Some(d) = m.date().filter(|d| d.is_valid()) {
            f.sent = d.to_timestamp();
        }
        f.subject = m.subject().unwrap_or_default().to_owned();
        let first = |a: Option<&Address<'_>>| -> (String, String) {
            // a group comes first as its name, as in ENVELOPE (RFC 3501 7.4.2: the group's
            // start is an address whose mailbox is the group name)
            if let Some(Address::Group(g)) = a {
                if let Some(name) = g.first().and_then(|g| g.name.as_deref()) {
                    return (name.to_owned(), name.to_owned());
                }
            }
            let Some(a) = a.and_then(|a| a.first()) else {
                return (String::new(), String::new());
            };
            let spec = a.address.as_deref().unwrap_or_default();
            let mailbox = spec.split('@').next().unwrap_or_default().to_owned();
            let display = match a.name.as_deref().map(str::trim) {
                Some(n) if !n.is_empty() => n.to_owned(),
                _ => spec.to_owned(),
            };
            (mailbox, display)
        };
        (f.from, f.display_from) = first(m.from());
        (f.to, f.display_to) = first(m.to());
        f.cc = first(m.cc()).0;
        f.message_id = m.message_id().map(str::to_owned);
        let ids = |v: &mail_parser::HeaderValue<'_>| -> Vec<String> {
            match v {
                mail_parser::HeaderValue::Text(t) => vec![t.to_string()],
                mail_parser::HeaderValue::TextList(l) => l.iter().map(|t| t.to_string()).collect(),
                _ => Vec::new(),
            }
        };
        f.references = ids(m.references());
        if f.references.is_empty() {
            f.references = ids(m.in_reply_to()).into_iter().take(1).collect();
        }
    }

    /// An address header for SEARCH FROM/TO/CC/BCC: its raw text, then every address decoded
    /// ("Name <a@b>", encoded words decoded, group names and members), so that a search matches
    /// the display name as the user sees it as well as the address.
    pub fn address_text(&self, name: &str) -> Option<String> {
        let mut out = self.header_text(name)?;
        let m = self.msg.as_ref()?;
        let mut push = |a: &mail_parser::Addr<'_>| {
            if let Some(n) = &a.name {
                out.push(' ');
                out.push_str(n);
            }
            if let Some(x) = &a.address {
                out.push_str(" <");
                out.push_str(x);
                out.push('>');
            }
        };
        for h in m.parts.first()?.headers.iter() {
            if !h.name.as_str().eq_ignore_ascii_case(name) {
                continue;
            }
            match &h.value {
                mail_parser::HeaderValue::Address(Address::List(l)) => l.iter().for_each(&mut push),
                mail_parser::HeaderValue::Address(Address::Group(g)) => {
                    for group in g {
                        if let Some(n) = &group.name {
                            push(&mail_parser::Addr {
                                name: Some(n.clone()),
                                address: None,
                            });
                        }
                        group.addresses.iter().for_each(&mut push);
                    }
                }
                _ => {}
            }
        }
        Some(out)
    }
}

/// The length of the header section with its blank line (CRLF or bare LF), or the whole
/// message when it has no body: what SORT and THREAD parse, never the body.
pub fn header_end(raw: &[u8]) -> usize {
    let crlf = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = raw.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(raw.len()),
    }
}

/// The parts of a multipart that can be walked into. mail-parser (0.11) can return a part list
/// that points back at the multipart itself or at its parents (found by fuzzing: a 305-byte
/// message made BODYSTRUCTURE grow past 4 GB, `tests/fuzz_regressions/oom-25107ae7…`); a real
/// child always comes after its parent in `parts`, so anything else is skipped.
fn children<'i>(node: Node<'_, '_>, ids: &'i [u32]) -> impl Iterator<Item = usize> + 'i {
    let (me, len) = (node.idx, node.msg.parts.len());
    ids.iter()
        .map(|&id| id as usize)
        .filter(move |&id| id > me && id < len)
}

/// Most parts one BODYSTRUCTURE describes; past it a part is described as empty text. Bounds
/// the work and the output however the part lists are linked.
const MAX_STRUCTURE_PARTS: usize = 5000;

/// Part `n` of a message (RFC 3501 6.4.5): a part of its multipart body, or, when its body is a
/// single part (a message/rfc822 one included), 1 = that body. As Dovecot numbers it: in a
/// message whose body is message/rfc822, BODY[1] is the whole encapsulated message and 1.2 is
/// part 2 of that message.
fn message_part<'m, 'a>(msg: Node<'m, 'a>, n: u32) -> Option<Node<'m, 'a>> {
    match &msg.part().body {
        PartType::Multipart(ids) => nth_part(msg, ids, n),
        _ if n == 1 => Some(msg),
        _ => None,
    }
}

/// Part `n` (from 1) of a multipart node.
fn nth_part<'m, 'a>(node: Node<'m, 'a>, ids: &[u32], n: u32) -> Option<Node<'m, 'a>> {
    let i = (n as usize).checked_sub(1)?;
    children(node, ids).nth(i).map(|id| Node {
        msg: node.msg,
        idx: id,
    })
}

/// Part `n` below a part: of a multipart, or of the message a message/rfc822 part holds.
fn child<'m, 'a>(node: Node<'m, 'a>, n: u32) -> Option<Node<'m, 'a>> {
    if n == 0 {
        return None;
    }
    match &node.part().body {
        PartType::Multipart(ids) => nth_part(node, ids, n),
        PartType::Message(nested) => message_part(
            Node {
                msg: nested,
                idx: 0,
            },
            n,
        ),
        // a single part's part 1 is itself (Dovecot and Cyrus answer BODY[2.1] so)
        _ if n == 1 => Some(node),
        _ => None,
    }
}

fn raw_of<'m>(node: Node<'m, '_>) -> &'m [u8] {
    node.msg.raw_message.as_ref()
}

fn slice(raw: &[u8], a: u32, b: u32) -> &[u8] {
    let (a, b) = (a as usize, b as usize);
    raw.get(a.min(raw.len())..b.min(raw.len()))
        .unwrap_or_default()
}

/// The MIME header block of a part, including the blank line that ends it.
fn header_bytes<'m>(node: Node<'m, '_>) -> &'m [u8] {
    let p = node.part();
    slice(raw_of(node), p.offset_header, p.offset_body)
}

fn body_bytes<'m>(node: Node<'m, '_>) -> &'m [u8] {
    let p = node.part();
    slice(raw_of(node), p.offset_body, p.offset_end)
}

/// HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT of a message whose root part is `root`.
fn message_section(root: Node<'_, '_>, spec: &Spec) -> Option<Vec<u8>> {
    let header = header_bytes(root);
    match spec {
        Spec::Header => Some(header.to_vec()),
        Spec::Text => Some(body_bytes(root).to_vec()),
        Spec::HeaderFields(names) => Some(filter_headers(header, names, true)),
        Spec::HeaderFieldsNot(names) => Some(filter_headers(header, names, false)),
        Spec::Full | Spec::Mime => None,
    }
}

/// Keeps (or drops) the header fields named in `names`, with their continuation lines; always
/// ends with the blank line (RFC 3501 6.4.5).
pub fn filter_headers(header: &[u8], names: &[String], keep: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut include = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            let name_end = line.iter().position(|&b| b == b':').unwrap_or(line.len());
            let name = String::from_utf8_lossy(&line[..name_end]);
            let listed = names.iter().any(|n| n.eq_ignore_ascii_case(name.trim()));
            include = listed == keep;
        }
        if include {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn count_lines(b: &[u8]) -> usize {
    // line ends, as Dovecot and Cyrus count: a part's last line before its boundary has none
    // (the CRLF before a boundary belongs to the boundary, RFC 2046 5.1.1)
    b.iter().filter(|&&c| c == b'\n').count()
}

fn upper_quoted(out: &mut Vec<u8>, s: &str) {
    string(out, s.to_ascii_uppercase().as_bytes());
}

fn params(out: &mut Vec<u8>, ct: Option<&mail_parser::ContentType<'_>>, default_text: bool) {
    let attrs = ct.and_then(|c| c.attributes());
    match attrs {
        Some(a) if !a.is_empty() => {
            out.push(b'(');
            for (i, at) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                upper_quoted(out, &at.name);
                out.push(b' ');
                string(out, encode_word(&at.value).as_bytes());
            }
            out.push(b')');
        }
        _ if default_text => out.extend_from_slice(b"(\"CHARSET\" \"US-ASCII\")"),
        _ => out.extend_from_slice(b"NIL"),
    }
}

fn disposition(out: &mut Vec<u8>, part: &mail_parser::MessagePart<'_>) {
    match part.content_disposition() {
        Some(d) => {
            out.push(b'(');
            upper_quoted(out, d.ctype());
            out.push(b' ');
            params(out, Some(d), false);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
}

fn language_location(out: &mut Vec<u8>, part: &mail_parser::MessagePart<'_>) {
    let langs: Vec<String> = match part.content_language() {
        mail_parser::HeaderValue::Text(t) => vec![t.to_string()],
        mail_parser::HeaderValue::TextList(l) => l.iter().map(|s| s.to_string()).collect(),
        _ => Vec::new(),
    };
    out.push(b' ');
    match langs.len() {
        0 => out.extend_from_slice(b"NIL"),
        1 => string(out, langs[0].as_bytes()),
        _ => {
            out.push(b'(');
            for (i, l) in langs.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                string(out, l.as_bytes());
            }
            out.push(b')');
        }
    }
    out.push(b' ');
    nstring(out, part.content_location().map(str::as_bytes));
}

/// Nesting is bounded by mail-parser's own limits; `depth` is a second guard for output size,
/// and `budget` (parts left to describe) bounds the whole walk.
fn structure(out: &mut Vec<u8>, node: Node<'_, '_>, ext: bool, depth: usize, budget: &mut usize) {
    let part = node.part();
    let ct = part.content_type();
    *budget = budget.saturating_sub(1);
    if let PartType::Multipart(ids) = &part.body {
        out.push(b'(');
        let mut described = 0;
        if depth <= 50 {
            for id in children(node, ids) {
                if *budget == 0 {
                    break;
                }
                structure(
                    out,
                    Node {
                        msg: node.msg,
                        idx: id,
                    },
                    ext,
                    depth + 1,
                    budget,
                );
                described += 1;
            }
        }
        if described == 0 {
            // A multipart without parts is not valid IMAP; describe it as an empty text part.
            out.extend_from_slice(
                b"(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 0 0)",
            );
        }
        out.push(b' ');
        upper_quoted(out, ct.and_then(|c| c.subtype()).unwrap_or("MIXED"));
        if ext {
            out.push(b' ');
            params(out, ct, false);
            out.push(b' ');
            disposition(out, part);
            language_location(out, part);
        }
        out.push(b')');
        return;
    }
    let (t, st) = match ct {
        Some(c) => (
            c.ctype().to_owned(),
            c.subtype()
                .unwrap_or(if c.ctype().eq_ignore_ascii_case("text") {
                    "plain"
                } else {
                    "octet-stream"
                })
                .to_owned(),
        ),
        None => ("text".to_owned(), "plain".to_owned()),
    };
    let is_text = t.eq_ignore_ascii_case("text");
    let body = body_bytes(node);
    out.push(b'(');
    upper_quoted(out, &t);
    out.push(b' ');
    upper_quoted(out, &st);
    out.push(b' ');
    // a text part without parameters is us-ascii (RFC 2045 5.2), nested or not
    params(out, ct, is_text);
    out.push(b' ');
    nstring(
        out,
        part.content_id()
            .map(|s| format!("<{s}>"))
            .as_deref()
            .map(str::as_bytes),
    );
    out.push(b' ');
    nstring(out, part.content_description().map(str::as_bytes));
    out.push(b' ');
    upper_quoted(out, part.content_transfer_encoding().unwrap_or("7BIT"));
    out.extend_from_slice(format!(" {}", body.len()).as_bytes());
    match &part.body {
        PartType::Message(nested) if t.eq_ignore_ascii_case("message") => {
            out.push(b' ');
            envelope(out, nested);
            out.push(b' ');
            structure(
                out,
                Node {
                    msg: nested,
                    idx: 0,
                },
                ext,
                depth + 1,
                budget,
            );
            out.extend_from_slice(format!(" {}", count_lines(body)).as_bytes());
        }
        _ if is_text => out.extend_from_slice(format!(" {}", count_lines(body)).as_bytes()),
        _ => {}
    }
    if ext {
        out.extend_from_slice(b" NIL ");
        disposition(out, part);
        language_location(out, part);
    }
    out.push(b')');
}

fn raw_header(m: &Message<'_>, name: &str) -> Option<String> {
    let raw = m.raw_message.as_ref();
    let h = m
        .parts
        .first()?
        .headers
        .iter()
        .find(|h| h.name.as_str().eq_ignore_ascii_case(name))?;
    let v = slice(raw, h.offset_start, h.offset_end);
    Some(
        String::from_utf8_lossy(v)
            .replace("\r\n", "")
            .replace('\n', "")
            .trim()
            .to_owned(),
    )
}

fn envelope(out: &mut Vec<u8>, m: &Message<'_>) {
    out.push(b'(');
    let text = |out: &mut Vec<u8>, name: &str| {
        nstring(out, raw_header(m, name).as_deref().map(str::as_bytes));
    };
    text(out, "Date");
    out.push(b' ');
    text(out, "Subject");
    let from = m.from();
    for (i, addr) in [
        from,
        m.sender().or(from),
        m.reply_to().or(from),
        m.to(),
        m.cc(),
        m.bcc(),
    ]
    .into_iter()
    .enumerate()
    {
        let _ = i;
        out.push(b' ');
        address_list(out, addr);
    }
    out.push(b' ');
    text(out, "In-Reply-To");
    out.push(b' ');
    text(out, "Message-ID");
    out.push(b')');
}

/// RFC 2047 B-encodes text that is not 7-bit, so that IMAP4rev1 clients see ASCII only.
fn encode_word(s: &str) -> String {
    if s.is_ascii() {
        return s.to_owned();
    }
    use base64::Engine;
    format!(
        "=?utf-8?b?{}?=",
        base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
    )
}

fn one_address(out: &mut Vec<u8>, name: Option<&str>, address: Option<&str>) {
    out.push(b'(');
    nstring(out, name.map(encode_word).as_deref().map(str::as_bytes));
    out.extend_from_slice(b" NIL ");
    let (local, host) = match address {
        Some(a) => match a.rsplit_once('@') {
            Some((l, h)) => (Some(l), Some(h)),
            None => (Some(a), None),
        },
        None => (None, None),
    };
    nstring(out, local.map(str::as_bytes));
    out.push(b' ');
    nstring(out, host.map(str::as_bytes));
    out.push(b')');
}

fn address_list(out: &mut Vec<u8>, addr: Option<&Address<'_>>) {
    let Some(addr) = addr else {
        out.extend_from_slice(b"NIL");
        return;
    };
    let mut inner = Vec::new();
    match addr {
        Address::List(list) => {
            for a in list {
                one_address(&mut inner, a.name.as_deref(), a.address.as_deref());
            }
        }
        Address::Group(groups) => {
            for g in groups {
                if let Some(name) = &g.name {
                    // Group start: (NIL NIL "name" NIL) ... end: (NIL NIL NIL NIL)  (RFC 3501 7.4.2)
                    inner.extend_from_slice(b"(NIL NIL ");
                    string(&mut inner, encode_word(name).as_bytes());
                    inner.extend_from_slice(b" NIL)");
                }
                for a in &g.addresses {
                    one_address(&mut inner, a.name.as_deref(), a.address.as_deref());
                }
                if g.name.is_some() {
                    inner.extend_from_slice(b"(NIL NIL NIL NIL)");
                }
            }
        }
    }
    if inner.is_empty() {
        out.extend_from_slice(b"NIL");
    } else {
        out.push(b'(');
        out.extend_from_slice(&inner);
        out.push(b')');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMPLE: &[u8] = b"From: Ann <ann@example.test>\r\nTo: bob@example.test\r\nSubject: hi\r\nMessage-ID: <1@x>\r\n\r\nline one\r\nline two\r\n";

    const MULTI: &[u8] = b"From: a@x.test\r\nSubject: m\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\nFrom: c@y.test\r\nSubject: inner\r\n\r\ninner body\r\n--b1--\r\n";

    fn s(v: Option<Vec<u8>>) -> String {
        String::from_utf8(v.unwrap()).unwrap()
    }

    #[test]
    fn sent_date_is_the_header_date_and_addresses_are_searched_decoded() {
        // 23:30 at -0500 is the next day in UTC; SENTON compares the header's own date
        let p = Parsed::new(
            b"Date: Mon, 30 Nov 2026 23:30:00 -0500\r\nFrom: =?utf-8?q?J=C3=B6rg?= <jo@example.test>\r\nTo: undisclosed-recipients:;\r\nCc: Team: ann@example.test, Bob <bob@example.test>;\r\n\r\nx\r\n",
        );
        assert_eq!(p.sent_date(), chrono::NaiveDate::from_ymd_opt(2026, 11, 30));
        let from = p.address_text("From").unwrap();
        assert!(
            from.contains("Jörg") && from.contains("jo@example.test"),
            "{from}"
        );
        let cc = p.address_text("cc").unwrap();
        assert!(
            cc.contains("Team") && cc.contains("<ann@example.test>") && cc.contains("Bob"),
            "{cc}"
        );
        assert!(p.address_text("Bcc").is_none());
    }

    #[test]
    fn simple_sections() {
        let p = Parsed::new(SIMPLE);
        assert_eq!(s(p.section(&[], &Spec::Full)).as_bytes(), SIMPLE);
        assert!(s(p.section(&[], &Spec::Header)).ends_with("<1@x>\r\n\r\n"));
        assert_eq!(s(p.section(&[], &Spec::Text)), "line one\r\nline two\r\n");
        assert_eq!(s(p.section(&[1], &Spec::Full)), "line one\r\nline two\r\n");
        assert_eq!(
            s(p.section(
                &[],
                &Spec::HeaderFields(vec!["subject".into(), "TO".into()])
            )),
            "To: bob@example.test\r\nSubject: hi\r\n\r\n"
        );
        assert!(p.section(&[2], &Spec::Full).is_none());
        let mut e = Vec::new();
        p.envelope(&mut e);
        assert_eq!(
            String::from_utf8(e).unwrap(),
            "(NIL \"hi\" ((\"Ann\" NIL \"ann\" \"example.test\")) ((\"Ann\" NIL \"ann\" \"example.test\")) ((\"Ann\" NIL \"ann\" \"example.test\")) ((NIL NIL \"bob\" \"example.test\")) NIL NIL NIL \"<1@x>\")"
        );
        let mut b = Vec::new();
        p.body_structure(&mut b, false);
        assert_eq!(
            String::from_utf8(b).unwrap(),
            "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 20 2)"
        );
    }

    #[test]
    fn multipart_sections() {
        let p = Parsed::new(MULTI);
        assert_eq!(s(p.section(&[1], &Spec::Full)), "hello");
        assert_eq!(
            s(p.section(&[1], &Spec::Mime)),
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        );
        assert_eq!(s(p.section(&[2, 1], &Spec::Full)), "inner body");
        assert!(s(p.section(&[2], &Spec::Header)).starts_with("From: c@y.test\r\nSubject: inner"));
        assert_eq!(s(p.section(&[2], &Spec::Text)), "inner body");
        let mut b = Vec::new();
        p.body_structure(&mut b, true);
        let b = String::from_utf8(b).unwrap();
        assert!(b.starts_with("((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 5 0 NIL NIL NIL NIL)(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" "), "{b}");
        assert!(
            b.ends_with(" \"MIXED\" (\"BOUNDARY\" \"b1\") NIL NIL NIL)"),
            "{b}"
        );
    }
}
