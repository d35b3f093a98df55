//! Throttling, bans and lockout, decided before any password hashing.
//!
//! One mechanism for SMTP, IMAP and POP3, kept in memory and, in a cluster ([`Guard::share`]),
//! also in Redis, so that an attack spread over several nodes meets one set of counters (see
//! [`crate::shared`]). Every decision takes the time from an injected [`Clock`], so windows,
//! escalation and expiry are unit-tested without sleeping.
//!
//! * Per source IP, per network (IPv4 /24, IPv6 /64) and per account failure counters over a short
//!   window, plus a long window per account for slow attacks.
//! * A source over its limit is banned; repeat offenders get longer bans (doubling, capped); bans
//!   expire. Allowlisted networks are never throttled or banned.
//! * Account lockout applies to **unknown clients only**: a source from which the account logged in
//!   successfully within `known_client_days` is not locked out by an attack from elsewhere.
//! * The same wrong password from the same source counts once: a short-lived HMAC (per-process
//!   key) of (account, source, password) remembers recent failures; neither the password nor an
//!   unkeyed hash of it is kept.
//! * A wrong second-factor code (TOTP or recovery code) after the right password is a failure of
//!   its own ([`Guard::code_failure`]): never deduplicated (the password is the same each time,
//!   by design), counted toward the source's ban, and `code_max_failures` of them within
//!   `code_window_secs` lock the account's second factor for sources that are not known clients,
//!   for `account_lockout_secs`, doubling with each repeat (capped at `ban_max_secs`).
//! * An attempt against a locked account still counts toward its source's ban
//!   ([`Guard::locked_attempt`]): a lockout does not give an attacker free guesses elsewhere.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use secrecy::{ExposeSecret, SecretString};

use crate::shared::{self, SharedCounters};

/// Seconds since the Unix epoch.
pub trait Clock: Send + Sync {
    fn now(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

use postern_types::canonical_ip as canonical;
pub use postern_types::Cidr;

/// Limits, from `[defence]` in the configuration.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    pub window_secs: u64,
    pub ip_max_failures: u32,
    pub network_max_failures: u32,
    pub account_max_failures: u32,
    pub account_long_window_secs: u64,
    pub account_long_max_failures: u32,
    pub account_lockout_secs: u64,
    pub ban_secs: u64,
    pub ban_max_secs: u64,
    pub offender_memory_secs: u64,
    pub known_client_secs: u64,
    pub same_password_secs: u64,
    pub failure_delay_ms: u64,
    pub failure_delay_max_ms: u64,
    pub allowlist: Vec<Cidr>,
    /// Wrong second-factor codes per account (from sources that are not known clients) within
    /// `code_window_secs` that lock its second factor.
    pub code_max_failures: u32,
    pub code_window_secs: u64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            window_secs: 900,
            ip_max_failures: 10,
            network_max_failures: 30,
            account_max_failures: 10,
            account_long_window_secs: 86400,
            account_long_max_failures: 50,
            account_lockout_secs: 900,
            ban_secs: 600,
            ban_max_secs: 86400,
            offender_memory_secs: 7 * 86400,
            known_client_secs: 30 * 86400,
            same_password_secs: 3600,
            failure_delay_ms: 250,
            failure_delay_max_ms: 4000,
            allowlist: Vec::new(),
            code_max_failures: 5,
            code_window_secs: 900,
        }
    }
}

/// A ban on a host or a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub target: Cidr,
    pub until: u64,
    pub reason: String,
    /// How many bans this target has had within `offender_memory_secs` (for escalation).
    pub offences: u32,
}

/// Where bans live so that the CLI sees and lifts them while the server runs.
#[async_trait::async_trait]
pub trait BanStore: Send + Sync {
    async fn save_ban(&self, ban: &Ban) -> Result<(), String>;
    async fn load_bans(&self, now: u64) -> Result<Vec<Ban>, String>;
}

/// What the guard says before a password is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// The source (or its network) is banned: no hashing, temporary failure, disconnect.
    Banned,
    /// The account is locked for this (unknown) source: treated as a failure without hashing.
    Locked,
}

/// What the guard decided after a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureEffect {
    /// Delay before answering the failure.
    pub delay_ms: u64,
    /// A ban that this failure caused.
    pub banned: Option<Ban>,
    /// The account became locked for unknown sources.
    pub locked: bool,
    /// The failure repeated a recent identical wrong password and was not counted.
    pub repeat: bool,
}

#[derive(Default)]
struct Window {
    /// Failure times, oldest first; trimmed to the window on every use.
    times: Vec<u64>,
}

impl Window {
    fn count(&mut self, now: u64, window: u64) -> u32 {
        let cut = now.saturating_sub(window);
        self.times.retain(|&t| t > cut);
        self.times.len() as u32
    }
    fn add(&mut self, now: u64, window: u64, cap: usize) -> u32 {
        self.count(now, window);
        if self.times.len() < cap {
            self.times.push(now);
        }
        self.times.len() as u32
    }
}

#[derive(Default)]
struct State {
    ip: HashMap<IpAddr, Window>,
    net: HashMap<Cidr, Window>,
    account: HashMap<String, Window>,
    account_long: HashMap<String, Window>,
    locked_until: HashMap<String, u64>,
    /// (account, source) -> last successful login.
    known: HashMap<(String, IpAddr), u64>,
    /// HMAC of (account, source, password) -> time of the failure.
    recent_wrong: HashMap<[u8; 32], u64>,
    bans: HashMap<Cidr, Ban>,
    /// target -> (offences, last ban time), for escalation.
    offenders: HashMap<Cidr, (u32, u64)>,
    /// Wrong second-factor codes per account.
    code: HashMap<String, Window>,
    /// account -> (second factor locked until, how many locks in a row, time of the last lock).
    code_locked: HashMap<String, (u64, u32, u64)>,
    last_sweep: u64,
}

