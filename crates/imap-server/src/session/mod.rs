//! One IMAP session: states (RFC 3501 3), commands, and the untagged updates that keep several
//! sessions on one mailbox in step.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::AString;
use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName, Section};
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox as ImapMailbox};
use imap_codec::imap_types::status::StatusDataItemName;
use imap_codec::imap_types::IntoStatic;
use imap_codec::CommandCodec;
use postern_auth::{Answer, LoginAttempt, Principal, Wording};

/// IMAP's words for login outcomes (after the tag and NO; RFC 5530 response codes).
const WORDING: Wording = Wording {
    failed: "[AUTHENTICATIONFAILED] Authentication failed",
    expired: "[EXPIRED] Password expired; change it, or use an app password",
    app_password_required:
        "[AUTHENTICATIONFAILED] Two-factor authentication is on: an app password is required",
    temporary: "[UNAVAILABLE] Temporary authentication failure, try again later",
    refused: "[UNAVAILABLE] Too many failed logins from your address; try again later",
};
use postern_config::Protocol;
use postern_net::{ConnPermit, Refusal, TlsInfo};
use postern_store::{FlagOp, Mailbox, MessageMeta, StoreError, DELIMITER};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::conn::{Conn, Input};

mod fetch;
mod selected;
use crate::mime::{header_end, Parsed, Spec};
use crate::search::{
    compress, in_ranges, matches, resolve, seq_out_of_range, uid_ranges, uses_modseq, Candidate,
};
use crate::wire;
use crate::{AccountSlot, ImapServer};

const SYSTEM_FLAGS: &str = "\\Answered \\Flagged \\Deleted \\Seen \\Draft";

struct Selected {
    mailbox: Mailbox,
    read_only: bool,
    /// This session's view: what it has been told about, in sequence-number order. Messages that
    /// another session expunged stay here (and readable) until this session may be told.
    msgs: Vec<MessageMeta>,
    modseq: u64,
    /// The keywords this session has been told of in FLAGS/PERMANENTFLAGS (RFC 3501 7.2.6: a
    /// keyword appears in a FETCH only after an untagged FLAGS that lists it).
    keywords: Vec<String>,
    /// Keeps the bodies of the messages in `msgs` on disk while they are listed here.
    pin: postern_store::views::ViewPin,
    /// \Recent (RFC 3501 2.3.2): UID ranges (above, up to] this read-write session was the
    /// first to be told of; a read-only session sees the mailbox's mark instead (UIDs above it
    /// are recent for everyone until a read-write session claims them).
    recent: Recent,
    /// SEARCHRES (RFC 5182): the UIDs the last `SEARCH RETURN (SAVE)` kept, for `$`; empty
    /// at SELECT. Expunged messages drop out when `$` is used (only those in the view count).
    saved: Vec<u32>,
}

enum Recent {
    Claimed(Vec<(u32, u32)>),
    Above(u32),
    /// IMAP4rev2: no message is \Recent, and nothing is claimed.
    Off,
}

impl Recent {
    fn has(&self, uid: u32) -> bool {
        match self {
            Recent::Claimed(ranges) => ranges.iter().any(|&(a, b)| uid > a && uid <= b),
            Recent::Above(mark) => uid > *mark,
            Recent::Off => false,
        }
    }
}

impl Selected {
    fn recent_count(&self) -> usize {
        self.msgs.iter().filter(|m| self.recent.has(m.uid)).count()
    }

    /// After the view grew to `max_uid`: a read-write session claims what no session was
    /// told of yet; a read-only one reads the mark again.
    async fn learn_recent(&mut self, store: &postern_store::Store, max_uid: u32) {
        let id = self.mailbox.id;
        match &mut self.recent {
            Recent::Claimed(ranges) => {
                if let Ok(before) = store.claim_recent(id, max_uid).await {
                    if before < max_uid {
                        ranges.push((before, max_uid));
                    }
                }
            }
            Recent::Above(mark) => {
                if let Ok(m) = store.recent_mark(id).await {
                    *mark = m;
                }
            }
            Recent::Off => {}
        }
    }
}

enum Flow {
    Continue,
    Close,
}

/// What SORT or THREAD makes of the messages a search matched.
enum Ordering {
    Sort(Vec<imap_codec::imap_types::extensions::sort::SortCriterion>),
    OrderedSubject,
    References,
}

/// The charsets SEARCH, SORT and THREAD accept (RFC 3501 6.4.4: US-ASCII at least; strings are
/// compared as UTF-8).
fn known_charset(cs: &str) -> bool {
    cs.eq_ignore_ascii_case("UTF-8") || cs.eq_ignore_ascii_case("US-ASCII")
}

/// FETCH modifiers of CONDSTORE/QRESYNC (RFC 7162 3.1.4, 3.2.6).
#[derive(Clone, Copy, Default)]
struct Conditions {
    changed_since: Option<u64>,
    vanished: bool,
}

/// How a STORE applies (RFC 3501 6.4.6, RFC 7162 3.1.3).
#[derive(Clone, Copy)]
struct StoreHow {
    op: FlagOp,
    silent: bool,
    uid: bool,
    unchanged_since: Option<u64>,
}

pub struct Session {
    srv: Arc<ImapServer>,
    protocol: Protocol,
    peer: SocketAddr,
    conn: Conn,
    tls: Option<TlsInfo>,
    principal: Option<Principal>,
    _slot: Option<AccountSlot>,
    selected: Option<Selected>,
    shutdown: CancellationToken,
    auth_failures: u32,
    errors: u32,
    commands: u64,
    /// Cut off while the client may still be sending (input abuse): linger before closing so the
    /// final reply is not destroyed by a reset (see `MailStream::linger`).
    linger: bool,
    /// CONDSTORE (RFC 7162 3.1) is on: flag updates carry MODSEQ, SELECT reports HIGHESTMODSEQ.
    condstore: bool,
    /// QRESYNC (RFC 7162 3.2) is on (ENABLE QRESYNC): expunges are reported as VANISHED.
    qresync: bool,
    /// COMPRESS=DEFLATE is on: this session's place among the compressed ones.
    _compressed: Option<crate::CompressedSlot>,
    /// ESEARCH: the RETURN options of the SEARCH being run (cut out before decoding).
    esearch: Option<crate::search::ReturnOptions>,
    /// SEARCHRES: the command being run named `$` and the saved result was empty (it then
    /// acts on no message, RFC 5182 2.1).
    dollar_empty: bool,
    /// IMAP4rev2 (RFC 9051) is on (ENABLE IMAP4rev2): no \Recent, SEARCH answers ESEARCH,
    /// SELECT names the mailbox in a LIST line, mailbox names in UTF-8.
    rev2: bool,
    /// Mailbox names are UTF-8 on the wire (UTF8=ACCEPT or IMAP4rev2), not modified UTF-7.
    utf8: bool,
    /// UTF8=ACCEPT (RFC 6855) is on: also header strings (ENVELOPE) in UTF-8, and APPEND takes
    /// `UTF8 (literal8)`.
    utf8_accept: bool,
}

pub async fn handle_connection(
    srv: Arc<ImapServer>,
    protocol: Protocol,
    tcp: TcpStream,
    peer: SocketAddr,
    admission: Result<ConnPermit, Refusal>,
    shutdown: CancellationToken,
) {
    let implicit = protocol == Protocol::Imaps;
    let Some((_permit, stream)) = postern_net::open_session(
        tcp,
        peer,
        admission,
        protocol.name(),
        implicit.then_some((&srv.tls, Duration::from_secs(10))),
        "* BYE [UNAVAILABLE] Too many connections, try again later",
    )
    .await
    else {
        return;
    };
    serve_stream(srv, protocol, stream, peer, shutdown).await;
}

/// Runs one IMAP session on an admitted stream (TLS already up on the implicit-TLS listener).
/// The listener's accept path calls it; so do tests and fuzz targets, over an in-process stream.
pub async fn serve_stream(
    srv: Arc<ImapServer>,
    protocol: Protocol,
    stream: postern_net::MailStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    let implicit = protocol == Protocol::Imaps;
    let early = !implicit
        && stream
            .talks_before(Duration::from_millis(srv.config.greeting_delay_ms))
            .await;
    let tls = stream.tls_info();
    let conn = Conn::new(
        stream,
        srv.config.max_command_size,
        srv.config.max_append_size,
    );
    let mut s = Session {
        srv,
        protocol,
        peer,
        conn,
        tls,
        principal: None,
        _slot: None,
        selected: None,
        shutdown,
        auth_failures: 0,
        errors: 0,
        commands: 0,
        linger: false,
        condstore: false,
        qresync: false,
        _compressed: None,
        esearch: None,
        dollar_empty: false,
        rev2: false,
        utf8: false,
        utf8_accept: false,
    };
    if early {
        // RFC 3501 7.1: the server speaks first; a client that does not wait is not a mail client.
        s.conn.line("* BYE Command received before greeting");
        s.conn.shutdown().await;
        s.conn.linger().await;
        tracing::info!(event = "connection", protocol = protocol.name(), ip = %peer.ip(), "client spoke before the greeting");
        return;
    }
    let caps = s.capabilities();
    s.conn.line(&format!(
        "* OK [CAPABILITY {caps}] {} Postern IMAP ready",
        s.srv.hostname
    ));
    s.run().await;
    s.conn.shutdown().await;
    if s.linger {
        s.conn.linger().await;
    }
    tracing::info!(
        event = "connection",
        protocol = protocol.name(),
        ip = %peer.ip(),
        tls = s.tls.map_or("none", |t| t.version),
        user = s.principal.as_ref().map(|p| p.address.as_str()),
        commands = s.commands,
        errors = s.errors,
        duration_ms = started.elapsed().as_millis() as u64,
        "session closed"
    );
}

