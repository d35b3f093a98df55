//! DANE for SMTP (RFC 7672): a recipient domain whose MX records and whose MX hosts' TLSA records
//! are DNSSEC-secure gets its mail only over TLS whose certificate matches a TLSA record:
//! DANE-EE (usage 3: the server's own key or certificate; no name or expiry check, RFC 7672 3.1.1)
//! or DANE-TA (usage 2: a trust anchor in the presented chain, with the MX host name checked,
//! 3.1.2). DANE takes precedence over MTA-STS (RFC 8461 2).
//!
//! Like Postfix, Postern does not validate DNSSEC itself: it trusts the AD bit of the resolver it
//! is configured with (`[dns] server`, else the first `nameserver` of /etc/resolv.conf), which
//! must be a validating resolver on a trusted path: only a loopback resolver is trusted (an AD
//! bit that crossed a network can be forged), otherwise DANE stays off with a warning. The two look-ups (MX, TLSA) are
//! asked with hickory-proto messages directly, because hickory's stub resolver does not report
//! the AD bit of each answer; everything else goes through the shared resolver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest;
use tokio_rustls::TlsConnector;

/// One TLSA record (RFC 6698 2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

impl Tlsa {
    /// DANE-TA(2) and DANE-EE(3) with selectors 0/1 and matching 0/1/2 are usable for SMTP
    /// (RFC 7672 3.1.3: PKIX-TA(0) and PKIX-EE(1) are not).
    pub fn usable(&self) -> bool {
        matches!(self.usage, 2 | 3) && self.selector <= 1 && self.matching <= 2
    }

    /// Whether a certificate (DER) matches this record's selector and matching type.
    pub fn matches(&self, cert: &[u8]) -> bool {
        let selected: Vec<u8> = match self.selector {
            0 => cert.to_vec(),
            _ => match spki(cert) {
                Some(s) => s,
                None => return false,
            },
        };
        match self.matching {
            0 => selected == self.data,
            1 => sha2::Sha256::digest(&selected).as_slice() == self.data.as_slice(),
            2 => sha2::Sha512::digest(&selected).as_slice() == self.data.as_slice(),
            _ => false,
        }
    }
}

/// The `3 1 1` (DANE-EE, SPKI, SHA-256) association data of a certificate, for our own TLSA
/// record (`postern dns`).
pub fn ee_spki_sha256(cert: &[u8]) -> Option<Vec<u8>> {
    spki(cert).map(|s| sha2::Sha256::digest(&s).to_vec())
}

fn spki(cert: &[u8]) -> Option<Vec<u8>> {
    let der = CertificateDer::from(cert);
    let c = webpki::EndEntityCert::try_from(&der).ok()?;
    Some(c.subject_public_key_info().as_ref().to_vec())
}

/// What DNS says about one name and type.
#[derive(Debug, Clone)]
pub enum Answer {
    /// DNSSEC-secure (AD set), with the records (possibly none: secure denial).
    Secure(Vec<RData>),
    /// Not secure (AD clear): DANE does not apply.
    Insecure,
    /// The look-up failed (SERVFAIL, no answer): with a secure MX this defers delivery.
    Failed(String),
}

/// Asks the validating resolver with the DO and AD bits.
pub struct Dane {
    server: Option<SocketAddr>,
    timeout: Duration,
}

impl Dane {
    /// None (DANE off, with a warning) when the resolver is not on loopback.
    pub fn new(cfg: &postern_config::DnsConfig) -> Option<Dane> {
        let server = cfg.server.or_else(|| {
            std::fs::read_to_string("/etc/resolv.conf")
                .ok()
                .and_then(|t| {
                    t.lines().find_map(|l| {
                        let mut w = l.split_whitespace();
                        (w.next() == Some("nameserver"))
                            .then(|| w.next()?.parse::<std::net::IpAddr>().ok())
                            .flatten()
                            .map(|ip| SocketAddr::new(ip, 53))
                    })
                })
        });
        match server {
            Some(s) if s.ip().is_loopback() => Some(Dane {
                server: Some(s),
                timeout: Duration::from_millis(cfg.timeout_ms.max(1)),
            }),
            other => {
                tracing::warn!(
                    resolver = ?other,
                    "DANE is off: it needs a validating DNS resolver on loopback ([dns] server), whose AD bit can be trusted"
                );
                None
            }
        }
    }

    pub async fn lookup(&self, name: &str, rtype: RecordType) -> Answer {
        match self.ask(name, rtype).await {
            Ok(m) => {
                let rcode = m.metadata.response_code;
                if rcode != ResponseCode::NoError && rcode != ResponseCode::NXDomain {
                    return Answer::Failed(format!("{name}: {rcode}"));
                }
                if !m.metadata.authentic_data {
                    return Answer::Insecure;
                }
                Answer::Secure(
                    m.answers
                        .iter()
                        .filter(|r| r.record_type() == rtype)
                        .map(|r| r.data.clone())
                        .collect(),
                )
            }
            Err(e) => Answer::Failed(e),
        }
    }

