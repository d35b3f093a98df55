//! Outbound delivery: the workers that empty the durable queue.
//!
//! - A scheduler picks due messages (oldest first) and runs at most `delivery.workers` attempts
//!   at once, at most `delivery.per_destination` per destination (relay or domain).
//! - Each recipient domain goes through a smarthost route (`[[relay]]`: host, port, implicit TLS
//!   or required STARTTLS, verified certificate, AUTH with a password given as a secret
//!   reference) or directly to its MX hosts (the shared resolver of `postern-dns`; STARTTLS
//!   opportunistic, required and verified for the domains in `delivery.require_tls`, for an
//!   MTA-STS policy in `enforce` mode ([`mta_sts`]), and authenticated by TLSA records under
//!   DANE ([`dane`])); TLS outcomes are counted for the daily TLS reports (RFC 8460).
//! - Replies decide per recipient: 2xx delivered, 5xx failed (bounced now), 4xx and connection
//!   problems retried on the schedule (RFC 5321 4.5.4.1) until `give_up_after`, then bounced;
//!   a delay warning goes out once after `warn_after`. Bounces are RFC 3464 DSNs from
//!   `MAILER-DAEMON` with a null sender; nothing bounces a null-sender message.
//!
//! The SMTP client is `mail-send` (its low-level session API, so that each RCPT gets its own
//! outcome), TLS is rustls with the ring provider.
#![forbid(unsafe_code)]

pub mod dane;
pub mod dkim;
pub mod dsn;
pub mod mta_sts;
mod route;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_config::{DeliveryConfig, RelayConfig};
use postern_store::queue::QueuedMessage;
use postern_store::Store;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

pub use route::{Outcome, Target};

/// Resolves secret references (relay passwords) and audits each use.
#[async_trait::async_trait]
pub trait Secrets: Send + Sync {
    async fn resolve(&self, reference: &str, why: &str) -> anyhow::Result<Zeroizing<String>>;
    /// A sealed secret of the internal store, as bytes (DKIM private keys are DER).
    async fn secret_bytes(&self, name: &str, why: &str) -> anyhow::Result<Zeroizing<Vec<u8>>>;
    /// Signs a DKIM digest with a key kept in the secret manager (OpenBao/Vault Transit).
    async fn transit_sign(
        &self,
        _key: &str,
        _digest: &[u8],
        _rsa: bool,
    ) -> anyhow::Result<Vec<u8>> {
        anyhow::bail!("no secret manager to sign with")
    }
}

pub struct Delivery {
    pub store: Store,
    pub hostname: String,
    pub cfg: DeliveryConfig,
    pub relays: Vec<RelayConfig>,
    pub secrets: Arc<dyn Secrets>,
    resolver: route::Resolver,
    mta_sts: Option<mta_sts::MtaSts>,
    dane: Option<dane::Dane>,
    in_flight: Mutex<HashSet<i64>>,
    per_destination: Mutex<HashMap<String, Arc<Semaphore>>>,
    workers: Arc<Semaphore>,
    wake: tokio::sync::Notify,
}

/// What one attempt did to one recipient.
#[derive(Debug, Clone)]
struct RcptResult {
    address: String,
    outcome: Outcome,
    remote: Option<String>,
}