pub struct Guard {
    cfg: GuardConfig,
    clock: Arc<dyn Clock>,
    key: zeroize::Zeroizing<[u8; 32]>,
    state: Mutex<State>,
    store: Option<Arc<dyn BanStore>>,
    shared: std::sync::OnceLock<Shared>,
}

/// The cluster's view of the guard's counters ([`Guard::share`]).
struct Shared {
    counters: Arc<dyn SharedCounters>,
    /// Shared by all nodes: the same account, source and password give the same tag everywhere.
    key: zeroize::Zeroizing<[u8; 32]>,
}

/// Bound on every per-key history, so that an attack cannot grow memory without limit.
const MAX_TIMES: usize = 4096;

impl Guard {
    pub fn new(cfg: GuardConfig, clock: Arc<dyn Clock>, store: Option<Arc<dyn BanStore>>) -> Guard {
        Guard {
            cfg,
            clock,
            key: zeroize::Zeroizing::new(rand::random()),
            state: Mutex::new(State::default()),
            store,
            shared: std::sync::OnceLock::new(),
        }
    }

    /// Shares the failure windows, lockouts, known clients, repeated wrong passwords and ban
    /// escalation with the other nodes through `counters`, under `key` (the same on every node:
    /// account names, sources and passwords only appear there as HMACs under it). The node's own
    /// counts are kept as well: a decision takes the larger of the two, and the node's alone when
    /// the shared store does not answer. Once per guard; a second call is ignored.
    pub fn share(&self, counters: Arc<dyn SharedCounters>, key: [u8; 32]) {
        let _ = self.shared.set(Shared {
            counters,
            key: zeroize::Zeroizing::new(key),
        });
    }

    /// The current time on the guard's clock (Unix seconds); the auth core uses it for every
    /// expiry so that tests can move one fake clock.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    pub fn config(&self) -> &GuardConfig {
        &self.cfg
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn allowlisted(&self, ip: IpAddr) -> bool {
        self.cfg.allowlist.iter().any(|c| c.contains(ip))
    }

    /// The ban that applies to `ip`, if any (host or network).
    pub fn ban_of(&self, ip: IpAddr) -> Option<Ban> {
        if self.allowlisted(ip) {
            return None;
        }
        let now = self.clock.now();
        let st = self.lock();
        st.bans
            .values()
            .find(|b| b.until > now && b.target.contains(ip))
            .cloned()
    }

    pub fn is_banned(&self, ip: IpAddr) -> bool {
        self.ban_of(ip).is_some()
    }

    /// Replaces the in-memory bans with the stored ones (the CLI adds and lifts bans there).
    pub async fn sync_bans(&self) {
        let Some(store) = &self.store else { return };
        let now = self.clock.now();
        match store.load_bans(now).await {
            Ok(bans) => {
                let mut st = self.lock();
                st.bans = bans.into_iter().map(|b| (b.target, b)).collect();
            }
            Err(e) => tracing::warn!(error = %e, "could not load bans"),
        }
    }

