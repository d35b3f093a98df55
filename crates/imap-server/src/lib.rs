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

use postern_auth::shared::{claim_seat, Seat, SharedCounters};
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

/// Counts open sessions per account, to enforce `imap.max_sessions_per_account`: in the process
/// and, in a cluster ([`AccountSessions::share`]), across the nodes too, as the seats of
/// `imap:ACCOUNT_ID` in Redis (a [`Seat`] per session: renewed while it lasts, expiring
/// [`postern_auth::shared::SEAT_TTL`] after a node dies). Redis not answering: the node's own
/// count only (logged), so logins keep working.
#[derive(Default)]
pub struct AccountSessions {
    open: Mutex<HashMap<i64, usize>>,
    shared: std::sync::OnceLock<Arc<dyn SharedCounters>>,
}

/// Held while a session is logged in; releases its slot (and its cluster seat) when dropped.
pub struct AccountSlot {
    owner: Arc<AccountSessions>,
    account: i64,
    _seat: Option<Seat>,
}

impl AccountSessions {
    /// Counts sessions across nodes through `counters` as well (once; a second call is ignored).
    pub fn share(&self, counters: Arc<dyn SharedCounters>) {
        let _ = self.shared.set(counters);
    }

    pub async fn acquire(self: &Arc<Self>, account: i64, max: usize) -> Option<AccountSlot> {
        let mut slot = {
            let mut m = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.entry(account).or_insert(0);
            if *n >= max {
                return None;
            }
            *n += 1;
            AccountSlot {
                owner: self.clone(),
                account,
                _seat: None,
            }
        };
        let seats = u32::try_from(max).unwrap_or(u32::MAX);
        // Taken by sessions on other nodes: None (dropping `slot` gives this node's count back).
        slot._seat = claim_seat(self.shared.get(), format!("imap:{account}"), seats)
            .await
            .ok()?;
        Some(slot)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_per_account_are_counted_across_nodes() {
        let shared: Arc<dyn SharedCounters> =
            Arc::new(postern_auth::shared::MemoryCounters::default());
        let (a, b) = (
            Arc::new(AccountSessions::default()),
            Arc::new(AccountSessions::default()),
        );
        a.share(shared.clone());
        b.share(shared.clone());
        let first = a.acquire(7, 2).await.expect("free");
        let second = b.acquire(7, 2).await.expect("one left");
        assert!(a.acquire(7, 2).await.is_none(), "two in the cluster");
        assert!(b.acquire(7, 2).await.is_none(), "two in the cluster");
        assert!(b.acquire(8, 2).await.is_some(), "another account");
        drop(second);
        let mut got = None;
        for _ in 0..50 {
            tokio::task::yield_now().await;
            got = a.acquire(7, 2).await;
            if got.is_some() {
                break;
            }
        }
        assert!(got.is_some(), "a seat is given back when its session ends");
        // a refusal by the cluster gives this node's count back too: once a's sessions end, b
        // (refused above) has its whole quota
        drop((first, got));
        let mut both = (None, None);
        for _ in 0..50 {
            tokio::task::yield_now().await;
            both = (b.acquire(7, 2).await, b.acquire(7, 2).await);
            if both.0.is_some() && both.1.is_some() {
                break;
            }
        }
        assert!(both.0.is_some() && both.1.is_some());
    }
}
