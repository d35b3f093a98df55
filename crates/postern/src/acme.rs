//! Certificates from an ACME CA (RFC 8555) with `instant-acme`: TLS-ALPN-01 (RFC 8737) or
//! HTTP-01 challenges answered by a responder of our own, the account key sealed in the secret
//! store, and the new certificate served by every listener at once through the shared
//! [`postern_net::tls::CertStore`] (no restart; sessions already open keep their handshake).
//!
//! A certificate is ordered when the one in `[tls] cert` is missing or unreadable, self-signed
//! (the one `postern init` made), does not name every configured domain, or has less than a third
//! of its lifetime left (Let's Encrypt's advice; 30 of 90 days). The private key is kept across
//! renewals unless `reuse_key = false`, so a published DANE `3 1 1` record stays true.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use postern_config::Config;
use postern_net::tls::CertStore;
use postern_store::Store;
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::actor::{record, Actor};
use crate::keys::Keys;

/// The sealed secret holding the ACME account (its key and URL).
const ACCOUNT_SECRET: &str = "postern:acme-account";
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// What the responder answers while an order is pending.
#[derive(Default, Debug)]
pub struct Challenges {
    /// HTTP-01: token → key authorization.
    http: RwLock<HashMap<String, String>>,
    /// TLS-ALPN-01: name → the challenge certificate (with the acmeIdentifier extension).
    tls: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    fn clear(&self) {
        self.http.write().unwrap_or_else(|e| e.into_inner()).clear();
        self.tls.write().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl rustls::server::ResolvesServerCert for Challenges {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // only a validation handshake (RFC 8737 3: ALPN acme-tls/1 and the name in SNI)
        let wants = hello
            .alpn()
            .is_some_and(|mut a| a.any(|p| p == ACME_TLS_ALPN));
        if !wants {
            return None;
        }
        let name = hello.server_name()?.to_ascii_lowercase();
        self.tls
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
            .cloned()
    }
}

/// The names on the certificate.
pub fn domains(cfg: &Config) -> Vec<String> {
    if cfg.acme.domains.is_empty() {
        vec![cfg.server.hostname.to_ascii_lowercase()]
    } else {
        cfg.acme
            .domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect()
    }
}

/// Why a certificate is due, or None while the current one is good.
pub fn due(cfg: &Config, now: i64) -> Option<String> {
    let facts = match postern_net::tls::certificate_facts(&cfg.path(&cfg.tls.cert)) {
        Ok(f) => f,
        Err(e) => return Some(format!("no usable certificate ({e})")),
    };
    if facts.self_signed {
        return Some("the certificate is self-signed".into());
    }
    for d in domains(cfg) {
        if !facts
            .names
            .iter()
            .any(|n| postern_net::tls::name_matches(n, &d))
        {
            return Some(format!("the certificate does not name {d}"));
        }
    }
    let lifetime = (facts.not_after - facts.not_before).max(1);
    let left = facts.not_after - now;
    if left < lifetime / 3 {
        return Some(format!("{left} seconds of validity left (of {lifetime})"));
    }
    None
}

pub struct Acme {
    cfg: Config,
    store: Store,
    keys: Arc<Keys>,
    certs: Arc<CertStore>,
    challenges: Arc<Challenges>,
}

impl Acme {
    pub fn new(cfg: Config, store: Store, keys: Arc<Keys>, certs: Arc<CertStore>) -> Acme {
        Acme {
            cfg,
            store,
            keys,
            certs,
            challenges: Arc::default(),
        }
    }

