//! TLS for every listener: rustls only, TLS 1.2 and 1.3, the ring provider, certificates from PEM
//! files; and the self-signed certificate `postern init` makes when none is configured.

use std::path::Path;
use std::sync::Arc;

use crate::TlsAcceptor;
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

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
    Ok(CertStore::load(cert, key)?.acceptor())
}

/// Reads a certificate chain and its key, checked: a private key others can read is refused,
/// and so is a key that does not belong to the certificate.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
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
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| key_err(e.to_string()))?;
    let ck = CertifiedKey::new(certs, signing);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(TlsError::Config(format!(
                "the key does not belong to the certificate: {e}"
            )))
        }
    }
    Ok(ck)
}

/// The server certificate of every listener, replaceable while they run: a renewal (ACME) or a
/// reload (SIGHUP) swaps it for the handshakes that follow; sessions already open keep theirs.
#[derive(Debug)]
pub struct CertStore {
    current: std::sync::RwLock<Served>,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

/// The certificate served now, with its `tls-server-end-point` channel binding (RFC 5929 4.1),
/// computed once per certificate rather than once per connection.
#[derive(Debug, Clone)]
struct Served {
    key: Arc<CertifiedKey>,
    end_point: Arc<[u8]>,
}

impl Served {
    fn new(ck: CertifiedKey) -> Served {
        let end_point = end_point_binding(ck.cert[0].as_ref()).into();
        Served {
            key: Arc::new(ck),
            end_point,
        }
    }
}

/// `tls-server-end-point` (RFC 5929 4.1): the hash of the server certificate with the hash of
/// its signature algorithm, SHA-256 when that is MD5 or SHA-1 (or unknown).
pub fn end_point_binding(der: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let alg = x509_parser::parse_x509_certificate(der)
        .map(|(_, x)| x.signature_algorithm.algorithm.to_id_string())
        .unwrap_or_default();
    match alg.as_str() {
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => sha2::Sha384::digest(der).to_vec(),
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => sha2::Sha512::digest(der).to_vec(),
        _ => sha2::Sha256::digest(der).to_vec(),
    }
}

impl CertStore {
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertStore>, TlsError> {
        let ck = load_certified_key(cert, key)?;
        Ok(Arc::new(CertStore {
            current: std::sync::RwLock::new(Served::new(ck)),
            cert: cert.to_owned(),
            key: key.to_owned(),
        }))
    }

    /// Reads the files again and, if they are valid, serves them from the next handshake on.
    /// On error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let ck = load_certified_key(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Served::new(ck);
        Ok(())
    }

    /// The certificate served now (DER of the leaf).
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.served().key.cert[0].clone()
    }

    fn served(&self) -> Served {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The `tls-server-end-point` channel binding of the certificate served now.
    pub fn end_point_binding(&self) -> Arc<[u8]> {
        self.served().end_point
    }

    /// When the certificate served now expires (Unix time).
    pub fn not_after(&self) -> Option<i64> {
        let leaf = self.leaf();
        x509_parser::parse_x509_certificate(leaf.as_ref())
            .ok()
            .map(|(_, x)| x.validity().not_after.timestamp())
    }

    /// An acceptor (TLS 1.3 and 1.2, ring) that asks this store for its certificate, without
    /// asking clients for theirs.
    pub fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        self.acceptor_with(false)
    }

    /// Like [`CertStore::acceptor`]; with `client_certs`, clients are asked for a certificate
    /// without being required to send one (SASL EXTERNAL, [`OptionalClientCert`]).
    pub fn acceptor_with(self: &Arc<Self>, client_certs: bool) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3");
        let builder = if client_certs {
            builder.with_client_cert_verifier(Arc::new(OptionalClientCert(
                provider.signature_verification_algorithms,
            )))
        } else {
            builder.with_no_client_auth()
        };
        let config = builder.with_cert_resolver(self.clone());
        TlsAcceptor {
            inner: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            certs: Some(self.clone()),
        }
    }
}

/// Asks every client for a certificate and accepts any, or none: a client certificate proves
/// only possession of its key (rustls still checks the handshake signature with it), and it is
/// worth something only when SASL EXTERNAL finds its public key registered to an account. No CA
/// is trusted for this, so no chain is built and no name is read; the trust is the fingerprint
/// an administrator registered.
#[derive(Debug)]
struct OptionalClientCert(rustls::crypto::WebPkiSupportedAlgorithms);

impl rustls::server::danger::ClientCertVerifier for OptionalClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// What SASL EXTERNAL needs of a client certificate (see [`ClientCertificate`]).
pub struct ClientCert;

pub use postern_types::ClientCertificate;

impl ClientCert {
    pub fn read(der: &[u8]) -> Option<ClientCertificate> {
        use sha2::Digest;
        let (_, x) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(ClientCertificate {
            key_fingerprint: sha2::Sha256::digest(x.public_key().raw)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            not_before: x.validity().not_before.timestamp(),
            not_after: x.validity().not_after.timestamp(),
        })
    }

