//! POP3 command line parsing. Sans-I/O: one line (without CRLF) in, one command out.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Capa,
    Stls,
    User(String),
    /// The password is kept as the raw line remainder (it may contain spaces).
    Pass(String),
    Auth(Option<String>, Option<String>),
    Stat,
    List(Option<u32>),
    Retr(u32),
    Dele(u32),
    Rset,
    Noop,
    Quit,
    Uidl(Option<u32>),
    Top(u32, u32),
    Apop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    Unknown,
    Syntax,
}

fn num(s: Option<&str>) -> Result<u32, ParseError> {
    let s = s.ok_or(ParseError::Syntax)?;
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::Syntax);
    }
    s.parse().map_err(|_| ParseError::Syntax)
}

fn opt_num(s: Option<&str>) -> Result<Option<u32>, ParseError> {
    s.map(|v| num(Some(v))).transpose()
}

/// Parses one command line. Keywords are case-insensitive (RFC 1939 3).
pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| ParseError::Syntax)?;
    let line = line
        .strip_suffix("\r\n")
        .or(line.strip_suffix('\n'))
        .unwrap_or(line);
    if line.chars().any(|c| c.is_control()) {
        return Err(ParseError::Syntax);
    }
    let (kw, rest) = match line.split_once(' ') {
        Some((k, r)) => (k, Some(r)),
        None => (line, None),
    };
    let mut args = rest.unwrap_or("").split(' ').filter(|a| !a.is_empty());
    let (a1, a2) = (args.next(), args.next());
    let extra = args.next().is_some();
    let cmd = match kw.to_ascii_uppercase().as_str() {
        "CAPA" => Command::Capa,
        "STLS" => Command::Stls,
        "USER" => Command::User(
            rest.filter(|r| !r.is_empty())
                .ok_or(ParseError::Syntax)?
                .to_owned(),
        ),
        "PASS" => Command::Pass(
            rest.filter(|r| !r.is_empty())
                .ok_or(ParseError::Syntax)?
                .to_owned(),
        ),
        "AUTH" => {
            if extra {
                return Err(ParseError::Syntax);
            }
            return Ok(Command::Auth(a1.map(str::to_owned), a2.map(str::to_owned)));
        }
        "STAT" => Command::Stat,
        "LIST" => Command::List(opt_num(a1)?),
        "RETR" => Command::Retr(num(a1)?),
        "DELE" => Command::Dele(num(a1)?),
        "RSET" => Command::Rset,
        "NOOP" => Command::Noop,
        "QUIT" => Command::Quit,
        "UIDL" => Command::Uidl(opt_num(a1)?),
        "TOP" => Command::Top(num(a1)?, num(a2)?),
        "APOP" => Command::Apop,
        _ => return Err(ParseError::Unknown),
    };
    let max_args = match cmd {
        Command::User(_) | Command::Pass(_) => usize::MAX,
        Command::Top(..) => 2,
        Command::List(_) | Command::Retr(_) | Command::Dele(_) | Command::Uidl(_) => 1,
        Command::Apop => usize::MAX,
        _ => 0,
    };
    let given = usize::from(a1.is_some()) + usize::from(a2.is_some()) + usize::from(extra);
    if given > max_args {
        return Err(ParseError::Syntax);
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(parse(b"capa\r\n"), Ok(Command::Capa));
        assert_eq!(parse(b"LIST"), Ok(Command::List(None)));
        assert_eq!(parse(b"LIST 3"), Ok(Command::List(Some(3))));
        assert_eq!(parse(b"TOP 1 10"), Ok(Command::Top(1, 10)));
        assert_eq!(parse(b"PASS a b  c"), Ok(Command::Pass("a b  c".into())));
        assert_eq!(
            parse(b"AUTH PLAIN AGEAYg=="),
            Ok(Command::Auth(Some("PLAIN".into()), Some("AGEAYg==".into())))
        );
        assert_eq!(parse(b"RETR x"), Err(ParseError::Syntax));
        assert_eq!(parse(b"RETR -1"), Err(ParseError::Syntax));
        assert_eq!(parse(b"RETR 99999999999"), Err(ParseError::Syntax));
        assert_eq!(parse(b"STAT 1"), Err(ParseError::Syntax));
        assert_eq!(parse(b"XYZZY"), Err(ParseError::Unknown));
        assert_eq!(parse(b"USER\0x"), Err(ParseError::Syntax));
        assert_eq!(parse(b"\xff\xfe"), Err(ParseError::Syntax));
        assert_eq!(parse(b"USER"), Err(ParseError::Syntax));
    }
}
