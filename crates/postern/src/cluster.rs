//! `[cluster]`: state shared by several Postern nodes through Redis: bans, mailbox change
//! notifications, and the counters and locks of [`SharedCounters`] (the guard's windows,
//! lockouts and known clients, send limits, POP3 maildrop locks and IMAP session caps as seat
//! sets; see `RedisCounters`).
//!
//! A ban is a field of the hash `postern:bans` (the network, then its end, reason, offences and
//! the node that made it, as JSON: addresses of attackers, no secret) and is announced on the
//! channel `postern:bans`; every node listens there and reloads its bans at once, so a ban made on
//! one node (by its guard, the API, the console or the CLI) is refused by all within a moment,
//! and a lift is lifted everywhere. When Redis cannot be reached, a node keeps serving with its
//! own bans (kept in its database, logged), and moves them to Redis once it answers again.
//!
//! A change to an account's mailboxes (a delivery, an APPEND, flags, an expunge) is announced on
//! the channel `postern:changes` as `NODE ACCOUNT_ID` (a number, nothing else); the other nodes
//! wake their sessions of that account (IDLE, NOTIFY), which then read the shared database. When
//! Redis is down, sessions on other nodes see the change at their next command or IDLE poll.
//!
//! An incident lock (`postern incident lock`, the API, the console) is announced on the channel
//! `postern:sessions` as `ACCOUNT_ID AT` (numbers); every node ends the account's live sessions
//! at once. The database stays the record: each node also reads it twice a second, so a lock
//! announced while Redis was down still ends the sessions everywhere.
//!
//! Redis's client (`redis`, with its connection manager, which reconnects) is used as is; the
//! listener reconnects and resubscribes by itself, and reloads the bans after each reconnection.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use postern_auth::guard::{Ban, Cidr, Guard};
use postern_auth::shared::{SharedCounters, SharedError, Usage};
use postern_config::Config;
use postern_store::audit::SharedBans;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, IntoConnectionInfo};

const KEY: &str = "postern:bans";
const CHANNEL: &str = "postern:bans";
const CHANGES: &str = "postern:changes";
const SESSIONS: &str = "postern:sessions";
/// [`SharedCounters::take_seat`] in one step on the Redis server (a script, sent with EVAL: the
/// client's `script` feature, which caches it by digest, is not built): a sorted set of owners
/// scored by when their place expires. Expired places are dropped; the owner's place is renewed,
/// or taken while fewer than ARGV[2] are held; the key lives as long as its last place.
const TAKE_SEAT: &str = r"
local key, owner = KEYS[1], ARGV[1]
local seats, now, untl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if redis.call('ZSCORE', key, owner) or redis.call('ZCARD', key) < seats then
  redis.call('ZADD', key, untl, owner)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  redis.call('EXPIREAT', key, tonumber(last[2]))
  return 1
end
return 0
";

/// How long a Redis call may take before the node falls back on its own state.
const CALL: Duration = Duration::from_millis(800);

/// A connection to Redis shared by the calls of one purpose, with a short pause after a failure:
/// while Redis is down, calls fail at once (the node decides on its own state) instead of each
/// waiting for the timeout.
struct Link {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    paused_until: std::sync::Mutex<Option<std::time::Instant>>,
}

/// Reconnection of a connection manager: tries at most half a second apart, so that a node is
/// back on Redis within about that once it answers again (the default backoff doubles up to
/// several seconds after an outage of a few), each call and connection attempt bounded.
fn manager_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_max_delay(Duration::from_millis(500))
        .set_connection_timeout(Some(CALL))
        .set_response_timeout(Some(CALL))
}

/// How long calls fail at once after one failed.
const PAUSE: Duration = Duration::from_secs(2);

impl Link {
    fn new(client: redis::Client) -> Link {
        Link {
            client,
            conn: tokio::sync::Mutex::new(None),
            paused_until: std::sync::Mutex::new(None),
        }
    }

