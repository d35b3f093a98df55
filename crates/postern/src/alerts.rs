//! Built-in alerts (`[alerts]`), for installations without Prometheus: the conditions of
//! `contrib/prometheus/postern.rules.yml` evaluated in the server every `check_secs`, each
//! notified when it starts, reminded every `repeat_mins` while it lasts, and closed with a
//! "resolved" notice when it ends. Notices go to the postmaster of each local domain (and
//! `mail_to`) and/or a webhook (JSON, signed with HMAC-SHA256); every notice is also an audit
//! event (`alert_firing`, `alert_resolved`) and a `postern::alert` log line, and at most
//! `max_per_hour` are sent in all (the rest are only logged and audited).
//!
//! The same loop runs the hourly audit chain check (`postern_audit_chain_ok`) and the secret
//! manager check (`postern_secret_manager_up`), whether or not anything is configured to be sent.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_config::{AlertsConfig, Config};
use postern_metrics::Snapshot;
use postern_store::Store;
use postern_types::EmailAddress;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::actor::{record, Actor};
use crate::keys::Keys;

/// One condition's value at one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub kind: &'static str,
    pub firing: bool,
    pub severity: &'static str,
    pub summary: String,
}

/// A notice to send.
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    pub alert: String,
    /// `firing` (new or reminder) or `resolved`.
    pub state: &'static str,
    pub reminder: bool,
    pub severity: String,
    pub summary: String,
    pub host: String,
    pub time: String,
}

/// Facts that are not counters: checked on their own schedule.
#[derive(Debug, Clone, Copy, Default)]
pub struct Checks {
    pub cert_days_left: Option<i64>,
    pub audit_chain_ok: Option<bool>,
    pub secret_manager_up: Option<bool>,
}

fn window(
    history: &VecDeque<(Instant, Snapshot)>,
    now: Instant,
    span: Duration,
) -> Option<&Snapshot> {
    // the oldest sample inside the window (or the oldest there is, early after start)
    history
        .iter()
        .find(|(t, _)| now.duration_since(*t) <= span)
        .map(|(_, s)| s)
}

/// Evaluates every condition from the samples (oldest first, the current one last).
pub fn evaluate(
    c: &AlertsConfig,
    history: &VecDeque<(Instant, Snapshot)>,
    now: Instant,
    cur: &Snapshot,
    checks: &Checks,
) -> Vec<Condition> {
    let mut out = Vec::new();
    let five = window(history, now, Duration::from_secs(300)).unwrap_or(cur);
    let failures = cur.auth_failures.saturating_sub(five.auth_failures);
    out.push(Condition {
        kind: "brute_force",
        firing: failures >= c.brute_force_failures,
        severity: "critical",
        summary: format!(
            "{failures} failed logins in the last 5 minutes (threshold {})",
            c.brute_force_failures
        ),
    });
    let ten_min_low = history
        .iter()
        .filter(|(t, _)| now.duration_since(*t) <= Duration::from_secs(600))
        .map(|(_, s)| s.bans_active)
        .min()
        .unwrap_or(cur.bans_active);
    let new_bans = cur.bans_active - ten_min_low;
    out.push(Condition {
        kind: "ban_storm",
        firing: new_bans >= c.ban_storm,
        severity: "warning",
        summary: format!(
            "{new_bans} more active bans than 10 minutes ago ({} now)",
            cur.bans_active
        ),
    });
    out.push(Condition {
        kind: "lockouts",
        firing: cur.lockouts_active > 0,
        severity: "warning",
        summary: format!(
            "{} accounts locked for unknown sources (the real users still get in)",
            cur.lockouts_active
        ),
    });
    let sat = cur.pool_saturated.saturating_sub(five.pool_saturated);
    out.push(Condition {
        kind: "hash_pool_saturated",
        firing: sat >= c.pool_saturated,
        severity: "warning",
        summary: format!(
            "{sat} logins refused in 5 minutes because password hashing was saturated"
        ),
    });
    out.push(Condition {
        kind: "queue_backlog",
        firing: cur.queued >= c.queue_backlog,
        severity: "warning",
        summary: format!(
            "{} messages waiting in the outbound queue (threshold {})",
            cur.queued, c.queue_backlog
        ),
    });
    let fifteen = window(history, now, Duration::from_secs(900)).unwrap_or(cur);
    let ok = cur.deliveries_ok.saturating_sub(fifteen.deliveries_ok);
    let bad = cur.deliveries_bad.saturating_sub(fifteen.deliveries_bad);
    let total = ok + bad;
    out.push(Condition {
        kind: "delivery_failures",
        firing: total >= 20 && bad * 100 >= c.delivery_failure_percent * total,
        severity: "warning",
        summary: format!("{bad} of {total} delivery attempts in 15 minutes deferred or failed"),
    });
    if let Some(days) = checks.cert_days_left {
        out.push(Condition {
            kind: "certificate_expiring",
            firing: days < c.cert_days,
            severity: if days < 3 { "critical" } else { "warning" },
            summary: if days < 0 {
                format!("the server certificate expired {} days ago", -days)
            } else {
                format!("the server certificate expires in {days} days")
            },
        });
    }
    if let Some(ok) = checks.audit_chain_ok {
        out.push(Condition {
            kind: "audit_chain_broken",
            firing: !ok,
            severity: "critical",
            summary: "the audit log's hash chain does not verify: rows were edited or deleted outside Postern (`postern audit-log verify`)".into(),
        });
    }
    if let Some(up) = checks.secret_manager_up {
        out.push(Condition {
            kind: "secret_manager_unreachable",
            firing: !up,
            severity: "critical",
            summary: "the secret manager (OpenBao/Vault) does not answer: secrets cannot be opened, logins with a second factor and relay delivery fail".into(),
        });
    }
    out
}

