//! MTA-STS (RFC 8461) for direct delivery: a recipient domain that publishes `_mta-sts` and a
//! policy at `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` in `enforce` mode gets its mail only
//! over TLS with a valid certificate, and only on the MX hosts the policy lists. Policies are
//! cached in the store for their `max_age`, so an attacker who later blocks the policy fetch or
//! removes the TXT record does not downgrade delivery (RFC 8461 5.1).
//!
//! The policy parser and the MX pattern match are hand-written: `mail-auth` 0.13 parses the TXT
//! record only, and the policy format is a handful of `key: value` lines.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use postern_store::Store;
use tokio_rustls::TlsConnector;

/// RFC 8461 3.3: a policy body is at most 64 KiB.
const MAX_POLICY: usize = 64 * 1024;
/// RFC 8461 3.3: fetch timeouts "on the order of a minute"; shorter here, a failure falls back to
/// the cache.
const FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// A policy's max_age is capped at one year (RFC 8461 3.2).
const MAX_AGE_CAP: u64 = 31_557_600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// MX patterns: host names, or `*.example.com` (one label).
    pub mx: Vec<String>,
    pub max_age: u64,
    /// The policy's lines, as TLS reports quote them (RFC 8460 4.4 "policy-string").
    pub lines: Vec<String>,
}

/// Parses a policy body (RFC 8461 3.2). Unknown keys are ignored; `version`, `mode` and
/// `max_age` are required, and `mx` unless the mode is `none`.
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let (mut version, mut mode, mut max_age, mut mx) = (None, None, None, Vec::new());
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        // RFC 8461 3.2: `key ":" *WSP value *WSP`, nothing before the key (found by fuzzing: a
        // form feed before `version` was accepted)
        let v = v.trim_matches([' ', '\t']);
        match k {
            "version" => version = Some(v.to_owned()),
            "mode" => {
                mode = Some(match v {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(format!("unknown mode {other:?}")),
                })
            }
            "max_age" => {
                max_age = Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("bad max_age {v:?}"))?
                        .min(MAX_AGE_CAP),
                )
            }
            "mx" => mx.push(v.trim_end_matches('.').to_ascii_lowercase()),
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("version is not STSv1".into());
    }
    let mode = mode.ok_or("no mode")?;
    let max_age = max_age.ok_or("no max_age")?;
    if mx.is_empty() && mode != Mode::None {
        return Err("no mx".into());
    }
    let lines = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    Ok(Policy {
        mode,
        mx,
        max_age,
        lines,
    })
}

/// Whether an MX host name matches a policy pattern (RFC 8461 4.1: a leading `*.` matches
/// exactly one label).
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => host == pattern,
    }
}

