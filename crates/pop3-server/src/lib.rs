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

use postern_auth::shared::{claim_seat, Seat, SharedCounters};
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

/// RFC 1939 4: one POP3 session holds an account's maildrop at a time. In the process and, in a
/// cluster ([`MaildropLocks::share`]), in Redis too: the one seat of `pop3:ACCOUNT_ID` (a
/// [`Seat`]: renewed while the session lasts, expiring [`postern_auth::shared::SEAT_TTL`] after a
/// node dies). Redis not answering: the node's own lock only (logged), so POP3 keeps working.
#[derive(Default)]
pub struct MaildropLocks {
    held: Mutex<HashSet<i64>>,
    shared: std::sync::OnceLock<Arc<dyn SharedCounters>>,
}

pub struct MaildropLock {
    owner: Arc<MaildropLocks>,
    account: i64,
    /// The cluster's lock (given back when dropped).
    _shared: Option<Seat>,
}

impl MaildropLocks {
    /// Holds maildrops across nodes through `counters` as well (once; a second call is ignored).
    pub fn share(&self, counters: Arc<dyn SharedCounters>) {
        let _ = self.shared.set(counters);
    }

    pub async fn try_lock(self: &Arc<Self>, account: i64) -> Option<MaildropLock> {
        if !self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(account)
        {
            return None;
        }
        let mut lock = MaildropLock {
            owner: self.clone(),
            account,
            _shared: None,
        };
        // Held by a session on another node: None (dropping `lock` gives the local one back).
        lock._shared = claim_seat(self.shared.get(), format!("pop3:{account}"), 1)
            .await
            .ok()?;
        Some(lock)
    }
}

impl Drop for MaildropLock {
    fn drop(&mut self) {
        let mut h = self.owner.held.lock().unwrap_or_else(|e| e.into_inner());
        h.remove(&self.account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_session_per_maildrop_across_nodes() {
        let shared = Arc::new(postern_auth::shared::MemoryCounters::default());
        let (a, b) = (
            Arc::new(MaildropLocks::default()),
            Arc::new(MaildropLocks::default()),
        );
        a.share(shared.clone());
        b.share(shared.clone());
        let held = a.try_lock(7).await.expect("free");
        assert!(a.try_lock(7).await.is_none(), "held on this node");
        assert!(b.try_lock(7).await.is_none(), "held on the other node");
        assert!(b.try_lock(8).await.is_some(), "another maildrop is free");
        drop(held);
        // the shared lock is given back by a task: let it run
        let mut got = None;
        for _ in 0..50 {
            tokio::task::yield_now().await;
            got = b.try_lock(7).await;
            if got.is_some() {
                break;
            }
        }
        assert!(got.is_some(), "given back when the session ends");
        // Redis down: each node on its own lock
        drop(got);
        shared.down.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(a.try_lock(9).await.is_some());
    }
}
