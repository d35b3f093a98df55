//! A small Vault/OpenBao HTTP API client: KV v2 reads, Transit encrypt/decrypt, AppRole login.
//!
//! Built on `hyper`'s HTTP/1.1 client connection and `tokio-rustls` (both already in the tree)
//! rather than `vaultrs`/`reqwest`, which would bring a second HTTP stack and, by default, a
//! second TLS crypto provider. One connection per request: these calls happen at start-up and
//! when a secret is read, not per message. TLS trusts only the configured CA file (required for
//! https); plain http is accepted only to a loopback address (the dev server in tests).

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::{KeyWrap, SecretsError, VaultSettings};

fn err(m: impl std::fmt::Display) -> SecretsError {
    SecretsError::Vault(m.to_string())
}

/// An authenticated client.
pub struct Client {
    host: String,
    port: u16,
    tls: Option<tokio_rustls::TlsConnector>,
    token: Zeroizing<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "vault::Client({}:{}, token [REDACTED])",
            self.host, self.port
        )
    }
}

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Largest response body read (Vault answers here are a few hundred bytes).
const MAX_BODY: usize = 1 << 20;

impl Client {
    /// Parses the address, prepares TLS and logs in (token, or AppRole).
    pub async fn connect(v: &VaultSettings) -> Result<Client, SecretsError> {
        let (scheme, rest) = v
            .addr
            .split_once("://")
            .ok_or_else(|| err(format!("vault address {:?} has no scheme", v.addr)))?;
        let hostport = rest.trim_end_matches('/');
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.trim_matches(['[', ']']).to_owned(),
                p.parse::<u16>()
                    .map_err(|_| err(format!("bad port in {:?}", v.addr)))?,
            ),
            None => (
                hostport.to_owned(),
                if scheme == "https" { 443 } else { 80 },
            ),
        };
        let tls = match scheme {
            "https" => {
                let mut roots = rustls::RootCertStore::empty();
                let ca = v.ca_file.as_ref().ok_or_else(|| {
                    err("an https vault address needs [secrets] vault_ca_file (the CA to trust)")
                })?;
                let pem = std::fs::read(ca).map_err(|e| err(format!("{}: {e}", ca.display())))?;
                use rustls_pki_types::pem::PemObject;
                for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                    roots
                        .add(c.map_err(|e| err(format!("{}: {e}", ca.display())))?)
                        .map_err(err)?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let cfg = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(err)?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Some(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
            }
            "http" => {
                let loopback = host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    return Err(err(
                        "plain http to a secret manager is allowed on loopback only",
                    ));
                }
                None
            }
            other => return Err(err(format!("unknown scheme {other:?}"))),
        };
        let mut c = Client {
            host,
            port,
            tls,
            token: Zeroizing::new(String::new()),
        };
        match (&v.token, &v.approle) {
            (Some(t), _) => c.token = t.clone(),
            (None, Some((role, secret))) => {
                let r = c
                    .call(
                        "POST",
                        "/v1/auth/approle/login",
                        Some(json!({"role_id": role, "secret_id": secret.as_str()})),
                    )
                    .await?;
                let t = r["auth"]["client_token"]
                    .as_str()
                    .ok_or_else(|| err("AppRole login returned no token"))?;
                c.token = Zeroizing::new(t.to_owned());
            }
            (None, None) => return Err(err("no vault token and no AppRole credentials")),
        }
        Ok(c)
    }

    /// One request; returns the JSON body of a 2xx answer.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, SecretsError> {
        tokio::time::timeout(TIMEOUT, self.call_inner(method, path, body))
            .await
            .map_err(|_| err("request timed out"))?
    }

    async fn call_inner(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, SecretsError> {
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(err)?
            .next()
            .ok_or_else(|| err("vault address does not resolve"))?;
        let tcp = tokio::net::TcpStream::connect::<SocketAddr>(addr)
            .await
            .map_err(|e| err(format!("cannot reach {}:{}: {e}", self.host, self.port)))?;
        let payload = Zeroizing::new(body.map(|b| b.to_string()).unwrap_or_default());
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("{}:{}", self.host, self.port))
            .header("content-type", "application/json");
        if !self.token.is_empty() {
            req = req.header("x-vault-token", self.token.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(payload.as_bytes().to_vec())))
            .map_err(err)?;
        let resp = match &self.tls {
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|_| err("invalid vault host name"))?;
                let s = tls.connect(name, tcp).await.map_err(err)?;
                send(TokioIo::new(s), req).await?
            }
            None => send(TokioIo::new(tcp), req).await?,
        };
        let status = resp.0;
        let v: Value = if resp.1.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&resp.1).map_err(|_| err("invalid JSON from vault"))?
        };
        if !(200..300).contains(&status) {
            // Vault error bodies carry messages, never secrets.
            return Err(err(format!(
                "{method} {path}: HTTP {status}: {}",
                v["errors"]
            )));
        }
        Ok(v)
    }

    /// Reads `MOUNT/PATH#FIELD` from a KV v2 engine.
    /// Reachable, unsealed and active (`GET /v1/sys/health` answers 200 only then).
    pub async fn health(&self) -> Result<(), SecretsError> {
        self.call("GET", "/v1/sys/health", None).await.map(|_| ())
    }

    pub async fn kv2_field(&self, reference: &str) -> Result<Zeroizing<String>, SecretsError> {
        let (path, field) = reference
            .split_once('#')
            .ok_or_else(|| err(format!("{reference:?}: expected MOUNT/PATH#FIELD")))?;
        let (mount, rest) = path
            .split_once('/')
            .ok_or_else(|| err(format!("{reference:?}: expected MOUNT/PATH#FIELD")))?;
        let v = self
            .call("GET", &format!("/v1/{mount}/data/{rest}"), None)
            .await?;
        let s = v["data"]["data"][field]
            .as_str()
            .ok_or_else(|| err(format!("{reference:?}: no field {field:?}")))?;
        Ok(Zeroizing::new(s.to_owned()))
    }
}