/// A mailbox name from the wire: modified UTF-7 for IMAP4rev1 clients, UTF-8 once the client
/// enabled UTF8=ACCEPT or IMAP4rev2 (`utf8`; RFC 6855 3, RFC 9051 5.1).
fn mailbox_name(m: &ImapMailbox<'_>, utf8: bool) -> Result<String, &'static str> {
    let raw: &[u8] = match m {
        ImapMailbox::Inbox => return Ok("INBOX".to_owned()),
        ImapMailbox::Other(o) => o.as_ref(),
    };
    name_from_wire(raw, utf8)
}

/// The name CREATE makes: a trailing hierarchy delimiter only declares that the client means to
/// create names below it (RFC 3501 6.3.3), so `CREATE a/` creates `a`.
fn create_name(m: &ImapMailbox<'_>, utf8: bool) -> Result<String, &'static str> {
    match m {
        ImapMailbox::Other(o) if o.as_ref().len() > 1 && o.as_ref().ends_with(b"/") => {
            let raw = o.as_ref();
            name_from_wire(&raw[..raw.len() - 1], utf8)
        }
        _ => mailbox_name(m, utf8),
    }
}

fn name_from_wire(raw: &[u8], utf8: bool) -> Result<String, &'static str> {
    let s = std::str::from_utf8(raw).map_err(|_| "Mailbox name is not valid UTF-8")?;
    // Names arrive in modified UTF-7 (RFC 3501 5.1.3) from IMAP4rev1 clients, in UTF-8 from
    // the others; stored in UTF-8.
    let name = if s.contains('&') && !utf8 {
        wire::utf7_decode(s).ok_or("Mailbox name is not valid modified UTF-7")?
    } else {
        s.to_owned()
    };
    if name.eq_ignore_ascii_case("INBOX") {
        return Ok("INBOX".to_owned());
    }
    if name.is_empty()
        || name.len() > 255
        || name.starts_with(DELIMITER)
        || name.ends_with(DELIMITER)
        || name.contains("//")
        || name.chars().any(|c| c.is_control())
        || name.split(DELIMITER).count() > 16
        || name.contains('*')
        || name.contains('%')
    {
        return Err("Invalid mailbox name");
    }
    if name.len() > 5 && name[..6].eq_ignore_ascii_case("INBOX/") {
        return Ok(format!("INBOX{}", &name[5..]));
    }
    Ok(name)
}

/// Adds to `known` every keyword (a flag without a backslash) of `flags` it lacks (compared
/// without regard to case); true if any was new.
fn learn_keywords<'a>(known: &mut Vec<String>, flags: impl Iterator<Item = &'a String>) -> bool {
    let mut new = false;
    for f in flags {
        if !f.starts_with('\\') && !known.iter().any(|k| k.eq_ignore_ascii_case(f)) {
            known.push(f.clone());
            new = true;
        }
    }
    new
}

/// The untagged FLAGS and PERMANENTFLAGS of a mailbox with these keywords. A read-only mailbox
/// (EXAMINE) permits no permanent change: `PERMANENTFLAGS ()` (RFC 3501 6.3.2).
fn flags_announcement(keywords: &[String], read_only: bool) -> String {
    let mut all = String::from(SYSTEM_FLAGS);
    for k in keywords {
        all.push(' ');
        all.push_str(k);
    }
    if read_only {
        format!("* FLAGS ({all})\r\n* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n")
    } else {
        format!("* FLAGS ({all})\r\n* OK [PERMANENTFLAGS ({all} \\*)] Flags permitted\r\n")
    }
}

/// A mailbox name for the wire: modified UTF-7 unless the client takes UTF-8.
fn display_name(name: &str, utf8: bool) -> String {
    if utf8 {
        name.to_owned()
    } else {
        wire::utf7_encode(name)
    }
}

fn flag_string(f: &Flag<'_>) -> String {
    f.to_string()
}

/// A FLAGS list; `recent` adds the session flag \Recent (never stored).
fn flags_list(flags: &[String], recent: bool) -> String {
    if recent {
        let mut all = flags.join(" ");
        if !all.is_empty() {
            all.push(' ');
        }
        all.push_str("\\Recent");
        format!("({all})")
    } else {
        format!("({})", flags.join(" "))
    }
}

