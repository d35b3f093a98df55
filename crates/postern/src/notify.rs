//! New-sign-in notices (`[notify] new_signin`): when a mail account logs in from a source
//! network (IPv4 /24, IPv6 /64) and client (protocol and mechanism) it has not used within
//! `known_days`, its owner finds a message in the INBOX saying when, from where and how, and
//! what to do if it was not them; each such sign-in is a `new_signin` audit event (the admin
//! API's timeline and `postern incident timeline` show it). Never for allowlisted networks;
//! at most `max_per_day` messages per account per day (the rest are audited only).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern_auth::{guard::Guard, Peer, Principal, SigninObserver};
use postern_config::NotifyConfig;
use postern_store::audit::NewAudit;
use postern_store::Store;
use postern_types::Cidr;

pub struct SigninNotices(Arc<Inner>);

struct Inner {
    store: Store,
    cfg: NotifyConfig,
    guard: Arc<Guard>,
    hostname: String,
    /// Pairs this process wrote recently: each goes to the database at most once an hour, so
    /// a client that reconnects all day costs one write, not one per login.
    recent: Mutex<HashMap<(i64, String, String), Instant>>,
}

const RECHECK: Duration = Duration::from_secs(3600);

impl SigninNotices {
    pub fn new(store: Store, cfg: NotifyConfig, guard: Arc<Guard>, hostname: String) -> Self {
        SigninNotices(Arc::new(Inner {
            store,
            cfg,
            guard,
            hostname,
            recent: Mutex::new(HashMap::new()),
        }))
    }
}

impl SigninObserver for SigninNotices {
    fn signed_in(&self, p: &Principal, peer: Peer, mechanism: &'static str) {
        let network = Cidr::network_of(peer.remote_ip).to_string();
        let client = format!("{} {mechanism}", peer.protocol.family());
        let key = (p.account_id, network, client);
        {
            let mut recent = self.0.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.get(&key).is_some_and(|t| t.elapsed() < RECHECK) {
                return;
            }
            if recent.len() >= 100_000 {
                recent.retain(|_, t| t.elapsed() < RECHECK);
            }
            recent.insert(key.clone(), Instant::now());
        }
        let (inner, address) = (self.0.clone(), p.address.clone());
        tokio::spawn(async move {
            let (account_id, network, client) = key;
            if let Err(e) = inner
                .check(account_id, &address, &network, &client, peer, mechanism)
                .await
            {
                tracing::warn!(error = %e, account = %address, "new-sign-in check failed");
            }
        });
    }
}

impl Inner {
    async fn check(
        &self,
        account_id: i64,
        address: &str,
        network: &str,
        client: &str,
        peer: Peer,
        mechanism: &'static str,
    ) -> anyhow::Result<()> {
        let now = postern_store::now();
        let known_for = self.cfg.known_days.saturating_mul(86400) as i64;
        let prev = self
            .store
            .signin_seen(account_id, network, client, now)
            .await?;
        if prev.is_some_and(|t| now - t < known_for) || self.guard.allowlisted(peer.remote_ip) {
            return Ok(());
        }
        let sent = self
            .store
            .count_account_events(account_id, "new_signin", "notified", now - 86400)
            .await?;
        let notify = sent < i64::from(self.cfg.max_per_day);
        if notify {
            let msg = self.message(address, network, peer, mechanism);
            self.store
                .deliver_local(vec![msg.into_bytes()], &[account_id], now)
                .await?;
        }
        self.store
            .append_audit(&[NewAudit {
                ts: now,
                event: "new_signin".into(),
                protocol: Some(peer.protocol.name().into()),
                ip: Some(peer.remote_ip.to_string()),
                username: Some(address.to_owned()),
                account_id: Some(account_id),
                mechanism: Some(mechanism.into()),
                tls: peer.tls.map(str::to_owned),
                result: if notify { "notified" } else { "rate_limited" }.into(),
                reason: Some(format!("network {network}, client {client}")),
                actor: Some("server:notify".into()),
            }])
            .await?;
        Ok(())
    }

    fn message(&self, address: &str, network: &str, peer: Peer, mechanism: &str) -> String {
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
        let now = chrono::Utc::now();
        let id: u64 = rand::random();
        let how = format!(
            "{} ({}), {}",
            peer.protocol.family().to_uppercase(),
            mechanism,
            peer.tls.unwrap_or("no TLS")
        );
        format!(
            "From: Postern <postmaster@{domain}>\r\n\
             To: <{address}>\r\n\
             Subject: New sign-in to {address}\r\n\
             Date: {date}\r\n\
             Message-ID: <signin.{id:016x}@{host}>\r\n\
             Auto-Submitted: auto-generated\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             \r\n\
             Your mail account {address} signed in from a place or a program it has\r\n\
             not used in the last {days} days.\r\n\
             \r\n\
             \x20 When:  {when} UTC\r\n\
             \x20 From:  {ip} (network {network})\r\n\
             \x20 How:   {how}\r\n\
             \r\n\
             If this was you (a new phone, a new mail program, another place), there\r\n\
             is nothing to do.\r\n\
             \r\n\
             If it was not you, someone else knows one of this account's passwords:\r\n\
             \x20 - change your password now, and revoke app passwords and certificates\r\n\
             \x20   you do not recognise;\r\n\
             \x20 - tell your administrator at once: they can lock the account and end\r\n\
             \x20   every session with `postern incident lock {address}`.\r\n",
            date = now.to_rfc2822(),
            host = self.hostname,
            days = self.cfg.known_days,
            when = now.format("%Y-%m-%d %H:%M:%S"),
            ip = peer.remote_ip,
        )
    }
}
