//! DKIM (RFC 6376, RFC 8463): key generation into the sealed secret store, rotation to a new
//! selector with the old one still published, signing of outbound mail with `mail-auth`, and the
//! DNS records to publish (`postern dns`).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use postern_store::dkim::DkimKeyInfo;
use postern_store::Store;
use postern_types::EmailAddress;
use tokio::sync::RwLock;

use crate::actor::{record, Actor};
use crate::keys::Keys;

/// Headers signed (RFC 6376 5.4.1 recommends these); From is required.
const SIGNED: [&str; 12] = [
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

pub(crate) fn secret_name(domain: &str, selector: &str) -> String {
    format!("dkim:{domain}:{selector}")
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A new key pair: (PKCS#8 DER private key, base64 public key for p=).
fn new_key(algorithm: &str) -> Result<(zeroize::Zeroizing<Vec<u8>>, String)> {
    match algorithm {
        "ed25519" => {
            let der = zeroize::Zeroizing::new(
                Ed25519Key::generate_pkcs8().map_err(|e| anyhow::anyhow!("{e}"))?,
            );
            let key = Ed25519Key::from_pkcs8_der(&der).map_err(|e| anyhow::anyhow!("{e}"))?;
            // RFC 8463: p= is the raw 32-byte public key.
            Ok((der, b64(&key.public_key())))
        }
        "rsa" => {
            use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
            let mut rng = rsa::rand_core::OsRng;
            let key = rsa::RsaPrivateKey::new(&mut rng, 2048).context("RSA key generation")?;
            let der = zeroize::Zeroizing::new(key.to_pkcs8_der()?.as_bytes().to_vec());
            let public = key.to_public_key().to_public_key_der()?;
            Ok((der, b64(public.as_bytes())))
        }
        other => bail!("unknown algorithm {other:?} (use ed25519 or rsa)"),
    }
}

/// Generates a key for `domain`, seals it, and makes it the signing key. The previous selector
/// stays published (rotation overlap) until `dkim retire`.
pub async fn generate(
    store: &Store,
    keys: &Keys,
    actor: &Actor,
    domain: &str,
    algorithm: &str,
    selector: Option<&str>,
) -> Result<DkimKeyInfo> {
    if !store.is_local_domain(domain).await? {
        bail!("{domain} is not a local domain");
    }
    let existing: Vec<String> = store
        .dkim_keys(Some(domain))
        .await?
        .into_iter()
        .map(|k| k.selector)
        .collect();
    let selector = match selector {
        Some(s) => {
            let ok = !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                bail!("invalid selector {s:?}: use a-z 0-9 -");
            }
            s.to_owned()
        }
        None => {
            let base = format!("pst{}", chrono::Utc::now().format("%Y%m%d"));
            let mut s = base.clone();
            let mut n = 1;
            while existing.contains(&s) {
                n += 1;
                s = format!("{base}-{n}");
            }
            s
        }
    };
    if existing.contains(&selector) {
        bail!("selector {selector:?} already exists for {domain}");
    }
    let (der, public) = new_key(algorithm)?;
    keys.put_secret(
        &secret_name(domain, &selector),
        &format!("DKIM {algorithm} key of {domain}"),
        &der,
    )
    .await?;
    store
        .add_dkim_key(domain, &selector, algorithm, &public)
        .await?;
    record(
        store,
        actor,
        "dkim_generated",
        domain,
        &format!("selector={selector} algorithm={algorithm}"),
    )
    .await?;
    store
        .active_dkim_key(domain)
        .await?
        .context("the new key is not active")
}

enum AnySigner {
    Ed(DkimSigner<Ed25519Key, Done>),
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
}

struct Loaded {
    selector: Option<String>,
    signer: Option<AnySigner>,
}

/// Signs outbound mail with the active key of the From domain. A key is opened once (an audited
/// `secret_read`) and kept in memory; each message checks which selector is active (one small
/// query), so a rotation takes effect at the next message.
pub struct Signer {
    store: Store,
    keys: Arc<Keys>,
    cache: RwLock<HashMap<String, Arc<Loaded>>>,
}

impl Signer {
    pub fn new(store: Store, keys: Arc<Keys>) -> Signer {
        Signer {
            store,
            keys,
            cache: RwLock::new(HashMap::new()),
        }
    }

    async fn load(&self, domain: &str) -> Result<Arc<Loaded>> {
        let active = self.store.active_dkim_key(domain).await?;
        let selector = active.as_ref().map(|k| k.selector.clone());
        if let Some(l) = self.cache.read().await.get(domain) {
            if l.selector == selector {
                return Ok(l.clone());
            }
        }
        let signer = match active {
            None => None,
            Some(k) => {
                let der = self
                    .keys
                    .secret(
                        &secret_name(domain, &k.selector),
                        "DKIM signing",
                        &Actor::system("dkim"),
                    )
                    .await?;
                let err = |e: mail_auth::Error| anyhow::anyhow!("DKIM key of {domain}: {e}");
                Some(match k.algorithm.as_str() {
                    "ed25519" => AnySigner::Ed(
                        DkimSigner::from_key(Ed25519Key::from_pkcs8_der(&der).map_err(err)?)
                            .domain(domain)
                            .selector(&k.selector)
                            .headers(SIGNED),
                    ),
                    // from_pkcs8_der borrows the (zeroized) buffer; its replacement wants an
                    // owned copy that would not be zeroized.
                    #[allow(deprecated)]
                    _ => AnySigner::Rsa(
                        DkimSigner::from_key(RsaKey::<Sha256>::from_pkcs8_der(&der).map_err(err)?)
                            .domain(domain)
                            .selector(&k.selector)
                            .headers(SIGNED),
                    ),
                })
            }
        };
        let l = Arc::new(Loaded { selector, signer });
        self.cache
            .write()
            .await
            .insert(domain.to_owned(), l.clone());
        Ok(l)
    }

    /// The DKIM-Signature header (with CRLF) for a message whose From domain has a key.
    pub async fn sign(&self, message: &[u8]) -> Option<String> {
        let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
        let from = parsed.from()?.first()?.address()?.to_ascii_lowercase();
        let domain = from.rsplit_once('@')?.1.to_owned();
        let loaded = match self.load(&domain).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(domain, error = %format!("{e:#}"), "DKIM key unavailable: sending unsigned");
                return None;
            }
        };
        let sig = match loaded.signer.as_ref()? {
            AnySigner::Ed(s) => s.sign(message),
            AnySigner::Rsa(s) => s.sign(message),
        };
        match sig {
            Ok(s) => Some(s.to_header()),
            Err(e) => {
                tracing::error!(domain, error = %e, "DKIM signing failed: sending unsigned");
                None
            }
        }
    }
}