/// The `id` of a `v=STSv1; id=...;` TXT record (RFC 8461 3.1); None when it is not one.
pub fn record_id(txt: &str) -> Option<String> {
    let mut fields = txt.split(';').map(str::trim);
    if fields.next()? != "v=STSv1" {
        return None;
    }
    fields
        .filter_map(|f| f.split_once('='))
        .find(|(k, _)| k.trim() == "id")
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 32 && v.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Finds, fetches and caches policies.
pub struct MtaSts {
    pub store: Store,
    pub resolver: postern_dns::TokioResolver,
    /// Port of the policy host (443; tests use a high port).
    pub port: u16,
    pub connector: TlsConnector,
}

impl MtaSts {
    pub fn new(
        store: Store,
        resolver: postern_dns::TokioResolver,
        port: u16,
        connector: TlsConnector,
    ) -> MtaSts {
        MtaSts {
            store,
            resolver,
            port,
            connector,
        }
    }

    /// The policy that applies to `domain` now, if any.
    pub async fn policy(&self, domain: &str) -> Option<Policy> {
        let now = postern_store::now();
        let cached = match self.store.mta_sts_cached(domain).await {
            Ok(c) => c.filter(|c| c.expires_at > now),
            Err(e) => {
                tracing::warn!(domain, error = %e, "MTA-STS cache unreadable");
                None
            }
        };
        let cached_policy = cached.as_ref().and_then(|c| parse_policy(&c.policy).ok());
        let name = format!("_mta-sts.{}.", domain.trim_end_matches('.'));
        let id = match self.resolver.txt_lookup(name.as_str()).await {
            Ok(l) => l.answers().iter().find_map(|r| match &r.data {
                hickory_resolver::proto::rr::RData::TXT(t) => {
                    let s: String = t
                        .txt_data
                        .iter()
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect();
                    record_id(&s)
                }
                _ => None,
            }),
            // no record (or the look-up failed): the cached policy, if any, still applies
            Err(_) => None,
        };
        let Some(id) = id else {
            return cached_policy;
        };
        if let (Some(c), Some(p)) = (&cached, &cached_policy) {
            if c.id == id {
                return Some(p.clone());
            }
        }
        match self.fetch(domain).await {
            Ok((text, policy)) => {
                let expires = now.saturating_add(policy.max_age as i64);
                if let Err(e) = self
                    .store
                    .mta_sts_store(domain, &id, &text, now, expires)
                    .await
                {
                    tracing::warn!(domain, error = %e, "MTA-STS policy not cached");
                }
                tracing::info!(domain, id, mode = ?policy.mode, "MTA-STS policy fetched");
                Some(policy)
            }
            Err(e) => {
                tracing::warn!(domain, error = %e, "MTA-STS policy fetch failed; using the cached one if any");
                cached_policy
            }
        }
    }

    /// GET https://mta-sts.DOMAIN/.well-known/mta-sts.txt: certificate valid for that name, 200
    /// only (no redirects), text/plain, at most 64 KiB (RFC 8461 3.3).
    async fn fetch(&self, domain: &str) -> Result<(String, Policy), String> {
        let host = format!("mta-sts.{}", domain.trim_end_matches('.'));
        let ips = self
            .resolver
            .lookup_ip(format!("{host}.").as_str())
            .await
            .map_err(|e| format!("{host} does not resolve: {e}"))?;
        let ip = ips.iter().next().ok_or(format!("{host} has no address"))?;
        let get = async {
            let tcp = tokio::net::TcpStream::connect(SocketAddr::new(ip, self.port))
                .await
                .map_err(|e| format!("{host}: {e}"))?;
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|_| format!("{host} is not a valid name"))?;
            let tls = self
                .connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {host}: {e}"))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            let req = hyper::Request::builder()
                .method("GET")
                .uri("/.well-known/mta-sts.txt")
                .header("host", host.as_str())
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let text_plain = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("text/plain"));
            let body = http_body_util::Limited::new(resp.into_body(), MAX_POLICY)
                .collect()
                .await
                .map_err(|_| "policy too large or broken".to_string())?
                .to_bytes();
            driver.abort();
            if status != 200 {
                return Err(format!("HTTP {status}"));
            }
            if !text_plain {
                return Err("the policy is not text/plain".into());
            }
            String::from_utf8(body.to_vec()).map_err(|_| "the policy is not UTF-8".to_string())
        };
        let text = tokio::time::timeout(FETCH_TIMEOUT, get)
            .await
            .map_err(|_| "timed out".to_string())??;
        let policy = parse_policy(&text)?;
        Ok((text, policy))
    }
}