#[derive(Debug, Default, Clone, Copy)]
struct State {
    firing: bool,
    last_notice: Option<Instant>,
}

/// What to say about one condition now: a new alert, a reminder, a resolution, or nothing.
fn decide(
    st: &mut State,
    c: &Condition,
    now: Instant,
    repeat: Duration,
) -> Option<(&'static str, bool)> {
    match (st.firing, c.firing) {
        (false, true) => {
            st.firing = true;
            st.last_notice = Some(now);
            Some(("firing", false))
        }
        (true, true)
            if st
                .last_notice
                .is_none_or(|t| now.duration_since(t) >= repeat) =>
        {
            st.last_notice = Some(now);
            Some(("firing", true))
        }
        (true, false) => {
            st.firing = false;
            st.last_notice = Some(now);
            Some(("resolved", false))
        }
        _ => None,
    }
}

pub struct Alerts {
    cfg: Config,
    store: Store,
    keys: Arc<Keys>,
    dns: postern_dns::Dns,
    history: VecDeque<(Instant, Snapshot)>,
    states: HashMap<&'static str, State>,
    sent: VecDeque<Instant>,
    checks: Checks,
    last_chain_check: Option<Instant>,
}

impl Alerts {
    pub fn new(cfg: Config, store: Store, keys: Arc<Keys>, dns: postern_dns::Dns) -> Alerts {
        Alerts {
            cfg,
            store,
            keys,
            dns,
            history: VecDeque::new(),
            states: HashMap::new(),
            sent: VecDeque::new(),
            checks: Checks::default(),
            last_chain_check: None,
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let every = Duration::from_secs(self.cfg.alerts.check_secs);
        loop {
            self.tick().await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    async fn tick(&mut self) {
        let now = Instant::now();
        let a = self.cfg.alerts.clone();
        // the facts on their own schedules
        self.checks.cert_days_left =
            postern_net::tls::certificate_summary(&self.cfg.path(&self.cfg.tls.cert))
                .ok()
                .map(|(_, not_after)| (not_after - postern_store::now()).div_euclid(86400));
        if self.last_chain_check.is_none_or(|t| {
            now.duration_since(t) >= Duration::from_secs(a.audit_chain_check_mins * 60)
        }) {
            self.last_chain_check = Some(now);
            let ok = match self.store.verify_audit().await {
                Ok(Ok(_)) => Some(true),
                Ok(Err(e)) => {
                    tracing::error!(target: "postern::alert", error = %e, "the audit chain does not verify");
                    Some(false)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the audit chain could not be read for its check");
                    None
                }
            };
            if let Some(ok) = ok {
                postern_metrics::set_audit_chain_ok(ok);
            }
            self.checks.audit_chain_ok = ok;
        }
        self.checks.secret_manager_up = match self.keys.secret_manager_check().await {
            None => None,
            Some(r) => {
                if let Err(e) = &r {
                    tracing::warn!(error = %format!("{e:#}"), "the secret manager does not answer");
                }
                postern_metrics::set_secret_manager_up(r.is_ok());
                Some(r.is_ok())
            }
        };
        // counters over windows
        let cur = postern_metrics::snapshot();
        while self
            .history
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(960))
        {
            self.history.pop_front();
        }
        let conditions = evaluate(&a, &self.history, now, &cur, &self.checks);
        self.history.push_back((now, cur));
        let repeat = Duration::from_secs(a.repeat_mins * 60);
        for c in conditions {
            let st = self.states.entry(c.kind).or_default();
            if let Some((state, reminder)) = decide(st, &c, now, repeat) {
                self.notify(&c, state, reminder).await;
            }
        }
    }

    async fn notify(&mut self, c: &Condition, state: &'static str, reminder: bool) {
        let notice = Notice {
            alert: c.kind.to_owned(),
            state,
            reminder,
            severity: c.severity.to_owned(),
            summary: c.summary.clone(),
            host: self.cfg.server.hostname.clone(),
            time: chrono::Utc::now().to_rfc3339(),
        };
        tracing::warn!(target: "postern::alert", alert = c.kind, state, reminder, "{}", c.summary);
        let event = if state == "resolved" {
            "alert_resolved"
        } else {
            "alert_firing"
        };
        if let Err(e) = record(
            &self.store,
            &Actor::system("alerts"),
            event,
            c.kind,
            &c.summary,
        )
        .await
        {
            tracing::error!(error = %e, "could not record an alert in the audit log");
        }
        // a global cap: an alert storm must not become a mail storm
        let now = Instant::now();
        while self
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(3600))
        {
            self.sent.pop_front();
        }
        if self.sent.len() >= self.cfg.alerts.max_per_hour as usize {
            tracing::warn!(
                alert = c.kind,
                "alert notice not sent: alerts.max_per_hour reached"
            );
            return;
        }
        self.sent.push_back(now);
        let a = &self.cfg.alerts;
        if a.mail || !a.mail_to.is_empty() {
            if let Err(e) = self.mail(&notice).await {
                tracing::error!(error = %format!("{e:#}"), "could not mail an alert");
            }
        }
        if let Some(url) = a.webhook.clone() {
            if let Err(e) = self.webhook(&url, &notice).await {
                tracing::error!(error = %format!("{e:#}"), "could not post an alert to the webhook");
            }
        }
    }

    async fn mail(&self, n: &Notice) -> anyhow::Result<()> {
        let host = &self.cfg.server.hostname;
        let subject = format!(
            "[Postern {}] {}{}: {}",
            if n.state == "resolved" {
                "resolved"
            } else {
                n.severity.as_str()
            },
            if n.reminder { "still " } else { "" },
            n.alert.replace('_', " "),
            host
        );
        let body = format!(
            "{}\r\n\r\nAlert: {}\r\nState: {}{}\r\nServer: {}\r\nTime: {}\r\n\r\n\
             What to do: see the Alerts section of docs/security.md; `postern audit` and\r\n\
             `postern audit-log query` show more.\r\n",
            n.summary,
            n.alert,
            n.state,
            if n.reminder { " (reminder)" } else { "" },
            host,
            n.time
        );
        let mut local = if self.cfg.alerts.mail {
            postmaster_accounts(&self.store).await
        } else {
            Vec::new()
        };
        let mut remote = Vec::new();
        for a in &self.cfg.alerts.mail_to {
            let addr = EmailAddress::parse(a)
                .map_err(|_| anyhow::anyhow!("alerts.mail_to: {a:?} is not an address"))?;
            match self.store.resolve_recipient(&addr).await? {
                Some(id) if self.store.is_local_domain(addr.domain()).await? => local.push(id),
                _ => remote.push(addr.as_str().to_owned()),
            }
        }
        local.sort_unstable();
        local.dedup();
        let from = format!("postmaster@{host}");
        let msg = notice_message(host, &from, &subject, &body);
        if !local.is_empty() {
            self.store
                .deliver_local(
                    vec![b"Return-Path: <>\r\n".to_vec(), msg.clone()],
                    &local,
                    postern_store::now(),
                )
                .await?;
        }
        if !remote.is_empty() {
            // a null sender: an alert never bounces back into another alert
            self.store.enqueue(vec![msg], "", None, &remote).await?;
        }
        Ok(())
    }

    async fn webhook(&self, url: &str, n: &Notice) -> anyhow::Result<()> {
        let secret_ref = self
            .cfg
            .alerts
            .webhook_secret
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("alerts.webhook_secret is not set"))?;
        let secret = self
            .keys
            .resolve(secret_ref, "alert webhook signature")
            .await?;
        let body = serde_json::to_vec(n)?;
        let ts = postern_store::now();
        let sig = sign(secret.as_bytes(), ts, &body);
        let connector = postern_queue::mta_sts::connector(
            self.cfg
                .alerts
                .webhook_ca_file
                .as_deref()
                .map(|p| self.cfg.path(p))
                .as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("TLS client: {e}"))?;
        let status = postern_queue::mta_sts::http_post(
            url,
            "application/json",
            &[
                ("x-postern-signature", format!("t={ts},v1={sig}")),
                ("x-postern-event", n.state.to_owned()),
                (
                    "user-agent",
                    format!("postern/{}", env!("CARGO_PKG_VERSION")),
                ),
            ],
            body,
            self.dns.resolver(),
            &connector,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
        anyhow::ensure!((200..300).contains(&status), "{url}: HTTP {status}");
        Ok(())
    }
}

/// `hex(HMAC-SHA256(secret, "{ts}.{body}"))`: the receiver recomputes it over the raw body and
/// the `t=` of `X-Postern-Signature`, and refuses old timestamps (replays).
pub fn sign(secret: &[u8], ts: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(ts.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    hex::encode(ctx.sign().as_ref())
}

/// The accounts behind postmaster@ of every local domain (RFC 2142: the operators' address).
pub async fn postmaster_accounts(store: &Store) -> Vec<i64> {
    let mut accounts: Vec<i64> = Vec::new();
    for d in store.list_domains().await.unwrap_or_default() {
        let Ok(a) = EmailAddress::parse(&format!("postmaster@{}", d.name)) else {
            continue;
        };
        if let Ok(Some(id)) = store.resolve_recipient(&a).await {
            if !accounts.contains(&id) {
                accounts.push(id);
            }
        }
    }
    accounts
}

/// A plain-text notice from the server.
pub fn notice_message(host: &str, from: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Postern <{from}>\r\n\
         To: undisclosed-recipients:;\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}@{host}>\r\n\
         Auto-Submitted: auto-generated\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         {body}",
        date = chrono::Utc::now().to_rfc2822(),
        id = hex::encode(rand::random::<[u8; 12]>()),
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AlertsConfig {
        AlertsConfig {
            brute_force_failures: 10,
            ..Default::default()
        }
    }

    #[test]
    fn brute_force_over_five_minutes() {
        let c = cfg();
        let t0 = Instant::now();
        let mut h = VecDeque::new();
        h.push_back((
            t0,
            Snapshot {
                auth_failures: 100,
                ..Default::default()
            },
        ));
        let now = t0 + Duration::from_secs(60);
        let cur = Snapshot {
            auth_failures: 105,
            ..Default::default()
        };
        let v = evaluate(&c, &h, now, &cur, &Checks::default());
        assert!(!v.iter().find(|x| x.kind == "brute_force").unwrap().firing);
        let cur = Snapshot {
            auth_failures: 110,
            ..Default::default()
        };
        let v = evaluate(&c, &h, now, &cur, &Checks::default());
        assert!(v.iter().find(|x| x.kind == "brute_force").unwrap().firing);
        // failures older than the window do not count
        let later = t0 + Duration::from_secs(400);
        let v = evaluate(&c, &h, later, &cur, &Checks::default());
        assert!(!v.iter().find(|x| x.kind == "brute_force").unwrap().firing);
    }

    #[test]
    fn delivery_failures_need_volume() {
        let c = cfg();
        let t0 = Instant::now();
        let h = VecDeque::from([(t0, Snapshot::default())]);
        let now = t0 + Duration::from_secs(60);
        let few = Snapshot {
            deliveries_bad: 5,
            ..Default::default()
        };
        let many = Snapshot {
            deliveries_bad: 15,
            deliveries_ok: 10,
            ..Default::default()
        };
        let healthy = Snapshot {
            deliveries_bad: 5,
            deliveries_ok: 95,
            ..Default::default()
        };
        let f = |s: &Snapshot| {
            evaluate(&c, &h, now, s, &Checks::default())
                .into_iter()
                .find(|x| x.kind == "delivery_failures")
                .unwrap()
                .firing
        };
        assert!(!f(&few));
        assert!(f(&many));
        assert!(!f(&healthy));
    }

    #[test]
    fn notices_start_remind_and_resolve_once() {
        let mut st = State::default();
        let t0 = Instant::now();
        let on = Condition {
            kind: "x",
            firing: true,
            severity: "warning",
            summary: String::new(),
        };
        let off = Condition {
            firing: false,
            ..on.clone()
        };
        let rep = Duration::from_secs(3600);
        assert_eq!(decide(&mut st, &on, t0, rep), Some(("firing", false)));
        assert_eq!(
            decide(&mut st, &on, t0 + Duration::from_secs(30), rep),
            None,
            "deduplicated"
        );
        assert_eq!(
            decide(&mut st, &on, t0 + Duration::from_secs(3600), rep),
            Some(("firing", true))
        );
        assert_eq!(
            decide(&mut st, &off, t0 + Duration::from_secs(3700), rep),
            Some(("resolved", false))
        );
        assert_eq!(
            decide(&mut st, &off, t0 + Duration::from_secs(3800), rep),
            None
        );
    }

    #[test]
    fn signature_is_hmac_of_timestamp_and_body() {
        // python3 -c "import hmac,hashlib; print(hmac.new(b'k', b'1700000000.{}', hashlib.sha256).hexdigest())"
        assert_eq!(
            sign(b"k", 1_700_000_000, b"{}"),
            "c6ef4734033cee2367414a0939385eca0397754aa7a59716da7463a9298b5146"
        );
        assert_ne!(sign(b"k", 1, b"{}"), sign(b"k", 2, b"{}"));
        assert_ne!(sign(b"k", 1, b"{}"), sign(b"j", 1, b"{}"));
    }
}