/// A TXT value split into quoted strings of at most 255 octets (RFC 1035 3.3.14).
pub(crate) fn txt(value: &str) -> String {
    value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The records to publish for a domain: (name, type, value).
/// The records to publish for a local domain, and notes on what is missing (no DKIM key yet, no
/// mailbox for DMARC reports).
pub async fn records(
    store: &Store,
    hostname: &str,
    domain: &str,
) -> Result<(Vec<(String, &'static str, String)>, Vec<String>)> {
    let mut notes = Vec::new();
    if !store.is_local_domain(domain).await? {
        bail!("{domain} is not a local domain");
    }
    let host = format!("{}.", hostname.trim_end_matches('.'));
    let d = format!("{}.", domain.trim_end_matches('.'));
    let mut out = vec![
        (d.clone(), "MX", format!("10 {host}")),
        // Only the MX hosts send for the domain; anything else fails SPF.
        (d.clone(), "TXT", txt("v=spf1 mx -all")),
    ];
    let keys = store.dkim_keys(Some(domain)).await?;
    if keys.is_empty() {
        notes.push(format!(
            "no DKIM key for {domain} yet: create one with `postern dkim generate {domain}`, then publish its record"
        ));
    }
    for k in keys {
        let kt = if k.algorithm == "ed25519" {
            "ed25519"
        } else {
            "rsa"
        };
        out.push((
            format!("{}._domainkey.{d}", k.selector),
            "TXT",
            txt(&format!("v=DKIM1; k={kt}; p={}", k.public_key)),
        ));
    }
    // Aggregate reports go to an address that exists: dmarc-reports@ if it was made, else
    // postmaster@; with neither, no rua (reports to nowhere would bounce) and a note says how.
    let mut rua = None;
    for local in ["dmarc-reports", "postmaster"] {
        let a = EmailAddress::parse(&format!("{local}@{domain}"))?;
        if store.resolve_recipient(&a).await?.is_some() {
            rua = Some(a);
            break;
        }
    }
    let rua = match rua {
        Some(a) => format!("; rua=mailto:{a}"),
        None => {
            notes.push(format!(
                "no rua in the DMARC record: neither dmarc-reports@{domain} nor postmaster@{domain} receives mail; \
                 add one, e.g. `postern alias add dmarc-reports@{domain} ACCOUNT`, to get aggregate reports"
            ));
            String::new()
        }
    };
    out.push((
        format!("_dmarc.{d}"),
        "TXT",
        txt(&format!("v=DMARC1; p=quarantine; adkim=s; aspf=s{rua}")),
    ));
    // RFC 6186 / RFC 8314: mail clients find the implicit-TLS ports; no clear-text ones.
    for (svc, port) in [
        ("_submissions._tcp", 465),
        ("_imaps._tcp", 993),
        ("_pop3s._tcp", 995),
    ] {
        out.push((format!("{svc}.{d}"), "SRV", format!("0 1 {port} {host}")));
    }
    out.push((
        format!("_submission._tcp.{d}"),
        "SRV",
        format!("10 1 587 {host}"),
    ));
    out.push((format!("_imap._tcp.{d}"), "SRV", "0 0 0 .".to_owned()));
    out.push((format!("_pop3._tcp.{d}"), "SRV", "0 0 0 .".to_owned()));
    out.push((format!("autoconfig.{d}"), "CNAME", host.clone()));
    Ok((out, notes))
}
