//! Recoverable secrets at rest: envelope encryption under a master key.
//!
//! Each secret is sealed with its own random data key (AES-256-GCM, the secret's purpose, e.g.
//! `totp:account:12` or `secret:relay`, as associated data, so a sealed blob moved to another
//! row or purpose does not open), and the data key is wrapped by a [`KeyWrap`]:
//! - a local [`MasterKey`] from `file:PATH` (refused if group or others can read it), `env:NAME`
//!   (base64 of 32 bytes) or `vault:MOUNT/PATH#FIELD` (a Vault/OpenBao KV v2 field);
//! - or Vault/OpenBao **Transit** (`transit:KEY`), where the master key never leaves the secret
//!   manager: data keys are wrapped and unwrapped remotely.
//!
//! Nothing recoverable is stored unwrapped. Rotating the master key re-wraps the data keys only.
//!
//! AES-GCM comes from `ring`, already in the tree through rustls: no second crypto library.
#![forbid(unsafe_code)]

pub mod vault;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("master key reference {0:?} is not understood (use file:PATH or env:NAME)")]
    BadReference(String),
    #[error("master key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("master key file {0} is readable by group or others; chmod 600 it")]
    Permissions(PathBuf),
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("master key from {0} is not base64 of 32 bytes")]
    BadKey(String),
    #[error("sealed secret was made with master key {found}, not the current key {current}")]
    WrongKey { found: String, current: String },
    #[error("sealed secret is damaged or does not belong to this purpose")]
    Open,
    #[error("could not write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret manager: {0}")]
    Vault(String),
}

const TAG: usize = 16;
const KEY_ID: usize = 8;

/// The key that wraps every data key. Its bytes are zeroized on drop and never printed.
pub struct MasterKey {
    key: Zeroizing<[u8; 32]>,
    id: [u8; KEY_ID],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({}, [REDACTED])", self.id())
    }
}

fn cipher(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key"))
}

fn seal_with(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let mut buf = plaintext.to_vec();
    cipher(key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .expect("AES-GCM sealing of a bounded buffer");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    buf.iter_mut().for_each(|b| *b = 0);
    out
}

fn open_with(
    key: &[u8; 32],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
    if sealed.len() < NONCE_LEN + TAG {
        return Err(SecretsError::Open);
    }
    let nonce: [u8; NONCE_LEN] = sealed[..NONCE_LEN].try_into().expect("length checked");
    let mut buf = Zeroizing::new(sealed[NONCE_LEN..].to_vec());
    let n = cipher(key)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| SecretsError::Open)?
        .len();
    buf.truncate(n);
    Ok(buf)
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        let key = Zeroizing::new(bytes);
        let d = ring::digest::digest(&ring::digest::SHA256, &key[..]);
        let mut id = [0u8; KEY_ID];
        id.copy_from_slice(&d.as_ref()[..KEY_ID]);
        MasterKey { key, id }
    }

    /// A short public fingerprint of the key (hex), to tell keys apart in errors and audits.
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }

    pub fn decode(text: &str, origin: &str) -> Result<MasterKey, SecretsError> {
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| SecretsError::BadKey(origin.to_owned()))?,
        );
        let arr: [u8; 32] = bytes[..]
            .try_into()
            .map_err(|_| SecretsError::BadKey(origin.to_owned()))?;
        Ok(MasterKey::from_bytes(arr))
    }

    /// Loads the key a reference names; relative file paths are resolved against `base`.
    pub fn load(reference: &str, base: &Path) -> Result<MasterKey, SecretsError> {
        if let Some(p) = reference.strip_prefix("file:") {
            let path = if Path::new(p).is_absolute() {
                PathBuf::from(p)
            } else {
                base.join(p)
            };
            check_private(&path)?;
            let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|source| {
                SecretsError::Read {
                    path: path.clone(),
                    source,
                }
            })?);
            MasterKey::decode(&text, &path.display().to_string())
        } else if let Some(name) = reference.strip_prefix("env:") {
            let v = Zeroizing::new(
                std::env::var(name).map_err(|_| SecretsError::MissingEnv(name.to_owned()))?,
            );
            MasterKey::decode(&v, &format!("env:{name}"))
        } else {
            Err(SecretsError::BadReference(reference.to_owned()))
        }
    }

    /// Writes a new random key to `path` (mode 0600, refusing to overwrite).
    pub fn generate_file(path: &Path) -> Result<(), SecretsError> {
        use std::io::Write;
        let key: Zeroizing<[u8; 32]> = Zeroizing::new(rand::random());
        let text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&key[..]));
        let w = |source| SecretsError::Write {
            path: path.to_owned(),
            source,
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path).map_err(w)?;
        f.write_all(text.as_bytes()).map_err(w)?;
        f.write_all(b"\n").map_err(w)?;
        f.sync_all().map_err(w)?;
        Ok(())
    }

    /// A keyed digest (HMAC-SHA-256 under a key derived from the master key for `purpose`), for
    /// values that must be recognised but never recovered, such as recovery codes.
    pub fn mac(&self, purpose: &str, data: &[u8]) -> [u8; 32] {
        let sub = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.key[..]),
            format!("postern mac key: {purpose}").as_bytes(),
        );
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, sub.as_ref()),
            data,
        );
        tag.as_ref().try_into().expect("SHA-256 tag is 32 bytes")
    }
}

