//! Recoverable secrets at rest: envelope encryption under a master key.
//!
//! Each secret is sealed with its own random data key (AES-256-GCM), and the data key is wrapped
//! by the master key (AES-256-GCM); both use the secret's purpose (e.g. `totp:account:12`) as
//! associated data, so a sealed blob moved to another row or purpose does not open. Nothing
//! recoverable is stored unwrapped. The master key comes from a reference:
//! `file:PATH` (refused if group or others can read it) or `env:NAME` (base64 of 32 bytes).
//! Later providers (Vault/OpenBao KV and Transit) plug in behind the same [`MasterKey`].
//!
//! AES-GCM comes from `ring`, already in the tree through rustls: no second crypto library.
#![forbid(unsafe_code)]

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
}

const VERSION: u8 = 1;
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

    fn decode(text: &str, origin: &str) -> Result<MasterKey, SecretsError> {
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

    /// Seals `plaintext` for `purpose` under a fresh data key wrapped by this master key.
    /// Layout: version, key id (8), wrapped data key (12 + 32 + 16), nonce (12), ciphertext+tag.
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Vec<u8> {
        let dek: Zeroizing<[u8; 32]> = Zeroizing::new(rand::random());
        let wrapped = seal_with(&self.key, &wrap_aad(purpose), &dek[..]);
        let body = seal_with(&dek, purpose.as_bytes(), plaintext);
        let mut out = Vec::with_capacity(1 + KEY_ID + wrapped.len() + body.len());
        out.push(VERSION);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&wrapped);
        out.extend_from_slice(&body);
        out
    }

    /// Opens what [`seal`](Self::seal) made for the same purpose.
    pub fn open(&self, purpose: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
        let wrapped_len = NONCE_LEN + 32 + TAG;
        if sealed.len() < 1 + KEY_ID + wrapped_len + NONCE_LEN + TAG || sealed[0] != VERSION {
            return Err(SecretsError::Open);
        }
        let id = &sealed[1..1 + KEY_ID];
        if id != self.id {
            return Err(SecretsError::WrongKey {
                found: hex::encode(id),
                current: self.id(),
            });
        }
        let rest = &sealed[1 + KEY_ID..];
        let dek = open_with(&self.key, &wrap_aad(purpose), &rest[..wrapped_len])?;
        let dek: Zeroizing<[u8; 32]> =
            Zeroizing::new(dek[..].try_into().map_err(|_| SecretsError::Open)?);
        open_with(&dek, purpose.as_bytes(), &rest[wrapped_len..])
    }

    /// Re-wraps a sealed secret's data key under `new` (master key rotation): the secret itself
    /// is not re-encrypted.
    pub fn rewrap(
        &self,
        new: &MasterKey,
        purpose: &str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, SecretsError> {
        let plain = self.open(purpose, sealed)?;
        Ok(new.seal(purpose, &plain))
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

    #[test]
    fn seal_open_round_trip_and_binding() {
        let k = MasterKey::from_bytes([7; 32]);
        let s = k.seal("totp:account:1", b"seed bytes");
        assert_eq!(&k.open("totp:account:1", &s).unwrap()[..], b"seed bytes");
        // another purpose, another key, a flipped bit: all refused
        assert!(matches!(
            k.open("totp:account:2", &s),
            Err(SecretsError::Open)
        ));
        let other = MasterKey::from_bytes([8; 32]);
        assert!(matches!(
            other.open("totp:account:1", &s),
            Err(SecretsError::WrongKey { .. })
        ));
        let mut bad = s.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(k.open("totp:account:1", &bad).is_err());
        // two seals of the same plaintext differ (fresh data key and nonce)
        assert_ne!(s, k.seal("totp:account:1", b"seed bytes"));
        // the plaintext does not appear in the sealed form
        assert!(!s.windows(10).any(|w| w == b"seed bytes"));
        // rewrap moves it under a new key
        let moved = k.rewrap(&other, "p", &k.seal("p", b"x")).unwrap();
        assert_eq!(&other.open("p", &moved).unwrap()[..], b"x");
        assert!(k.open("p", &moved).is_err());
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