    fn fingerprint(&self, account: &str, ip: IpAddr, password: &SecretString) -> [u8; 32] {
        use hmac::{KeyInit, Mac};
        let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.key[..])
            .expect("HMAC takes any key length");
        m.update(account.as_bytes());
        m.update(&[0]);
        m.update(canonical(ip).to_string().as_bytes());
        m.update(&[0]);
        m.update(password.expose_secret().as_bytes());
        m.finalize().into_bytes().into()
    }

    fn is_known(st: &State, cfg: &GuardConfig, account: &str, ip: IpAddr, now: u64) -> bool {
        st.known
            .get(&(account.to_owned(), canonical(ip)))
            .is_some_and(|&t| now.saturating_sub(t) <= cfg.known_client_secs)
    }

    /// The shared key of an account's fact (`kind:TAG`, the account as an HMAC).
    fn account_key(sh: &Shared, kind: &str, account: &str) -> String {
        format!("{kind}:{}", shared::tag(&sh.key, &[account.as_bytes()]))
    }

    /// Whether `ip` logged in to `account` recently, on this node or (shared) any other.
    async fn known(&self, account: &str, ip: IpAddr, now: u64) -> bool {
        if Self::is_known(&self.lock(), &self.cfg, account, ip, now) {
            return true;
        }
        let Some(sh) = self.shared.get() else {
            return false;
        };
        let key = format!(
            "known:{}",
            shared::tag(
                &sh.key,
                &[account.as_bytes(), canonical(ip).to_string().as_bytes()]
            )
        );
        match sh.counters.get(&key).await {
            Ok(v) => v.is_some(),
            Err(e) => {
                tracing::debug!(error = %e, "known-client look-up: this node's view only");
                false
            }
        }
    }

    /// A shared value of numbers (`until level last`), if any and readable.
    async fn shared_numbers(&self, key: &str) -> Option<Vec<u64>> {
        let sh = self.shared.get()?;
        match sh.counters.get(key).await {
            Ok(Some(v)) => Some(v.split(' ').filter_map(|n| n.parse().ok()).collect()),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "shared guard state: this node's view only");
                None
            }
        }
    }

    async fn shared_set(&self, key: &str, value: &str, ttl: u64) {
        if let Some(sh) = self.shared.get() {
            if let Err(e) = sh.counters.set(key, value, ttl.max(1)).await {
                tracing::debug!(error = %e, "shared guard state not updated");
            }
        }
    }

    /// The end of the account's lockout (password logins), on this node or any other.
    async fn locked_until(&self, account: &str) -> u64 {
        let local = self.lock().locked_until.get(account).copied().unwrap_or(0);
        let Some(sh) = self.shared.get() else {
            return local;
        };
        let shared = self
            .shared_numbers(&Self::account_key(sh, "lock", account))
            .await
            .and_then(|v| v.first().copied())
            .unwrap_or(0);
        local.max(shared)
    }

    /// The account's second-factor lock: (until, level, time of the last lock), the later of
    /// this node's and the shared one.
    async fn code_lock(&self, account: &str) -> (u64, u32, u64) {
        let local = self
            .lock()
            .code_locked
            .get(account)
            .copied()
            .unwrap_or((0, 0, 0));
        let Some(sh) = self.shared.get() else {
            return local;
        };
        match self
            .shared_numbers(&Self::account_key(sh, "codelock", account))
            .await
            .as_deref()
        {
            Some(&[until, level, last]) if last >= local.2 => (until, level as u32, last),
            _ => local,
        }
    }

    /// Adds a failure to a window kept here (`local`) and, when shared, under `key`; returns the
    /// larger count.
    async fn count(
        &self,
        local: impl FnOnce(&mut State) -> u32,
        key: impl FnOnce(&Shared) -> String,
        now: u64,
        window: u64,
    ) -> u32 {
        let n = local(&mut self.lock());
        let Some(sh) = self.shared.get() else {
            return n;
        };
        match sh.counters.add(&key(sh), now, window, 1).await {
            Ok(u) => n.max(u.events),
            Err(e) => {
                tracing::debug!(error = %e, "failure counted on this node only");
                n
            }
        }
    }

    /// [`Guard::count`] for a window of the account's (`map` here, `kind:TAG` when shared).
    async fn count_account(
        &self,
        map: fn(&mut State) -> &mut HashMap<String, Window>,
        kind: &str,
        account: &str,
        now: u64,
        window: u64,
    ) -> u32 {
        self.count(
            |st| {
                map(st)
                    .entry(account.to_owned())
                    .or_default()
                    .add(now, window, MAX_TIMES)
            },
            |sh| Self::account_key(sh, kind, account),
            now,
            window,
        )
        .await
    }

    /// Remembers a wrong password from a source; returns whether it was a repeat of one seen
    /// within `same_password_secs` (here or, shared, on any node).
    async fn repeated(&self, account: &str, ip: IpAddr, password: &SecretString, now: u64) -> bool {
        let fp = self.fingerprint(account, ip, password);
        let local = {
            let mut st = self.lock();
            self.sweep(&mut st, now);
            let repeat = st
                .recent_wrong
                .get(&fp)
                .is_some_and(|&t| now.saturating_sub(t) <= self.cfg.same_password_secs);
            st.recent_wrong.insert(fp, now);
            repeat
        };
        let Some(sh) = self.shared.get() else {
            return local;
        };
        let key = format!(
            "wrong:{}",
            shared::tag(
                &sh.key,
                &[
                    account.as_bytes(),
                    canonical(ip).to_string().as_bytes(),
                    password.expose_secret().as_bytes(),
                ]
            )
        );
        match sh.counters.seen(&key, self.cfg.same_password_secs).await {
            Ok(seen) => local || seen,
            Err(e) => {
                tracing::debug!(error = %e, "repeated-password check: this node's view only");
                local
            }
        }
    }

    /// Before hashing: may `ip` try a password for `account`?
    pub async fn check(&self, ip: IpAddr, account: &str) -> Verdict {
        if self.allowlisted(ip) {
            return Verdict::Allow;
        }
        if self.is_banned(ip) {
            return Verdict::Banned;
        }
        let now = self.clock.now();
        if self.locked_until(account).await > now && !self.known(account, ip, now).await {
            return Verdict::Locked;
        }
        Verdict::Allow
    }

    /// Before checking a second-factor code: is the source banned, or the account's second factor
    /// locked for this (unknown) source?
    pub async fn check_code(&self, ip: IpAddr, account: &str) -> Verdict {
        if self.is_banned(ip) {
            return Verdict::Banned;
        }
        if self.allowlisted(ip) {
            return Verdict::Allow;
        }
        let now = self.clock.now();
        if self.code_lock(account).await.0 > now && !self.known(account, ip, now).await {
            return Verdict::Locked;
        }
        Verdict::Allow
    }

    /// Whether the account's second factor is locked for unknown sources now.
    pub async fn is_code_locked(&self, account: &str) -> bool {
        self.code_lock(account).await.0 > self.clock.now()
    }

    /// Counts one source failure (its address and network windows); bans past the limits.
    async fn count_source(&self, ip: IpAddr, now: u64) -> (u32, Option<Ban>) {
        let w = self.cfg.window_secs;
        let host = canonical(ip);
        let n_ip = self
            .count(
                |st| st.ip.entry(host).or_default().add(now, w, MAX_TIMES),
                |_| format!("ip:{host}"),
                now,
                w,
            )
            .await;
        let net = Cidr::network_of(ip);
        let n_net = self
            .count(
                |st| st.net.entry(net).or_default().add(now, w, MAX_TIMES),
                |_| format!("net:{net}"),
                now,
                w,
            )
            .await;
        let ban = if n_ip >= self.cfg.ip_max_failures {
            Some(
                self.make_ban(Cidr::host(ip), now, "too many failed logins")
                    .await,
            )
        } else if n_net >= self.cfg.network_max_failures {
            Some(
                self.make_ban(net, now, "too many failed logins from the network")
                    .await,
            )
        } else {
            None
        };
        (n_ip, ban)
    }

    async fn persist(&self, ban: Option<Ban>, effect: &mut FailureEffect) {
        if let Some(b) = ban {
            if let Some(store) = &self.store {
                if let Err(e) = store.save_ban(&b).await {
                    tracing::error!(error = %e, "could not store a ban");
                }
            }
            effect.banned = Some(b);
        }
    }

    /// A wrong (or missing) second-factor code after the right password. Not deduplicated: the
    /// password is the same on every try, so "same password, counted once" would give an
    /// attacker who knows it unlimited guesses. `effect.locked` says the second factor just
    /// became locked (the owner should be told: someone knows the password).
    pub async fn code_failure(&self, ip: IpAddr, account: &str) -> FailureEffect {
        let now = self.clock.now();
        let mut effect = FailureEffect {
            delay_ms: self.cfg.failure_delay_ms,
            banned: None,
            locked: false,
            repeat: false,
        };
        self.sweep(&mut self.lock(), now);
        if self.allowlisted(ip) {
            return effect;
        }
        let (n_ip, ban) = self.count_source(ip, now).await;
        if !self.known(account, ip, now).await {
            let cw = self.cfg.code_window_secs;
            let n = self
                .count_account(|st| &mut st.code, "code", account, now, cw)
                .await;
            let (until, level, last) = self.code_lock(account).await;
            if n >= self.cfg.code_max_failures && until <= now {
                let level =
                    if level > 0 && now.saturating_sub(last) <= self.cfg.offender_memory_secs {
                        level + 1
                    } else {
                        1
                    };
                let secs = self
                    .cfg
                    .account_lockout_secs
                    .saturating_mul(1u64 << (level - 1).min(30))
                    .min(self.cfg.ban_max_secs.max(self.cfg.account_lockout_secs));
                {
                    let mut st = self.lock();
                    st.code_locked
                        .insert(account.to_owned(), (now + secs, level, now));
                    st.code.remove(account);
                }
                if let Some(sh) = self.shared.get() {
                    let value = format!("{} {level} {now}", now + secs);
                    let ttl = secs + self.cfg.offender_memory_secs;
                    self.shared_set(&Self::account_key(sh, "codelock", account), &value, ttl)
                        .await;
                    let _ = sh
                        .counters
                        .forget(&[Self::account_key(sh, "code", account)])
                        .await;
                }
                effect.locked = true;
            }
        }
        effect.delay_ms = self.delay(n_ip);
        self.persist(ban, &mut effect).await;
        effect
    }

    /// An attempt against a locked account: no password was checked, but the source is charged
    /// for it (the same wrong password from the same source still counts once), so that a
    /// lockout does not become a free pass to keep guessing.
    pub async fn locked_attempt(
        &self,
        ip: IpAddr,
        account: &str,
        password: &SecretString,
    ) -> FailureEffect {
        let now = self.clock.now();
        let mut effect = FailureEffect {
            delay_ms: self.cfg.failure_delay_ms,
            banned: None,
            locked: false,
            repeat: false,
        };
        let repeat = self.repeated(account, ip, password, now).await;
        if repeat || self.allowlisted(ip) {
            effect.repeat = repeat;
            return effect;
        }
        let (n_ip, ban) = self.count_source(ip, now).await;
        effect.delay_ms = self.delay(n_ip);
        self.persist(ban, &mut effect).await;
        effect
    }

    /// Lifts an account's lockout and forgets its failure counts (helpdesk "unlock"), on every
    /// node when shared. Returns whether it was locked.
    pub async fn unlock(&self, account: &str) -> bool {
        let now = self.clock.now();
        let was = self.locked_until(account).await > now || self.code_lock(account).await.0 > now;
        {
            let mut st = self.lock();
            st.account.remove(account);
            st.account_long.remove(account);
            st.code.remove(account);
            st.code_locked.remove(account);
            st.locked_until.remove(account);
        }
        if let Some(sh) = self.shared.get() {
            let keys: Vec<String> = ["acc", "accl", "code", "codelock", "lock"]
                .iter()
                .map(|k| Self::account_key(sh, k, account))
                .collect();
            if let Err(e) = sh.counters.forget(&keys).await {
                tracing::warn!(error = %e, "the unlock reached this node only");
            }
        }
        was
    }

    /// Bans and account lockouts in force now, as this node knows them (for its metrics gauges).
    pub fn active_counts(&self) -> (usize, usize) {
        let now = self.clock.now();
        let st = self.lock();
        (
            st.bans.values().filter(|b| b.until > now).count(),
            st.locked_until.values().filter(|&&u| u > now).count(),
        )
    }

    /// Whether the account is locked for unknown clients now (on any node, when shared).
    pub async fn is_locked(&self, account: &str) -> bool {
        self.locked_until(account).await > self.clock.now()
    }

    /// Records a successful login: the source becomes a known client of the account (on every
    /// node, when shared).
    pub async fn success(&self, ip: IpAddr, account: &str) {
        let now = self.clock.now();
        {
            let mut st = self.lock();
            st.known.insert((account.to_owned(), canonical(ip)), now);
            self.sweep(&mut st, now);
        }
        if let Some(sh) = self.shared.get() {
            let key = format!(
                "known:{}",
                shared::tag(
                    &sh.key,
                    &[account.as_bytes(), canonical(ip).to_string().as_bytes()]
                )
            );
            self.shared_set(&key, &now.to_string(), self.cfg.known_client_secs)
                .await;
        }
    }

    /// Records a failed login and returns what follows from it. `account` is the normalised login
    /// name as typed (it need not exist: unknown names count the same).
    pub async fn failure(
        &self,
        ip: IpAddr,
        account: &str,
        password: &SecretString,
    ) -> FailureEffect {
        let now = self.clock.now();
        let mut effect = FailureEffect {
            delay_ms: 0,
            banned: None,
            locked: false,
            repeat: false,
        };
        if self.repeated(account, ip, password, now).await {
            // The same wrong password again (a phone with an old password): counted once.
            effect.repeat = true;
            let n = self
                .lock()
                .ip
                .entry(canonical(ip))
                .or_default()
                .count(now, self.cfg.window_secs);
            effect.delay_ms = self.delay(n.max(1));
            return effect;
        }
        if self.allowlisted(ip) {
            effect.delay_ms = self.cfg.failure_delay_ms;
            return effect;
        }
        let w = self.cfg.window_secs;
        let (n_ip, ban) = self.count_source(ip, now).await;
        if !self.known(account, ip, now).await {
            let n_acc = self
                .count_account(|st| &mut st.account, "acc", account, now, w)
                .await;
            let lw = self.cfg.account_long_window_secs;
            let n_long = self
                .count_account(|st| &mut st.account_long, "accl", account, now, lw)
                .await;
            if n_acc >= self.cfg.account_max_failures
                || n_long >= self.cfg.account_long_max_failures
            {
                let until = now + self.cfg.account_lockout_secs;
                if self.locked_until(account).await < until {
                    self.lock().locked_until.insert(account.to_owned(), until);
                    if let Some(sh) = self.shared.get() {
                        let key = Self::account_key(sh, "lock", account);
                        self.shared_set(&key, &until.to_string(), self.cfg.account_lockout_secs)
                            .await;
                    }
                    effect.locked = true;
                }
            }
        }
        effect.delay_ms = self.delay(n_ip);
        self.persist(ban, &mut effect).await;
        effect
    }

    /// Progressive delay: base × 2^(n−1), capped.
    fn delay(&self, n: u32) -> u64 {
        let shift = n.saturating_sub(1).min(20);
        self.cfg
            .failure_delay_ms
            .saturating_mul(1u64 << shift)
            .min(self.cfg.failure_delay_max_ms)
    }

    /// Bans `target`, for longer if it was banned within `offender_memory_secs` (on any node,
    /// when shared); its failure window starts from zero. A target another node banned a moment
    /// ago (two nodes past the limit at once) keeps that ban: the same offence, not a repeat.
    async fn make_ban(&self, target: Cidr, now: u64, reason: &str) -> Ban {
        let (mut prev, mut last) = self
            .lock()
            .offenders
            .get(&target)
            .copied()
            .unwrap_or((0, 0));
        let off_key = format!("off:{target}");
        if let Some(&[o, t, until]) = self.shared_numbers(&off_key).await.as_deref() {
            if until > now {
                let ban = Ban {
                    target,
                    until,
                    reason: reason.to_owned(),
                    offences: o as u32,
                };
                let mut st = self.lock();
                st.offenders.insert(target, (ban.offences, t));
                st.bans.insert(target, ban.clone());
                return ban;
            }
            if t >= last {
                (prev, last) = (o as u32, t);
            }
        }
        let offences = if prev > 0 && now.saturating_sub(last) <= self.cfg.offender_memory_secs {
            prev + 1
        } else {
            1
        };
        let secs = self
            .cfg
            .ban_secs
            .saturating_mul(1u64 << (offences - 1).min(30))
            .min(self.cfg.ban_max_secs);
        let ban = Ban {
            target,
            until: now + secs,
            reason: reason.to_owned(),
            offences,
        };
        let window = {
            let mut st = self.lock();
            st.offenders.insert(target, (offences, now));
            st.bans.insert(target, ban.clone());
            // A banned source starts from zero when the ban ends.
            match target.prefix {
                32 | 128 => {
                    st.ip.remove(&target.addr);
                    format!("ip:{}", target.addr)
                }
                _ => {
                    st.net.remove(&target);
                    format!("net:{target}")
                }
            }
        };
        if let Some(sh) = self.shared.get() {
            self.shared_set(
                &off_key,
                &format!("{offences} {now} {}", ban.until),
                secs + self.cfg.offender_memory_secs,
            )
            .await;
            let _ = sh.counters.forget(&[window]).await;
        }
        ban
    }
    /// Adds a ban by hand (`postern ban add` goes through the store; this is for tests and the
    /// server's own use).
    pub fn ban(&self, target: Cidr, secs: u64, reason: &str) -> Ban {
        let now = self.clock.now();
        let ban = Ban {
            target,
            until: now + secs,
            reason: reason.to_owned(),
            offences: 1,
        };
        self.lock().bans.insert(target, ban.clone());
        ban
    }

    pub fn unban(&self, target: &Cidr) -> bool {
        self.lock().bans.remove(target).is_some()
    }

    /// Drops expired entries once a minute so that memory follows the attack, not its history.
    fn sweep(&self, st: &mut State, now: u64) {
        if now.saturating_sub(st.last_sweep) < 60 {
            return;
        }
        st.last_sweep = now;
        let w = self.cfg.window_secs;
        let lw = self.cfg.account_long_window_secs;
        st.ip.retain(|_, v| v.count(now, w) > 0);
        st.net.retain(|_, v| v.count(now, w) > 0);
        st.account.retain(|_, v| v.count(now, w) > 0);
        st.account_long.retain(|_, v| v.count(now, lw) > 0);
        st.locked_until.retain(|_, &mut u| u > now);
        let kc = self.cfg.known_client_secs;
        st.known.retain(|_, &mut t| now.saturating_sub(t) <= kc);
        let sp = self.cfg.same_password_secs;
        st.recent_wrong
            .retain(|_, &mut t| now.saturating_sub(t) <= sp);
        st.bans.retain(|_, b| b.until > now);
        let om = self.cfg.offender_memory_secs;
        st.offenders
            .retain(|_, &mut (_, t)| now.saturating_sub(t) <= om);
        let cw = self.cfg.code_window_secs;
        st.code.retain(|_, v| v.count(now, cw) > 0);
        st.code_locked
            .retain(|_, &mut (u, _, last)| u > now || now.saturating_sub(last) <= om);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Fake(AtomicU64);
    impl Clock for Fake {
        fn now(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }
    impl Fake {
        fn advance(&self, s: u64) {
            self.0.fetch_add(s, Ordering::SeqCst);
        }
    }

    fn guard(cfg: GuardConfig) -> (Guard, Arc<Fake>) {
        let clock = Arc::new(Fake(AtomicU64::new(1_000_000)));
        (Guard::new(cfg, clock.clone(), None), clock)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pw(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[tokio::test]
    async fn wrong_codes_are_never_deduplicated_and_lock_the_second_factor() {
        let (g, clock) = guard(GuardConfig {
            ip_max_failures: 20,
            network_max_failures: 1000,
            ..GuardConfig::default()
        });
        let attacker = ip("203.0.113.9");
        let owner = ip("198.51.100.7");
        g.success(owner, "admin:root").await;
        // 20 wrong codes from one address: every one counts, the address is banned.
        let mut banned = false;
        let mut locked = 0;
        for _ in 0..20 {
            let e = g.code_failure(attacker, "admin:root").await;
            banned |= e.banned.is_some();
            locked += e.locked as u32;
        }
        assert!(banned, "20 wrong codes from one source ban it");
        assert_eq!(
            locked, 1,
            "the second factor locks once, at the fifth wrong code"
        );
        assert_eq!(g.check_code(attacker, "admin:root").await, Verdict::Banned);
        // from other addresses: locked for unknown sources, not for the owner's known one
        assert_eq!(
            g.check_code(ip("192.0.2.1"), "admin:root").await,
            Verdict::Locked
        );
        assert_eq!(g.check_code(owner, "admin:root").await, Verdict::Allow);
        // escalates: the next lock lasts twice as long
        clock.advance(901);
        assert_eq!(
            g.check_code(ip("192.0.2.1"), "admin:root").await,
            Verdict::Allow
        );
        for i in 0..5 {
            g.code_failure(ip(&format!("192.0.2.{}", 10 + i)), "admin:root")
                .await;
        }
        clock.advance(1000);
        assert_eq!(
            g.check_code(ip("192.0.2.99"), "admin:root").await,
            Verdict::Locked,
            "second lock: 1800 s"
        );
        clock.advance(801);
        assert_eq!(
            g.check_code(ip("192.0.2.99"), "admin:root").await,
            Verdict::Allow
        );
        assert!(g.unlock("admin:root").await || !g.is_code_locked("admin:root").await);
    }

    #[tokio::test]
    async fn attempts_on_a_locked_account_count_toward_the_source() {
        let (g, _clock) = guard(GuardConfig {
            ip_max_failures: 5,
            ..GuardConfig::default()
        });
        let src = ip("203.0.113.50");
        let mut banned = false;
        for i in 0..5 {
            let e = g
                .locked_attempt(src, "victim@x.test", &pw(&format!("guess{i}")))
                .await;
            banned |= e.banned.is_some();
        }
        assert!(banned);
        // the same password again from the same source counts once
        let other = ip("203.0.113.51");
        for _ in 0..10 {
            let e = g.locked_attempt(other, "victim@x.test", &pw("same")).await;
            assert!(e.banned.is_none());
        }
    }

    #[test]
    fn cidr() {
        let c = Cidr::parse("10.1.2.3/8").unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.200.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.9")));
        assert_eq!(
            Cidr::network_of(ip("192.0.2.77")).to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(
            Cidr::network_of(ip("2001:db8:1:2:3::4")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nonsense").is_err());
        assert_eq!(Cidr::parse("127.0.0.1").unwrap().prefix, 32);
    }

    #[tokio::test]
    async fn ip_ban_escalates_and_expires() {
        let (g, clock) = guard(GuardConfig {
            ip_max_failures: 3,
            ban_secs: 100,
            ban_max_secs: 350,
            ..Default::default()
        });
        let a = ip("192.0.2.1");
        for i in 0..2 {
            let e = g
                .failure(a, &format!("u{i}@x"), &pw(&format!("p{i}")))
                .await;
            assert!(e.banned.is_none());
        }
        let e = g.failure(a, "u9@x", &pw("p9")).await;
        assert_eq!(e.banned.as_ref().unwrap().until, clock.now() + 100);
        assert_eq!(g.check(a, "any@x").await, Verdict::Banned);
        clock.advance(101);
        assert_eq!(g.check(a, "any@x").await, Verdict::Allow);
        // second offence: 200 s, third: 350 (capped)
        for i in 0..3 {
            g.failure(a, "v@x", &pw(&format!("q{i}"))).await;
        }
        assert_eq!(g.ban_of(a).unwrap().until, clock.now() + 200);
        clock.advance(201);
        for i in 0..3 {
            g.failure(a, "w@x", &pw(&format!("r{i}"))).await;
        }
        assert_eq!(g.ban_of(a).unwrap().until, clock.now() + 350);
        // other addresses are not affected
        assert_eq!(g.check(ip("192.0.2.2"), "any@x").await, Verdict::Allow);
        assert!(g.unban(&Cidr::host(a)));
        assert_eq!(g.check(a, "any@x").await, Verdict::Allow);
    }

    #[tokio::test]
    async fn window_forgets_old_failures() {
        let (g, clock) = guard(GuardConfig {
            ip_max_failures: 3,
            window_secs: 60,
            ..Default::default()
        });
        let a = ip("192.0.2.1");
        g.failure(a, "u@x", &pw("1")).await;
        g.failure(a, "u@x", &pw("2")).await;
        clock.advance(61);
        let e = g.failure(a, "u@x", &pw("3")).await;
        assert!(e.banned.is_none());
    }

    #[tokio::test]
    async fn network_counter_bans_the_network() {
        let (g, _) = guard(GuardConfig {
            ip_max_failures: 100,
            network_max_failures: 5,
            ..Default::default()
        });
        for i in 1..=5 {
            g.failure(ip(&format!("198.51.100.{i}")), "u@x", &pw(&format!("p{i}")))
                .await;
        }
        assert_eq!(g.check(ip("198.51.100.200"), "z@x").await, Verdict::Banned);
        assert_eq!(g.check(ip("198.51.101.1"), "z@x").await, Verdict::Allow);
    }

    #[tokio::test]
    async fn lockout_spares_known_clients() {
        let (g, clock) = guard(GuardConfig {
            ip_max_failures: 100,
            network_max_failures: 100,
            account_max_failures: 5,
            account_lockout_secs: 300,
            ..Default::default()
        });
        let home = ip("203.0.113.5");
        g.success(home, "alice@x").await;
        // distributed attack: one failure each from many addresses
        for i in 1..=5 {
            g.failure(
                ip(&format!("10.{i}.0.1")),
                "alice@x",
                &pw(&format!("guess{i}")),
            )
            .await;
        }
        assert_eq!(g.check(ip("10.99.0.1"), "alice@x").await, Verdict::Locked);
        assert_eq!(
            g.check(home, "alice@x").await,
            Verdict::Allow,
            "the real user keeps working"
        );
        assert_eq!(g.check(ip("10.99.0.1"), "bob@x").await, Verdict::Allow);
        clock.advance(301);
        assert_eq!(g.check(ip("10.99.0.1"), "alice@x").await, Verdict::Allow);
    }

    #[tokio::test]
    async fn known_client_failures_do_not_lock_the_account() {
        let (g, _) = guard(GuardConfig {
            ip_max_failures: 100,
            network_max_failures: 100,
            account_max_failures: 3,
            ..Default::default()
        });
        let home = ip("203.0.113.5");
        g.success(home, "alice@x").await;
        for i in 0..5 {
            g.failure(home, "alice@x", &pw(&format!("typo{i}"))).await;
        }
        assert_eq!(g.check(ip("198.51.100.1"), "alice@x").await, Verdict::Allow);
    }

    #[tokio::test]
    async fn slow_attack_caught_by_long_window() {
        let (g, clock) = guard(GuardConfig {
            ip_max_failures: 1000,
            network_max_failures: 1000,
            account_max_failures: 5,
            window_secs: 600,
            account_long_max_failures: 8,
            account_long_window_secs: 86400,
            ..Default::default()
        });
        for i in 0..8 {
            clock.advance(3600); // one try an hour: never 5 in 10 minutes
            g.failure(
                ip(&format!("10.0.{i}.1")),
                "alice@x",
                &pw(&format!("slow{i}")),
            )
            .await;
        }
        assert_eq!(g.check(ip("10.50.0.1"), "alice@x").await, Verdict::Locked);
    }

    #[tokio::test]
    async fn same_wrong_password_counts_once() {
        let (g, clock) = guard(GuardConfig {
            ip_max_failures: 3,
            account_max_failures: 3,
            ..Default::default()
        });
        let phone = ip("192.0.2.9");
        for _ in 0..50 {
            let e = g.failure(phone, "alice@x", &pw("old password")).await;
            assert!(e.banned.is_none() && !e.locked);
        }
        assert_eq!(g.check(phone, "alice@x").await, Verdict::Allow);
        // after the memory period it counts again, once
        clock.advance(3601);
        let e = g.failure(phone, "alice@x", &pw("old password")).await;
        assert!(!e.repeat);
    }

    #[tokio::test]
    async fn allowlisted_sources_are_never_banned() {
        let (g, _) = guard(GuardConfig {
            ip_max_failures: 2,
            allowlist: vec![Cidr::parse("192.0.2.0/24").unwrap()],
            ..Default::default()
        });
        let admin = ip("192.0.2.10");
        for i in 0..20 {
            let e = g.failure(admin, "root@x", &pw(&format!("x{i}"))).await;
            assert!(e.banned.is_none());
        }
        g.ban(Cidr::host(admin), 100, "by hand");
        assert_eq!(g.check(admin, "root@x").await, Verdict::Allow);
    }

    #[tokio::test]
    async fn delays_grow_and_are_capped() {
        let (g, _) = guard(GuardConfig {
            ip_max_failures: 100,
            failure_delay_ms: 100,
            failure_delay_max_ms: 1000,
            ..Default::default()
        });
        let a = ip("192.0.2.1");
        let mut d = Vec::new();
        for i in 0..6 {
            d.push(g.failure(a, "u@x", &pw(&format!("{i}"))).await.delay_ms);
        }
        assert_eq!(d, vec![100, 200, 400, 800, 1000, 1000]);
    }

    /// Two nodes' guards over one shared store (Redis in production).
    fn pair(cfg: GuardConfig) -> (Guard, Guard, Arc<Fake>, Arc<shared::MemoryCounters>) {
        let clock = Arc::new(Fake(AtomicU64::new(1_000_000)));
        let counters = Arc::new(shared::MemoryCounters::new(clock.clone()));
        let a = Guard::new(cfg.clone(), clock.clone(), None);
        let b = Guard::new(cfg, clock.clone(), None);
        a.share(counters.clone(), [7; 32]);
        b.share(counters.clone(), [7; 32]);
        (a, b, clock, counters)
    }

    #[tokio::test]
    async fn nothing_secret_or_naming_an_account_is_shared() {
        let (a, b, _, counters) = pair(GuardConfig {
            ip_max_failures: 3,
            account_max_failures: 2,
            ..GuardConfig::default()
        });
        let (secret, account) = ("Sup3r-Secret-pw", "alice@x.test");
        a.success(ip("198.51.100.7"), account).await;
        for (i, g) in [&a, &b, &a, &b].into_iter().enumerate() {
            let src = ip(&format!("203.0.113.{i}"));
            g.failure(src, account, &pw(secret)).await;
            g.failure(src, account, &pw(secret)).await;
            g.code_failure(src, account).await;
            g.check(src, account).await;
        }
        let held = counters.everything();
        assert!(held.len() > 5, "the guard shared its state: {held:?}");
        for item in &held {
            assert!(
                !item.contains(secret),
                "a password in the shared store: {item}"
            );
            assert!(
                !item.contains("alice"),
                "a login name in the shared store: {item}"
            );
        }
    }

    #[tokio::test]
    async fn an_attack_spread_over_nodes_meets_one_set_of_counters() {
        let (a, b, _, _) = pair(GuardConfig {
            ip_max_failures: 10,
            account_max_failures: 6,
            ..GuardConfig::default()
        });
        let home = ip("198.51.100.7");
        a.success(home, "alice@x").await;
        // 5 wrong passwords on each node from one address: 10 in all, the tenth bans it
        let attacker = ip("203.0.113.9");
        let mut banned = None;
        for i in 0..5 {
            for g in [&a, &b] {
                let e = g
                    .failure(
                        attacker,
                        "alice@x",
                        &pw(&format!("guess{i}{}", g as *const _ as usize)),
                    )
                    .await;
                banned = banned.or(e.banned);
            }
        }
        let ban = banned.expect("ten failures across two nodes ban the source");
        assert_eq!(ban.offences, 1);
        // the account locked after 6, for unknown sources on both nodes, not for its owner's
        // address, which logged in through the other node
        assert_eq!(a.check(ip("192.0.2.1"), "alice@x").await, Verdict::Locked);
        assert_eq!(b.check(ip("192.0.2.1"), "alice@x").await, Verdict::Locked);
        assert_eq!(b.check(home, "alice@x").await, Verdict::Allow);
        assert!(b.is_locked("alice@x").await);
        // an unlock on one node is an unlock on both
        assert!(b.unlock("alice@x").await);
        assert_eq!(a.check(ip("192.0.2.1"), "alice@x").await, Verdict::Allow);
    }

    #[tokio::test]
    async fn two_nodes_banning_one_source_at_once_do_not_escalate() {
        let (a, b, _, _) = pair(GuardConfig {
            ip_max_failures: 2,
            ..GuardConfig::default()
        });
        let src = ip("203.0.113.60");
        a.failure(src, "x@x", &pw("1")).await;
        let first = a
            .failure(src, "x@x", &pw("2"))
            .await
            .banned
            .expect("banned");
        // B's in-flight failures, counted past the limit on its own window too
        b.failure(src, "x@x", &pw("3")).await;
        let again = b
            .failure(src, "x@x", &pw("4"))
            .await
            .banned
            .expect("B bans too");
        assert_eq!((again.offences, again.until), (first.offences, first.until));
    }

    #[tokio::test]
    async fn a_repeated_password_counts_once_whichever_node_sees_it() {
        let (a, b, _, _) = pair(GuardConfig {
            ip_max_failures: 3,
            ..GuardConfig::default()
        });
        let phone = ip("198.51.100.20");
        for g in [&a, &b, &a, &b, &a, &b] {
            let e = g.failure(phone, "alice@x", &pw("old password")).await;
            assert!(e.banned.is_none());
        }
        assert_eq!(b.check(phone, "alice@x").await, Verdict::Allow);
    }

    #[tokio::test]
    async fn second_factor_locks_and_bans_escalate_across_nodes() {
        let (a, b, clock, _) = pair(GuardConfig {
            ip_max_failures: 2,
            network_max_failures: 1000,
            code_max_failures: 4,
            ..GuardConfig::default()
        });
        // wrong codes from four addresses, alternating nodes: the fourth locks the factor
        let mut locked = 0;
        for (i, g) in [&a, &b, &a, &b].into_iter().enumerate() {
            locked += g
                .code_failure(ip(&format!("203.0.113.{i}")), "bob@x")
                .await
                .locked as u32;
        }
        assert_eq!(locked, 1);
        assert!(a.is_code_locked("bob@x").await);
        assert_eq!(
            a.check_code(ip("192.0.2.1"), "bob@x").await,
            Verdict::Locked
        );
        // a source banned on A, then again on B after the ban ends: the second ban is longer
        let src = ip("203.0.113.50");
        a.failure(src, "x@x", &pw("1")).await;
        let first = a
            .failure(src, "x@x", &pw("2"))
            .await
            .banned
            .expect("banned");
        clock.advance(first.until - clock.now() + 1);
        b.failure(src, "x@x", &pw("3")).await;
        let second = b
            .failure(src, "x@x", &pw("4"))
            .await
            .banned
            .expect("banned again");
        assert_eq!(second.offences, 2);
    }

    #[tokio::test]
    async fn shared_store_down_each_node_keeps_its_own_limits() {
        let (a, b, _, counters) = pair(GuardConfig {
            ip_max_failures: 4,
            ..GuardConfig::default()
        });
        counters.down.store(true, Ordering::SeqCst);
        let src = ip("203.0.113.77");
        for i in 0..3 {
            assert!(a
                .failure(src, "a@x", &pw(&format!("a{i}")))
                .await
                .banned
                .is_none());
            assert!(b
                .failure(src, "a@x", &pw(&format!("b{i}")))
                .await
                .banned
                .is_none());
        }
        // per node: the fourth on one node bans there
        assert!(a.failure(src, "a@x", &pw("a9")).await.banned.is_some());
        // back up: what the node counted still counts (max of both views)
        counters.down.store(false, Ordering::SeqCst);
        assert!(b.failure(src, "a@x", &pw("b9")).await.banned.is_some());
    }
}
