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
    /// Takes (or, held by `owner` already, renews) one of the `seats` places of `key` until
    /// `until` (Unix seconds); false when `seats` other owners hold places that have not expired
    /// at `now`. Atomic among nodes. A lock is a key of one seat.
    async fn take_seat(
        &self,
        key: &str,
        owner: &str,
        seats: u32,
        now: u64,
        until: u64,
    ) -> Result<bool, SharedError>;
    /// Gives `owner`'s place of `key` back (if it holds one).
    async fn leave_seat(&self, key: &str, owner: &str) -> Result<(), SharedError>;
}

/// How long a [`Seat`] outlives its last renewal (a node that died holding it), in seconds; it
/// is renewed every third of that.
pub const SEAT_TTL: u64 = 90;

/// A place held in a shared seat set ([`SharedCounters::take_seat`]) while a session lasts: the
/// cluster's side of "one POP3 session per maildrop" and "at most N IMAP sessions per account".
/// Its owner is a random token; a task renews it every [`SEAT_TTL`]`/3` seconds, and it is given
/// back when dropped (a node that dies leaves it to expire).
pub struct Seat {
    counters: std::sync::Arc<dyn SharedCounters>,
    key: String,
    owner: String,
    renew: tokio::task::JoinHandle<()>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Seat {
    /// One of the `seats` places of `key`; None when all are taken.
    pub async fn take(
        counters: &std::sync::Arc<dyn SharedCounters>,
        key: String,
        seats: u32,
    ) -> Result<Option<Seat>, SharedError> {
        let owner = format!("{:032x}", rand::random::<u128>());
        let now = unix_now();
        if !counters
            .take_seat(&key, &owner, seats, now, now + SEAT_TTL)
            .await?
        {
            return Ok(None);
        }
        let (c, k, o) = (counters.clone(), key.clone(), owner.clone());
        let renew = tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(SEAT_TTL / 3)).await;
                let now = unix_now();
                match c.take_seat(&k, &o, seats, now, now + SEAT_TTL).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(key = %k, "a shared session seat was lost (it expired)");
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "shared session seat not renewed"),
                }
            }
        });
        Ok(Some(Seat {
            counters: counters.clone(),
            key,
            owner,
            renew,
        }))
    }
}

/// All the seats of a set are taken (by sessions on other nodes).
#[derive(Debug)]
pub struct SeatsTaken;

/// A session's seat in a cluster: `Ok(Some)` taken; `Ok(None)` when there is no cluster or the
/// shared store did not answer (the node decides on its own count; logged); `Err(SeatsTaken)`
/// when all `seats` are held elsewhere.
pub async fn claim_seat(
    counters: Option<&std::sync::Arc<dyn SharedCounters>>,
    key: String,
    seats: u32,
) -> Result<Option<Seat>, SeatsTaken> {
    let Some(counters) = counters else {
        return Ok(None);
    };
    match Seat::take(counters, key.clone(), seats).await {
        Ok(Some(seat)) => Ok(Some(seat)),
        Ok(None) => Err(SeatsTaken),
        Err(e) => {
            tracing::warn!(error = %e, key = %key, "session seats counted on this node only");
            Ok(None)
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.renew.abort();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (c, k, o) = (
                self.counters.clone(),
                std::mem::take(&mut self.key),
                std::mem::take(&mut self.owner),
            );
            rt.spawn(async move {
                if let Err(e) = c.leave_seat(&k, &o).await {
                    tracing::debug!(error = %e, "shared session seat not given back: it expires");
                }
            });
        }
    }
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
    /// Seat sets: key -> owner -> until.
    seats: Mutex<HashMap<String, HashMap<String, u64>>>,
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

    /// Every key, value and seat owner held (what Redis would hold): for tests that nothing
    /// secret is stored.
    #[cfg(test)]
    pub(crate) fn everything(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for (k, (v, _)) in self.values.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            all.push(k.clone());
            all.push(v.clone());
        }
        for (k, owners) in self.seats.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            all.push(k.clone());
            all.extend(owners.keys().cloned());
        }
        all
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
    async fn take_seat(
        &self,
        key: &str,
        owner: &str,
        seats: u32,
        now: u64,
        until: u64,
    ) -> Result<bool, SharedError> {
        self.up()?;
        let mut all = self.seats.lock().unwrap_or_else(|e| e.into_inner());
        let set = all.entry(key.to_owned()).or_default();
        set.retain(|_, u| *u > now);
        if set.contains_key(owner) || set.len() < seats as usize {
            set.insert(owner.to_owned(), until);
            return Ok(true);
        }
        Ok(false)
    }
    async fn leave_seat(&self, key: &str, owner: &str) -> Result<(), SharedError> {
        self.up()?;
        let mut all = self.seats.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = all.get_mut(key) {
            set.remove(owner);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn seats_are_counted_renewed_and_expire() {
        let c = MemoryCounters::default();
        assert!(c.take_seat("k", "a", 2, 100, 190).await.unwrap());
        assert!(c.take_seat("k", "b", 2, 100, 190).await.unwrap());
        assert!(
            !c.take_seat("k", "c", 2, 100, 190).await.unwrap(),
            "both seats taken"
        );
        assert!(
            c.take_seat("k", "a", 2, 130, 220).await.unwrap(),
            "a renewal"
        );
        c.leave_seat("k", "b").await.unwrap();
        assert!(
            c.take_seat("k", "c", 2, 131, 221).await.unwrap(),
            "b's seat given back"
        );
        // at 200, c's and a's are live: d waits; at 222 both expired
        assert!(!c.take_seat("k", "d", 2, 200, 290).await.unwrap());
        assert!(
            c.take_seat("k", "d", 2, 222, 312).await.unwrap(),
            "expired seats are free"
        );
        assert!(c.take_seat("other", "x", 1, 222, 312).await.unwrap());
    }

    #[tokio::test]
    async fn a_seat_is_given_back_when_dropped() {
        let c: std::sync::Arc<dyn SharedCounters> = std::sync::Arc::new(MemoryCounters::default());
        let seat = Seat::take(&c, "k".into(), 1).await.unwrap().expect("free");
        assert!(Seat::take(&c, "k".into(), 1).await.unwrap().is_none());
        drop(seat);
        let mut again = None;
        for _ in 0..50 {
            tokio::task::yield_now().await;
            again = Seat::take(&c, "k".into(), 1).await.unwrap();
            if again.is_some() {
                break;
            }
        }
        assert!(again.is_some(), "given back by a task once dropped");
    }
}
