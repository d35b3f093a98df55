//! `[cluster]`: state shared by several Postern nodes through Redis: bans, and mailbox change
//! notifications.
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
//! Redis's client (`redis`, with its connection manager, which reconnects) is used as is; the
//! listener reconnects and resubscribes by itself, and reloads the bans after each reconnection.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use postern_auth::guard::{Ban, Cidr, Guard};
use postern_config::Config;
use postern_store::audit::SharedBans;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, IntoConnectionInfo};

const KEY: &str = "postern:bans";
const CHANNEL: &str = "postern:bans";
const CHANGES: &str = "postern:changes";
/// How long a Redis call may take before the node falls back on its own state.
const CALL: Duration = Duration::from_millis(800);

pub struct RedisBans {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    node: String,
}

impl RedisBans {
    async fn conn(&self) -> Result<ConnectionManager, String> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(CALL, self.client.get_connection_manager())
            .await
            .map_err(|_| "Redis did not answer in time".to_owned())?
            .map_err(|e| e.to_string())?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn call<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        tokio::time::timeout(CALL, f)
            .await
            .map_err(|_| "Redis did not answer in time".to_owned())?
            .map_err(|e| e.to_string())
    }

    async fn announce(&self, c: &mut ConnectionManager) {
        let r: Result<i64, String> = self.call(c.publish(CHANNEL, &self.node)).await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not announce a ban change to the other nodes");
        }
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

fn client(url: &str, password: Option<&str>) -> Result<redis::Client> {
    let mut info = url
        .into_connection_info()
        .with_context(|| format!("[cluster] redis {url:?}"))?;
    if let Some(pw) = password {
        let settings = info.redis_settings().clone().set_password(pw);
        info = info.set_redis_settings(settings);
    }
    redis::Client::open(info).context("[cluster] redis")
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
    let client = client(url, password.as_ref().map(|p| p.as_str()))?;
    let node = cfg.node_name();
    store.share_bans(Arc::new(RedisBans {
        client: client.clone(),
        conn: tokio::sync::Mutex::new(None),
        node: node.clone(),
    }));
    Ok(Some(client))
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
                conn = tokio::time::timeout(CALL, client.get_connection_manager())
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
/// sessions of the account; until the process ends.
pub fn listen(client: redis::Client, guard: Arc<Guard>, store: postern_store::Store, node: String) {
    tokio::spawn(async move {
        let mut down_since: Option<std::time::Instant> = None;
        loop {
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(&[CHANNEL, CHANGES]).await {
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

#[cfg(test)]
mod tests {
    #[test]
    fn changes_of_other_nodes_only() {
        assert_eq!(super::foreign_change("b 42", "a"), Some(42));
        assert_eq!(super::foreign_change("a 42", "a"), None);
        assert_eq!(super::foreign_change("mail b.example 7", "a"), Some(7));
        assert_eq!(super::foreign_change("b x", "a"), None);
        assert_eq!(super::foreign_change("", "a"), None);
    }
}
