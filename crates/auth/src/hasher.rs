//! Password hashing with argon2id, and the bounded pool that runs it off the async threads.
//!
//! argon2id costs ~20 MiB and tens of milliseconds per call by design; run on the async workers it
//! would stall every session. [`HashPool`] runs it on tokio's blocking threads, at most `slots` at a
//! time; an attempt that cannot get a slot within the configured wait fails temporarily instead of
//! queueing forever (so a flood of logins cannot grow an unbounded queue).

use std::sync::Arc;
use std::time::Duration;

use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

/// Hashes and verifies passwords. Injected so that tests can use cheap parameters.
pub trait PasswordHasher: Send + Sync + 'static {
    /// A PHC string (`$argon2id$v=19$m=...`) with a fresh random salt.
    fn hash(&self, password: &[u8]) -> Result<String, HashError>;
    /// True if `password` matches the PHC string. A malformed PHC string never matches.
    fn verify(&self, password: &[u8], phc: &str) -> bool;
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    #[error("hashing failed: {0}")]
    Hash(String),
    #[error("all password verification slots are busy")]
    Busy,
    #[error("the hashing task failed")]
    Join,
}

/// argon2id (RFC 9106) with configurable costs.
pub struct Argon2Hasher {
    params: Params,
}

impl Argon2Hasher {
    pub fn new(memory_kib: u32, iterations: u32, parallelism: u32) -> Result<Self, HashError> {
        let params = Params::new(memory_kib, iterations, parallelism, None)
            .map_err(|e| HashError::Params(e.to_string()))?;
        Ok(Argon2Hasher { params })
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }
}

impl PasswordHasher for Argon2Hasher {
    fn hash(&self, password: &[u8]) -> Result<String, HashError> {
        self.argon2()
            .hash_password(password)
            .map(|h| h.to_string())
            .map_err(|e| HashError::Hash(e.to_string()))
    }

    fn verify(&self, password: &[u8], phc: &str) -> bool {
        // Parameters are read from the PHC string itself, so hashes made with older costs still verify.
        self.argon2().verify_password(password, phc).is_ok()
    }
}

/// Runs a [`PasswordHasher`] on the blocking pool with a bounded number of concurrent calls.
#[derive(Clone)]
pub struct HashPool {
    hasher: Arc<dyn PasswordHasher>,
    slots: Arc<Semaphore>,
    wait: Duration,
}

impl HashPool {
    /// `slots == 0` means one per available core.
    pub fn new(hasher: Arc<dyn PasswordHasher>, slots: usize, wait: Duration) -> Self {
        let slots = if slots == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            slots
        };
        HashPool {
            hasher,
            slots: Arc::new(Semaphore::new(slots)),
            wait,
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn PasswordHasher) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = tokio::time::timeout(self.wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| HashError::Busy)?
            .map_err(|_| HashError::Busy)?;
        let hasher = self.hasher.clone();
        let out = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(hasher.as_ref())
        })
        .await
        .map_err(|_| HashError::Join)?;
        Ok(out)
    }

    pub async fn verify(&self, password: &SecretString, phc: String) -> Result<bool, HashError> {
        let pw = password.clone();
        self.run(move |h| {
            let t = std::time::Instant::now();
            let r = h.verify(pw.expose_secret().as_bytes(), &phc);
            postern_metrics::argon2_seconds(t.elapsed().as_secs_f64());
            r
        })
        .await
    }

    pub async fn hash(&self, password: &SecretString) -> Result<String, HashError> {
        let pw = password.clone();
        self.run(move |h| h.hash(pw.expose_secret().as_bytes()))
            .await?
    }

    /// Hashing without the pool, for command-line tools that have no runtime.
    pub fn hasher(&self) -> &dyn PasswordHasher {
        self.hasher.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_round_trip() {
        let h = Argon2Hasher::new(64, 1, 1).unwrap();
        let phc = h.hash(b"a password").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(h.verify(b"a password", &phc));
        assert!(!h.verify(b"another", &phc));
        assert!(!h.verify(b"a password", "not a phc string"));
        // Two hashes of one password differ (random salt).
        assert_ne!(phc, h.hash(b"a password").unwrap());
    }

    #[tokio::test]
    async fn pool_is_bounded_and_fails_temporarily_when_saturated() {
        struct Slow;
        impl PasswordHasher for Slow {
            fn hash(&self, _: &[u8]) -> Result<String, HashError> {
                Ok(String::new())
            }
            fn verify(&self, _: &[u8], _: &str) -> bool {
                std::thread::sleep(Duration::from_millis(300));
                true
            }
        }
        let pool = HashPool::new(Arc::new(Slow), 1, Duration::from_millis(50));
        let pw = SecretString::from("x");
        let p2 = pool.clone();
        let pw2 = pw.clone();
        let first = tokio::spawn(async move { p2.verify(&pw2, String::new()).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(matches!(
            pool.verify(&pw, String::new()).await,
            Err(HashError::Busy)
        ));
        assert!(first.await.unwrap().unwrap());
    }
}