/// The UIDs in `known` (up to `largest`) that `msgs` no longer holds: what QRESYNC reports as
/// vanished when the expunge record does not reach back to the client's MODSEQ. At most 100,000
/// are listed (a client that claims to know 1:4000000000 gets the first of them; it is told the
/// rest at its next full resync).
fn missing_uids(known: &[(u32, u32)], msgs: &[MessageMeta], largest: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for &(a, b) in known {
        for uid in a..=b.min(largest) {
            if out.len() >= 100_000 {
                return out;
            }
            if msgs.binary_search_by_key(&uid, |m| m.uid).is_err() {
                out.push(uid);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// LIST pattern matching: `*` matches anything, `%` anything but the delimiter.
fn pattern_matches(pattern: &[char], name: &[char]) -> bool {
    match pattern.first() {
        None => name.is_empty(),
        Some('*') => (0..=name.len()).any(|i| pattern_matches(&pattern[1..], &name[i..])),
        Some('%') => {
            let mut i = 0;
            loop {
                if pattern_matches(&pattern[1..], &name[i..]) {
                    return true;
                }
                if i >= name.len() || name[i] == DELIMITER {
                    return false;
                }
                i += 1;
            }
        }
        Some(&c) => {
            name.first().is_some_and(|&n| n == c) && pattern_matches(&pattern[1..], &name[1..])
        }
    }
}

/// One SASL round trip in IMAP's framing (RFC 3501 7.5: `+ base64`, answered by a line).
struct Challenger<'a> {
    conn: &'a mut Conn,
    idle: Duration,
}

#[async_trait::async_trait]
impl postern_auth::sasl::Challenger for Challenger<'_> {
    async fn challenge(
        &mut self,
        challenge: &str,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, postern_auth::sasl::SaslError> {
        use postern_auth::sasl::SaslError;
        self.conn.line(&format!("+ {challenge}"));
        if self.conn.flush().await.is_err() {
            return Err(SaslError::Closed);
        }
        match self.conn.read_line(self.idle, 8192).await {
            Input::Message(line) => postern_auth::sasl::decode_response(&line),
            _ => Err(SaslError::Closed),
        }
    }
}

impl Session {
    fn capabilities(&self) -> String {
        let mut caps = String::from("IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS MOVE UNSELECT SPECIAL-USE CHILDREN QUOTA QUOTA=RES-STORAGE CONDSTORE QRESYNC STATUS=SIZE ESEARCH LIST-EXTENDED LIST-STATUS SORT SORT=DISPLAY THREAD=ORDEREDSUBJECT THREAD=REFERENCES BINARY SEARCHRES UTF8=ACCEPT");
        caps.push_str(&format!(" APPENDLIMIT={}", self.srv.config.max_append_size));
        if self.principal.is_some()
            && self.srv.config.max_compressed_sessions > 0
            && !self.conn.compressed()
        {
            caps.push_str(" COMPRESS=DEFLATE");
        }
        if self.tls.is_none() {
            // RFC 3501 6.2.1 / RFC 8314: no credentials before TLS.
            caps.push_str(" STARTTLS LOGINDISABLED");
        } else if self.principal.is_none() {
            // Strongest first; LOGIN is the IMAP command here, not a SASL mechanism.
            let offer = postern_auth::sasl::Offer {
                can_bind: self.conn.channel_bindings().is_some(),
                client_cert: self.conn.client_cert().is_some(),
                oauth: self.srv.auth.accepts_tokens(),
            };
            for m in postern_auth::sasl::Mechanism::advertised(offer) {
                if m != postern_auth::sasl::Mechanism::Login {
                    caps.push_str(" AUTH=");
                    caps.push_str(m.name());
                }
            }
        }
        caps
    }

    fn idle_timeout(&self) -> Duration {
        if self.principal.is_some() {
            Duration::from_secs(self.srv.config.idle_timeout_secs)
        } else {
            Duration::from_secs(self.srv.config.login_timeout_secs)
        }
    }

    async fn run(&mut self) {
        loop {
            if self.conn.flush().await.is_err() {
                return;
            }
            let input = tokio::select! {
                i = self.conn.read_message(self.idle_timeout()) => i,
                _ = self.shutdown.cancelled() => {
                    self.conn.line("* BYE [UNAVAILABLE] Server shutting down");
                    return;
                }
            };
            let bytes = match input {
                Input::Message(b) => b,
                Input::LiteralRefused { tag, append } => {
                    let tag = tag.unwrap_or_else(|| "*".into());
                    if append {
                        self.conn.line(&format!(
                            "{tag} NO [TOOBIG] Message larger than APPENDLIMIT"
                        ));
                    } else {
                        self.conn.line(&format!("{tag} BAD Literal too large"));
                    }
                    if self.error() {
                        return;
                    }
                    continue;
                }
                Input::TooLong => {
                    self.conn.line("* BYE Command line or literal too long");
                    self.linger = true;
                    return;
                }
                Input::Timeout => {
                    self.conn.line("* BYE Autologout; idle for too long");
                    return;
                }
                Input::Closed => return,
            };
            self.commands += 1;
            let codec = CommandCodec::default();
            self.esearch = None;
            let bytes = match crate::search::split_return(&bytes) {
                None => bytes,
                Some(Ok((plain, opts))) => {
                    self.esearch = Some(opts);
                    plain
                }
                Some(Err(why)) => {
                    let tag = String::from_utf8_lossy(
                        bytes.split(|&b| b == b' ').next().unwrap_or_default(),
                    )
                    .into_owned();
                    if let Flow::Close = self.bad(&tag, why) {
                        return;
                    }
                    continue;
                }
            };
            let bytes = match self.utf8_accept.then(|| crate::utf8::unwrap_append(&bytes)) {
                Some(Some(plain)) => plain,
                _ => bytes,
            };
            self.dollar_empty = false;
            // SEARCHRES: the saved result is looked up only for a command that names `$`
            let first_line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
            let bytes = match &self.selected {
                Some(sel) if first_line.contains(&b'$') => {
                    let seqs: Vec<u32> = sel
                        .saved
                        .iter()
                        .filter_map(|&u| sel.msgs.binary_search_by_key(&u, |m| m.uid).ok())
                        .map(|i| i as u32 + 1)
                        .collect();
                    let uids: Vec<u32> =
                        seqs.iter().map(|&q| sel.msgs[q as usize - 1].uid).collect();
                    match crate::search::substitute_saved(&bytes, &uids, &seqs) {
                        Some((b, empty)) => {
                            self.dollar_empty = empty;
                            b
                        }
                        None => bytes,
                    }
                }
                _ => bytes,
            };
            if let Some(parsed) = crate::listext::parse(&bytes) {
                let flow = match parsed {
                    Ok(l) if self.principal.is_some() => Box::pin(self.list_extended(l)).await,
                    Ok(l) => self.bad(&l.tag, "Command not valid before login"),
                    Err(why) => {
                        let tag = String::from_utf8_lossy(
                            bytes.split(|&b| b == b' ').next().unwrap_or_default(),
                        )
                        .into_owned();
                        self.bad(&tag, why)
                    }
                };
                if let Flow::Close = flow {
                    return;
                }
                continue;
            }
            let cmd = match codec.decode(&bytes) {
                Ok((b"", cmd)) => cmd.into_static(),
                _ => {
                    let tag = bytes
                        .split(|&b| b == b' ')
                        .next()
                        .filter(|t| {
                            !t.is_empty()
                                && t.len() < 64
                                && t.iter().all(|&c| {
                                    c.is_ascii_graphic()
                                        && c != b'+'
                                        && c != b'{'
                                        && c != b'('
                                        && c != b'*'
                                })
                        })
                        .map(|t| String::from_utf8_lossy(t).into_owned())
                        .unwrap_or_else(|| "*".into());
                    self.conn
                        .line(&format!("{tag} BAD Syntax error or unknown command"));
                    if self.error() {
                        return;
                    }
                    continue;
                }
            };
            // IDLE runs here, unboxed and small, because sessions spend their lives in it; every
            // other command runs as a boxed future, so that the large state of FETCH or SEARCH is
            // allocated only while one runs (10,000 idle sessions stay cheap).
            let flow = if matches!(cmd.body, CommandBody::Idle) && self.principal.is_some() {
                let tag = cmd.tag.inner().to_owned();
                self.idle(&tag).await
            } else {
                Box::pin(self.command(cmd)).await
            };
            if let Flow::Close = flow {
                return;
            }
        }
    }

    /// Counts a protocol error; true if the session must end.
    fn error(&mut self) -> bool {
        self.errors += 1;
        if self.errors >= self.srv.config.max_errors {
            self.conn.line("* BYE Too many errors");
            self.linger = true;
            return true;
        }
        false
    }

    fn ok(&mut self, tag: &str, text: &str) -> Flow {
        self.conn.line(&format!("{tag} OK {text}"));
        Flow::Continue
    }

    fn no(&mut self, tag: &str, text: &str) -> Flow {
        self.conn.line(&format!("{tag} NO {text}"));
        Flow::Continue
    }

    fn bad(&mut self, tag: &str, text: &str) -> Flow {
        self.conn.line(&format!("{tag} BAD {text}"));
        if self.error() {
            Flow::Close
        } else {
            Flow::Continue
        }
    }

    fn store_failed(&mut self, tag: &str, e: StoreError) -> Flow {
        match e {
            StoreError::NotFound(_) => self.no(tag, "[NONEXISTENT] No such mailbox"),
            StoreError::Exists(_) => self.no(tag, "[ALREADYEXISTS] Mailbox already exists"),
            e if e.is_storage_full() => {
                tracing::error!(error = %e, "storage full in IMAP session");
                self.no(tag, "[UNAVAILABLE] Server storage is full, try again later")
            }
            e => {
                tracing::error!(error = %e, "store error in IMAP session");
                self.no(tag, "[SERVERBUG] Temporary server failure, try again")
            }
        }
    }

    async fn command(&mut self, cmd: Command<'static>) -> Flow {
        let tag = cmd.tag.inner().to_owned();
        let authed = self.principal.is_some();
        // RFC 2180 3: the selected mailbox was deleted (or renamed away) by another session.
        // Nothing done on it may report success: the session is told and ends, as Dovecot does.
        if self.selected.is_some() && acts_on_selected(&cmd.body) && self.selected_gone().await {
            return self.bye_gone();
        }
        match cmd.body {
            CommandBody::Capability => {
                let caps = self.capabilities();
                self.conn.line(&format!("* CAPABILITY {caps}"));
                self.ok(&tag, "CAPABILITY completed")
            }
            CommandBody::Noop => {
                self.refresh(true).await;
                self.ok(&tag, "NOOP completed")
            }
            CommandBody::Check => {
                if self.selected.is_none() {
                    return self.bad(&tag, "No mailbox selected");
                }
                self.refresh(true).await;
                self.ok(&tag, "CHECK completed")
            }
            CommandBody::Logout => {
                self.conn.line("* BYE Logging out");
                self.conn.line(&format!("{tag} OK LOGOUT completed"));
                Flow::Close
            }
            CommandBody::Id { .. } => {
                self.conn.line("* ID (\"name\" \"Postern\")");
                self.ok(&tag, "ID completed")
            }
            CommandBody::StartTLS => self.starttls(&tag).await,
            CommandBody::Login { username, password } => {
                if authed {
                    return self.bad(&tag, "Already authenticated");
                }
                if self.tls.is_none() {
                    return self.no(&tag, "[PRIVACYREQUIRED] LOGIN is disabled until STARTTLS");
                }
                let user = String::from_utf8_lossy(username.as_ref()).into_owned();
                let pass = SecretString::from(
                    String::from_utf8_lossy(password.declassify().as_ref()).into_owned(),
                );
                self.login(&tag, &user, &pass, "LOGIN").await
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                if authed {
                    return self.bad(&tag, "Already authenticated");
                }
                if self.tls.is_none() {
                    return self.no(
                        &tag,
                        "[PRIVACYREQUIRED] Authentication is disabled until STARTTLS",
                    );
                }
                use postern_auth::sasl::Mechanism;
                let ir = initial_response.map(|r| r.declassify().to_vec());
                match Mechanism::parse(mechanism.as_ref()) {
                    Some(Mechanism::Plain) => self.authenticate_plain(&tag, ir).await,
                    Some(m) if m.is_multistep() => self.authenticate_sasl(&tag, m, ir).await,
                    _ => self.no(&tag, "Unsupported authentication mechanism"),
                }
            }
            CommandBody::Enable { capabilities } if authed => {
                // RFC 5161: ENABLED lists what this command turned on; unknown names are ignored.
                use imap_codec::imap_types::extensions::enable::CapabilityEnable;
                let mut enabled = String::from("* ENABLED");
                for c in capabilities.as_ref() {
                    let name = c.to_string().to_ascii_uppercase();
                    let is_condstore = matches!(c, CapabilityEnable::CondStore);
                    if is_condstore || name == "QRESYNC" {
                        let modseq = self.selected.as_ref().map(|s| s.modseq);
                        if self.condstore_on(modseq) && is_condstore {
                            enabled.push_str(" CONDSTORE");
                        }
                    }
                    if name == "QRESYNC" && !self.qresync {
                        self.qresync = true;
                        enabled.push_str(" QRESYNC");
                    }
                    if name == "IMAP4REV2" && !self.rev2 {
                        self.rev2 = true;
                        self.utf8 = true;
                        enabled.push_str(" IMAP4rev2");
                    }
                    if name == "UTF8=ACCEPT" && !self.utf8_accept {
                        self.utf8_accept = true;
                        self.utf8 = true;
                        enabled.push_str(" UTF8=ACCEPT");
                    }
                }
                self.conn.line(&enabled);
                self.ok(&tag, "ENABLE completed")
            }
            CommandBody::Compress { .. } if authed => self.compress(&tag).await,
            CommandBody::GetQuotaRoot { mailbox } if authed => {
                self.get_quota(&tag, Some(&mailbox), None).await
            }
            CommandBody::GetQuota { root } if authed => {
                let root = String::from_utf8_lossy(root.as_ref()).into_owned();
                self.get_quota(&tag, None, Some(&root)).await
            }
            CommandBody::SetQuota { .. } if authed => {
                self.no(&tag, "[NOPERM] Quotas are set by the administrator")
            }
            CommandBody::Namespace if authed => {
                self.conn.line("* NAMESPACE ((\"\" \"/\")) NIL NIL");
                self.ok(&tag, "NAMESPACE completed")
            }
            CommandBody::Select {
                mailbox,
                parameters,
            } if authed => self.select(&tag, &mailbox, false, &parameters).await,
            CommandBody::Examine {
                mailbox,
                parameters,
            } if authed => self.select(&tag, &mailbox, true, &parameters).await,
            CommandBody::Create { mailbox } if authed => self.create(&tag, &mailbox).await,
            CommandBody::Delete { mailbox } if authed => self.delete(&tag, &mailbox).await,
            CommandBody::Rename { from, to } if authed => self.rename(&tag, &from, &to).await,
            CommandBody::Subscribe { mailbox } if authed => {
                self.subscribe(&tag, &mailbox, true).await
            }
            CommandBody::Unsubscribe { mailbox } if authed => {
                self.subscribe(&tag, &mailbox, false).await
            }
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } if authed => self.list(&tag, &reference, &mailbox_wildcard, false).await,
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } if authed => self.list(&tag, &reference, &mailbox_wildcard, true).await,
            CommandBody::Status {
                mailbox,
                item_names,
            } if authed => self.status(&tag, &mailbox, &item_names).await,
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } if authed => {
                let data: Vec<u8> = match &message {
                    imap_codec::imap_types::extensions::binary::LiteralOrLiteral8::Literal(l) => {
                        l.as_ref().to_vec()
                    }
                    imap_codec::imap_types::extensions::binary::LiteralOrLiteral8::Literal8(l) => {
                        l.data.to_vec()
                    }
                };
                let flags: Vec<String> = flags.iter().map(flag_string).collect();
                let date = date.map(|d| d.as_ref().timestamp());
                self.append(&tag, &mailbox, flags, date, data).await
            }
            CommandBody::Idle if authed => self.idle(&tag).await,
            body @ (CommandBody::Unselect
            | CommandBody::Close
            | CommandBody::Expunge
            | CommandBody::ExpungeUid { .. }
            | CommandBody::Search { .. }
            | CommandBody::Sort { .. }
            | CommandBody::Thread { .. }
            | CommandBody::Fetch { .. }
            | CommandBody::Store { .. }
            | CommandBody::Copy { .. }
            | CommandBody::Move { .. })
                if self.selected.is_some() =>
            {
                // The selected mailbox is handed to the command (typed): it is taken out of the
                // session while the command runs, and put back unless the command deselected it.
                let Some(mut sel) = self.selected.take() else {
                    return self.bad(&tag, "No mailbox selected");
                };
                let (flow, keep) = self.selected_command(&tag, body, &mut sel).await;
                if keep {
                    self.selected = Some(sel);
                }
                flow
            }
            _ if !authed => self.bad(&tag, "Command not valid before login"),
            CommandBody::Unselect
            | CommandBody::Close
            | CommandBody::Expunge
            | CommandBody::ExpungeUid { .. }
            | CommandBody::Search { .. }
            | CommandBody::Sort { .. }
            | CommandBody::Thread { .. }
            | CommandBody::Fetch { .. }
            | CommandBody::Store { .. }
            | CommandBody::Copy { .. }
            | CommandBody::Move { .. } => self.bad(&tag, "No mailbox selected"),
            _ => self.bad(&tag, "Command not supported"),
        }
    }

    /// A command of the selected state, with the selected mailbox. Returns the flow and whether
    /// the mailbox stays selected.
    async fn selected_command(
        &mut self,
        tag: &str,
        body: CommandBody<'static>,
        sel: &mut Selected,
    ) -> (Flow, bool) {
        if self.dollar_empty {
            // RFC 5182 2.1: `$` with an empty saved result names no message; the command
            // succeeds and does nothing
            let name = match &body {
                CommandBody::Fetch { .. } => Some("FETCH"),
                CommandBody::Store { .. } => Some("STORE"),
                CommandBody::Copy { .. } => Some("COPY"),
                CommandBody::Move { .. } => Some("MOVE"),
                CommandBody::ExpungeUid { .. } => Some("EXPUNGE"),
                _ => None,
            };
            if let Some(name) = name {
                return (self.ok(tag, &format!("{name} completed")), true);
            }
        }
        match body {
            CommandBody::Unselect | CommandBody::Close => {
                let close = matches!(body, CommandBody::Close);
                if close && !sel.read_only {
                    let (acct, id) = (self.account(), sel.mailbox.id);
                    if let Err(e) = self.srv.store.expunge(acct, id, None, false).await {
                        return (self.store_failed(tag, e), true);
                    }
                }
                let text = if close {
                    "CLOSE completed"
                } else {
                    "UNSELECT completed"
                };
                (self.ok(tag, text), false)
            }
            CommandBody::Expunge => (self.expunge(sel, tag, None).await, true),
            CommandBody::ExpungeUid { sequence_set } => {
                let uids: Vec<u32> = resolve(&sequence_set, &sel.msgs, true)
                    .into_iter()
                    .map(|i| sel.msgs[i].uid)
                    .collect();
                (self.expunge(sel, tag, Some(uids)).await, true)
            }
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => {
                if let Some(cs) = charset {
                    if !known_charset(cs.as_ref()) {
                        if self.esearch.is_some_and(|o| o.save) {
                            // RFC 5182 2.1: a failed SEARCH ... SAVE empties the saved result
                            sel.saved.clear();
                        }
                        let f = self.no(tag, "[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset");
                        return (f, true);
                    }
                }
                let key = imap_codec::imap_types::search::SearchKey::And(criteria);
                (self.search(sel, tag, &key, uid).await, true)
            }
            CommandBody::Sort {
                sort_criteria,
                charset,
                search_criteria,
                uid,
            } => {
                if !known_charset(charset.as_ref()) {
                    let f = self.no(tag, "[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset");
                    return (f, true);
                }
                let key = imap_codec::imap_types::search::SearchKey::And(search_criteria);
                let how = Ordering::Sort(sort_criteria.into_inner());
                (self.sort(sel, tag, &key, uid, how).await, true)
            }
            CommandBody::Thread {
                algorithm,
                charset,
                search_criteria,
                uid,
            } => {
                use imap_codec::imap_types::extensions::thread::ThreadingAlgorithm;
                let how = match algorithm {
                    ThreadingAlgorithm::OrderedSubject => Ordering::OrderedSubject,
                    ThreadingAlgorithm::References => Ordering::References,
                    _ => return (self.bad(tag, "Unknown threading algorithm"), true),
                };
                if !known_charset(charset.as_ref()) {
                    let f = self.no(tag, "[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset");
                    return (f, true);
                }
                let key = imap_codec::imap_types::search::SearchKey::And(search_criteria);
                (self.sort(sel, tag, &key, uid, how).await, true)
            }
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => {
                let items = match macro_or_item_names {
                    MacroOrMessageDataItemNames::Macro(m) => {
                        m.expand().into_iter().map(|i| i.into_static()).collect()
                    }
                    MacroOrMessageDataItemNames::MessageDataItemNames(v) => v,
                };
                use imap_codec::imap_types::command::FetchModifier;
                let mut changed_since = None;
                let mut vanished = false;
                for m in &modifiers {
                    match m {
                        FetchModifier::ChangedSince(n) => changed_since = Some(n.get()),
                        FetchModifier::Vanished => vanished = true,
                    }
                }
                // RFC 7162 3.2.6: VANISHED only on UID FETCH with CHANGEDSINCE, QRESYNC enabled
                if vanished && !(uid && self.qresync && changed_since.is_some()) {
                    return (
                        self.bad(tag, "VANISHED needs UID FETCH, CHANGEDSINCE and QRESYNC"),
                        true,
                    );
                }
                let cond = Conditions {
                    changed_since,
                    vanished,
                };
                let f = self.fetch(sel, tag, &sequence_set, &items, uid, cond).await;
                (f, true)
            }
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            } => {
                let op = match kind {
                    StoreType::Add => FlagOp::Add,
                    StoreType::Remove => FlagOp::Remove,
                    StoreType::Replace => FlagOp::Replace,
                };
                let flags: Vec<String> = flags.iter().map(flag_string).collect();
                let silent = response == StoreResponse::Silent;
                use imap_codec::imap_types::command::StoreModifier;
                let unchanged_since = modifiers
                    .iter()
                    .map(|m| match m {
                        StoreModifier::UnchangedSince(n) => *n,
                    })
                    .next();
                let how = StoreHow {
                    op,
                    silent,
                    uid,
                    unchanged_since,
                };
                let f = self.store(sel, tag, &sequence_set, &flags, how).await;
                (f, true)
            }
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            } => (
                self.copy(sel, tag, &sequence_set, &mailbox, uid, false)
                    .await,
                true,
            ),
            CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => (
                self.copy(sel, tag, &sequence_set, &mailbox, uid, true)
                    .await,
                true,
            ),
            _ => (self.bad(tag, "Command not supported"), true),
        }
    }

    fn account(&self) -> i64 {
        self.principal.as_ref().map_or(0, |p| p.account_id)
    }

    /// Whether the selected mailbox no longer exists (deleted or renamed by another session).
    async fn selected_gone(&self) -> bool {
        match &self.selected {
            Some(sel) => matches!(
                self.srv.store.mailbox_modseq(sel.mailbox.id).await,
                Ok(None)
            ),
            None => false,
        }
    }

    fn bye_gone(&mut self) -> Flow {
        self.selected = None;
        self.conn
            .line("* BYE The selected mailbox was deleted by another session");
        Flow::Close
    }

    async fn starttls(&mut self, tag: &str) -> Flow {
        if self.tls.is_some() {
            return self.bad(tag, "TLS is already active");
        }
        if self.protocol != Protocol::Imap {
            return self.bad(tag, "STARTTLS not available here");
        }
        self.conn
            .line(&format!("{tag} OK Begin TLS negotiation now"));
        match self
            .conn
            .start_tls(&self.srv.tls, Duration::from_secs(10))
            .await
        {
            Ok(()) => {
                self.tls = self.conn.tls_info();
                Flow::Continue
            }
            Err(_) => Flow::Close,
        }
    }

    /// AUTHENTICATE through the SASL exchange shared with SMTP and POP3, framed as `+ challenge`.
    async fn authenticate_plain(&mut self, tag: &str, ir: Option<Vec<u8>>) -> Flow {
        use postern_auth::sasl::{Exchange, Mechanism, SaslError, Step};
        let fail = |s: &mut Self, e: SaslError| match e {
            SaslError::Cancelled => s.bad(tag, "Authentication cancelled"),
            SaslError::Base64 => s.bad(tag, "Invalid base64"),
            SaslError::Malformed => s.bad(tag, "Malformed PLAIN response"),
            SaslError::Closed => Flow::Close,
        };
        // imap-codec has decoded the SASL-IR's base64 already.
        let (mut ex, mut step) = match Exchange::start_decoded(Mechanism::Plain, ir.as_deref()) {
            Ok(x) => x,
            Err(e) => return fail(self, e),
        };
        let creds = loop {
            match step {
                Step::Done(c) => break c,
                Step::Challenge(ch) => {
                    self.conn.line(&format!("+ {ch}"));
                    if self.conn.flush().await.is_err() {
                        return Flow::Close;
                    }
                    let line = match self.conn.read_line(self.idle_timeout(), 8192).await {
                        Input::Message(line) => line,
                        _ => return Flow::Close,
                    };
                    step = match ex.step(&line) {
                        Ok(s) => s,
                        Err(e) => return fail(self, e),
                    };
                }
            }
        };
        let user = creds.username.clone();
        self.login(tag, &user, &creds.password, "PLAIN").await
    }

    /// AUTHENTICATE SCRAM-SHA-256(-PLUS), EXTERNAL, OAUTHBEARER and XOAUTH2, framed as
    /// `+ challenge`; SCRAM's server
    /// signature comes as a last challenge that the client answers with an empty line.
    async fn authenticate_sasl(
        &mut self,
        tag: &str,
        mechanism: postern_auth::sasl::Mechanism,
        ir: Option<Vec<u8>>,
    ) -> Flow {
        use postern_auth::sasl::SaslError;
        let bindings = self.conn.channel_bindings().unwrap_or_default();
        let cb = postern_auth::scram::Bindings {
            exporter: bindings.exporter.as_ref().map(|e| &e[..]),
            end_point: bindings.end_point.as_deref(),
        };
        let auth = self.srv.auth.clone();
        let idle = self.idle_timeout();
        let mut io = Challenger {
            conn: &mut self.conn,
            idle,
        };
        let peer = postern_auth::Peer {
            protocol: Protocol::Imap,
            remote_ip: self.peer.ip(),
            tls: self.tls.map(|t| t.version),
        };
        let cert = io.conn.client_cert();
        let end = if mechanism == postern_auth::sasl::Mechanism::External {
            auth.external_exchange(&mut io, ir.as_deref(), cert.as_ref(), peer)
                .await
        } else if mechanism.is_oauth() {
            auth.oauth_exchange(&mut io, mechanism, ir.as_deref(), peer)
                .await
        } else {
            auth.scram_exchange(&mut io, mechanism, ir.as_deref(), cb, peer)
                .await
        };
        match end {
            postern_auth::SaslEnd::Decided(outcome) => self.answer_login(tag, outcome).await,
            postern_auth::SaslEnd::Aborted(SaslError::Closed) => Flow::Close,
            postern_auth::SaslEnd::Aborted(SaslError::Cancelled) => {
                self.bad(tag, "Authentication cancelled")
            }
            postern_auth::SaslEnd::Aborted(_) => self.bad(tag, "Malformed SCRAM message"),
        }
    }

    async fn login(
        &mut self,
        tag: &str,
        user: &str,
        pass: &SecretString,
        mech: &'static str,
    ) -> Flow {
        if pass.expose_secret().is_empty() {
            return self.no(tag, "[AUTHENTICATIONFAILED] Authentication failed");
        }
        let outcome = self
            .srv
            .auth
            .authenticate(LoginAttempt {
                username: user,
                password: pass,
                protocol: Protocol::Imap,
                mechanism: mech,
                remote_ip: self.peer.ip(),
                tls: self.tls.map(|t| t.version),
            })
            .await;
        self.answer_login(tag, outcome).await
    }

    /// The reply to a decided login, whatever the mechanism.
    async fn answer_login(&mut self, tag: &str, outcome: postern_auth::AuthOutcome) -> Flow {
        match outcome.answer(&WORDING) {
            Answer::LoggedIn(p) => {
                let Some(slot) = self
                    .srv
                    .sessions
                    .acquire(p.account_id, self.srv.config.max_sessions_per_account)
                    .await
                else {
                    tracing::warn!(event = "imap_session_cap", account = %p.address, ip = %self.peer.ip(), "too many IMAP sessions for account");
                    return self.no(tag, "[LIMIT] Too many sessions for this account");
                };
                self._slot = Some(slot);
                if let Some(w) = p.expiry_warning() {
                    // RFC 3501 7.1: ALERT text must be shown to the user.
                    self.conn.line(&format!("* OK [ALERT] {w}"));
                }
                // incident response can end this session (IDLE included) from now on
                self.shutdown = self.srv.revocations.token_for(p.account_id, &self.shutdown);
                self.principal = Some(p);
                let caps = self.capabilities();
                self.ok(tag, &format!("[CAPABILITY {caps}] Logged in"))
            }
            Answer::Retry(text) => self.no(tag, text),
            Answer::Close(text) => {
                self.conn.line(&format!("{tag} NO {text}"));
                self.conn.line("* BYE Try again later");
                Flow::Close
            }
            Answer::Failed(text) => {
                self.auth_failures += 1;
                self.conn.line(&format!("{tag} NO {text}"));
                if self.auth_failures >= self.srv.config.max_auth_failures {
                    self.conn.line("* BYE Too many failed logins");
                    return Flow::Close;
                }
                Flow::Continue
            }
        }
    }

    async fn find_mailbox(&mut self, tag: &str, m: &ImapMailbox<'_>) -> Result<Mailbox, Flow> {
        self.lookup_mailbox(tag, m, "[NONEXISTENT] No such mailbox")
            .await
    }

    /// The target of APPEND, COPY and MOVE: a missing one is NO [TRYCREATE] (RFC 3501 6.3.11,
    /// 6.4.7: the client may CREATE it and try again), not [NONEXISTENT].
    async fn find_target(&mut self, tag: &str, m: &ImapMailbox<'_>) -> Result<Mailbox, Flow> {
        self.lookup_mailbox(tag, m, "[TRYCREATE] No such mailbox")
            .await
    }

    async fn lookup_mailbox(
        &mut self,
        tag: &str,
        m: &ImapMailbox<'_>,
        missing: &str,
    ) -> Result<Mailbox, Flow> {
        let name = match mailbox_name(m, self.utf8) {
            Ok(n) => n,
            Err(e) => return Err(self.no(tag, e)),
        };
        match self.srv.store.get_mailbox(self.account(), &name).await {
            Ok(Some(mb)) => Ok(mb),
            Ok(None) => Err(self.no(tag, missing)),
            Err(e) => Err(self.store_failed(tag, e)),
        }
    }

    /// COMPRESS DEFLATE (RFC 4978): the OK goes uncompressed, then both directions are raw
    /// DEFLATE. Only after login (nothing secret is compressed beside attacker-chosen text).
    async fn compress(&mut self, tag: &str) -> Flow {
        if self.conn.compressed() {
            return self.no(tag, "[COMPRESSIONACTIVE] DEFLATE is already on");
        }
        let max = self.srv.config.max_compressed_sessions;
        let Some(slot) = crate::CompressedSlot::take(&self.srv.compressed, max) else {
            return self.no(
                tag,
                "[LIMIT] Too many compressed sessions; go on uncompressed",
            );
        };
        self.conn.line(&format!("{tag} OK DEFLATE active"));
        if self.conn.start_compression().await.is_err() {
            return Flow::Close;
        }
        self._compressed = Some(slot);
        Flow::Continue
    }

    /// CONDSTORE turned on by this command (RFC 7162 3.1: ENABLE, or a command that uses
    /// MODSEQ). With a mailbox selected the client learns its HIGHESTMODSEQ now. True if it
    /// was off.
    fn condstore_on(&mut self, selected_modseq: Option<u64>) -> bool {
        if self.condstore {
            return false;
        }
        self.condstore = true;
        if let Some(m) = selected_modseq {
            self.conn.line(&format!("* OK [HIGHESTMODSEQ {m}] Highest"));
        }
        true
    }

    async fn select(
        &mut self,
        tag: &str,
        m: &ImapMailbox<'_>,
        read_only: bool,
        parameters: &[imap_codec::imap_types::command::SelectParameter],
    ) -> Flow {
        use imap_codec::imap_types::command::SelectParameter;
        let mut qresync = None;
        for p in parameters {
            match p {
                SelectParameter::CondStore => {}
                SelectParameter::QResync { .. } if !self.qresync => {
                    // RFC 7162 3.2.5: QRESYNC must be enabled first
                    return self.bad(tag, "QRESYNC is not enabled");
                }
                SelectParameter::QResync {
                    uid_validity,
                    mod_sequence_value,
                    known_uids,
                    ..
                } => qresync = Some((uid_validity.get(), mod_sequence_value.get(), known_uids)),
            }
        }
        // RFC 7162 3.2.11 (and RFC 9051): selecting closes the mailbox selected before.
        if self.selected.is_some() {
            self.conn
                .line("* OK [CLOSED] Previous mailbox is now closed");
        }
        // RFC 3501 6.3.1: a failed SELECT leaves no mailbox selected.
        self.selected = None;
        if !parameters.is_empty() {
            self.condstore_on(None);
        }
        let mb = match self.find_mailbox(tag, m).await {
            Ok(mb) => mb,
            Err(f) => return f,
        };
        let pin = self.srv.store.pin_view();
        let mark = pin.mark();
        // the list and the counters in one statement: UIDNEXT and HIGHESTMODSEQ match the list
        let (msgs, c) = match self.srv.store.mailbox_snapshot(mb.id).await {
            Ok(v) => v,
            Err(e) => return self.store_failed(tag, e),
        };
        pin.synced_at(mark);
        let mut keywords = Vec::new();
        learn_keywords(&mut keywords, msgs.iter().flat_map(|m| m.flags.iter()));
        let flags = flags_announcement(&keywords, read_only);
        self.conn.out().extend_from_slice(flags.as_bytes());
        self.conn.line(&format!("* {} EXISTS", msgs.len()));
        let max_uid = msgs.last().map_or(0, |m| m.uid);
        let recent = if self.rev2 {
            // RFC 9051 removed \Recent: such a session claims nothing, so IMAP4rev1 sessions
            // still see the new messages as recent
            Recent::Off
        } else if read_only {
            Recent::Above(self.srv.store.recent_mark(mb.id).await.unwrap_or(max_uid))
        } else {
            match self.srv.store.claim_recent(mb.id, max_uid).await {
                Ok(before) if before < max_uid => Recent::Claimed(vec![(before, max_uid)]),
                _ => Recent::Claimed(Vec::new()),
            }
        };
        if self.rev2 {
            // RFC 9051 6.3.2: a LIST line names the mailbox with its attributes; RECENT and
            // the UNSEEN code are gone
            match self.srv.store.list_mailboxes(self.account()).await {
                Ok(all) => {
                    let line = self.list_line(&all, &mb);
                    self.conn.out().extend_from_slice(&line);
                }
                Err(e) => return self.store_failed(tag, e),
            }
        } else {
            let n_recent = msgs.iter().filter(|m| recent.has(m.uid)).count();
            self.conn.line(&format!("* {n_recent} RECENT"));
            if let Some(first) = msgs.iter().position(|m| !m.has_flag("\\Seen")) {
                self.conn
                    .line(&format!("* OK [UNSEEN {}] First unseen", first + 1));
            }
        }
        self.conn
            .line(&format!("* OK [UIDVALIDITY {}] UIDs valid", c.uidvalidity));
        self.conn
            .line(&format!("* OK [UIDNEXT {}] Predicted next UID", c.uidnext));
        if self.condstore {
            self.conn.line(&format!(
                "* OK [HIGHESTMODSEQ {}] Highest",
                c.highest_modseq
            ));
        }
        // QRESYNC with the UIDVALIDITY the client knew: what vanished and what changed since
        // its MODSEQ, limited to the UIDs it says it knows (RFC 7162 3.2.5.1).
        if let Some((_, since, known)) = qresync.filter(|q| q.0 == c.uidvalidity) {
            let largest = c.uidnext.saturating_sub(1);
            let known = known
                .as_ref()
                .map(|k| uid_ranges(k, largest))
                .unwrap_or_else(|| vec![(1, largest)]);
            match self.srv.store.vanished_since(mb.id, since).await {
                Ok(v) => {
                    let gone: Vec<u32> = if v.complete {
                        v.uids
                            .into_iter()
                            .filter(|&u| in_ranges(&known, u))
                            .collect()
                    } else {
                        missing_uids(&known, &msgs, largest)
                    };
                    if !gone.is_empty() {
                        self.conn
                            .line(&format!("* VANISHED (EARLIER) {}", compress(&gone)));
                    }
                }
                Err(e) => return self.store_failed(tag, e),
            }
            for (i, m) in msgs.iter().enumerate() {
                if m.modseq > since && in_ranges(&known, m.uid) {
                    self.conn.line(&format!(
                        "* {} FETCH (UID {} FLAGS {} MODSEQ ({}))",
                        i + 1,
                        m.uid,
                        flags_list(&m.flags, recent.has(m.uid)),
                        m.modseq
                    ));
                }
            }
        }
        self.selected = Some(Selected {
            mailbox: mb,
            read_only,
            msgs,
            modseq: c.highest_modseq,
            keywords,
            pin,
            recent,
            saved: Vec::new(),
        });
        if read_only {
            self.ok(tag, "[READ-ONLY] EXAMINE completed")
        } else {
            self.ok(tag, "[READ-WRITE] SELECT completed")
        }
    }

    async fn create(&mut self, tag: &str, m: &ImapMailbox<'_>) -> Flow {
        let name = match create_name(m, self.utf8) {
            Ok(n) => n,
            Err(e) => return self.no(tag, e),
        };
        if name == "INBOX" {
            return self.no(tag, "[ALREADYEXISTS] INBOX always exists");
        }
        // Create missing parents too (RFC 3501 6.3.3 says the server SHOULD).
        let parts: Vec<&str> = name.split(DELIMITER).collect();
        for i in 1..parts.len() {
            let parent = parts[..i].join("/");
            match self.srv.store.create_mailbox(self.account(), &parent).await {
                Ok(()) | Err(StoreError::Exists(_)) => {}
                Err(e) => return self.store_failed(tag, e),
            }
        }
        match self.srv.store.create_mailbox(self.account(), &name).await {
            Ok(()) => self.ok(tag, "CREATE completed"),
            Err(e) => self.store_failed(tag, e),
        }
    }

    async fn delete(&mut self, tag: &str, m: &ImapMailbox<'_>) -> Flow {
        let name = match mailbox_name(m, self.utf8) {
            Ok(n) => n,
            Err(e) => return self.no(tag, e),
        };
        if name == "INBOX" {
            return self.no(tag, "[CANNOT] INBOX cannot be deleted");
        }
        let all = match self.srv.store.list_mailboxes(self.account()).await {
            Ok(v) => v,
            Err(e) => return self.store_failed(tag, e),
        };
        let prefix = format!("{name}{DELIMITER}");
        if all.iter().any(|b| b.name.starts_with(&prefix)) {
            return self.no(tag, "[INUSE] Mailbox has children; delete them first");
        }
        if self
            .selected
            .as_ref()
            .is_some_and(|s| s.mailbox.name == name)
        {
            self.selected = None;
        }
        match self.srv.store.delete_mailbox(self.account(), &name).await {
            Ok(()) => self.ok(tag, "DELETE completed"),
            Err(e) => self.store_failed(tag, e),
        }
    }

    async fn rename(&mut self, tag: &str, from: &ImapMailbox<'_>, to: &ImapMailbox<'_>) -> Flow {
        let (from, to) = match (mailbox_name(from, self.utf8), mailbox_name(to, self.utf8)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return self.no(tag, e),
        };
        if to == "INBOX" {
            return self.no(tag, "[ALREADYEXISTS] INBOX always exists");
        }
        match self
            .srv
            .store
            .rename_mailbox(self.account(), &from, &to)
            .await
        {
            Ok(()) => self.ok(tag, "RENAME completed"),
            Err(e) => self.store_failed(tag, e),
        }
    }

    async fn subscribe(&mut self, tag: &str, m: &ImapMailbox<'_>, on: bool) -> Flow {
        let name = match mailbox_name(m, self.utf8) {
            Ok(n) => n,
            Err(e) => return self.no(tag, e),
        };
        match self
            .srv
            .store
            .set_subscribed(self.account(), &name, on)
            .await
        {
            Ok(()) => self.ok(
                tag,
                if on {
                    "SUBSCRIBE completed"
                } else {
                    "UNSUBSCRIBE completed"
                },
            ),
            Err(e) => self.store_failed(tag, e),
        }
    }

    async fn list(
        &mut self,
        tag: &str,
        reference: &ImapMailbox<'_>,
        pattern: &ListMailbox<'_>,
        lsub: bool,
    ) -> Flow {
        let cmd = if lsub { "LSUB" } else { "LIST" };
        let reference = match reference {
            ImapMailbox::Inbox => "INBOX".to_owned(),
            ImapMailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).into_owned(),
        };
        let pattern = match pattern {
            ListMailbox::Token(t) => String::from_utf8_lossy(t.as_ref()).into_owned(),
            ListMailbox::String(s) => String::from_utf8_lossy(s.as_ref()).into_owned(),
        };
        if pattern.is_empty() {
            // RFC 3501 6.3.8: the hierarchy delimiter and root name.
            self.conn.line(&format!("* {cmd} (\\Noselect) \"/\" \"\""));
            return self.ok(tag, &format!("{cmd} completed"));
        }
        let full = format!("{reference}{pattern}");
        let utf8 = self.utf8;
        let full = if utf8 {
            full
        } else {
            wire::utf7_decode(&full).unwrap_or(full)
        };
        let pat: Vec<char> = full.chars().collect();
        let all = match self.srv.store.list_mailboxes(self.account()).await {
            Ok(v) => v,
            Err(e) => return self.store_failed(tag, e),
        };
        let upper: Vec<char> = full.to_ascii_uppercase().chars().collect();
        let matches = |name: &str| {
            let chars: Vec<char> = name.chars().collect();
            pattern_matches(&pat, &chars) || (name == "INBOX" && pattern_matches(&upper, &chars))
        };
        let emit = |out: &mut Vec<u8>, attrs: &str, name: &str| {
            let mut line = format!("* {cmd} ({attrs}) \"/\" ").into_bytes();
            wire::mailbox(&mut line, &display_name(name, utf8));
            out.extend_from_slice(&line);
            out.extend_from_slice(b"\r\n");
        };
        let mut out = Vec::new();
        if lsub {
            // RFC 3501 6.3.9: subscribed names only, without LIST's child attributes; where `%`
            // stops at a parent that is not subscribed itself but has a subscribed child, that
            // parent is listed as \Noselect (once)
            let mut parents: Vec<String> = Vec::new();
            for b in all.iter().filter(|b| b.subscribed) {
                if matches(&b.name) {
                    emit(&mut out, "", &b.name);
                    continue;
                }
                if !full.contains('%') {
                    continue;
                }
                let parts: Vec<&str> = b.name.split(DELIMITER).collect();
                for i in 1..parts.len() {
                    let parent = parts[..i].join("/");
                    let subscribed = all.iter().any(|o| o.name == parent && o.subscribed);
                    if !subscribed && matches(&parent) && !parents.contains(&parent) {
                        emit(&mut out, "\\Noselect", &parent);
                        parents.push(parent);
                    }
                }
            }
        } else {
            for b in all.iter().filter(|b| matches(&b.name)) {
                out.extend_from_slice(&self.list_line(&all, b));
            }
        }
        self.conn.out().extend_from_slice(&out);
        self.ok(tag, &format!("{cmd} completed"))
    }

    /// The plain LIST line of mailbox `b` (of `all`): child attributes and special use.
    fn list_line(&self, all: &[Mailbox], b: &Mailbox) -> Vec<u8> {
        let prefix = format!("{}{DELIMITER}", b.name);
        let mut attrs = vec![if all.iter().any(|o| o.name.starts_with(&prefix)) {
            "\\HasChildren"
        } else {
            "\\HasNoChildren"
        }];
        if let Some(su) = &b.special_use {
            attrs.push(su);
        }
        let mut line = format!("* LIST ({}) \"/\" ", attrs.join(" ")).into_bytes();
        wire::mailbox(&mut line, &display_name(&b.name, self.utf8));
        line.extend_from_slice(b"\r\n");
        line
    }

    /// LIST-EXTENDED (RFC 5258) with LIST-STATUS (RFC 5819): selection by subscription or
    /// special use (with RECURSIVEMATCH's CHILDINFO for parents of what was selected), several
    /// patterns, \Subscribed on request, and a STATUS after each mailbox listed.
    async fn list_extended(&mut self, l: crate::listext::ExtendedList) -> Flow {
        let tag = l.tag.clone();
        // the STATUS items as a STATUS command would take them (imap-codec checks them)
        let status_items: Option<Vec<StatusDataItemName>> = match &l.status {
            None => None,
            Some(items) => {
                let probe = format!("s STATUS INBOX ({items})\r\n");
                match CommandCodec::default().decode(probe.as_bytes()) {
                    Ok((
                        _,
                        Command {
                            body: CommandBody::Status { item_names, .. },
                            ..
                        },
                    )) => Some(item_names.to_vec()),
                    _ => return self.bad(&tag, "Invalid STATUS items"),
                }
            }
        };
        let all = match self.srv.store.list_mailboxes(self.account()).await {
            Ok(v) => v,
            Err(e) => return self.store_failed(&tag, e),
        };
        let mut out = Vec::new();
        let mut matchers = Vec::new();
        for p in &l.patterns {
            if p.is_empty() {
                out.extend_from_slice(b"* LIST (\\Noselect) \"/\" \"\"\r\n");
                continue;
            }
            let full = format!("{}{p}", l.reference);
            let full = if self.utf8 {
                full
            } else {
                wire::utf7_decode(&full).unwrap_or(full)
            };
            matchers.push((
                full.chars().collect::<Vec<char>>(),
                full.to_ascii_uppercase().chars().collect::<Vec<char>>(),
            ));
        }
        let matches = |name: &str| {
            let chars: Vec<char> = name.chars().collect();
            matchers.iter().any(|(pat, upper)| {
                pattern_matches(pat, &chars) || (name == "INBOX" && pattern_matches(upper, &chars))
            })
        };
        let selected = |b: &Mailbox| {
            (!l.subscribed || b.subscribed) && (!l.special_use || b.special_use.is_some())
        };
        for b in &all {
            if !matches(&b.name) {
                continue;
            }
            let prefix = format!("{}{DELIMITER}", b.name);
            let below: Vec<&Mailbox> = all.iter().filter(|o| o.name.starts_with(&prefix)).collect();
            let mut attrs = vec![if below.is_empty() {
                "\\HasNoChildren"
            } else {
                "\\HasChildren"
            }];
            let mut childinfo = Vec::new();
            if !selected(b) {
                // RFC 5258 3.5: a parent that is not selected itself but has selected children
                if !l.recursive || !below.iter().any(|o| selected(o)) {
                    continue;
                }
                if l.subscribed {
                    childinfo.push("\"SUBSCRIBED\"");
                }
                if l.special_use {
                    childinfo.push("\"SPECIAL-USE\"");
                }
            }
            if let Some(su) = &b.special_use {
                attrs.push(su);
            }
            if (l.subscribed || l.return_subscribed) && b.subscribed {
                attrs.push("\\Subscribed");
            }
            let mut line = format!("* LIST ({}) \"/\" ", attrs.join(" ")).into_bytes();
            wire::mailbox(&mut line, &display_name(&b.name, self.utf8));
            if !childinfo.is_empty() {
                line.extend_from_slice(
                    format!(" (\"CHILDINFO\" ({}))", childinfo.join(" ")).as_bytes(),
                );
            }
            line.extend_from_slice(b"\r\n");
            out.extend_from_slice(&line);
            if let Some(items) = &status_items {
                match self.status_line(b, items).await {
                    Ok(s) => out.extend_from_slice(&s),
                    Err(e) => return self.store_failed(&tag, e),
                }
            }
        }
        self.conn.out().extend_from_slice(&out);
        self.ok(&tag, "LIST completed")
    }

    async fn status(
        &mut self,
        tag: &str,
        m: &ImapMailbox<'_>,
        items: &[StatusDataItemName],
    ) -> Flow {
        let mb = match self.find_mailbox(tag, m).await {
            Ok(mb) => mb,
            Err(f) => return f,
        };
        match self.status_line(&mb, items).await {
            Ok(line) => {
                self.conn.out().extend_from_slice(&line);
                self.ok(tag, "STATUS completed")
            }
            Err(e) => self.store_failed(tag, e),
        }
    }

    /// The untagged STATUS of a mailbox (STATUS, and LIST-STATUS after a LIST line).
    async fn status_line(
        &mut self,
        mb: &Mailbox,
        items: &[StatusDataItemName],
    ) -> Result<Vec<u8>, StoreError> {
        let c = self.srv.store.mailbox_counts(mb.id).await?;
        let mut parts = Vec::new();
        for i in items {
            match i {
                StatusDataItemName::Messages => parts.push(format!("MESSAGES {}", c.messages)),
                StatusDataItemName::Recent => {
                    let n = self.srv.store.count_recent(mb.id).await?;
                    parts.push(format!("RECENT {n}"))
                }
                StatusDataItemName::UidNext => parts.push(format!("UIDNEXT {}", c.uidnext)),
                StatusDataItemName::UidValidity => {
                    parts.push(format!("UIDVALIDITY {}", c.uidvalidity))
                }
                StatusDataItemName::Unseen => parts.push(format!("UNSEEN {}", c.unseen)),
                StatusDataItemName::Deleted => parts.push(format!("DELETED {}", c.deleted)),
                StatusDataItemName::Size => parts.push(format!("SIZE {}", c.size)),
                StatusDataItemName::HighestModSeq => {
                    let modseq = self.selected.as_ref().map(|s| s.modseq);
                    self.condstore_on(modseq);
                    parts.push(format!("HIGHESTMODSEQ {}", c.highest_modseq))
                }
                _ => {}
            }
        }
        let mut line = b"* STATUS ".to_vec();
        wire::mailbox(&mut line, &display_name(&mb.name, self.utf8));
        line.extend_from_slice(format!(" ({})\r\n", parts.join(" ")).as_bytes());
        Ok(line)
    }

    /// QUOTA (RFC 9208): one quota root, "", for the whole account, with the STORAGE resource
    /// in KiB (used, limit); no root at all when the account has no limit.
    async fn get_quota(
        &mut self,
        tag: &str,
        mailbox: Option<&ImapMailbox<'_>>,
        root: Option<&str>,
    ) -> Flow {
        if let Some(m) = mailbox {
            if let Err(f) = self.find_mailbox(tag, m).await {
                return f;
            }
        }
        let (used, limit) = match self.srv.store.quota(self.account()).await {
            Ok(q) => q,
            Err(e) => return self.store_failed(tag, e),
        };
        let kib = |b: u64| b.div_ceil(1024);
        if let Some(m) = mailbox {
            let name = mailbox_name(m, self.utf8).unwrap_or_default();
            let mut line = b"* QUOTAROOT ".to_vec();
            wire::mailbox(&mut line, &display_name(&name, self.utf8));
            if limit.is_some() {
                line.extend_from_slice(b" \"\"");
            }
            line.extend_from_slice(b"\r\n");
            self.conn.out().extend_from_slice(&line);
        } else if root != Some("") || limit.is_none() {
            return self.no(tag, "[NONEXISTENT] No such quota root");
        }
        if let Some(l) = limit {
            self.conn
                .line(&format!("* QUOTA \"\" (STORAGE {} {})", kib(used), kib(l)));
        }
        self.ok(
            tag,
            if mailbox.is_some() {
                "GETQUOTAROOT completed"
            } else {
                "GETQUOTA completed"
            },
        )
    }

    async fn append(
        &mut self,
        tag: &str,
        m: &ImapMailbox<'_>,
        flags: Vec<String>,
        date: Option<i64>,
        data: Vec<u8>,
    ) -> Flow {
        let mb = match self.find_target(tag, m).await {
            Ok(mb) => mb,
            Err(f) => return f,
        };
        if data.len() > self.srv.config.max_append_size {
            return self.no(tag, "[TOOBIG] Message larger than APPENDLIMIT");
        }
        let flags: Vec<String> = flags
            .into_iter()
            .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
            .collect();
        let when = date.unwrap_or_else(postern_store::now);
        // Stored with CRLF line ends only, so that every reader (POP3 above all) gets framing it
        // can trust and RFC822.SIZE is the size sent.
        let data = postern_types::crlf(&data);
        match self
            .srv
            .store
            .over_quota(self.account(), data.len() as u64)
            .await
        {
            Ok(false) => {}
            Ok(true) => return self.no(tag, "[OVERQUOTA] Quota exceeded"),
            Err(e) => return self.store_failed(tag, e),
        }
        match self
            .srv
            .store
            .append(self.account(), mb.id, &data, &flags, when)
            .await
        {
            Ok((validity, uid)) => {
                self.refresh(true).await;
                self.ok(
                    tag,
                    &format!("[APPENDUID {validity} {uid}] APPEND completed"),
                )
            }
            Err(e) => self.store_failed(tag, e),
        }
    }
}