    fn paused(&self) -> bool {
        let p = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        p.is_some_and(|t| std::time::Instant::now() < t)
    }

    fn failed(&self, e: String) -> String {
        *self.paused_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(std::time::Instant::now() + PAUSE);
        e
    }

    async fn conn(&self) -> Result<ConnectionManager, String> {
        if self.paused() {
            return Err("Redis did not answer a moment ago".to_owned());
        }
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(
            CALL,
            self.client
                .get_connection_manager_with_config(manager_config()),
        )
        .await
        .map_err(|_| self.failed("Redis did not answer in time".to_owned()))?
        .map_err(|e| self.failed(e.to_string()))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn call<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        tokio::time::timeout(CALL, f)
            .await
            .map_err(|_| self.failed("Redis did not answer in time".to_owned()))?
            .map_err(|e| self.failed(e.to_string()))
    }
}

pub struct RedisBans {
    link: Link,
    node: String,
}

impl RedisBans {
    async fn conn(&self) -> Result<ConnectionManager, String> {
        self.link.conn().await
    }

    async fn call<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        self.link.call(f).await
    }

    async fn announce(&self, c: &mut ConnectionManager) {
        let r: Result<i64, String> = self.call(c.publish(CHANNEL, &self.node)).await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not announce a ban change to the other nodes");
        }
    }
}

/// The guard's and the send limits' shared counters ([`SharedCounters`]) in Redis, under
/// `postern:s:`: a window is a sorted set of `TIME:WEIGHT:RANDOM` members scored by time, trimmed
/// and read in one transaction; a value is a string with an expiry. Keys that identify an
/// account or a credential are HMACs made by their callers.
pub struct RedisCounters {
    link: Link,
}

fn shared_key(key: &str) -> String {
    format!("postern:s:{key}")
}

fn usage_of(members: &[String]) -> Usage {
    Usage {
        events: members.len() as u32,
        weight: members
            .iter()
            .filter_map(|m| m.split(':').nth(1)?.parse::<u64>().ok())
            .sum(),
    }
}

impl RedisCounters {
    /// Trims the window `key` to `now - window`, adds an event of `weight` if given, and reads
    /// what is left, in one transaction.
    async fn window(
        &self,
        key: &str,
        now: u64,
        window: u64,
        weight: Option<u32>,
    ) -> Result<Usage, SharedError> {
        let mut c = self.link.conn().await.map_err(SharedError)?;
        let k = shared_key(key);
        let mut p = redis::pipe();
        p.atomic()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&k)
            .arg("-inf")
            .arg(now.saturating_sub(window))
            .ignore();
        if let Some(weight) = weight {
            let member = format!("{now}:{weight}:{:016x}", rand::random::<u64>());
            p.cmd("ZADD").arg(&k).arg(now).arg(&member).ignore();
            p.cmd("EXPIRE").arg(&k).arg(window.max(1)).ignore();
        }
        p.cmd("ZRANGE").arg(&k).arg(0).arg(-1);
        let (members,): (Vec<String>,) = self
            .link
            .call(p.query_async(&mut c))
            .await
            .map_err(SharedError)?;
        Ok(usage_of(&members))
    }
}

#[async_trait::async_trait]
impl SharedCounters for RedisCounters {
    async fn add(
        &self,
        key: &str,
        now: u64,
        window: u64,
        weight: u32,
    ) -> Result<Usage, SharedError> {
        self.window(key, now, window, Some(weight)).await
    }

    async fn usage(&self, key: &str, now: u64, window: u64) -> Result<Usage, SharedError> {
        self.window(key, now, window, None).await
    }

    async fn get(&self, key: &str) -> Result<Option<String>, SharedError> {
        let mut c = self.link.conn().await.map_err(SharedError)?;
        self.link
            .call(c.get(shared_key(key)))
            .await
            .map_err(SharedError)
    }

