//! Outgoing send limits per authenticated account: messages per hour and recipients per hour
//! (recipients per message is `smtp.max_recipients`). A sliding one-hour window in memory; a
//! cluster would keep it in Redis.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

    /// May the account add one more recipient (it already has `pending` in this transaction)?
    pub fn allows_recipient(&self, account: Sender, limits: SendLimits, pending: u32) -> bool {
        self.allows_at(account, limits, pending, Instant::now())
    }

    fn allows_at(&self, account: Sender, limits: SendLimits, pending: u32, now: Instant) -> bool {
        let mut m = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let q = m.entry(account).or_default();
        let (msgs, rcpts) = Self::usage(q, now);
        msgs < limits.messages_per_hour && rcpts + pending < limits.recipients_per_hour
    }

    /// Records a message accepted for `recipients` recipients.
    pub fn record(&self, account: Sender, recipients: u32) {
        self.record_at(account, recipients, Instant::now());
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
}
