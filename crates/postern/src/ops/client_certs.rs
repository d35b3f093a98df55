//! TLS client certificates of mail accounts (SASL EXTERNAL): registered by their public key's
//! fingerprint, listed, removed; each change audited.

use anyhow::{bail, Result};
use postern_store::Store;
use postern_types::{ClientCertificate, EmailAddress};

use crate::actor::{record, Actor};

/// Registers a certificate's public key to an account. Audited as `client_cert_added`.
pub async fn add(
    store: &Store,
    actor: &Actor,
    a: &EmailAddress,
    name: &str,
    cert: &ClientCertificate,
) -> Result<()> {
    let info = store.account(a).await?;
    if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
        bail!("invalid certificate name {name:?}");
    }
    if cert.not_after < postern_store::now() {
        bail!("the certificate has expired");
    }
    store
        .add_client_cert(info.id, name, &cert.key_fingerprint, cert.not_after)
        .await?;
    record(
        store,
        actor,
        "client_cert_added",
        a.as_str(),
        &format!("name={name} key_sha256={}", cert.key_fingerprint),
    )
    .await
}

/// Removes a registration: the next EXTERNAL login with that key fails.
pub async fn remove(store: &Store, actor: &Actor, a: &EmailAddress, name: &str) -> Result<()> {
    let info = store.account(a).await?;
    store.remove_client_cert(info.id, name).await?;
    record(
        store,
        actor,
        "client_cert_removed",
        a.as_str(),
        &format!("name={name}"),
    )
    .await
}

/// Reads a PEM certificate (the first one) given as text.
pub fn parse_pem(pem: &str) -> Result<ClientCertificate> {
    use rustls_pki_types::pem::PemObject;
    if pem.len() > 16384 {
        bail!("the certificate is too large (16 KiB at most)");
    }
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    postern_net::tls::ClientCert::read(der.as_ref())
        .ok_or_else(|| anyhow::anyhow!("not an X.509 certificate"))
}