fn wrap_aad(purpose: &str) -> Vec<u8> {
    format!("postern data key: {purpose}").into_bytes()
}

/// Wraps and unwraps data keys: the master key, wherever it lives.
#[async_trait::async_trait]
pub trait KeyWrap: Send + Sync {
    /// A public identifier of the key, stored with each sealed secret (never the key itself).
    fn key_id(&self) -> String;
    async fn wrap(&self, aad: &[u8], dek: &[u8]) -> Result<Vec<u8>, SecretsError>;
    async fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretsError>;
}

#[async_trait::async_trait]
impl KeyWrap for MasterKey {
    fn key_id(&self) -> String {
        format!("local:{}", self.id())
    }
    async fn wrap(&self, aad: &[u8], dek: &[u8]) -> Result<Vec<u8>, SecretsError> {
        Ok(seal_with(&self.key, aad, dek))
    }
    async fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
        open_with(&self.key, aad, wrapped)
    }
}

/// Seals and opens secrets under a [`KeyWrap`].
///
/// Layout of a sealed secret: version (2), key id length (1) and key id, wrapped data key length
/// (2, big-endian) and wrapped data key, nonce (12), ciphertext and tag.
#[derive(Clone)]
pub struct Sealer {
    wrap: std::sync::Arc<dyn KeyWrap>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer({})", self.wrap.key_id())
    }
}

const VERSION2: u8 = 2;

struct Parts<'a> {
    key_id: &'a str,
    wrapped: &'a [u8],
    body: &'a [u8],
}

fn parse(sealed: &[u8]) -> Result<Parts<'_>, SecretsError> {
    let bad = || SecretsError::Open;
    if sealed.first() != Some(&VERSION2) || sealed.len() < 2 {
        return Err(bad());
    }
    let idl = sealed[1] as usize;
    let rest = sealed.get(2..).ok_or_else(bad)?;
    let key_id = std::str::from_utf8(rest.get(..idl).ok_or_else(bad)?).map_err(|_| bad())?;
    let rest = &rest[idl..];
    let wl = u16::from_be_bytes([
        *rest.first().ok_or_else(bad)?,
        *rest.get(1).ok_or_else(bad)?,
    ]) as usize;
    let wrapped = rest.get(2..2 + wl).ok_or_else(bad)?;
    let body = &rest[2 + wl..];
    if body.len() < NONCE_LEN + TAG {
        return Err(bad());
    }
    Ok(Parts {
        key_id,
        wrapped,
        body,
    })
}

