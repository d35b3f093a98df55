//! DKIM signing of outbound mail (RFC 6376, RFC 8463) with `mail-auth`, next to the queue that
//! sends it. The private keys are sealed secrets named `dkim:DOMAIN:SELECTOR`, opened through
//! [`crate::Secrets`] (each opening audited by the binary), or keys that never leave the secret
//! manager: OpenBao/Vault Transit signs each message's digest ([`TransitKey`]). Key generation,
//! rotation and DNS records are the binary's (`postern dkim`, `postern dns`).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;
use mail_auth::common::crypto::{
    Algorithm, CryptoError, Ed25519Key, HashContext, HashImpl, RsaKey, Sha256, SigningKey,
};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{DkimSigner, Done};
use postern_store::Store;
use tokio::sync::RwLock;

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

enum AnySigner {
    Ed(DkimSigner<Ed25519Key, Done>),
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Transit(DkimSigner<TransitKey, Done>),
}

/// A DKIM key held by OpenBao/Vault Transit. `mail-auth` asks for a signature synchronously; the
/// signer runs on a blocking thread ([`Signer::sign`]), which waits here for the secret manager's
/// answer on the runtime.
pub struct TransitKey {
    secrets: Arc<dyn crate::Secrets>,
    key: String,
    rsa: bool,
    runtime: tokio::runtime::Handle,
}

impl SigningKey for TransitKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        let mut h = <Sha256 as HashImpl>::hasher();
        input.write(&mut h);
        let digest = h.complete();
        self.runtime
            .block_on(
                self.secrets
                    .transit_sign(&self.key, digest.as_ref(), self.rsa),
            )
            .map_err(|e| {
                mail_auth::Error::Crypto(CryptoError::Library(format!("secret manager: {e:#}")))
            })
    }

    fn algorithm(&self) -> Algorithm {
        if self.rsa {
            Algorithm::RsaSha256
        } else {
            Algorithm::Ed25519Sha256
        }
    }
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
    secrets: Arc<dyn crate::Secrets>,
    cache: RwLock<HashMap<String, Arc<Loaded>>>,
}

impl Signer {
    pub fn new(store: Store, secrets: Arc<dyn crate::Secrets>) -> Signer {
        Signer {
            store,
            secrets,
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
            Some(k) if k.transit_key.is_some() => {
                let key = TransitKey {
                    secrets: self.secrets.clone(),
                    key: k.transit_key.clone().unwrap_or_default(),
                    rsa: k.algorithm == "rsa",
                    runtime: tokio::runtime::Handle::current(),
                };
                Some(AnySigner::Transit(
                    DkimSigner::from_key(key)
                        .domain(domain)
                        .selector(&k.selector)
                        .headers(SIGNED),
                ))
            }
            Some(k) => {
                let der = self
                    .secrets
                    .secret_bytes(&format!("dkim:{domain}:{}", k.selector), "DKIM signing")
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
            // the key answers over the network: sign on a blocking thread, which may wait
            AnySigner::Transit(_) => {
                let (loaded, message) = (loaded.clone(), message.to_vec());
                match tokio::task::spawn_blocking(move || match loaded.signer.as_ref() {
                    Some(AnySigner::Transit(s)) => s.sign(&message),
                    _ => Err(mail_auth::Error::Crypto(CryptoError::Library(
                        "signer changed".into(),
                    ))),
                })
                .await
                {
                    Ok(r) => r,
                    Err(e) => Err(mail_auth::Error::Crypto(CryptoError::Library(
                        e.to_string(),
                    ))),
                }
            }
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
