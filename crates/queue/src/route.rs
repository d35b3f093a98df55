//! Where a domain's mail goes (a smarthost or its MX hosts) and one SMTP transaction there.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::proto::rr::{RData, RecordType};
use mail_send::smtp::message::Parameters;
use mail_send::{Credentials, SmtpClient};
use postern_config::{DeliveryConfig, RelayConfig, RelayTls};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

/// The result of an attempt for one recipient, with the reply (or what went wrong).
#[derive(Debug, Clone)]
pub enum Outcome {
    Delivered(String),
    Permanent(String),
    Temporary(String),
}

impl Outcome {
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Delivered(_) => "delivered",
            Outcome::Permanent(_) => "failed",
            Outcome::Temporary(_) => "deferred",
        }
    }

    pub fn text(&self) -> String {
        match self {
            Outcome::Delivered(t) | Outcome::Permanent(t) | Outcome::Temporary(t) => t.clone(),
        }
    }

    /// The enhanced status code (RFC 3463) for a DSN: from the reply if it has one.
    pub fn status_code(&self) -> String {
        let t = self.text();
        let found = t.split_whitespace().find(|w| {
            let p: Vec<&str> = w.split('.').collect();
            p.len() == 3
                && p.iter()
                    .all(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
        });
        match (found, self) {
            (Some(c), _) => c.to_owned(),
            (None, Outcome::Permanent(_)) => "5.0.0".into(),
            (None, Outcome::Temporary(_)) => "4.0.0".into(),
            (None, Outcome::Delivered(_)) => "2.0.0".into(),
        }
    }
}

fn reply_outcome(r: &smtp_proto::Response<String>) -> Outcome {
    let text = format!(
        "{} {}.{}.{} {}",
        r.code, r.esc[0], r.esc[1], r.esc[2], r.message
    );
    match r.code {
        200..=299 => Outcome::Delivered(text),
        500..=599 => Outcome::Permanent(text),
        _ => Outcome::Temporary(text),
    }
}

fn error_outcome(e: mail_send::Error) -> Outcome {
    match e {
        mail_send::Error::UnexpectedReply(r) => reply_outcome(&r),
        other => Outcome::Temporary(format!("4.4.2 {other}")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Implicit,
    /// STARTTLS required, certificate verified.
    Required,
    /// STARTTLS if offered, certificate not verified (RFC 3207 opportunistic).
    Opportunistic,
}

/// One host to try.
pub struct Target {
    pub host: String,
    pub addrs: Vec<SocketAddr>,
    pub tls: TlsMode,
    pub tls_name: String,
    pub connector: TlsConnector,
    pub credentials: Option<(String, Zeroizing<String>)>,
}

pub(crate) fn verifying_connector(
    ca_file: Option<&std::path::Path>,
) -> Result<TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    match ca_file {
        Some(p) => {
            use rustls_pki_types::pem::PemObject;
            let pem = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                roots
                    .add(c.map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
            }
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(TlsConnector::from(Arc::new(cfg)))
        }
        // The operating system's roots (mail-send's platform verifier).
        None => mail_send::smtp::tls::build_tls_connector(false),
    }
}

/// The smarthost of a relay route, with its password resolved (audited by `secrets`).
pub async fn relay_target(
    r: &RelayConfig,
    secrets: &dyn crate::Secrets,
) -> Result<Vec<Target>, Outcome> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((r.host.as_str(), r.port))
        .await
        .map_err(|e| Outcome::Temporary(format!("4.4.3 relay {} does not resolve: {e}", r.host)))?
        .collect();
    let connector = verifying_connector(r.ca_file.as_deref())
        .map_err(|e| Outcome::Temporary(format!("4.7.5 relay TLS setup: {e}")))?;
    let credentials = match (&r.username, &r.password) {
        (Some(u), Some(p)) => {
            let pw = secrets
                .resolve(p, &format!("relay login to {}:{}", r.host, r.port))
                .await
                .map_err(|e| {
                    Outcome::Temporary(format!("4.7.0 relay password unavailable: {e:#}"))
                })?;
            Some((u.clone(), pw))
        }
        _ => None,
    };
    Ok(vec![Target {
        host: r.host.clone(),
        addrs,
        tls: match r.tls {
            RelayTls::Implicit => TlsMode::Implicit,
            RelayTls::Starttls => TlsMode::Required,
        },
        tls_name: r.tls_name.clone().unwrap_or_else(|| r.host.clone()),
        connector,
        credentials,
    }])
}