    /// The usable TLSA records of `host` on `port` (`_PORT._tcp.HOST`, RFC 7672 2.2.2): Some with
    /// the records when secure (empty: none usable, DANE does not apply), None when insecure,
    /// Err when the look-up failed.
    pub async fn tlsa(&self, host: &str, port: u16) -> Result<Option<Vec<Tlsa>>, String> {
        let name = format!("_{port}._tcp.{}.", host.trim_end_matches('.'));
        match self.lookup(&name, RecordType::TLSA).await {
            Answer::Secure(rdata) => Ok(Some(
                rdata
                    .into_iter()
                    .filter_map(|r| match r {
                        RData::TLSA(t) => Some(Tlsa {
                            usage: t.cert_usage.into(),
                            selector: t.selector.into(),
                            matching: t.matching.into(),
                            data: t.cert_data,
                        }),
                        _ => None,
                    })
                    .filter(Tlsa::usable)
                    .collect(),
            )),
            Answer::Insecure => Ok(None),
            Answer::Failed(e) => Err(e),
        }
    }

    async fn ask(&self, name: &str, rtype: RecordType) -> Result<Message, String> {
        let server = self
            .server
            .ok_or("no DNS server for DANE look-ups (set [dns] server)")?;
        let name = Name::from_ascii(name).map_err(|e| e.to_string())?;
        let id: u16 = rand::random();
        let mut q = Message::new(id, MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = true;
        // RFC 6840 5.7: AD in the query asks for it in the answer; DO asks for DNSSEC records.
        q.metadata.authentic_data = true;
        q.add_query(Query::query(name, rtype));
        let mut edns = Edns::new();
        edns.set_dnssec_ok(true).set_max_payload(1232);
        q.set_edns(edns);
        let wire = q.to_vec().map_err(|e| e.to_string())?;
        let bind: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse().expect("address")
        } else {
            "[::]:0".parse().expect("address")
        };
        let udp = tokio::net::UdpSocket::bind(bind)
            .await
            .map_err(|e| e.to_string())?;
        udp.connect(server).await.map_err(|e| e.to_string())?;
        let exchange = async {
            udp.send(&wire).await.map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 4096];
            loop {
                let n = udp.recv(&mut buf).await.map_err(|e| e.to_string())?;
                let m = Message::from_vec(&buf[..n]).map_err(|e| e.to_string())?;
                if m.metadata.id == id {
                    return Ok::<Message, String>(m);
                }
            }
        };
        let m = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("DNS query to {server} timed out"))??;
        if !m.metadata.truncation {
            return Ok(m);
        }
        // Truncated: the same question over TCP (RFC 7766).
        let tcp = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(server)
                .await
                .map_err(|e| e.to_string())?;
            let mut framed = (wire.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&wire);
            s.write_all(&framed).await.map_err(|e| e.to_string())?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await.map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            Message::from_vec(&buf).map_err(|e| e.to_string())
        };
        tokio::time::timeout(self.timeout, tcp)
            .await
            .map_err(|_| format!("DNS query to {server} over TCP timed out"))?
    }
}

/// A TLS client that accepts exactly the certificates the TLSA records allow.
pub fn connector(records: Vec<Tlsa>, host: &str) -> Result<TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(DaneVerifier {
        records,
        host: host.trim_end_matches('.').to_ascii_lowercase(),
        provider: provider.clone(),
    });
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(cfg)))
}

#[derive(Debug)]
struct DaneVerifier {
    records: Vec<Tlsa>,
    host: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // DANE-EE: the server's own certificate or key; its names and dates do not matter.
        if self
            .records
            .iter()
            .filter(|r| r.usage == 3)
            .any(|r| r.matches(end_entity))
        {
            return Ok(ServerCertVerified::assertion());
        }
        // DANE-TA: a certificate of the presented chain is the trust anchor; the server's
        // certificate must chain to it and name the MX host.
        for ta in intermediates {
            if !self
                .records
                .iter()
                .filter(|r| r.usage == 2)
                .any(|r| r.matches(ta))
            {
                continue;
            }
            let mut roots = rustls::RootCertStore::empty();
            if roots.add(ta.clone().into_owned()).is_err() {
                continue;
            }
            let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                self.provider.clone(),
            )
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
            let name = ServerName::try_from(self.host.clone())
                .map_err(|_| rustls::Error::General("invalid MX host name".into()))?;
            return v.verify_server_cert(end_entity, intermediates, &name, ocsp, now);
        }
        Err(rustls::Error::General(
            "DANE: no TLSA record matches the certificate".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_records() {
        let t = |usage, selector, matching| Tlsa {
            usage,
            selector,
            matching,
            data: vec![],
        };
        assert!(t(3, 1, 1).usable() && t(2, 0, 1).usable() && t(3, 0, 0).usable());
        assert!(!t(0, 0, 1).usable() && !t(1, 1, 1).usable() && !t(3, 2, 1).usable());
    }

    #[test]
    fn matching_an_spki_hash() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["mx.example.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        use rcgen::PublicKeyData;
        let spki_hash = sha2::Sha256::digest(key.subject_public_key_info()).to_vec();
        let rec = Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: spki_hash.clone(),
        };
        assert!(rec.matches(&der));
        let full = Tlsa {
            usage: 3,
            selector: 0,
            matching: 1,
            data: sha2::Sha256::digest(&der).to_vec(),
        };
        assert!(full.matches(&der));
        let mut wrong = rec.clone();
        wrong.data[0] ^= 1;
        assert!(!wrong.matches(&der));
    }
}
