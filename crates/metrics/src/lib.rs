//! Prometheus metrics of a Postern process (`prometheus-client`): one registry, written to by the
//! protocol servers, the auth core and the queue through the small functions here, and encoded
//! in the text exposition format for `GET /metrics`. Labels are low-cardinality by construction:
//! protocol, mechanism, result, reason, check, state — never an account name or an address.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static COMMIT: OnceLock<String> = OnceLock::new();

/// Names this build's commit in `postern_build_info` (call before the first metric).
pub fn init(commit: &str) {
    let _ = COMMIT.set(commit.to_owned());
}

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

struct Metrics {
    registry: Registry,
    auth_attempts: Family<Labels, Counter>,
    auth_refused: Family<Labels, Counter>,
    connections_active: Family<Labels, Gauge>,
    messages_received: Family<Labels, Counter>,
    inbound_checks: Family<Labels, Counter>,
    queue_messages: Family<Labels, Gauge>,
    deliveries: Family<Labels, Counter>,
    delivery_seconds: Histogram,
    argon2_seconds: Histogram,
    accept_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    secret_reads: Family<Labels, Counter>,
    bans_active: Gauge,
    lockouts_active: Gauge,
    tls_cert_expiry: Gauge,
    audit_chain_ok: Gauge,
    secret_manager_up: Gauge,
}

/// Running totals the built-in alerts (`[alerts]`) compare over time windows, kept beside the
/// Prometheus families (whose label sets cannot be summed cheaply).
static AUTH_FAILURES: AtomicU64 = AtomicU64::new(0);
static POOL_SATURATED: AtomicU64 = AtomicU64::new(0);
static DELIVERIES_OK: AtomicU64 = AtomicU64::new(0);
static DELIVERIES_BAD: AtomicU64 = AtomicU64::new(0);

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut registry = Registry::with_prefix("postern");
        let m = Metrics {
            auth_attempts: Family::default(),
            auth_refused: Family::default(),
            connections_active: Family::default(),
            messages_received: Family::default(),
            inbound_checks: Family::default(),
            queue_messages: Family::default(),
            deliveries: Family::default(),
            delivery_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
            argon2_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            accept_seconds: Family::new_with_constructor(accept_buckets),
            secret_reads: Family::default(),
            bans_active: Gauge::default(),
            lockouts_active: Gauge::default(),
            tls_cert_expiry: Gauge::default(),
            audit_chain_ok: Gauge::default(),
            secret_manager_up: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "auth_attempts",
            "Login attempts by protocol, mechanism and result",
            m.auth_attempts.clone(),
        );
        registry.register(
            "auth_refused",
            "Logins refused before or instead of a password check, by reason",
            m.auth_refused.clone(),
        );
        registry.register(
            "connections_active",
            "Open client connections by protocol",
            m.connections_active.clone(),
        );
        registry.register(
            "messages_received",
            "Messages at the end of DATA, by listener and result",
            m.messages_received.clone(),
        );
        registry.register(
            "inbound_checks",
            "Port-25 checks (spf, dkim, dmarc, arc, iprev, greylist, dnsbl, own_domain) by result",
            m.inbound_checks.clone(),
        );
        registry.register(
            "queue_messages",
            "Messages in the outbound queue by state",
            m.queue_messages.clone(),
        );
        registry.register(
            "deliveries",
            "Outbound delivery attempts per recipient, by result",
            m.deliveries.clone(),
        );
        registry.register(
            "delivery_seconds",
            "Time of one outbound delivery attempt",
            m.delivery_seconds.clone(),
        );
        registry.register(
            "argon2_seconds",
            "Time of one password hash verification",
            m.argon2_seconds.clone(),
        );
        registry.register(
            "accept_seconds",
            "Time from the end of DATA to the 250 (checks and the durable store), by listener",
            m.accept_seconds.clone(),
        );
        registry.register(
            "secret_reads",
            "Secrets opened, by purpose",
            m.secret_reads.clone(),
        );
        registry.register("bans_active", "Banned sources now", m.bans_active.clone());
        registry.register(
            "lockouts_active",
            "Accounts locked for unknown clients now",
            m.lockouts_active.clone(),
        );
        registry.register(
            "tls_cert_expiry_seconds",
            "Seconds until the server certificate expires",
            m.tls_cert_expiry.clone(),
        );
        registry.register(
            "audit_chain_ok",
            "1 when the audit log's hash chain verified at the last check (hourly), 0 when broken",
            m.audit_chain_ok.clone(),
        );
        registry.register(
            "secret_manager_up",
            "1 when the secret manager (OpenBao/Vault) answered the last check, 0 when not (absent without one)",
            m.secret_manager_up.clone(),
        );
        registry.register(
            "build",
            "Version and commit of this build",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                (
                    "commit",
                    COMMIT.get().map_or("unknown", String::as_str).to_owned(),
                ),
            ]),
        );
        Metrics { registry, ..m }
    })
}

/// 0.1 ms to about 4 s, each bucket 1.5 times the last (fine enough for a p99 read off the buckets).
fn accept_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 1.5, 27))
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// One message accepted: the time from the end of its DATA to the 250.
pub fn accept_seconds(listener: &str, s: f64) {
    metrics()
        .accept_seconds
        .get_or_create(&labels(&[("listener", listener)]))
        .observe(s);
}

