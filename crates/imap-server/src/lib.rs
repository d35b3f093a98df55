//! IMAP server (RFC 3501 IMAP4rev1 and RFC 9051 IMAP4rev2, with the extensions clients rely on)
//! on ports 143 (STARTTLS)
//! and 993 (implicit TLS).
//!
//! Commands are framed by `imap-codec`'s [`Fragmentizer`](imap_codec::fragmentizer::Fragmentizer)
//! (lines and literals, with a size cap) and decoded by its `CommandCodec`; responses are written
//! by [`wire`]. Logins go through the auth core, mailboxes through `postern-store`.
#![forbid(unsafe_code)]

pub mod conn;
pub mod listext;
pub mod mime;
pub mod search;
pub mod session;
pub mod sort;
pub mod utf8;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use postern_auth::Authenticator;
use postern_config::ImapConfig;
use postern_net::TlsAcceptor;
use postern_store::Store;

pub use session::{handle_connection, serve_stream};

/// Everything an IMAP session needs, shared by all sessions of all IMAP listeners.
pub struct ImapServer {
    pub hostname: String,
    pub config: ImapConfig,
    pub store: Store,
    pub auth: Arc<Authenticator>,
    pub tls: TlsAcceptor,
    pub sessions: Arc<AccountSessions>,
    /// Live sessions by account, for incident response.
    pub revocations: Arc<postern_net::Revocations>,
    /// Sessions with COMPRESS=DEFLATE on (bounded by `imap.max_compressed_sessions`).
    pub compressed: Arc<std::sync::atomic::AtomicUsize>,
}

/// Held by a session with COMPRESS on; gives its place back when the session ends.
pub struct CompressedSlot(Arc<std::sync::atomic::AtomicUsize>);

impl CompressedSlot {
    /// A place among the compressed sessions, if one is free.
    pub fn take(count: &Arc<std::sync::atomic::AtomicUsize>, max: usize) -> Option<Self> {
        use std::sync::atomic::Ordering;
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| CompressedSlot(count.clone()))
    }
}

impl Drop for CompressedSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Counts open sessions per account, to enforce `imap.max_sessions_per_account`.
#[derive(Default)]
pub struct AccountSessions {
    open: Mutex<HashMap<i64, usize>>,
}

/// Held while a session is logged in; releases its slot when dropped.
pub struct AccountSlot {
    owner: Arc<AccountSessions>,
    account: i64,
}

impl AccountSessions {
    pub fn acquire(self: &Arc<Self>, account: i64, max: usize) -> Option<AccountSlot> {
        let mut m = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(account).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AccountSlot {
            owner: self.clone(),
            account,
        })
    }
}

impl Drop for AccountSlot {
    fn drop(&mut self) {
        let mut m = self.owner.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.account) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.account);
            }
        }
    }
}