    async fn set(&self, key: &str, value: &str, ttl: u64) -> Result<(), SharedError> {
        let mut c = self.link.conn().await.map_err(SharedError)?;
        self.link
            .call(c.set_ex::<_, _, ()>(shared_key(key), value, ttl.max(1)))
            .await
            .map_err(SharedError)
    }

    async fn seen(&self, key: &str, ttl: u64) -> Result<bool, SharedError> {
        let mut c = self.link.conn().await.map_err(SharedError)?;
        let k = shared_key(key);
        let mut p = redis::pipe();
        p.atomic()
            .cmd("EXISTS")
            .arg(&k)
            .cmd("SET")
            .arg(&k)
            .arg(1)
            .arg("EX")
            .arg(ttl.max(1))
            .ignore();
        let (n,): (i64,) = self
            .link
            .call(p.query_async(&mut c))
            .await
            .map_err(SharedError)?;
        Ok(n > 0)
    }

    async fn take_seat(
        &self,
        key: &str,
        owner: &str,
        seats: u32,
        now: u64,
        until: u64,
    ) -> Result<bool, SharedError> {
        let mut c = self.link.conn().await.map_err(SharedError)?;
        let mut eval = redis::cmd("EVAL");
        eval.arg(TAKE_SEAT)
            .arg(1)
            .arg(shared_key(key))
            .arg(owner)
            .arg(seats)
            .arg(now)
            .arg(until);
        let taken: i64 = self
            .link
            .call(eval.query_async(&mut c))
            .await
            .map_err(SharedError)?;
        Ok(taken == 1)
    }

    async fn leave_seat(&self, key: &str, owner: &str) -> Result<(), SharedError> {
        let mut c = self.link.conn().await.map_err(SharedError)?;
        self.link
            .call(c.zrem::<_, _, ()>(shared_key(key), owner))
            .await
            .map_err(SharedError)
    }

    async fn forget(&self, keys: &[String]) -> Result<(), SharedError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut c = self.link.conn().await.map_err(SharedError)?;
        let keys: Vec<String> = keys.iter().map(|k| shared_key(k)).collect();
        self.link
            .call(c.del::<_, ()>(keys))
            .await
            .map_err(SharedError)
    }
}

#[async_trait::async_trait]
impl SharedBans for RedisBans {
    async fn put(&self, ban: &Ban) -> Result<(), String> {
        let mut c = self.conn().await?;
        let v = serde_json::json!({
            "until": ban.until, "reason": ban.reason, "offences": ban.offences, "node": self.node,
        })
        .to_string();
        let _: i64 = self.call(c.hset(KEY, ban.target.to_string(), v)).await?;
        self.announce(&mut c).await;
        Ok(())
    }

    async fn remove(&self, target: &Cidr) -> Result<bool, String> {
        let mut c = self.conn().await?;
        let n: i64 = self.call(c.hdel(KEY, target.to_string())).await?;
        self.announce(&mut c).await;
        Ok(n > 0)
    }

    async fn clear(&self) -> Result<u64, String> {
        let mut c = self.conn().await?;
        let n: i64 = self.call(c.hlen(KEY)).await?;
        let _: i64 = self.call(c.del(KEY)).await?;
        self.announce(&mut c).await;
        Ok(n.max(0) as u64)
    }

