//! LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819) arguments, which imap-codec (2.0.0
//! alpha) does not parse: selection options before the reference, several patterns in
//! parentheses, and RETURN options after them. A command of that shape is parsed here from its
//! line (a literal in it is not accepted: clients send these arguments quoted); any other LIST
//! goes to imap-codec as before.

/// A parsed extended LIST.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtendedList {
    pub tag: String,
    /// Selection: only subscribed mailboxes.
    pub subscribed: bool,
    /// Selection: only mailboxes with a special use (RFC 6154 5.2).
    pub special_use: bool,
    /// Selection: parents whose children match are listed with CHILDINFO.
    pub recursive: bool,
    /// Return: \Subscribed on subscribed mailboxes.
    pub return_subscribed: bool,
    /// Return: STATUS items (their raw text, e.g. `MESSAGES UNSEEN`) after each LIST line.
    pub status: Option<String>,
    pub reference: String,
    pub patterns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Atom(String),
    Quoted(String),
    List(Vec<Value>),
}

impl Value {
    fn text(&self) -> Option<&str> {
        match self {
            Value::Atom(s) | Value::Quoted(s) => Some(s),
            Value::List(_) => None,
        }
    }
    fn is(&self, word: &str) -> bool {
        matches!(self, Value::Atom(a) if a.eq_ignore_ascii_case(word))
    }
}

/// Tokens of one line: atoms, quoted strings, parenthesized lists (at most 8 deep).
fn values(s: &[u8], depth: usize) -> Result<(Vec<Value>, usize), &'static str> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b' ' => i += 1,
            b')' => return Ok((out, i + 1)),
            b'(' => {
                if depth >= 8 {
                    return Err("Lists nested too deep");
                }
                let (inner, used) = values(&s[i + 1..], depth + 1)?;
                out.push(Value::List(inner));
                i += 1 + used;
            }
            b'"' => {
                let mut text = Vec::new();
                i += 1;
                loop {
                    match s.get(i) {
                        None => return Err("Unterminated quoted string"),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            text.push(*s.get(i + 1).ok_or("Unterminated quoted string")?);
                            i += 2;
                        }
                        Some(&c) => {
                            text.push(c);
                            i += 1;
                        }
                    }
                }
                i += 1;
                out.push(Value::Quoted(
                    String::from_utf8(text).map_err(|_| "Not UTF-8")?,
                ));
            }
            b'{' | b'\r' | b'\n' => return Err("Literals are not accepted in an extended LIST"),
            _ => {
                let end = s[i..]
                    .iter()
                    .position(|&c| c == b' ' || c == b'(' || c == b')' || c == b'\r' || c == b'\n')
                    .map_or(s.len(), |p| i + p);
                out.push(Value::Atom(
                    String::from_utf8(s[i..end].to_vec()).map_err(|_| "Not UTF-8")?,
                ));
                i = end;
            }
        }
    }
    if depth > 0 {
        return Err("Unbalanced parentheses");
    }
    Ok((out, i))
}

/// None if `cmd` is not a LIST with extended syntax (the plain form goes to imap-codec);
/// `Some(Err)` for an extended LIST that is malformed or asks for what is not supported.
pub fn parse(cmd: &[u8]) -> Option<Result<ExtendedList, &'static str>> {
    let line = cmd.strip_suffix(b"\r\n").unwrap_or(cmd);
    let mut words = line.splitn(3, |&b| b == b' ');
    let tag = std::str::from_utf8(words.next()?).ok()?.to_owned();
    if !words.next()?.eq_ignore_ascii_case(b"LIST") {
        return None;
    }
    let rest = words.next()?;
    let upper = rest.to_ascii_uppercase();
    let extended = rest.starts_with(b"(")
        || upper.windows(8).any(|w| w == b" RETURN ")
        || has_pattern_list(rest);
    if !extended {
        return None;
    }
    Some(parse_args(tag, rest))
}

/// `ref (pat pat)`: a parenthesized list where the patterns go.
fn has_pattern_list(rest: &[u8]) -> bool {
    matches!(values(rest, 0), Ok((v, _)) if v.len() >= 2 && matches!(v[1], Value::List(_)))
}