impl Sealer {
    pub fn new(wrap: std::sync::Arc<dyn KeyWrap>) -> Sealer {
        Sealer { wrap }
    }

    pub fn local(key: MasterKey) -> Sealer {
        Sealer::new(std::sync::Arc::new(key))
    }

    pub fn key_id(&self) -> String {
        self.wrap.key_id()
    }

    fn assemble(&self, wrapped: &[u8], body: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let id = self.wrap.key_id();
        if id.len() > 255 || wrapped.len() > u16::MAX as usize {
            return Err(SecretsError::Vault("key id or wrapped key too long".into()));
        }
        let mut out = Vec::with_capacity(4 + id.len() + wrapped.len() + body.len());
        out.push(VERSION2);
        out.push(id.len() as u8);
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&(wrapped.len() as u16).to_be_bytes());
        out.extend_from_slice(wrapped);
        out.extend_from_slice(body);
        Ok(out)
    }

    /// Seals `plaintext` for `purpose` under a fresh data key.
    pub async fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let dek: Zeroizing<[u8; 32]> = Zeroizing::new(rand::random());
        let wrapped = self.wrap.wrap(&wrap_aad(purpose), &dek[..]).await?;
        let body = seal_with(&dek, purpose.as_bytes(), plaintext);
        self.assemble(&wrapped, &body)
    }

    /// Opens what [`seal`](Self::seal) made for the same purpose.
    pub async fn open(
        &self,
        purpose: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
        let p = parse(sealed)?;
        let current = self.wrap.key_id();
        if p.key_id != current {
            return Err(SecretsError::WrongKey {
                found: p.key_id.to_owned(),
                current,
            });
        }
        let dek = self.wrap.unwrap(&wrap_aad(purpose), p.wrapped).await?;
        let dek: Zeroizing<[u8; 32]> =
            Zeroizing::new(dek[..].try_into().map_err(|_| SecretsError::Open)?);
        open_with(&dek, purpose.as_bytes(), p.body)
    }

    /// The key id a sealed secret was made with.
    pub fn sealed_key_id(sealed: &[u8]) -> Option<String> {
        parse(sealed).ok().map(|p| p.key_id.to_owned())
    }

    /// Moves a sealed secret's data key under `new` (master key rotation); the secret's own
    /// ciphertext is kept as is.
    pub async fn rewrap(
        &self,
        new: &Sealer,
        purpose: &str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, SecretsError> {
        let p = parse(sealed)?;
        if p.key_id != self.wrap.key_id() {
            return Err(SecretsError::WrongKey {
                found: p.key_id.to_owned(),
                current: self.wrap.key_id(),
            });
        }
        let aad = wrap_aad(purpose);
        let dek = self.wrap.unwrap(&aad, p.wrapped).await?;
        let wrapped = new.wrap.wrap(&aad, &dek).await?;
        new.assemble(&wrapped, p.body)
    }
}

/// How to reach a Vault/OpenBao server.
#[derive(Debug, Clone, Default)]
pub struct VaultSettings {
    /// e.g. `https://vault.example.net:8200` (plain http only to a loopback address).
    pub addr: String,
    /// CA certificate (PEM) to trust for the server, in addition to none other.
    pub ca_file: Option<PathBuf>,
    /// The token, already resolved from its reference.
    pub token: Option<zeroize::Zeroizing<String>>,
    /// AppRole credentials (role id, secret id), used if no token.
    pub approle: Option<(String, zeroize::Zeroizing<String>)>,
    /// Mount of the Transit engine.
    pub transit_mount: String,
}