    async fn list(&self) -> Result<Vec<Ban>, String> {
        let mut c = self.conn().await?;
        let all: Vec<(String, String)> = self.call(c.hgetall(KEY)).await?;
        let now = postern_store::now() as u64;
        let mut out = Vec::new();
        let mut expired = Vec::new();
        for (target, v) in all {
            let parsed = Cidr::parse(&target)
                .ok()
                .zip(serde_json::from_str::<serde_json::Value>(&v).ok());
            let Some((target_cidr, v)) = parsed else {
                expired.push(target);
                continue;
            };
            let until = v["until"].as_u64().unwrap_or(0);
            if until <= now {
                expired.push(target);
                continue;
            }
            out.push(Ban {
                target: target_cidr,
                until,
                reason: v["reason"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(200)
                    .collect(),
                offences: v["offences"].as_u64().unwrap_or(1) as u32,
            });
        }
        if !expired.is_empty() {
            let _: Result<i64, String> = self.call(c.hdel(KEY, expired)).await;
        }
        Ok(out)
    }
}

fn client(
    url: &str,
    password: Option<&str>,
    ca: Option<&std::path::Path>,
) -> Result<redis::Client> {
    let mut info = url
        .into_connection_info()
        .with_context(|| format!("[cluster] redis {url:?}"))?;
    if let Some(pw) = password {
        let settings = info.redis_settings().clone().set_password(pw);
        info = info.set_redis_settings(settings);
    }
    match ca {
        // rediss:// with a private CA: Redis's certificate must chain to it (and name the host).
        Some(ca) => {
            let pem = std::fs::read(ca)
                .with_context(|| format!("[cluster] redis_ca {}", ca.display()))?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .context("[cluster] redis_ca")
        }
        None => redis::Client::open(info).context("[cluster] redis"),
    }
}

/// Shares `store`'s bans through Redis when `[cluster] redis` is set; the returned client is for
/// [`listen`]. Redis being down now is not an error: the node starts on its own bans.
pub async fn attach(
    cfg: &Config,
    store: &postern_store::Store,
    keys: &crate::keys::Keys,
) -> Result<Option<redis::Client>> {
    let Some(url) = cfg.cluster.redis.as_deref() else {
        return Ok(None);
    };
    let password = match cfg.cluster.redis_password.as_deref() {
        Some(r) => Some(keys.resolve(r, "cluster.redis_password").await?),
        None => None,
    };
    let ca = cfg.cluster.redis_ca.as_ref().map(|p| cfg.path(p));
    let client = client(url, password.as_ref().map(|p| p.as_str()), ca.as_deref())?;
    let node = cfg.node_name();
    store.share_bans(Arc::new(RedisBans {
        link: Link::new(client.clone()),
        node: node.clone(),
    }));
    store.share_revocations(Arc::new(RedisRevocations {
        link: Link::new(client.clone()),
    }));
    Ok(Some(client))
}

/// Incident locks announced to every node (see the module).
struct RedisRevocations {
    link: Link,
}

#[async_trait::async_trait]
impl postern_store::incident::RevocationBus for RedisRevocations {
    async fn sessions_revoked(&self, account_id: i64, at: i64) -> Result<(), String> {
        let mut c = self.link.conn().await?;
        let _: i64 = self
            .link
            .call(c.publish(SESSIONS, format!("{account_id} {at}")))
            .await?;
        Ok(())
    }
}

/// The counters the guard and the send limits share with the other nodes (a server's, not a CLI
/// command's: one connection of their own).
pub fn counters(client: redis::Client) -> Arc<dyn SharedCounters> {
    Arc::new(RedisCounters {
        link: Link::new(client),
    })
}

/// Announces this node's mailbox changes to the other nodes (a server, not a CLI command: the
/// store's change bus is what its sessions wait on). Changes are queued (a bounded queue; when
/// Redis is slow or down the oldest wait, and what does not fit is dropped: other nodes' sessions
/// then see it at their next poll) and published by one task.
pub fn relay_changes(client: redis::Client, store: &postern_store::Store, node: String) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<i64>(4096);
    store.changes().relay_to(Box::new(move |account| {
        let _ = tx.try_send(account);
    }));
    tokio::spawn(async move {
        let mut conn: Option<ConnectionManager> = None;
        while let Some(account) = rx.recv().await {
            if conn.is_none() {
                conn = tokio::time::timeout(
                    CALL,
                    client.get_connection_manager_with_config(manager_config()),
                )
                .await
                .ok()
                .and_then(|r| r.ok());
            }
            let Some(c) = conn.as_mut() else { continue };
            let msg = format!("{node} {account}");
            match tokio::time::timeout(CALL, c.publish::<_, _, i64>(CHANGES, msg)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "could not announce a mailbox change"),
                Err(_) => tracing::debug!("announcing a mailbox change timed out"),
            }
        }
    });
}