/// POSTs a TLS report to an `https:` destination of a `_smtp._tls` record (RFC 8460 6.4).
pub async fn post_report(
    url: &str,
    body: Vec<u8>,
    resolver: &postern_dns::TokioResolver,
    connector: &TlsConnector,
) -> Result<(), String> {
    if !url.starts_with("https://") {
        return Err(format!("{url}: only https is used"));
    }
    let status = http_post(
        url,
        "application/tlsrpt+gzip",
        &[],
        body,
        resolver,
        connector,
    )
    .await?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// POSTs `body` and returns the HTTP status: `https:` (certificate verified by `connector`), or
/// `http:` to a loopback address only (a receiver on the same host).
pub async fn http_post(
    url: &str,
    content_type: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
    resolver: &postern_dns::TokioResolver,
    connector: &TlsConnector,
) -> Result<u16, String> {
    let mut all = vec![("content-type", content_type.to_owned())];
    all.extend(headers.iter().map(|(k, v)| (*k, v.clone())));
    http_request("POST", url, &all, body, 0, resolver, connector)
        .await
        .map(|(status, _)| status)
}

/// POSTs a form (`application/x-www-form-urlencoded`) and returns the status and at most
/// `max_body` bytes of the answer; same rules as [`http_post`].
pub async fn http_post_form(
    url: &str,
    headers: &[(&str, String)],
    form: Vec<u8>,
    max_body: usize,
    resolver: &postern_dns::TokioResolver,
    connector: &TlsConnector,
) -> Result<(u16, Bytes), String> {
    let mut all = vec![
        (
            "content-type",
            "application/x-www-form-urlencoded".to_owned(),
        ),
        ("accept", "application/json".to_owned()),
    ];
    all.extend(headers.iter().map(|(k, v)| (*k, v.clone())));
    http_request("POST", url, &all, form, max_body, resolver, connector).await
}

/// GETs `url` and returns the HTTP status and at most `max_body` bytes of body (a longer body
/// is an error); same rules as [`http_post`]. No redirects are followed.
pub async fn http_get(
    url: &str,
    max_body: usize,
    resolver: &postern_dns::TokioResolver,
    connector: &TlsConnector,
) -> Result<(u16, Bytes), String> {
    http_request(
        "GET",
        url,
        &[("accept", "application/json".to_owned())],
        Vec::new(),
        max_body,
        resolver,
        connector,
    )
    .await
}

async fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
    max_body: usize,
    resolver: &postern_dns::TokioResolver,
    connector: &TlsConnector,
) -> Result<(u16, Bytes), String> {
    let uri: hyper::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{url}: only https (or http to loopback) is used")),
    };
    let host = uri
        .host()
        .ok_or(format!("{url}: no host"))?
        .trim_matches(['[', ']'])
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let ip = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip,
        Err(_) => resolver
            .lookup_ip(format!("{host}.").as_str())
            .await
            .map_err(|e| format!("{host} does not resolve: {e}"))?
            .iter()
            .next()
            .ok_or(format!("{host} has no address"))?,
    };
    if !https && !ip.is_loopback() {
        return Err(format!("{url}: http only to a loopback address"));
    }
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    // RFC 9110 7.2: the port is part of Host unless it is the scheme's default (servers build
    // absolute URLs from it).
    let authority = match (uri.host(), uri.port_u16()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        _ => host.clone(),
    };
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority.as_str());
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let req = req
        .body(http_body_util::Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(SocketAddr::new(ip, port))
            .await
            .map_err(|e| format!("{host}: {e}"))?;
        if https {
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|_| format!("{host} is not a valid name"))?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {host}: {e}"))?;
            send(TokioIo::new(tls), req, max_body).await
        } else {
            send(TokioIo::new(tcp), req, max_body).await
        }
    };
    tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| "timed out".to_string())?
}

async fn send<I>(
    io: I,
    req: hyper::Request<http_body_util::Full<Bytes>>,
    max_body: usize,
) -> Result<(u16, Bytes), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        if max_body == 0 {
            return Ok((status, Bytes::new()));
        }
        let body = http_body_util::Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|_| "response too large or broken".to_string())?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    driver.abort();
    result
}

/// A verifying TLS client for policy fetches and enforced MX hosts: `ca_file`, or the system's
/// roots.
pub fn connector(ca_file: Option<&std::path::Path>) -> Result<TlsConnector, String> {
    crate::route::verifying_connector(ca_file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies() {
        let p = parse_policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.mx, ["mail.example.com", "*.example.net"]);
        assert_eq!(p.max_age, 604800);
        assert!(parse_policy("version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n").is_err());
        assert!(parse_policy("version: STSv1\nmode: enforce\nmax_age: 1\n").is_err());
        assert!(parse_policy("version: STSv1\nmode: none\nmax_age: 1\n").is_ok());
        // regression (fuzz): whitespace before a key is not that key
        assert!(parse_policy("\x0cversion: STSv1\nmode: none\nmax_age: 1\n").is_err());
        assert!(parse_policy("version : STSv1\nmode: none\nmax_age: 1\n").is_err());
        assert_eq!(
            parse_policy("version: STSv1\nmode: testing\nmx: a\nmax_age: 99999999999\n")
                .unwrap()
                .max_age,
            MAX_AGE_CAP
        );
    }

    #[test]
    fn mx_patterns() {
        assert!(mx_matches("mail.example.com", "MAIL.example.com."));
        assert!(mx_matches("*.example.net", "mx1.example.net"));
        assert!(!mx_matches("*.example.net", "a.b.example.net"));
        assert!(!mx_matches("*.example.net", "example.net"));
        assert!(!mx_matches("mail.example.com", "mail.example.com.evil"));
    }

    #[test]
    fn txt_records() {
        assert_eq!(
            record_id("v=STSv1; id=20261130T1;").as_deref(),
            Some("20261130T1")
        );
        assert_eq!(record_id("v=STSv1;id=abc"), Some("abc".into()));
        assert_eq!(record_id("v=spf1 -all"), None);
        assert_eq!(record_id("v=STSv1; id=not-alnum"), None);
    }
}