/// The process's one resolver (`postern_dns::Dns`), as outbound delivery uses it.
pub struct Resolver(pub(crate) postern_dns::TokioResolver);

impl Resolver {
    /// The MX hosts of `domain` in preference order (RFC 5321 5.1), or the domain itself if it
    /// has no MX; a null MX (RFC 7505) or a domain that does not exist fails permanently.
    /// An MTA-STS policy in `enforce` mode (RFC 8461 5) keeps only the MX hosts it lists and
    /// requires TLS with a valid certificate on them; none listed is a temporary failure (the
    /// policy may be updated before the message expires).
    pub async fn mx_targets(
        &self,
        domain: &str,
        cfg: &DeliveryConfig,
        sts: Option<&crate::mta_sts::Policy>,
        dane: Option<&crate::dane::Dane>,
    ) -> Result<Vec<Target>, Outcome> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let mut hosts: Vec<(u16, String)> = match self.0.mx_lookup(fqdn.as_str()).await {
            Ok(l) => l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.to_utf8())),
                    _ => None,
                })
                .collect(),
            Err(e) if e.is_nx_domain() => {
                return Err(Outcome::Permanent(format!(
                    "550 5.1.2 domain {domain} does not exist"
                )))
            }
            Err(e) if e.is_no_records_found() => vec![(0, fqdn.clone())],
            Err(e) => {
                return Err(Outcome::Temporary(format!(
                    "4.4.3 MX lookup for {domain} failed: {e}"
                )))
            }
        };
        if hosts.iter().any(|(_, h)| h == "." || h.is_empty()) {
            return Err(Outcome::Permanent(format!(
                "556 5.1.10 {domain} accepts no mail (null MX)"
            )));
        }
        hosts.sort_by_key(|(p, _)| *p);
        let listed = |h: &str| {
            sts.is_some_and(|p| p.mx.iter().any(|pat| crate::mta_sts::mx_matches(pat, h)))
        };
        let enforce = sts.is_some_and(|p| p.mode == crate::mta_sts::Mode::Enforce);
        if enforce {
            hosts.retain(|(_, h)| listed(h));
            if hosts.is_empty() {
                return Err(Outcome::Temporary(format!(
                    "4.7.5 the MTA-STS policy of {domain} lists none of its MX hosts"
                )));
            }
        } else if sts.is_some_and(|p| p.mode == crate::mta_sts::Mode::Testing) {
            for (_, h) in hosts.iter().filter(|(_, h)| !listed(h)) {
                tracing::warn!(domain, mx = %h, "MX host not in the domain's MTA-STS policy (testing mode: delivering anyway)");
            }
        }
        let require = enforce
            || cfg
                .require_tls
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain));
        let connector = if require {
            verifying_connector(cfg.ca_file.as_deref())
        } else {
            mail_send::smtp::tls::build_tls_connector(true)
        }
        .map_err(|e| Outcome::Temporary(format!("4.7.5 TLS setup: {e}")))?;
        // RFC 7672 2.2.1: DANE applies only when the MX records themselves are secure.
        let dane = match dane {
            Some(d) => match d.lookup(&fqdn, RecordType::MX).await {
                crate::dane::Answer::Secure(_) => Some(d),
                _ => None,
            },
            None => None,
        };
        let mut out = Vec::new();
        let mut dane_failures = Vec::new();
        for (_, host) in hosts {
            let name = host.trim_end_matches('.').to_owned();
            // RFC 7672 2.2: secure, usable TLSA records make TLS mandatory and authenticate the
            // host by them; a failed look-up leaves the host out (a later attempt may succeed).
            let tlsa = match dane {
                Some(d) => match d.tlsa(&name, cfg.mx_port).await {
                    Ok(Some(recs)) if !recs.is_empty() => Some(recs),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(domain, mx = %name, error = %e, "TLSA look-up failed: not using this MX now");
                        dane_failures.push(name);
                        continue;
                    }
                },
                None => None,
            };
            let addrs: Vec<SocketAddr> = match self.0.lookup_ip(host.as_str()).await {
                Ok(ips) => ips
                    .iter()
                    .map(|ip| SocketAddr::new(ip, cfg.mx_port))
                    .collect(),
                Err(_) => continue,
            };
            if addrs.is_empty() {
                continue;
            }
            let (tls, connector) = match tlsa {
                Some(recs) => (
                    TlsMode::Required,
                    crate::dane::connector(recs, &name)
                        .map_err(|e| Outcome::Temporary(format!("4.7.5 DANE TLS setup: {e}")))?,
                ),
                None if require => (TlsMode::Required, connector.clone()),
                None => (TlsMode::Opportunistic, connector.clone()),
            };
            out.push(Target {
                host: name.clone(),
                addrs,
                tls,
                tls_name: name,
                connector,
                credentials: None,
            });
        }
        if out.is_empty() && !dane_failures.is_empty() {
            return Err(Outcome::Temporary(format!(
                "4.7.5 the TLSA records of {} could not be looked up (DANE)",
                dane_failures.join(", ")
            )));
        }
        if out.is_empty() {
            return Err(Outcome::Temporary(format!(
                "4.4.3 no address for the mail hosts of {domain}"
            )));
        }
        Ok(out)
    }
}

