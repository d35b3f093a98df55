//! POP3 server (RFC 1939, CAPA RFC 2449, STLS RFC 2595, AUTH RFC 5034) on ports 110 (STLS) and 995
//! (implicit TLS). No APOP: it needs the password stored recoverably.
//!
//! The command parser is hand-written ([`parse`]): POP3 commands are a keyword and at most two
//! arguments on one short line, and no maintained crate parses the server side.
#![forbid(unsafe_code)]

pub mod maildrop;
pub mod parse;
pub mod session;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use postern_auth::Authenticator;
use postern_config::Pop3Config;
use postern_net::TlsAcceptor;
use postern_store::Store;

pub use session::{handle_connection, serve_stream};

pub struct Pop3Server {
    pub hostname: String,
    pub config: Pop3Config,
    pub store: Store,
    pub auth: Arc<Authenticator>,
    pub tls: TlsAcceptor,
    pub locks: Arc<MaildropLocks>,
    /// Live sessions by account, for incident response.
    pub revocations: Arc<postern_net::Revocations>,
}

/// RFC 1939 4: one POP3 session holds an account's maildrop at a time. In-process; a cluster
/// would keep this lock in Redis.
#[derive(Default)]
pub struct MaildropLocks {
    held: Mutex<HashSet<i64>>,
}

pub struct MaildropLock {
    owner: Arc<MaildropLocks>,
    account: i64,
}

impl MaildropLocks {
    pub fn try_lock(self: &Arc<Self>, account: i64) -> Option<MaildropLock> {
        let mut h = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if !h.insert(account) {
            return None;
        }
        Some(MaildropLock {
            owner: self.clone(),
            account,
        })
    }
}

impl Drop for MaildropLock {
    fn drop(&mut self) {
        let mut h = self.owner.held.lock().unwrap_or_else(|e| e.into_inner());
        h.remove(&self.account);
    }
}