fn parse_args(tag: String, rest: &[u8]) -> Result<ExtendedList, &'static str> {
    let (vals, _) = values(rest, 0)?;
    let mut out = ExtendedList {
        tag,
        ..Default::default()
    };
    let mut it = vals.into_iter().peekable();
    if let Some(Value::List(sel)) = it.peek() {
        for o in sel {
            if o.is("SUBSCRIBED") {
                out.subscribed = true;
            } else if o.is("RECURSIVEMATCH") {
                out.recursive = true;
            } else if o.is("SPECIAL-USE") {
                out.special_use = true;
            } else if o.is("REMOTE") {
                // no remote mailboxes here: nothing to add
            } else {
                return Err("Unknown LIST selection option");
            }
        }
        // RFC 5258 3: RECURSIVEMATCH alone is an error
        if out.recursive && !out.subscribed && !out.special_use {
            return Err("RECURSIVEMATCH needs another selection option");
        }
        it.next();
    }
    out.reference = it
        .next()
        .and_then(|v| v.text().map(str::to_owned))
        .ok_or("LIST needs a reference")?;
    match it.next() {
        Some(Value::List(pats)) => {
            for p in pats {
                out.patterns
                    .push(p.text().ok_or("A pattern must be a string")?.to_owned());
            }
        }
        Some(v) => out
            .patterns
            .push(v.text().ok_or("A pattern must be a string")?.to_owned()),
        None => return Err("LIST needs a mailbox pattern"),
    }
    if out.patterns.is_empty() {
        return Err("LIST needs a mailbox pattern");
    }
    match it.next() {
        None => {}
        Some(v) if v.is("RETURN") => {
            let Some(Value::List(opts)) = it.next() else {
                return Err("RETURN needs a parenthesized list");
            };
            let mut opts = opts.into_iter();
            while let Some(o) = opts.next() {
                if o.is("SUBSCRIBED") {
                    out.return_subscribed = true;
                } else if o.is("CHILDREN") || o.is("SPECIAL-USE") {
                    // always given: \HasChildren/\HasNoChildren and the special-use attributes
                } else if o.is("STATUS") {
                    let Some(Value::List(items)) = opts.next() else {
                        return Err("STATUS needs a parenthesized list");
                    };
                    let items: Option<Vec<&str>> = items.iter().map(Value::text).collect();
                    out.status = Some(items.ok_or("STATUS items are atoms")?.join(" "));
                } else {
                    return Err("Unknown LIST return option");
                }
            }
        }
        Some(_) => return Err("Unexpected LIST argument"),
    }
    if it.next().is_some() {
        return Err("Unexpected LIST argument");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_forms() {
        let p = |s: &str| parse(s.as_bytes()).unwrap().unwrap();
        let l = p("a LIST (SUBSCRIBED RECURSIVEMATCH) \"\" \"*\" RETURN (STATUS (MESSAGES UNSEEN) SUBSCRIBED)\r\n");
        assert!(l.subscribed && l.recursive && l.return_subscribed);
        assert_eq!(l.status.as_deref(), Some("MESSAGES UNSEEN"));
        assert_eq!(
            (l.reference.as_str(), l.patterns.clone()),
            ("", vec!["*".to_owned()])
        );
        let l = p("b list \"\" (INBOX \"Sent\" %/x)\r\n");
        assert_eq!(l.patterns, vec!["INBOX", "Sent", "%/x"]);
        let l = p("c LIST \"\" % RETURN (CHILDREN SPECIAL-USE)");
        assert!(!l.subscribed && l.status.is_none());
        // the plain form is not ours
        assert!(parse(b"d LIST \"\" *\r\n").is_none());
        assert!(parse(b"d LIST \"\" \"(odd)\"\r\n").is_none());
        assert!(parse(b"d LSUB (SUBSCRIBED) \"\" *\r\n").is_none());
        // errors
        for bad in [
            "e LIST (RECURSIVEMATCH) \"\" *",
            "e LIST (FOO) \"\" *",
            "e LIST \"\" * RETURN (BAR)",
            "e LIST \"\" * RETURN STATUS",
            "e LIST (SUBSCRIBED) \"\"",
            "e LIST (SUBSCRIBED) \"\" {3}",
            "e LIST (SUBSCRIBED \"\" *",
            "e LIST \"\" * RETURN (STATUS (MESSAGES)) extra",
        ] {
            assert!(parse(bad.as_bytes()).unwrap().is_err(), "{bad}");
        }
    }
}