/// Opens the master key a reference names: `file:PATH`, `env:NAME`, `vault:MOUNT/PATH#FIELD`
/// (a base64 32-byte key in a KV v2 field) or `transit:KEY` (wrapping done by Vault Transit).
pub async fn sealer(
    reference: &str,
    base: &Path,
    vault: Option<&VaultSettings>,
) -> Result<Sealer, SecretsError> {
    if reference.starts_with("file:") || reference.starts_with("env:") {
        return Ok(Sealer::local(MasterKey::load(reference, base)?));
    }
    let need = || SecretsError::Vault(format!("{reference} needs [secrets] vault_addr"));
    if let Some(r) = reference.strip_prefix("vault:") {
        let v = vault.ok_or_else(need)?;
        let client = vault::Client::connect(v).await?;
        let text = client.kv2_field(r).await?;
        return Ok(Sealer::local(MasterKey::decode(&text, reference)?));
    }
    if let Some(key) = reference.strip_prefix("transit:") {
        let v = vault.ok_or_else(need)?;
        let client = vault::Client::connect(v).await?;
        let t = vault::Transit::new(client, &v.transit_mount, key);
        // Fail closed at start-up rather than at the first secret.
        t.check().await?;
        return Ok(Sealer::new(std::sync::Arc::new(t)));
    }
    Err(SecretsError::BadReference(reference.to_owned()))
}

/// Refuses a key file that group or others may read (or write).
fn check_private(path: &Path) -> Result<(), SecretsError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|source| SecretsError::Read {
            path: path.to_owned(),
            source,
        })?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(SecretsError::Permissions(path.to_owned()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn seal_open_round_trip_and_binding() {
        let k = Sealer::local(MasterKey::from_bytes([7; 32]));
        let s = k.seal("totp:account:1", b"seed bytes").await.unwrap();
        assert_eq!(
            &k.open("totp:account:1", &s).await.unwrap()[..],
            b"seed bytes"
        );
        // another purpose, another key, a flipped bit: all refused
        assert!(matches!(
            k.open("totp:account:2", &s).await,
            Err(SecretsError::Open)
        ));
        let other = Sealer::local(MasterKey::from_bytes([8; 32]));
        assert!(matches!(
            other.open("totp:account:1", &s).await,
            Err(SecretsError::WrongKey { .. })
        ));
        let mut bad = s.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(k.open("totp:account:1", &bad).await.is_err());
        assert!(k.open("totp:account:1", &s[..10]).await.is_err());
        // two seals of the same plaintext differ (fresh data key and nonce)
        assert_ne!(s, k.seal("totp:account:1", b"seed bytes").await.unwrap());
        // the plaintext does not appear in the sealed form
        assert!(!s.windows(10).any(|w| w == b"seed bytes"));
        // rewrap moves it under a new key; the old key no longer opens it
        let moved = k
            .rewrap(&other, "p", &k.seal("p", b"x").await.unwrap())
            .await
            .unwrap();
        assert_eq!(&other.open("p", &moved).await.unwrap()[..], b"x");
        assert!(k.open("p", &moved).await.is_err());
        assert_eq!(Sealer::sealed_key_id(&moved), Some(other.key_id()));
    }

    #[test]
    fn key_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        MasterKey::generate_file(&p).unwrap();
        assert!(MasterKey::generate_file(&p).is_err(), "never overwrites");
        let k = MasterKey::load("file:master.key", dir.path()).unwrap();
        assert_eq!(k.id().len(), 16);
        assert!(!format!("{k:?}").contains(&hex::encode(&k.key[..])));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            MasterKey::load("file:master.key", dir.path()),
            Err(SecretsError::Permissions(_))
        ));
        assert!(matches!(
            MasterKey::load("vault-ish:x", dir.path()),
            Err(SecretsError::BadReference(_))
        ));
    }

    #[test]
    fn macs_are_keyed_and_purpose_bound() {
        let k = MasterKey::from_bytes([1; 32]);
        assert_eq!(k.mac("a", b"x"), k.mac("a", b"x"));
        assert_ne!(k.mac("a", b"x"), k.mac("b", b"x"));
        assert_ne!(
            k.mac("a", b"x"),
            MasterKey::from_bytes([2; 32]).mac("a", b"x")
        );
    }
}
