//! Outgoing send limits per authenticated account: messages per hour and recipients per hour
//! (recipients per message is `smtp.max_recipients`). A sliding one-hour window in memory and, in
//! a cluster ([`SendLimiter::share`]), in Redis as well, so that an account sending through
//! several nodes meets one limit; a node decides on the larger of its own and the shared count,
//! and on its own alone while Redis does not answer.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use postern_auth::shared::SharedCounters;

const HOUR: Duration = Duration::from_secs(3600);

/// The limits that apply to one account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendLimits {
    pub messages_per_hour: u32,
    pub recipients_per_hour: u32,
}

/// Whose sending is counted: accounts and applications have separate id spaces.
pub type Sender = (postern_auth::PrincipalKind, i64);

#[derive(Default)]
pub struct SendLimiter {
    sent: Mutex<HashMap<Sender, VecDeque<(Instant, u32)>>>,
    shared: OnceLock<Arc<dyn SharedCounters>>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The shared window of a sender (ids, not addresses: nothing identifying a credential).
fn key(sender: Sender) -> String {
    let kind = match sender.0 {
        postern_auth::PrincipalKind::Account => "account",
        postern_auth::PrincipalKind::Application => "app",
    };
    format!("send:{kind}:{}", sender.1)
}

impl SendLimiter {
    fn usage(q: &mut VecDeque<(Instant, u32)>, now: Instant) -> (u32, u32) {
        while q
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= HOUR)
        {
            q.pop_front();
        }
        (q.len() as u32, q.iter().map(|(_, r)| r).sum())
    }

    /// Counts sending on every node through `counters` as well (once; a second call is ignored).
    pub fn share(&self, counters: Arc<dyn SharedCounters>) {
        let _ = self.shared.set(counters);
    }

    /// May the account add one more recipient (it already has `pending` in this transaction)?
    pub async fn allows_recipient(
        &self,
        account: Sender,
        limits: SendLimits,
        pending: u32,
    ) -> bool {
        let (mut msgs, mut rcpts) = self.used_at(account, Instant::now());
        if let Some(shared) = self.shared.get() {
            match shared
                .usage(&key(account), unix_now(), HOUR.as_secs())
                .await
            {
                Ok(u) => {
                    msgs = msgs.max(u.events);
                    rcpts = rcpts.max(u32::try_from(u.weight).unwrap_or(u32::MAX));
                }
                Err(e) => tracing::debug!(error = %e, "send limit counted on this node only"),
            }
        }
        Self::within(limits, msgs, rcpts, pending)
    }

    fn within(limits: SendLimits, msgs: u32, rcpts: u32, pending: u32) -> bool {
        msgs < limits.messages_per_hour
            && rcpts.saturating_add(pending) < limits.recipients_per_hour
    }

    fn used_at(&self, account: Sender, now: Instant) -> (u32, u32) {
        let mut m = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        Self::usage(m.entry(account).or_default(), now)
    }

    #[cfg(test)]
    fn allows_at(&self, account: Sender, limits: SendLimits, pending: u32, now: Instant) -> bool {
        let (msgs, rcpts) = self.used_at(account, now);
        Self::within(limits, msgs, rcpts, pending)
    }

    /// Records a message accepted for `recipients` recipients.
    pub async fn record(&self, account: Sender, recipients: u32) {
        self.record_at(account, recipients, Instant::now());
        if let Some(shared) = self.shared.get() {
            let r = shared
                .add(&key(account), unix_now(), HOUR.as_secs(), recipients)
                .await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "message counted toward the send limit on this node only");
            }
        }
    }

    fn record_at(&self, account: Sender, recipients: u32, now: Instant) {
        let mut m = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let q = m.entry(account).or_default();
        Self::usage(q, now);
        q.push_back((now, recipients));
        // Forget accounts with nothing in the window so memory follows current senders only.
        if m.len() > 10_000 {
            m.retain(|_, q| q.back().is_some_and(|(t, _)| now.duration_since(*t) < HOUR));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hourly_windows() {
        let l = SendLimiter::default();
        let lim = SendLimits {
            messages_per_hour: 3,
            recipients_per_hour: 5,
        };
        let t0 = Instant::now();
        assert!(l.allows_at((postern_auth::PrincipalKind::Account, 1), lim, 0, t0));
        l.record_at((postern_auth::PrincipalKind::Account, 1), 2, t0);
        l.record_at((postern_auth::PrincipalKind::Account, 1), 2, t0);
        // 4 recipients used: one more is fine, a second in the same message is not
        assert!(l.allows_at((postern_auth::PrincipalKind::Account, 1), lim, 0, t0));
        assert!(!l.allows_at((postern_auth::PrincipalKind::Account, 1), lim, 1, t0));
        l.record_at((postern_auth::PrincipalKind::Account, 1), 1, t0);
        // 3 messages used
        assert!(!l.allows_at((postern_auth::PrincipalKind::Account, 1), lim, 0, t0));
        // another account is not affected
        assert!(l.allows_at((postern_auth::PrincipalKind::Account, 2), lim, 0, t0));
        // an hour later the window is empty again
        assert!(l.allows_at((postern_auth::PrincipalKind::Account, 1), lim, 0, t0 + HOUR));
    }

    #[tokio::test]
    async fn two_nodes_share_one_limit() {
        let shared = Arc::new(postern_auth::shared::MemoryCounters::default());
        let (a, b) = (SendLimiter::default(), SendLimiter::default());
        a.share(shared.clone());
        b.share(shared.clone());
        let lim = SendLimits {
            messages_per_hour: 4,
            recipients_per_hour: 100,
        };
        let who = (postern_auth::PrincipalKind::Application, 3);
        for l in [&a, &b, &a] {
            assert!(l.allows_recipient(who, lim, 0).await);
            l.record(who, 1).await;
        }
        assert!(b.allows_recipient(who, lim, 0).await);
        b.record(who, 1).await;
        // four messages through two nodes: the limit holds on both
        assert!(!a.allows_recipient(who, lim, 0).await);
        assert!(!b.allows_recipient(who, lim, 0).await);
        // recipients too: 2 per message on another sender, limit 5
        let lim = SendLimits {
            messages_per_hour: 100,
            recipients_per_hour: 5,
        };
        let other = (postern_auth::PrincipalKind::Account, 3);
        a.record(other, 2).await;
        b.record(other, 2).await;
        assert!(a.allows_recipient(other, lim, 0).await);
        assert!(!a.allows_recipient(other, lim, 1).await);
        // Redis down: each node on its own count
        shared.down.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(b.allows_recipient(who, lim, 0).await);
    }
}