type Results = Vec<(String, Outcome, Option<String>)>;

/// How TLS went with one MX host, for TLS reporting (RFC 8460 4.3): None = a TLS session was
/// established; else the result type of the failure.
#[derive(Debug, Clone)]
pub struct TlsEvent {
    pub mx: String,
    pub failure: Option<&'static str>,
}

/// The RFC 8460 4.3 result type of a failed TLS set-up, from the error.
pub fn tls_failure_type(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("notvalidforname") || e.contains("not valid for name") {
        "certificate-host-mismatch"
    } else if e.contains("expired") {
        "certificate-expired"
    } else if e.contains("unknownissuer") || e.contains("unknown issuer") {
        "certificate-not-trusted"
    } else {
        "validation-failure"
    }
}

/// Tries the targets in order until one takes the transaction; returns an outcome per recipient.
pub async fn deliver(
    targets: &[Target],
    helo: &str,
    sender: &str,
    rcpts: &[String],
    body: &[u8],
    cfg: &DeliveryConfig,
) -> (Results, Vec<TlsEvent>) {
    let mut events = Vec::new();
    let timeout = Duration::from_secs(cfg.command_timeout_secs.max(1));
    let connect_timeout = Duration::from_secs(cfg.connect_timeout_secs.max(1));
    let mut last = Outcome::Temporary("4.4.1 no host could be reached".into());
    for t in targets {
        for addr in &t.addrs {
            let remote = format!("{} [{}]", t.host, addr);
            match session(
                t,
                *addr,
                helo,
                sender,
                rcpts,
                body,
                timeout,
                connect_timeout,
            )
            .await
            {
                Ok((results, tls)) => {
                    events.push(TlsEvent {
                        mx: t.host.clone(),
                        failure: (!tls).then_some("starttls-not-supported"),
                    });
                    let results = results
                        .into_iter()
                        .map(|(r, o)| (r, o, Some(remote.clone())))
                        .collect();
                    return (results, events);
                }
                Err(o) => {
                    let text = o.text();
                    if let Some(e) = text
                        .strip_prefix("4.7.5 STARTTLS failed: ")
                        .or_else(|| text.strip_prefix("4.7.5 TLS failed: "))
                    {
                        events.push(TlsEvent {
                            mx: t.host.clone(),
                            failure: Some(tls_failure_type(e)),
                        });
                    } else if text.starts_with("4.7.4") && text.contains("does not offer STARTTLS")
                    {
                        events.push(TlsEvent {
                            mx: t.host.clone(),
                            failure: Some("starttls-not-supported"),
                        });
                    }
                    tracing::info!(host = %remote, reply = %o.text(), "trying the next host");
                    last = o;
                }
            }
        }
    }
    let results = rcpts
        .iter()
        .map(|r| (r.clone(), last.clone(), None))
        .collect();
    (results, events)
}