/// A login attempt's outcome: `success`, `failure`, `temporary`, `refused`, `expired`,
/// `app_password_required`.
pub fn auth_attempt(protocol: &str, mechanism: &str, result: &str) {
    if result == "failure" {
        AUTH_FAILURES.fetch_add(1, Ordering::Relaxed);
    }
    metrics()
        .auth_attempts
        .get_or_create(&labels(&[
            ("protocol", protocol),
            ("mechanism", mechanism),
            ("result", result),
        ]))
        .inc();
}

/// A login refused without (or despite) a password check: `banned`, `locked`, `throttled`,
/// `pool_saturated`.
pub fn auth_refused(protocol: &str, reason: &str) {
    if reason == "pool_saturated" {
        POOL_SATURATED.fetch_add(1, Ordering::Relaxed);
    }
    metrics()
        .auth_refused
        .get_or_create(&labels(&[("protocol", protocol), ("reason", reason)]))
        .inc();
}

/// A connection opened (`+1`) or closed (`-1`).
pub fn connection(protocol: &str, delta: i64) {
    metrics()
        .connections_active
        .get_or_create(&labels(&[("protocol", protocol)]))
        .inc_by(delta);
}

/// A message at the end of DATA: `accepted`, `rejected`, `deferred`, `quarantined`.
pub fn message_received(listener: &str, result: &str) {
    metrics()
        .messages_received
        .get_or_create(&labels(&[("listener", listener), ("result", result)]))
        .inc();
}

/// One port-25 check's result (`pass`, `fail`, `softfail`, `none`, `temperror`, `reject`, …).
pub fn inbound_check(check: &str, result: &str) {
    metrics()
        .inbound_checks
        .get_or_create(&labels(&[("check", check), ("result", result)]))
        .inc();
}

/// The number of queued messages in a state (`pending`, `held`).
pub fn set_queue(state: &str, n: i64) {
    metrics()
        .queue_messages
        .get_or_create(&labels(&[("state", state)]))
        .set(n);
}

/// One recipient's delivery attempt: `delivered`, `deferred`, `failed`.
pub fn delivery(result: &str) {
    if result == "delivered" {
        DELIVERIES_OK.fetch_add(1, Ordering::Relaxed);
    } else {
        DELIVERIES_BAD.fetch_add(1, Ordering::Relaxed);
    }
    metrics()
        .deliveries
        .get_or_create(&labels(&[("result", result)]))
        .inc();
}

pub fn delivery_seconds(s: f64) {
    metrics().delivery_seconds.observe(s);
}

pub fn argon2_seconds(s: f64) {
    metrics().argon2_seconds.observe(s);
}

/// A secret opened; `purpose` is a fixed word (`dkim`, `relay`, `totp`, …), never a name.
pub fn secret_read(purpose: &str) {
    metrics()
        .secret_reads
        .get_or_create(&labels(&[("purpose", purpose)]))
        .inc();
}

pub fn set_bans(n: i64) {
    metrics().bans_active.set(n);
}

pub fn set_lockouts(n: i64) {
    metrics().lockouts_active.set(n);
}

pub fn set_tls_cert_expiry(seconds: i64) {
    metrics().tls_cert_expiry.set(seconds);
}

/// Result of the last audit chain check.
pub fn set_audit_chain_ok(ok: bool) {
    metrics().audit_chain_ok.set(i64::from(ok));
}

/// Result of the last secret manager check.
pub fn set_secret_manager_up(up: bool) {
    metrics().secret_manager_up.set(i64::from(up));
}

/// What the built-in alerts read, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Failed logins since start.
    pub auth_failures: u64,
    /// Logins refused because the hash pool was saturated, since start.
    pub pool_saturated: u64,
    /// Delivery attempts per recipient since start: delivered, and deferred or failed.
    pub deliveries_ok: u64,
    pub deliveries_bad: u64,
    pub bans_active: i64,
    pub lockouts_active: i64,
    pub queued: i64,
    pub cert_expiry_seconds: i64,
}

pub fn snapshot() -> Snapshot {
    let m = metrics();
    Snapshot {
        auth_failures: AUTH_FAILURES.load(Ordering::Relaxed),
        pool_saturated: POOL_SATURATED.load(Ordering::Relaxed),
        deliveries_ok: DELIVERIES_OK.load(Ordering::Relaxed),
        deliveries_bad: DELIVERIES_BAD.load(Ordering::Relaxed),
        bans_active: m.bans_active.get(),
        lockouts_active: m.lockouts_active.get(),
        queued: m
            .queue_messages
            .get_or_create(&labels(&[("state", "queued")]))
            .get(),
        cert_expiry_seconds: m.tls_cert_expiry.get(),
    }
}

/// The media type of [`encode_text`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The text exposition format (OpenMetrics), for `GET /metrics`.
pub fn encode_text() -> String {
    let mut out = String::new();
    let _ = encode(&mut out, &metrics().registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_exposition() {
        auth_attempt("imap", "PLAIN", "failure");
        auth_attempt("imap", "PLAIN", "failure");
        inbound_check("dmarc", "reject");
        set_bans(3);
        let text = encode_text();
        assert!(
            text.contains(
                r#"postern_auth_attempts_total{protocol="imap",mechanism="PLAIN",result="failure"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"postern_inbound_checks_total{check="dmarc",result="reject"} 1"#));
        assert!(text.contains("postern_bans_active 3"));
        assert!(text.contains("postern_build_info{version="));
        assert!(text.ends_with("# EOF\n"));
    }
}
