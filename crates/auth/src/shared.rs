//! Counters and short-lived facts shared by several nodes (Redis in a cluster), behind one trait so
//! that the guard and the send limits stay unit-testable and the single-node server needs nothing.
//!
//! Every user of this trait keeps its own in-memory state as well and decides on the larger of
//! the two views: when the shared store does not answer (an `Err`), a node goes on with its own
//! counts (per-node limits: fail safe for users, logins keep working), and when the store comes
//! back empty, what the node remembers still counts.
//!
//! Keys are built by the callers and never hold a secret or a login name in clear: a key that
//! identifies an account or a credential is an HMAC under a key all nodes share ([`tag`]).

use std::collections::HashMap;
use std::sync::Mutex;

/// Why the shared store did not answer (the node then decides on its own state). Callers log
/// it: it carries the store's error text, which can quote a reply the store sent (Redis's client
/// echoes a value it could not parse) but never a command's arguments. No secret can reach it:
/// nothing secret is ever stored (values are times, counts, "1" marks and random lock tokens;
/// keys that stand for accounts or passwords are HMAC tags), and the Redis password is only ever
/// sent, never part of an error.
#[derive(Debug, thiserror::Error)]
#[error("shared state unavailable: {0}")]
pub struct SharedError(pub String);

/// Events within a sliding window: how many, and the sum of their weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub events: u32,
    pub weight: u64,
}

#[async_trait::async_trait]
pub trait SharedCounters: Send + Sync {
    /// Adds an event of `weight` at `now` (Unix seconds) to the window `key`, forgets events at or
    /// before `now - window`, and returns what is left (the new event included). Atomic among
    /// nodes.
    async fn add(
        &self,
        key: &str,
        now: u64,
        window: u64,
        weight: u32,
    ) -> Result<Usage, SharedError>;
    /// What the window `key` holds after `now - window`.
    async fn usage(&self, key: &str, now: u64, window: u64) -> Result<Usage, SharedError>;
    /// A short value (a few numbers), if set and not expired.
    async fn get(&self, key: &str) -> Result<Option<String>, SharedError>;
    /// Sets `key` to `value` for `ttl` seconds.
    async fn set(&self, key: &str, value: &str, ttl: u64) -> Result<(), SharedError>;
    /// Marks `key` as seen for `ttl` seconds; returns whether it had been seen already (the
    /// expiry is renewed either way).
    async fn seen(&self, key: &str, ttl: u64) -> Result<bool, SharedError>;
    /// Forgets keys (windows and values alike).
    async fn forget(&self, keys: &[String]) -> Result<(), SharedError>;
    /// Takes (or, held by `owner` already, renews) the lock `key` for `ttl` seconds; false when
    /// another owner holds it.
    async fn hold(&self, key: &str, owner: &str, ttl: u64) -> Result<bool, SharedError>;
    /// Gives the lock `key` back if `owner` holds it.
    async fn release(&self, key: &str, owner: &str) -> Result<(), SharedError>;
}

/// A short, keyed tag of `parts` (HMAC-SHA-256 under the cluster's shared key, 128 bits in hex):
/// what identifies an account or a credential in a shared key.
pub fn tag(key: &[u8; 32], parts: &[&[u8]]) -> String {
    use hmac::{KeyInit, Mac};
    let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
        .expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
        m.update(&[0]);
    }
    hex::encode(&m.finalize().into_bytes()[..16])
}

/// An in-process [`SharedCounters`]: what tests use to stand for Redis between two guards or two
/// limiters of one process (and a reference for the semantics the Redis version keeps).
#[derive(Default)]
pub struct MemoryCounters {
    windows: Mutex<HashMap<String, Vec<(u64, u32)>>>,
    values: Mutex<HashMap<String, (String, u64)>>,
    /// The time the values' expiry is measured against (tests move it).
    clock: Option<std::sync::Arc<dyn crate::guard::Clock>>,
    /// While set, every call fails (Redis down).
    pub down: std::sync::atomic::AtomicBool,
}

impl MemoryCounters {
    /// Values expire by `clock` (windows by the times their callers give).
    pub fn new(clock: std::sync::Arc<dyn crate::guard::Clock>) -> MemoryCounters {
        MemoryCounters {
            clock: Some(clock),
            ..Default::default()
        }
    }
    fn up(&self) -> Result<(), SharedError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SharedError("down".into()));
        }
        Ok(())
    }
    fn now(&self) -> u64 {
        self.clock.as_ref().map_or(0, |c| c.now())
    }
}

#[async_trait::async_trait]
impl SharedCounters for MemoryCounters {
    async fn add(
        &self,
        key: &str,
        now: u64,
        window: u64,
        weight: u32,
    ) -> Result<Usage, SharedError> {
        self.up()?;
        self.windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_owned())
            .or_default()
            .push((now, weight));
        self.usage(key, now, window).await
    }
    async fn usage(&self, key: &str, now: u64, window: u64) -> Result<Usage, SharedError> {
        self.up()?;
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let cut = now.saturating_sub(window);
        let v = w.entry(key.to_owned()).or_default();
        v.retain(|&(t, _)| t > cut);
        Ok(Usage {
            events: v.len() as u32,
            weight: v.iter().map(|&(_, n)| u64::from(n)).sum(),
        })
    }
    async fn get(&self, key: &str) -> Result<Option<String>, SharedError> {
        self.up()?;
        let now = self.now();
        let v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        Ok(v.get(key)
            .filter(|(_, exp)| *exp > now)
            .map(|(s, _)| s.clone()))
    }
    async fn set(&self, key: &str, value: &str, ttl: u64) -> Result<(), SharedError> {
        self.up()?;
        let now = self.now();
        let mut v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        v.insert(key.to_owned(), (value.to_owned(), now + ttl));
        Ok(())
    }
    async fn seen(&self, key: &str, ttl: u64) -> Result<bool, SharedError> {
        let was = self.get(key).await?.is_some();
        self.set(key, "1", ttl).await?;
        Ok(was)
    }
    async fn hold(&self, key: &str, owner: &str, ttl: u64) -> Result<bool, SharedError> {
        match self.get(key).await? {
            Some(o) if o != owner => Ok(false),
            _ => {
                self.set(key, owner, ttl).await?;
                Ok(true)
            }
        }
    }
    async fn release(&self, key: &str, owner: &str) -> Result<(), SharedError> {
        if self.get(key).await?.as_deref() == Some(owner) {
            self.forget(&[key.to_owned()]).await?;
        }
        Ok(())
    }
    async fn forget(&self, keys: &[String]) -> Result<(), SharedError> {
        self.up()?;
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let mut v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        for k in keys {
            w.remove(k);
            v.remove(k);
        }
        Ok(())
    }
}
