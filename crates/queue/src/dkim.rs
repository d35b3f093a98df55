//! DKIM signing of outbound mail (RFC 6376, RFC 8463) with `mail-auth`, next to the queue that
//! sends it. The private keys are sealed secrets named `dkim:DOMAIN:SELECTOR`, opened through
//! [`crate::Secrets`] (each opening audited by the binary); key generation, rotation and DNS
//! records are the binary's (`postern dkim`, `postern dns`).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
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
