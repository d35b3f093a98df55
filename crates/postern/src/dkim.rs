//! DKIM keys (RFC 6376, RFC 8463): generation into the sealed secret store (or in OpenBao/Vault
//! Transit, where the key stays), rotation to a new selector with the old one still published,
//! and the DNS records to publish (`postern dns`: MX, SPF, DKIM, DMARC, TLSA, MTA-STS, TLS-RPT).
//! Signing of outbound mail lives next to the queue (`postern_queue::dkim`).

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use mail_auth::common::crypto::Ed25519Key;
use postern_store::dkim::DkimKeyInfo;
use postern_store::Store;
use postern_types::EmailAddress;

use crate::actor::{record, Actor};
use crate::keys::Keys;

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

/// Generates a key for `domain` (sealed here, or made in Transit with `transit`), and makes it the
/// signing key. The previous selector
/// stays published (rotation overlap) until `dkim retire`.
pub async fn generate(
    store: &Store,
    keys: &Keys,
    actor: &Actor,
    domain: &str,
    algorithm: &str,
    selector: Option<&str>,
    transit: Option<&str>,
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
    let public = match transit {
        // The key is made (or found) in OpenBao/Vault Transit and never leaves it: only its
        // public half comes back, for the DNS record.
        Some(key) => {
            let kind = match algorithm {
                "ed25519" => "ed25519",
                "rsa" => "rsa-2048",
                other => bail!("unknown algorithm {other:?} (use ed25519 or rsa)"),
            };
            keys.transit(key).await?.signing_key(kind).await?
        }
        None => {
            let (der, public) = new_key(algorithm)?;
            keys.put_secret(
                &secret_name(domain, &selector),
                &format!("DKIM {algorithm} key of {domain}"),
                &der,
            )
            .await?;
            public
        }
    };
    store
        .add_dkim_key(domain, &selector, algorithm, &public, transit)
        .await?;
    record(
        store,
        actor,
        "dkim_generated",
        domain,
        &match transit {
            Some(k) => format!("selector={selector} algorithm={algorithm} transit={k}"),
            None => format!("selector={selector} algorithm={algorithm}"),
        },
    )
    .await?;
    store
        .active_dkim_key(domain)
        .await?
        .context("the new key is not active")
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

/// The records to publish for a local domain, and notes on what is missing (no DKIM key yet, no
/// mailbox for DMARC reports).
pub async fn records(
    store: &Store,
    cfg: &postern_config::Config,
    domain: &str,
) -> Result<(Vec<(String, &'static str, String)>, Vec<String>)> {
    let hostname = cfg.server.hostname.as_str();
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
    let rua = match rua_address(store, domain).await? {
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
    // MTA-STS (RFC 8461) and TLS reporting (RFC 8460): senders that support them deliver only
    // over TLS with a valid certificate to the listed MX hosts.
    if cfg.mta_sts.listen.is_some() {
        let policy = cfg.mta_sts.policy(hostname);
        out.push((format!("mta-sts.{d}"), "CNAME", host.clone()));
        out.push((
            format!("_mta-sts.{d}"),
            "TXT",
            txt(&format!(
                "v=STSv1; id={}",
                crate::sts_host::policy_id(&policy)
            )),
        ));
        notes.push(format!(
            "MTA-STS: senders fetch https://mta-sts.{domain}/.well-known/mta-sts.txt on port 443; the \
             certificate must name mta-sts.{domain} (mode {}; change [mta_sts] mode to enforce once \
             reports show every sender reaches you over TLS)",
            cfg.mta_sts.mode
        ));
    } else {
        notes.push(
            "no MTA-STS policy: set [mta_sts] listen to serve one (senders then require TLS to you)"
                .into(),
        );
    }
    // DANE (RFC 7672): the key of our certificate, for a DNSSEC-signed zone of the host name.
    match our_tlsa(cfg) {
        Some(hash) => {
            out.push((format!("_25._tcp.{host}"), "TLSA", format!("3 1 1 {hash}")));
            notes.push(format!(
                "TLSA _25._tcp.{host}: publish only in a DNSSEC-signed zone; it names the certificate's key, \
                 so keep the key when the certificate is renewed (or publish the new key's record first)"
            ));
        }
        None => notes.push("no TLSA record: the certificate could not be read".into()),
    }
    if let Some(a) = rua_address(store, domain).await? {
        out.push((
            format!("_smtp._tls.{d}"),
            "TXT",
            txt(&format!("v=TLSRPTv1; rua=mailto:{a}")),
        ));
    }
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

/// Where reports about a domain go: dmarc-reports@ if it receives mail, else postmaster@.
async fn rua_address(store: &Store, domain: &str) -> Result<Option<EmailAddress>> {
    for local in ["dmarc-reports", "postmaster"] {
        let a = EmailAddress::parse(&format!("{local}@{domain}"))?;
        if store.resolve_recipient(&a).await?.is_some() {
            return Ok(Some(a));
        }
    }
    Ok(None)
}

/// The `3 1 1` TLSA data (hex) of the server certificate's key.
fn our_tlsa(cfg: &postern_config::Config) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(cfg.path(&cfg.tls.cert)).ok()?;
    let first = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()?
        .ok()?;
    postern_queue::dane::ee_spki_sha256(first.as_ref()).map(hex::encode)
}