/// Listens for other nodes' ban changes and reloads the guard's bans at each (and after each
/// reconnection, in case one was missed), and for their mailbox changes, which wake this node's
/// sessions of the account, and for incident locks, whose (account, time) go to `revoked` (the
/// task that ends sessions); until the process ends.
pub fn listen(
    client: redis::Client,
    guard: Arc<Guard>,
    store: postern_store::Store,
    node: String,
    revoked: tokio::sync::mpsc::Sender<(i64, i64)>,
) {
    tokio::spawn(async move {
        let mut down_since: Option<std::time::Instant> = None;
        loop {
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(&[CHANNEL, CHANGES, SESSIONS]).await {
                    Ok(()) => {
                        if down_since.take().is_some() {
                            tracing::info!("Redis answers again: bans are shared again");
                        }
                        guard.sync_bans().await;
                        let mut messages = pubsub.on_message();
                        while let Some(m) = messages.next().await {
                            if m.get_channel_name() == CHANGES {
                                let text: String = m.get_payload().unwrap_or_default();
                                if let Some(account) = foreign_change(&text, &node) {
                                    store.changes().notify_local(account);
                                }
                            } else if m.get_channel_name() == SESSIONS {
                                let text: String = m.get_payload().unwrap_or_default();
                                if let Some((account, at)) = revocation(&text) {
                                    tracing::info!(
                                        account,
                                        "sessions revoked: announced through the cluster"
                                    );
                                    let _ = revoked.try_send((account, at));
                                }
                            } else {
                                guard.sync_bans().await;
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "Redis subscription failed"),
                },
                Err(e) => {
                    if down_since.is_none() {
                        tracing::error!(target: "postern::alert", event = "cluster_redis_down", error = %e,
                            "Redis cannot be reached: this node serves on its own bans until it answers");
                        down_since = Some(std::time::Instant::now());
                    }
                }
            }
            if down_since.is_none() {
                down_since = Some(std::time::Instant::now());
                tracing::error!(target: "postern::alert", event = "cluster_redis_down",
                    "the connection to Redis ended: this node serves on its own bans until it answers");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// The account of a change announced by another node (`NODE ACCOUNT_ID`); None for this node's
/// own announcements and anything malformed.
fn foreign_change(text: &str, me: &str) -> Option<i64> {
    let (node, account) = text.rsplit_once(' ')?;
    (node != me).then(|| account.parse().ok()).flatten()
}

/// The account and time of an announced revocation (`ACCOUNT_ID AT`); None for anything else.
fn revocation(text: &str) -> Option<(i64, i64)> {
    let (account, at) = text.split_once(' ')?;
    Some((account.parse().ok()?, at.parse().ok()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn revocations_are_two_numbers() {
        assert_eq!(super::revocation("42 1700000000"), Some((42, 1700000000)));
        assert_eq!(super::revocation("42"), None);
        assert_eq!(super::revocation("x 1"), None);
        assert_eq!(super::revocation("1 2 3"), None);
        assert_eq!(super::revocation(""), None);
    }

    #[test]
    fn changes_of_other_nodes_only() {
        assert_eq!(super::foreign_change("b 42", "a"), Some(42));
        assert_eq!(super::foreign_change("a 42", "a"), None);
        assert_eq!(super::foreign_change("mail b.example 7", "a"), Some(7));
        assert_eq!(super::foreign_change("b x", "a"), None);
        assert_eq!(super::foreign_change("", "a"), None);
    }
}