    /// Binds the challenge responder (at start, while binding low ports is allowed) and runs
    /// the renewal loop.
    pub async fn start(self, shutdown: CancellationToken) -> Result<tokio::task::JoinHandle<()>> {
        let addr = self.cfg.acme.listen_addr();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the ACME challenge responder on {addr}"))?;
        let responder = if self.cfg.acme.challenge == "http-01" {
            tokio::spawn(http_responder(
                listener,
                self.challenges.clone(),
                shutdown.clone(),
            ))
        } else {
            tokio::spawn(tls_alpn_responder(
                listener,
                self.challenges.clone(),
                shutdown.clone(),
            ))
        };
        tracing::info!(%addr, challenge = %self.cfg.acme.challenge, "ACME challenge responder listening");
        Ok(tokio::spawn(async move {
            let every = Duration::from_secs(self.cfg.acme.check_secs);
            let mut failures = 0u32;
            loop {
                let mut wait = every;
                if let Some(why) = due(&self.cfg, postern_store::now()) {
                    tracing::info!(reason = %why, "ordering a certificate");
                    match self.renew(&why).await {
                        Ok(()) => failures = 0,
                        Err(e) => {
                            failures += 1;
                            tracing::error!(target: "postern::alert", error = %format!("{e:#}"), "ACME: the certificate could not be obtained");
                            let _ = record(
                                &self.store,
                                &Actor::system("acme"),
                                "certificate_order_failed",
                                &domains(&self.cfg).join(","),
                                &format!("{e:#}"),
                            )
                            .await;
                            // back off: a minute, doubling, at most the check interval
                            wait = Duration::from_secs(
                                (60u64 << failures.min(10)).min(self.cfg.acme.check_secs.max(60)),
                            );
                        }
                    }
                    self.challenges.clear();
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            responder.abort();
        }))
    }

    async fn account(&self) -> Result<Account> {
        let a = &self.cfg.acme;
        let directory = a.directory.clone().context("[acme] directory is not set")?;
        let builder = || -> Result<instant_acme::AccountBuilder> {
            Ok(match &a.ca_file {
                Some(ca) => Account::builder_with_root(self.cfg.path(ca))?,
                None => Account::builder()?,
            })
        };
        match self.store.sealed_secret(ACCOUNT_SECRET).await {
            Ok(_) => {
                let json = self
                    .keys
                    .secret(ACCOUNT_SECRET, "ACME order", &Actor::system("acme"))
                    .await?;
                let creds: AccountCredentials = serde_json::from_slice(&json)?;
                Ok(builder()?.from_credentials(creds).await?)
            }
            Err(postern_store::StoreError::NotFound(_)) => {
                let contact: Vec<&str> = a.contact.iter().map(String::as_str).collect();
                let (account, creds) = builder()?
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        directory,
                        None,
                    )
                    .await?;
                self.keys
                    .put_secret(
                        ACCOUNT_SECRET,
                        "the ACME account key (sealed; used to order certificates)",
                        serde_json::to_string(&creds)?.as_bytes(),
                    )
                    .await?;
                record(
                    &self.store,
                    &Actor::system("acme"),
                    "acme_account_created",
                    account.id(),
                    "",
                )
                .await?;
                Ok(account)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn renew(&self, why: &str) -> Result<()> {
        let names = domains(&self.cfg);
        let account = self.account().await?;
        let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let mut order = account.new_order(&NewOrder::new(&ids)).await?;
        let kind = if self.cfg.acme.challenge == "http-01" {
            ChallengeType::Http01
        } else {
            ChallengeType::TlsAlpn01
        };
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = a?;
            match a.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => bail!("authorization is {other:?}"),
            }
            let mut ch = a.challenge(kind.clone()).with_context(|| {
                format!("the CA offers no {} challenge", self.cfg.acme.challenge)
            })?;
            let name = ch.identifier().to_string().to_ascii_lowercase();
            let ka = ch.key_authorization();
            if kind == ChallengeType::Http01 {
                self.challenges
                    .http
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(ch.token.clone(), ka.as_str().to_owned());
            } else {
                let cert = alpn_certificate(&name, ka.digest().as_ref())?;
                self.challenges
                    .tls
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name, Arc::new(cert));
            }
            ch.set_ready().await?;
        }
        let status = order.poll_ready(&RetryPolicy::default()).await?;
        if status != OrderStatus::Ready {
            bail!("the order is {status:?}, not ready (the CA could not validate the challenges)");
        }
        // the key: the current one when it is kept across renewals, else a new P-256 key
        let key_path = self.cfg.path(&self.cfg.tls.key);
        let key = match std::fs::read_to_string(&key_path)
            .ok()
            .filter(|_| self.cfg.acme.reuse_key)
            .and_then(|pem| rcgen::KeyPair::from_pem(&pem).ok())
        {
            Some(k) => k,
            None => rcgen::KeyPair::generate()?,
        };
        let csr = rcgen::CertificateParams::new(names.clone())?.serialize_request(&key)?;
        order.finalize_csr(csr.der()).await?;
        let chain = order.poll_certificate(&RetryPolicy::default()).await?;
        // key first, then the certificate: each file is replaced whole (rename)
        write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(&self.cfg.path(&self.cfg.tls.cert), chain.as_bytes(), 0o644)?;
        self.certs
            .reload()
            .context("the new certificate does not load")?;
        let not_after = self.certs.not_after().unwrap_or_default();
        tracing::info!(names = %names.join(","), not_after, "certificate renewed and in use by every listener");
        record(
            &self.store,
            &Actor::system("acme"),
            "certificate_renewed",
            &names.join(","),
            &format!("{why}; valid until {not_after}"),
        )
        .await?;
        Ok(())
    }
}

/// The self-signed certificate of a TLS-ALPN-01 validation (RFC 8737 3): the name, and the
/// critical acmeIdentifier extension holding the SHA-256 of the key authorization.
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<CertifiedKey> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("new-{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// HTTP-01: `GET /.well-known/acme-challenge/TOKEN` answers the key authorization; everything
/// else is 404.
async fn http_responder(
    listener: tokio::net::TcpListener,
    ch: Arc<Challenges>,
    shutdown: CancellationToken,
) {
    use axum::extract::{Path as UrlPath, State};
    use axum::http::StatusCode;
    let app = axum::Router::new()
        .route(
            "/.well-known/acme-challenge/{token}",
            axum::routing::get(
                |State(ch): State<Arc<Challenges>>, UrlPath(token): UrlPath<String>| async move {
                    match ch
                        .http
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&token)
                    {
                        Some(ka) => (StatusCode::OK, ka.clone()),
                        None => (StatusCode::NOT_FOUND, String::new()),
                    }
                },
            ),
        )
        .with_state(ch);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
}

/// TLS-ALPN-01: a handshake with ALPN `acme-tls/1` gets the challenge certificate of its SNI
/// name; nothing else is served (the connection closes after the handshake).
async fn tls_alpn_responder(
    listener: tokio::net::TcpListener,
    ch: Arc<Challenges>,
    shutdown: CancellationToken,
) {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .expect("ring supports TLS 1.2 and 1.3")
    .with_no_client_auth()
    .with_cert_resolver(ch);
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let (tcp, _): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Ok(Ok(mut tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            {
                use tokio::io::AsyncWriteExt;
                let _ = tls.shutdown().await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_certificate_carries_the_digest() {
        let digest = [7u8; 32];
        let ck = alpn_certificate("mail.example.test", &digest).unwrap();
        let der = ck.cert[0].as_ref();
        // id-pe-acmeIdentifier 1.3.6.1.5.5.7.1.31, critical, OCTET STRING of the digest
        let oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];
        let at = der
            .windows(oid.len())
            .position(|w| w == oid)
            .expect("acmeIdentifier");
        let rest = &der[at + oid.len()..];
        assert!(rest.windows(32).any(|w| w == digest));
        assert_eq!(&rest[..3], &[0x01, 0x01, 0xff], "critical");
    }
}