    /// Reads the first certificate of a PEM file.
    pub fn from_pem_file(path: &Path) -> Result<ClientCertificate, TlsError> {
        let err = |m: String| TlsError::Cert {
            path: path.display().to_string(),
            message: m,
        };
        let der = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?
            .next()
            .ok_or_else(|| err("no certificate in the file".into()))?
            .map_err(|e| err(e.to_string()))?;
        ClientCert::read(der.as_ref()).ok_or_else(|| err("not an X.509 certificate".into()))
    }
}

impl rustls::server::ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.served().key)
    }
}

/// Writes a self-signed certificate for `hostname` (and `localhost`) and its key (mode 0600):
/// subject CN = the host name, valid from yesterday for two years. Returns the certificate's
/// SHA-256 fingerprint (colon-separated hex), which a user can pin in a mail client.
pub fn generate_self_signed(hostname: &str, cert: &Path, key: &Path) -> Result<String, TlsError> {
    use chrono::Datelike;
    let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut params =
        rcgen::CertificateParams::new(vec![hostname.to_owned(), "localhost".to_owned()])
            .map_err(gen)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    // A day of slack for clocks that are behind; two years, after which `postern audit` and the
    // certificate-expiry metric say to renew (a real installation uses its own certificate).
    let start = chrono::Utc::now() - chrono::Duration::days(1);
    let ymd = |y: i32, m: u32, d: u32| rcgen::date_time_ymd(y, m as u8, d.min(28) as u8);
    params.not_before = ymd(start.year(), start.month(), start.day());
    params.not_after = ymd(start.year() + 2, start.month(), start.day());
    let signing_key = rcgen::KeyPair::generate().map_err(gen)?;
    let certificate = params.self_signed(&signing_key).map_err(gen)?;
    let fingerprint = fingerprint(certificate.der());
    let ck = rcgen::CertifiedKey {
        cert: certificate,
        signing_key,
    };
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
    write(cert, ck.cert.pem().as_bytes(), 0o644)?;
    Ok(fingerprint)
}

/// SHA-256 fingerprint of a DER certificate, as `AB:CD:…` (what browsers and `openssl x509
/// -fingerprint -sha256` show).
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fingerprint and expiry (Unix time) of the first certificate of a PEM file.
pub fn certificate_summary(cert: &Path) -> Result<(String, i64), TlsError> {
    let first = first_certificate(cert)?;
    let not_after = parse_x509(cert, &first, |x| x.validity().not_after.timestamp())?;
    Ok((fingerprint(first.as_ref()), not_after))
}

/// The first certificate of a PEM file.
fn first_certificate(cert: &Path) -> Result<CertificateDer<'static>, TlsError> {
    let cert_err = |m: String| TlsError::Cert {
        path: cert.display().to_string(),
        message: m,
    };
    CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .next()
        .ok_or_else(|| cert_err("no certificate in the file".into()))?
        .map_err(|e| cert_err(e.to_string()))
}

/// Parses a DER certificate read from `cert` and hands it to `f`.
fn parse_x509<T>(
    cert: &Path,
    der: &CertificateDer<'_>,
    f: impl FnOnce(&x509_parser::certificate::X509Certificate<'_>) -> T,
) -> Result<T, TlsError> {
    let (_, x) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| TlsError::Cert {
        path: cert.display().to_string(),
        message: format!("not an X.509 certificate: {e}"),
    })?;
    Ok(f(&x))
}

/// What `postern audit` checks of the server certificate.
#[derive(Debug, Clone)]
pub struct CertFacts {
    pub not_after: i64,
    pub not_before: i64,
    /// Issuer and subject are the same name (no CA vouches for it).
    pub self_signed: bool,
    /// DNS names of the subject alternative names (or the common name without any).
    pub names: Vec<String>,
    pub issuer: String,
}

/// The first certificate of a PEM file, for `postern audit`.
pub fn certificate_facts(cert: &Path) -> Result<CertFacts, TlsError> {
    let first = first_certificate(cert)?;
    parse_x509(cert, &first, facts)
}

fn facts(x: &x509_parser::certificate::X509Certificate<'_>) -> CertFacts {
    let mut names = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in x.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    CertFacts {
        not_after: x.validity().not_after.timestamp(),
        not_before: x.validity().not_before.timestamp(),
        self_signed: x.issuer() == x.subject(),
        names,
        issuer: x.issuer().to_string(),
    }
}

/// Whether a certificate name (possibly `*.example.net`) covers `host`.
pub fn name_matches(pattern: &str, host: &str) -> bool {
    let (p, h) = (
        pattern.trim_end_matches('.').to_ascii_lowercase(),
        host.trim_end_matches('.').to_ascii_lowercase(),
    );
    match p.strip_prefix("*.") {
        Some(rest) => h
            .split_once('.')
            .is_some_and(|(label, parent)| !label.is_empty() && parent == rest),
        None => p == h,
    }
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
        let fp = generate_self_signed("mail.example.test", &c, &k).unwrap();
        load_acceptor(&c, &k).unwrap();
        let (fp2, not_after) = certificate_summary(&c).unwrap();
        assert_eq!(fp, fp2);
        assert_eq!(fp.len(), 32 * 3 - 1);
        let days = (not_after - chrono::Utc::now().timestamp()) / 86400;
        assert!((700..=731).contains(&days), "{days}");
        let pem = std::fs::read(&c).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        assert_eq!(x.subject().to_string(), "CN=mail.example.test");
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
