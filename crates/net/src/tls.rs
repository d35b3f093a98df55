//! TLS for every listener: rustls only, TLS 1.2 and 1.3, the ring provider, certificates from PEM
//! files; and the self-signed certificate `postern init` makes when none is configured.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificate {path}: {message}")]
    Cert { path: String, message: String },
    #[error("cannot read TLS private key {path}: {message}")]
    Key { path: String, message: String },
    #[error(
        "TLS private key {path} is readable by other users (mode {mode:o}); run: chmod 600 {path}"
    )]
    KeyPermissions { path: String, mode: u32 },
    #[error("invalid TLS certificate/key pair: {0}")]
    Config(String),
    #[error("cannot generate a certificate: {0}")]
    Generate(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Builds the acceptor shared by all listeners. Refuses a private key that others can read.
pub fn load_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let cert_err = |m: String| TlsError::Cert {
        path: cert.display().to_string(),
        message: m,
    };
    let key_err = |m: String| TlsError::Key {
        path: key.display().to_string(),
        message: m,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no certificate in the file".into()));
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key)
            .map_err(|e| key_err(e.to_string()))?
            .permissions()
            .mode();
        if mode & 0o007 != 0 {
            return Err(TlsError::KeyPermissions {
                path: key.display().to_string(),
                mode: mode & 0o777,
            });
        }
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| key_err(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Writes a self-signed certificate for `hostname` (and `localhost`) and its key (mode 0600).
pub fn generate_self_signed(hostname: &str, cert: &Path, key: &Path) -> Result<(), TlsError> {
    let names = vec![hostname.to_owned(), "localhost".to_owned()];
    let ck =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    let write = |path: &Path, data: &[u8], mode: u32| -> Result<(), TlsError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let werr = |source| TlsError::Write {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(werr)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .map_err(werr)?;
        f.write_all(data).map_err(werr)?;
        f.sync_all().map_err(werr)
    };
    write(key, ck.signing_key.serialize_pem().as_bytes(), 0o600)?;
    write(cert, ck.cert.pem().as_bytes(), 0o644)
}

/// "TLSv1.3" / "TLSv1.2" for logs and Received headers.
pub fn version_name(v: Option<rustls::ProtocolVersion>) -> &'static str {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificate_loads_and_loose_keys_are_refused() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let d = tempfile::tempdir().unwrap();
        let (c, k) = (d.path().join("tls/cert.pem"), d.path().join("tls/key.pem"));
        generate_self_signed("mail.example.test", &c, &k).unwrap();
        load_acceptor(&c, &k).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_acceptor(&c, &k),
            Err(TlsError::KeyPermissions { .. })
        ));
        assert!(matches!(
            load_acceptor(&d.path().join("missing"), &k),
            Err(TlsError::Cert { .. })
        ));
    }
}
