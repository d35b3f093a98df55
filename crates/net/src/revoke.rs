//! Ending an account's live sessions (incident response): every authenticated SMTP, IMAP and
//! POP3 session of an account waits on one token per account, a child of the server's shutdown
//! token; revoking the account cancels it, and each session ends as at shutdown (IMAP `BYE`,
//! including in IDLE; SMTP 421; POP3 `-ERR`). The next login gets a fresh token.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Revocations {
    tokens: Mutex<HashMap<i64, CancellationToken>>,
}

impl Revocations {
    /// The token an authenticated session of `account` waits on (instead of `shutdown`).
    pub fn token_for(&self, account: i64, shutdown: &CancellationToken) -> CancellationToken {
        let mut map = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(account)
            .or_insert_with(|| shutdown.child_token())
            .clone()
    }

    /// Ends every live session of `account`; returns whether any was waiting.
    pub fn revoke(&self, account: i64) -> bool {
        let t = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&account);
        match t {
            Some(t) => {
                t.cancel();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_ends_that_account_only_and_resets() {
        let r = Revocations::default();
        let shutdown = CancellationToken::new();
        let a1 = r.token_for(1, &shutdown);
        let a1b = r.token_for(1, &shutdown);
        let b = r.token_for(2, &shutdown);
        assert!(r.revoke(1));
        assert!(a1.is_cancelled() && a1b.is_cancelled() && !b.is_cancelled());
        // a new login of the account gets a live token
        assert!(!r.token_for(1, &shutdown).is_cancelled());
        // shutdown still reaches every session
        shutdown.cancel();
        assert!(b.is_cancelled());
    }
}