/// What can go wrong in the queue's own work (delivery failures are outcomes, not errors).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue storage: {0}")]
    Store(#[from] postern_store::StoreError),
    #[error("TLS client setup: {0}")]
    Tls(String),
    #[error("a queued message has an invalid sender: {0}")]
    Sender(#[from] postern_types::AddressError),
}

pub type Result<T> = std::result::Result<T, QueueError>;

fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

impl Delivery {
    pub fn new(
        store: Store,
        hostname: String,
        cfg: DeliveryConfig,
        relays: Vec<RelayConfig>,
        secrets: Arc<dyn Secrets>,
        dns: postern_dns::Dns,
        dns_cfg: &postern_config::DnsConfig,
    ) -> Result<Arc<Delivery>> {
        let resolver = route::Resolver(dns.resolver().clone());
        let dane = if cfg.dane {
            dane::Dane::new(dns_cfg)
        } else {
            None
        };
        let mta_sts = if cfg.mta_sts {
            let connector = mta_sts::connector(cfg.ca_file.as_deref()).map_err(QueueError::Tls)?;
            Some(mta_sts::MtaSts::new(
                store.clone(),
                dns.resolver().clone(),
                cfg.mta_sts_port,
                connector,
            ))
        } else {
            None
        };
        let workers = Arc::new(Semaphore::new(cfg.workers.max(1)));
        Ok(Arc::new(Delivery {
            store,
            hostname,
            cfg,
            relays,
            secrets,
            resolver,
            mta_sts,
            dane,
            in_flight: Mutex::new(HashSet::new()),
            per_destination: Mutex::new(HashMap::new()),
            workers,
            wake: tokio::sync::Notify::new(),
        }))
    }

    /// Asks the scheduler to look at the queue now (a message was just queued).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs the scheduler until `shutdown` is cancelled; attempts in flight finish first.
    pub async fn run(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            let now = postern_store::now();
            // lease no more than the free workers can start: what is leased waits for a worker
            let free = self.workers.available_permits().clamp(1, 256) as i64;
            match self.store.lease_due(now, free).await {
                Ok(ids) => {
                    for (k, &id) in ids.iter().enumerate() {
                        if !self
                            .in_flight
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(id)
                        {
                            continue;
                        }
                        let permit = tokio::select! {
                            p = self.workers.clone().acquire_owned() => p.expect("never closed"),
                            _ = shutdown.cancelled() => {
                                // the leases of what was not started go back: due at once again
                                if let Err(e) = self.store.release_leases(&ids[k..], now).await {
                                    tracing::warn!(error = %e, "releasing queue leases failed");
                                }
                                return self.drain().await;
                            }
                        };
                        let me = self.clone();
                        tokio::spawn(async move {
                            let _permit = permit;
                            if let Err(e) = me.attempt(id).await {
                                tracing::error!(queue_id = id, error = %format!("{e:#}"), "delivery attempt failed");
                                // Try again later rather than spin on a broken entry.
                                let _ = me
                                    .store
                                    .reschedule(
                                        id,
                                        postern_store::now() + 60,
                                        Some("internal error"),
                                    )
                                    .await;
                            }
                            me.in_flight
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .remove(&id);
                        });
                    }
                }
                Err(e) => tracing::error!(error = %e, "reading the queue failed"),
            }
            let sleep = match self.store.next_due().await {
                Ok(Some(t)) => (t - postern_store::now()).clamp(1, 5) as u64,
                _ => 5,
            };
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(sleep)) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.cancelled() => return self.drain().await,
            }
        }
    }

    async fn drain(&self) {
        let n = self.cfg.workers.max(1) as u32;
        let _ = tokio::time::timeout(Duration::from_secs(30), self.workers.acquire_many(n)).await;
    }

    fn destination_permit(&self, key: &str) -> Arc<Semaphore> {
        self.per_destination
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.cfg.per_destination.max(1))))
            .clone()
    }

    fn relay_for(&self, domain: &str) -> Option<&RelayConfig> {
        self.relays
            .iter()
            .find(|r| r.domains.iter().any(|d| d.eq_ignore_ascii_case(domain)))
            .or_else(|| {
                self.relays
                    .iter()
                    .find(|r| r.domains.iter().any(|d| d == "*"))
            })
    }

    /// One delivery attempt of one queued message.
    pub async fn attempt(&self, id: i64) -> Result<()> {
        let msg = self.store.queued_message(id).await?;
        if msg.status != "queued" {
            return Ok(());
        }
        let body = self.store.queued_body(&msg.blob_id).await?;
        let mut by_domain: HashMap<String, Vec<String>> = HashMap::new();
        for r in msg.recipients.iter().filter(|r| r.status == "pending") {
            by_domain
                .entry(domain_of(&r.address))
                .or_default()
                .push(r.address.clone());
        }
        let mut results: Vec<RcptResult> = Vec::new();
        for (domain, rcpts) in by_domain {
            let mut sts = None;
            let direct = self.relay_for(&domain).is_none();
            let (key, targets) = match self.relay_for(&domain) {
                Some(relay) => (
                    format!("relay:{}:{}", relay.host, relay.port),
                    route::relay_target(relay, self.secrets.as_ref()).await,
                ),
                None => {
                    sts = match &self.mta_sts {
                        Some(m) => m.policy(&domain).await,
                        None => None,
                    };
                    (
                        format!("domain:{domain}"),
                        self.resolver
                            .mx_targets(&domain, &self.cfg, sts.as_ref(), self.dane.as_ref())
                            .await,
                    )
                }
            };
            let sem = self.destination_permit(&key);
            let _permit = sem.acquire_owned().await.expect("never closed");
            let out = match targets {
                Ok(targets) => {
                    let started = std::time::Instant::now();
                    let (out, events) = route::deliver(
                        &targets,
                        &self.hostname,
                        &msg.sender,
                        &rcpts,
                        &body,
                        &self.cfg,
                    )
                    .await;
                    postern_metrics::delivery_seconds(started.elapsed().as_secs_f64());
                    if direct {
                        self.record_tls(&domain, sts.as_ref(), &events).await;
                    }
                    out
                }
                Err(outcome) => rcpts
                    .iter()
                    .map(|r| (r.clone(), outcome.clone(), None))
                    .collect(),
            };
            for (address, outcome, remote) in out {
                postern_metrics::delivery(outcome.kind());
                tracing::info!(
                    event = "delivery",
                    queue_id = id,
                    rcpt = %address,
                    result = outcome.kind(),
                    reply = %outcome.text(),
                    remote = remote.as_deref().unwrap_or(""),
                    "delivery attempt"
                );
                results.push(RcptResult {
                    address,
                    outcome,
                    remote,
                });
            }
        }
        self.settle(&msg, &body, results).await
    }

    /// Counts TLS sessions and failures with a recipient domain's MX hosts for the daily TLS
    /// report to that domain (RFC 8460); a failure to count is logged, never a delivery error.
    async fn record_tls(
        &self,
        domain: &str,
        sts: Option<&mta_sts::Policy>,
        events: &[route::TlsEvent],
    ) {
        let (policy_type, policy) = match sts {
            Some(p) => ("sts", serde_json::to_string(&p.lines).unwrap_or_default()),
            None => ("no-policy-found", "[]".to_owned()),
        };
        let day = postern_store::now().div_euclid(86400);
        for e in events {
            let result = e.failure.unwrap_or("success");
            if let Err(err) = self
                .store
                .tlsrpt_record(day, domain, policy_type, &policy, &e.mx, result)
                .await
            {
                tracing::warn!(domain, error = %err, "TLS report result not recorded");
            }
        }
    }

    /// Records outcomes, bounces what failed, reschedules or removes the message.
    async fn settle(
        &self,
        msg: &QueuedMessage,
        body: &[u8],
        results: Vec<RcptResult>,
    ) -> Result<()> {
        let now = postern_store::now();
        let mut failed_now = Vec::new();
        let mut pending = Vec::new();
        let mut last_temp = None;
        for r in &results {
            match &r.outcome {
                Outcome::Delivered(t) => {
                    self.store
                        .set_recipient_status(msg.id, &r.address, "delivered", Some(t))
                        .await?
                }
                Outcome::Permanent(t) => {
                    self.store
                        .set_recipient_status(msg.id, &r.address, "failed", Some(t))
                        .await?;
                    failed_now.push(dsn::Failed {
                        address: r.address.clone(),
                        status: r.outcome.status_code(),
                        diagnostic: t.clone(),
                        remote: r.remote.clone(),
                    });
                }
                Outcome::Temporary(t) => {
                    self.store
                        .set_recipient_status(msg.id, &r.address, "pending", Some(t))
                        .await?;
                    last_temp = Some(t.clone());
                    pending.push(r);
                }
            }
        }
        let age = now - msg.created_at;
        let give_up = pending.is_empty() || age >= self.cfg.give_up_after_secs as i64;
        if give_up && !pending.is_empty() {
            for r in &pending {
                self.store
                    .set_recipient_status(msg.id, &r.address, "expired", Some(&r.outcome.text()))
                    .await?;
                failed_now.push(dsn::Failed {
                    address: r.address.clone(),
                    status: "4.4.7".into(),
                    diagnostic: format!("gave up after {} s: {}", age, r.outcome.text()),
                    remote: r.remote.clone(),
                });
            }
        }
        if !failed_now.is_empty() {
            self.bounce(msg, body, &failed_now, dsn::Action::Failed)
                .await?;
        }
        if give_up {
            self.store.remove_queued(msg.id).await?;
            return Ok(());
        }
        // RFC 5321 4.5.4.1: retry on a schedule; the last interval repeats.
        let sched = &self.cfg.retry_schedule_secs;
        let idx = (msg.attempts as usize).min(sched.len().saturating_sub(1));
        let wait = sched.get(idx).copied().unwrap_or(900).max(1);
        self.store
            .reschedule(msg.id, now + wait as i64, last_temp.as_deref())
            .await?;
        if !msg.warned && self.cfg.warn_after_secs > 0 && age >= self.cfg.warn_after_secs as i64 {
            let delayed: Vec<dsn::Failed> = pending
                .iter()
                .map(|r| dsn::Failed {
                    address: r.address.clone(),
                    status: r.outcome.status_code(),
                    diagnostic: r.outcome.text(),
                    remote: r.remote.clone(),
                })
                .collect();
            self.bounce(msg, body, &delayed, dsn::Action::Delayed)
                .await?;
            self.store.mark_warned(msg.id).await?;
        }
        Ok(())
    }

    /// Sends a DSN to the message's sender (never for a null sender): into the local mailbox
    /// if the sender is local, else through the queue with a null sender.
    async fn bounce(
        &self,
        msg: &QueuedMessage,
        body: &[u8],
        rcpts: &[dsn::Failed],
        action: dsn::Action,
    ) -> Result<()> {
        if msg.sender.is_empty() {
            tracing::info!(queue_id = msg.id, "no bounce for a null-sender message");
            return Ok(());
        }
        let report = dsn::build(&self.hostname, msg, body, rcpts, action);
        let sender = postern_types::EmailAddress::parse(&msg.sender)?;
        match self.store.resolve_recipient(&sender).await? {
            Some(account) => {
                self.store
                    .deliver_local(vec![report], &[account], postern_store::now())
                    .await?;
            }
            None => {
                self.store
                    .enqueue(vec![report], "", None, std::slice::from_ref(&msg.sender))
                    .await?;
                self.wake();
            }
        }
        tracing::info!(queue_id = msg.id, to = %msg.sender, action = action.as_str(), recipients = rcpts.len(), "DSN sent");
        Ok(())
    }
}