async fn send<T>(io: T, req: hyper::Request<Full<Bytes>>) -> Result<(u16, Vec<u8>), SecretsError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(err)?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await.map_err(err)?;
    let status = resp.status().as_u16();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| err("vault response too large or broken"))?
        .to_bytes()
        .to_vec();
    driver.abort();
    Ok((status, body))
}

/// Data keys wrapped by a Transit key: the master key never leaves the secret manager.
pub struct Transit {
    client: Client,
    mount: String,
    key: String,
}

impl Transit {
    pub fn new(client: Client, mount: &str, key: &str) -> Transit {
        Transit {
            client,
            mount: if mount.is_empty() {
                "transit".into()
            } else {
                mount.to_owned()
            },
            key: key.to_owned(),
        }
    }

    /// Creates the key with `kind` (`ed25519`, `rsa-2048`) unless it exists, and returns its
    /// public key for a DKIM record's p= tag: the raw key (ed25519, RFC 8463) or the
    /// SubjectPublicKeyInfo DER (RSA), base64. The private key never leaves the secret manager.
    pub async fn signing_key(&self, kind: &str) -> Result<String, SecretsError> {
        let path = format!("/v1/{}/keys/{}", self.mount, self.key);
        let v = match self.client.call("GET", &path, None).await {
            Ok(v) => v,
            Err(_) => {
                self.client
                    .call("POST", &path, Some(json!({ "type": kind })))
                    .await?;
                self.client.call("GET", &path, None).await?
            }
        };
        let data = &v["data"];
        if data["type"].as_str() != Some(kind) {
            return Err(err(format!(
                "transit key {} is of type {}, not {kind}",
                self.key, data["type"]
            )));
        }
        let latest = data["latest_version"].as_u64().unwrap_or(1).to_string();
        let public = data["keys"][&latest]["public_key"]
            .as_str()
            .ok_or_else(|| err("transit key has no public key"))?;
        // RSA keys come as PEM: the base64 between the armour lines is the DER.
        Ok(public
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>())
    }

    /// Signs with the key: `input` is the SHA-256 digest DKIM signs; RSA gets PKCS#1 v1.5 over
    /// the prehashed digest, ed25519 signs the digest itself (RFC 8463 3).
    pub async fn sign(&self, input: &[u8], rsa: bool) -> Result<Vec<u8>, SecretsError> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(input);
        let body = if rsa {
            json!({ "input": b64, "hash_algorithm": "sha2-256", "prehashed": true,
                    "signature_algorithm": "pkcs1v15" })
        } else {
            json!({ "input": b64 })
        };
        let v = self
            .client
            .call(
                "POST",
                &format!("/v1/{}/sign/{}", self.mount, self.key),
                Some(body),
            )
            .await?;
        let sig = v["data"]["signature"]
            .as_str()
            .ok_or_else(|| err("transit sign returned no signature"))?;
        let b64 = sig.rsplit(':').next().unwrap_or(sig);
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| err("transit signature is not base64"))
    }

    /// Fails unless the key exists and can be used.
    pub async fn check(&self) -> Result<(), SecretsError> {
        self.client
            .call(
                "GET",
                &format!("/v1/{}/keys/{}", self.mount, self.key),
                None,
            )
            .await
            .map(|_| ())
    }
}

#[async_trait::async_trait]
impl KeyWrap for Transit {
    fn key_id(&self) -> String {
        format!("transit:{}/{}", self.mount, self.key)
    }

    // The associated data binds the data key to its purpose on our side: the secret's own
    // ciphertext uses the purpose as AES-GCM associated data, so a swapped key opens nothing.
    async fn wrap(&self, _aad: &[u8], dek: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(dek));
        let v = self
            .client
            .call(
                "POST",
                &format!("/v1/{}/encrypt/{}", self.mount, self.key),
                Some(json!({ "plaintext": b64.as_str() })),
            )
            .await?;
        let ct = v["data"]["ciphertext"]
            .as_str()
            .ok_or_else(|| err("transit encrypt returned no ciphertext"))?;
        Ok(ct.as_bytes().to_vec())
    }

    async fn unwrap(
        &self,
        _aad: &[u8],
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
        let ct = std::str::from_utf8(wrapped).map_err(|_| SecretsError::Open)?;
        let v = self
            .client
            .call(
                "POST",
                &format!("/v1/{}/decrypt/{}", self.mount, self.key),
                Some(json!({ "ciphertext": ct })),
            )
            .await?;
        let pt = Zeroizing::new(
            v["data"]["plaintext"]
                .as_str()
                .ok_or_else(|| err("transit decrypt returned no plaintext"))?
                .to_owned(),
        );
        Ok(Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(pt.as_bytes())
                .map_err(|_| SecretsError::Open)?,
        ))
    }
}