/// Commands that work on the selected mailbox (RFC 3501 6.4) or report on it (NOOP, CHECK, IDLE).
fn acts_on_selected(body: &CommandBody<'_>) -> bool {
    matches!(
        body,
        CommandBody::Noop
            | CommandBody::Check
            | CommandBody::Close
            | CommandBody::Expunge
            | CommandBody::ExpungeUid { .. }
            | CommandBody::Search { .. }
            | CommandBody::Fetch { .. }
            | CommandBody::Store { .. }
            | CommandBody::Copy { .. }
            | CommandBody::Move { .. }
            | CommandBody::Idle
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        pattern_matches(
            &p.chars().collect::<Vec<_>>(),
            &n.chars().collect::<Vec<_>>(),
        )
    }

    #[test]
    fn list_patterns() {
        assert!(m("*", "a/b/c"));
        assert!(m("%", "Sent"));
        assert!(!m("%", "a/b"));
        assert!(m("a/%", "a/b"));
        assert!(!m("a/%", "a/b/c"));
        assert!(m("a/*", "a/b/c"));
        assert!(!m("Sent", "sent"));
    }

    #[test]
    fn mailbox_names() {
        let mk = |s: &str| mailbox_name(&ImapMailbox::try_from(s).unwrap(), false);
        assert_eq!(mk("inbox").unwrap(), "INBOX");
        assert_eq!(mk("INBOX/x").unwrap(), "INBOX/x");
        assert_eq!(mk("&ZeVnLIqe-").unwrap(), "日本語");
        assert!(mk("a//b").is_err());
        assert!(mk("/a").is_err());
        assert!(mk("&Jjo").is_err());
        assert!(mk("a/").is_err());
        let create = |s: &str| create_name(&ImapMailbox::try_from(s).unwrap(), false);
        assert_eq!(create("a/").unwrap(), "a");
        assert_eq!(create("a/b/").unwrap(), "a/b");
        assert!(create("a//").is_err());
        assert!(create("/").is_err());
        assert_eq!(create("inbox").unwrap(), "INBOX");
    }
}