/// One connection, and whether it ran over TLS. Err: the host could not take the transaction
/// (try the next one).
#[allow(clippy::too_many_arguments)]
async fn session(
    t: &Target,
    addr: SocketAddr,
    helo: &str,
    sender: &str,
    rcpts: &[String],
    body: &[u8],
    timeout: Duration,
    connect_timeout: Duration,
) -> Result<(Vec<(String, Outcome)>, bool), Outcome> {
    let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| Outcome::Temporary("4.4.1 connection timed out".into()))?
        .map_err(|e| Outcome::Temporary(format!("4.4.1 connection failed: {e}")))?;
    let mut client = SmtpClient {
        stream: tcp,
        timeout,
    };
    if t.tls == TlsMode::Implicit {
        let mut tls = client
            .into_tls(&t.connector, &t.tls_name)
            .await
            .map_err(|e| Outcome::Temporary(format!("4.7.5 TLS failed: {e}")))?;
        greet(&mut tls).await?;
        let ehlo = tls.ehlo(helo).await.map_err(error_outcome)?;
        return authenticated_transaction(&mut tls, t, &ehlo, sender, rcpts, body)
            .await
            .map(|r| (r, true));
    }
    greet(&mut client).await?;
    let ehlo = client.ehlo(helo).await.map_err(error_outcome)?;
    if ehlo.has_capability(smtp_proto::EXT_START_TLS) {
        let mut tls = client
            .start_tls(&t.connector, &t.tls_name)
            .await
            .map_err(|e| Outcome::Temporary(format!("4.7.5 STARTTLS failed: {e}")))?;
        let ehlo = tls.ehlo(helo).await.map_err(error_outcome)?;
        return authenticated_transaction(&mut tls, t, &ehlo, sender, rcpts, body)
            .await
            .map(|r| (r, true));
    }
    if t.tls == TlsMode::Required {
        return Err(Outcome::Temporary(format!(
            "4.7.4 {} does not offer STARTTLS, which is required",
            t.host
        )));
    }
    if t.credentials.is_some() {
        // Never send a password in clear.
        return Err(Outcome::Temporary("4.7.4 no TLS: not logging in".into()));
    }
    authenticated_transaction(&mut client, t, &ehlo, sender, rcpts, body)
        .await
        .map(|r| (r, false))
}

async fn greet<T: AsyncRead + AsyncWrite + Unpin>(c: &mut SmtpClient<T>) -> Result<(), Outcome> {
    let g = c.read().await.map_err(error_outcome)?;
    if !(200..300).contains(&g.code) {
        // A 554 greeting refuses this host's service, not the message: try another host.
        return Err(Outcome::Temporary(format!(
            "4.4.2 greeting: {} {}",
            g.code, g.message
        )));
    }
    Ok(())
}

async fn authenticated_transaction<T: AsyncRead + AsyncWrite + Unpin>(
    c: &mut SmtpClient<T>,
    t: &Target,
    ehlo: &smtp_proto::EhloResponse<String>,
    sender: &str,
    rcpts: &[String],
    body: &[u8],
) -> Result<Vec<(String, Outcome)>, Outcome> {
    if let Some((user, pw)) = &t.credentials {
        let creds = Credentials::new(user.clone(), pw.to_string());
        c.authenticate(&creds, ehlo).await.map_err(|e| {
            Outcome::Temporary(format!("4.7.0 relay login to {} failed: {e}", t.host))
        })?;
    }
    if let Err(e) = c.mail_from(sender, &Parameters::new()).await {
        let o = error_outcome(e);
        return Ok(rcpts.iter().map(|r| (r.clone(), o.clone())).collect());
    }
    let mut results = Vec::with_capacity(rcpts.len());
    let mut accepted = Vec::new();
    for r in rcpts {
        match c.rcpt_to(r, &Parameters::new()).await {
            Ok(()) => accepted.push(r.clone()),
            Err(e) => results.push((r.clone(), error_outcome(e))),
        }
    }
    if accepted.is_empty() {
        let _ = c.rset().await;
        return Ok(results);
    }
    let data = match c.data(body).await {
        Ok(()) => Outcome::Delivered("250 2.0.0 accepted".into()),
        Err(e) => error_outcome(e),
    };
    for r in accepted {
        results.push((r, data.clone()));
    }
    let _ = c.cmd(b"QUIT\r\n").await;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failure_types() {
        // rustls's wording for the common certificate problems
        assert_eq!(
            tls_failure_type("invalid peer certificate: NotValidForName"),
            "certificate-host-mismatch"
        );
        assert_eq!(
            tls_failure_type("invalid peer certificate: Expired"),
            "certificate-expired"
        );
        assert_eq!(
            tls_failure_type("invalid peer certificate: UnknownIssuer"),
            "certificate-not-trusted"
        );
        assert_eq!(tls_failure_type("handshake failure"), "validation-failure");
    }
}
