//! The running installation's secrets: the master key (through its provider), the internal secret
//! store, and secret references in the configuration.
//!
//! - Every decryption is an audit event (`secret_read`) with the purpose it served.
//! - After `postern secret rotate-master-key`, a running server meets a secret sealed under the
//!   new key: it re-reads `[secrets] master_key` from the config file and retries once, so the
//!   rotation needs no restart; the old key no longer opens anything.
//! - References: `env:NAME`, `file:PATH` (mode 0600), `vault:MOUNT/PATH#FIELD`, `secret:NAME`
//!   (the internal store). A value in clear is refused unless `allow_plaintext_secrets`.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use postern_config::Config;
use postern_secrets::vault::Transit;
use postern_secrets::{Sealer, SecretsError, VaultSettings};
use postern_store::Store;
use tokio::sync::RwLock;
use zeroize::Zeroizing;

use crate::actor::{record, Actor};

/// Reads an `env:` or `file:` reference (for the Vault token and AppRole secret id).
fn read_simple_ref(r: &str, cfg: &Config) -> Result<Zeroizing<String>> {
    if let Some(name) = r.strip_prefix("env:") {
        return Ok(Zeroizing::new(std::env::var(name).with_context(|| {
            format!("environment variable {name} is not set")
        })?));
    }
    if let Some(p) = r.strip_prefix("file:") {
        let path = cfg.path(std::path::Path::new(p));
        check_private(&path)?;
        let text = Zeroizing::new(
            std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?,
        );
        return Ok(Zeroizing::new(text.trim().to_owned()));
    }
    bail!("{r:?}: expected env:NAME or file:PATH")
}

/// Resolves a reference needed before the database is open (`[storage] database_password`):
/// `env:`, `file:` or `vault:` (the read is logged, since the audit log is not open yet).
pub async fn resolve_before_store(cfg: &Config, r: &str, why: &str) -> Result<Zeroizing<String>> {
    if let Some(v) = r.strip_prefix("vault:") {
        let settings =
            vault_settings(cfg)?.context("a vault: reference needs [secrets] vault_addr")?;
        let client = postern_secrets::vault::Client::connect(&settings).await?;
        let value = client.kv2_field(v).await?;
        tracing::info!(reference = r, why, "read a secret from the secret manager");
        return Ok(value);
    }
    read_simple_ref(r, cfg).with_context(|| format!("resolving {why}"))
}

fn check_private(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "{} is readable by group or others; chmod 600 it",
            path.display()
        );
    }
    Ok(())
}

pub fn vault_settings(cfg: &Config) -> Result<Option<VaultSettings>> {
    let s = &cfg.secrets;
    let Some(addr) = &s.vault_addr else {
        return Ok(None);
    };
    let token = s
        .vault_token
        .as_deref()
        .map(|r| read_simple_ref(r, cfg))
        .transpose()?;
    let approle = match (&s.vault_role_id, &s.vault_secret_id) {
        (Some(role), Some(secret)) => Some((role.clone(), read_simple_ref(secret, cfg)?)),
        _ => None,
    };
    Ok(Some(VaultSettings {
        addr: addr.clone(),
        ca_file: s.vault_ca_file.as_ref().map(|p| cfg.path(p)),
        token,
        approle,
        transit_mount: s.transit_mount.clone(),
    }))
}

/// Opens the master key a reference names, with a message that says where it failed.
pub async fn open_sealer(cfg: &Config, reference: &str) -> Result<Sealer> {
    let vault = vault_settings(cfg)?;
    postern_secrets::sealer(reference, &cfg.base_dir, vault.as_ref())
        .await
        .with_context(|| format!("cannot open the master key ({reference})"))
}

pub struct Keys {
    cfg: Config,
    store: Store,
    sealer: RwLock<Sealer>,
    /// Transit keys in use for DKIM signing, with their logged-in client.
    transit: tokio::sync::Mutex<std::collections::HashMap<String, Arc<Transit>>>,
}

/// The internal secret that keys recovery-code digests (created on first use).
const MAC_KEY: &str = "postern:mac-key";
/// The internal secret that keys the audit chain's HMAC (created on first use).
const AUDIT_KEY: &str = "postern:audit-key";

impl Keys {
    pub async fn load(cfg: &Config, store: &Store) -> Result<Arc<Keys>> {
        // A data directory from before the master key existed: make the default key file, but
        // only while nothing is sealed (a missing key with sealed data is an error, not a reset).
        if let Some(p) = cfg.secrets.master_key.strip_prefix("file:") {
            let path = cfg.path(std::path::Path::new(p));
            if !path.exists() && store.sealed_rows().await?.is_empty() {
                postern_secrets::MasterKey::generate_file(&path)?;
                tracing::info!(path = %path.display(), "generated the master key file");
            }
        }
        let sealer = open_sealer(cfg, &cfg.secrets.master_key).await?;
        Ok(Arc::new(Keys {
            cfg: cfg.clone(),
            store: store.clone(),
            sealer: RwLock::new(sealer),
            transit: Default::default(),
        }))
    }

    pub async fn key_id(&self) -> String {
        self.sealer.read().await.key_id()
    }

    pub async fn seal(&self, purpose: &str, data: &[u8]) -> Result<Vec<u8>> {
        Ok(self.sealer.read().await.seal(purpose, data).await?)
    }

    /// Re-reads the master key reference from the config file (after a rotation).
    async fn reload(&self) -> Result<()> {
        let file = if self.cfg.file.as_os_str().is_empty() {
            self.cfg.base_dir.join("postern.toml")
        } else {
            self.cfg.file.clone()
        };
        let fresh = Config::load(&file)?;
        let sealer = open_sealer(&fresh, &fresh.secrets.master_key).await?;
        tracing::info!(key = %sealer.key_id(), "master key reloaded after a rotation");
        *self.sealer.write().await = sealer;
        Ok(())
    }

    /// Opens a sealed value; audited as `secret_read` with the purpose and why it was needed.
    pub async fn open(
        &self,
        purpose: &str,
        sealed: &[u8],
        why: &str,
        actor: &Actor,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let first = self.sealer.read().await.open(purpose, sealed).await;
        let out = match first {
            Err(SecretsError::WrongKey { .. }) => {
                self.reload().await?;
                self.sealer.read().await.open(purpose, sealed).await
            }
            other => other,
        };
        let ok = out.is_ok();
        // a fixed word per kind of secret: never a secret's name in a metric label
        let kind = match purpose
            .strip_prefix("secret:")
            .unwrap_or(purpose)
            .split(':')
            .next()
        {
            Some("dkim") => "dkim",
            Some("totp") => "totp",
            Some("postern") => "internal",
            _ => "stored",
        };
        postern_metrics::secret_read(kind);
        let detail = format!("{purpose}: {why}{}", if ok { "" } else { " (failed)" });
        record(&self.store, actor, "secret_read", purpose, &detail).await?;
        Ok(out?)
    }

    /// Stores a named secret sealed under the master key.
    pub async fn put_secret(&self, name: &str, description: &str, value: &[u8]) -> Result<()> {
        let sealed = self.seal(&format!("secret:{name}"), value).await?;
        let id = Sealer::sealed_key_id(&sealed).unwrap_or_default();
        self.store
            .put_secret(name, description, &id, &sealed)
            .await?;
        Ok(())
    }

    /// A named secret's value (audited).
    pub async fn secret(&self, name: &str, why: &str, actor: &Actor) -> Result<Zeroizing<Vec<u8>>> {
        let sealed = self.store.sealed_secret(name).await?;
        self.open(&format!("secret:{name}"), &sealed, why, actor)
            .await
    }

    /// Opens (or makes, the first time) the audit chain's key and gives it to the store, so that
    /// every row from now on is HMAC-chained. The opening itself is then audited, keyed.
    pub async fn load_audit_key(&self) -> Result<()> {
        if self.store.has_audit_key() {
            return Ok(());
        }
        let purpose = format!("secret:{AUDIT_KEY}");
        let (key, made) = match self.store.sealed_secret(AUDIT_KEY).await {
            Ok(sealed) => {
                let first = self.sealer.read().await.open(&purpose, &sealed).await;
                let v = match first {
                    Err(SecretsError::WrongKey { .. }) => {
                        self.reload().await?;
                        self.sealer.read().await.open(&purpose, &sealed).await?
                    }
                    other => other?,
                };
                let k: [u8; 32] = v[..]
                    .try_into()
                    .context("the audit key in the secret store is not 32 bytes")?;
                (k, false)
            }
            Err(postern_store::StoreError::NotFound(_)) => {
                let k: Zeroizing<[u8; 32]> = Zeroizing::new(rand::random());
                self.put_secret(AUDIT_KEY, "keys the audit log's hash chain", &k[..])
                    .await?;
                (*k, true)
            }
            Err(e) => return Err(e.into()),
        };
        self.store
            .set_audit_key(postern_store::audit::AuditKey::new(key));
        let system = Actor::system("audit");
        let detail = if made {
            "audit chain key created"
        } else {
            "audit chain key opened"
        };
        record(&self.store, &system, "secret_read", &purpose, detail).await?;
        Ok(())
    }

    /// HMAC-SHA-256 under an internal key kept in the secret store (for recovery codes: values
    /// that must be recognised, never recovered).
    pub async fn mac(&self, purpose: &str, data: &[u8]) -> Result<[u8; 32]> {
        let system = Actor::system("mac");
        let key = match self.store.sealed_secret(MAC_KEY).await {
            Ok(sealed) => {
                self.open(&format!("secret:{MAC_KEY}"), &sealed, purpose, &system)
                    .await?
            }
            Err(postern_store::StoreError::NotFound(_)) => {
                let k: Zeroizing<[u8; 32]> = Zeroizing::new(rand::random());
                self.put_secret(MAC_KEY, "keys recovery-code digests", &k[..])
                    .await?;
                Zeroizing::new(k.to_vec())
            }
            Err(e) => return Err(e.into()),
        };
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
        let tag = ring::hmac::sign(&k, &[purpose.as_bytes(), b"\0", data].concat());
        Ok(tag.as_ref().try_into().expect("SHA-256 tag"))
    }

    /// Whether the secret manager answers (None without one configured): for the
    /// `postern_secret_manager_up` metric and the built-in alert.
    pub async fn secret_manager_check(&self) -> Option<Result<()>> {
        let v = match vault_settings(&self.cfg) {
            Ok(Some(v)) => v,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        Some(
            async {
                let c = postern_secrets::vault::Client::connect(&v).await?;
                c.health().await?;
                Ok(())
            }
            .await,
        )
    }

    /// Resolves a secret reference from the configuration to its value (audited for the
    /// internal store and Vault).
    pub async fn resolve(&self, reference: &str, why: &str) -> Result<Zeroizing<String>> {
        let system = Actor::system("config");
        if reference.starts_with("env:") || reference.starts_with("file:") {
            return read_simple_ref(reference, &self.cfg);
        }
        if let Some(name) = reference.strip_prefix("secret:") {
            let v = self.secret(name, why, &system).await?;
            return Ok(Zeroizing::new(
                String::from_utf8(v.to_vec()).context("secret is not UTF-8 text")?,
            ));
        }
        if let Some(r) = reference.strip_prefix("vault:") {
            let v = vault_settings(&self.cfg)?
                .context("a vault: reference needs [secrets] vault_addr")?;
            let client = postern_secrets::vault::Client::connect(&v).await?;
            let value = client.kv2_field(r).await?;
            record(&self.store, &system, "secret_read", reference, why).await?;
            return Ok(value);
        }
        if self.cfg.secrets.allow_plaintext_secrets {
            tracing::warn!("a secret is written in clear in the configuration ({why}); use env:, file:, vault: or secret:");
            return Ok(Zeroizing::new(reference.to_owned()));
        }
        bail!("a secret in clear in the configuration is refused ({why}); use env:NAME, file:PATH, vault:MOUNT/PATH#FIELD or secret:NAME")
    }

    /// A Transit key of the secret manager (`[secrets] vault_addr`, `transit_mount`): DKIM keys
    /// that never leave it. The logged-in client is kept for the next signature.
    pub async fn transit(&self, key: &str) -> Result<Arc<Transit>> {
        if let Some(t) = self.transit.lock().await.get(key) {
            return Ok(t.clone());
        }
        let v = vault_settings(&self.cfg)?
            .context("a DKIM key in the secret manager needs [secrets] vault_addr")?;
        let client = postern_secrets::vault::Client::connect(&v).await?;
        let t = Arc::new(Transit::new(client, &v.transit_mount, key));
        self.transit.lock().await.insert(key.to_owned(), t.clone());
        Ok(t)
    }

    /// Signs a DKIM digest with a Transit key; a failure drops the cached client (an expired
    /// token) and tries once more with a fresh login.
    pub async fn transit_sign(&self, key: &str, digest: &[u8], rsa: bool) -> Result<Vec<u8>> {
        match self.transit(key).await?.sign(digest, rsa).await {
            Ok(s) => Ok(s),
            Err(_) => {
                self.transit.lock().await.remove(key);
                Ok(self.transit(key).await?.sign(digest, rsa).await?)
            }
        }
    }

    /// Re-wraps every sealed value under the key `new_reference` names; all or nothing.
    pub async fn rotate(&self, new_reference: &str) -> Result<(String, usize)> {
        let new = open_sealer(&self.cfg, new_reference).await?;
        let old = self.sealer.read().await.clone();
        if new.key_id() == old.key_id() {
            bail!("the new master key is the current one");
        }
        let mut rows = self.store.sealed_rows().await?;
        for r in &mut rows {
            r.sealed = old
                .rewrap(&new, &r.purpose, &r.sealed)
                .await
                .with_context(|| format!("re-wrapping {}", r.purpose))?;
        }
        let id = new.key_id();
        self.store.replace_sealed(&rows, &id).await?;
        *self.sealer.write().await = new;
        Ok((id, rows.len()))
    }
}

/// The delivery workers resolve relay passwords through the same audited path.
pub struct QueueSecrets(pub Arc<Keys>);

#[async_trait::async_trait]
impl postern_queue::Secrets for QueueSecrets {
    async fn resolve(&self, reference: &str, why: &str) -> anyhow::Result<Zeroizing<String>> {
        self.0.resolve(reference, why).await
    }

    async fn secret_bytes(&self, name: &str, why: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        self.0.secret(name, why, &Actor::system("dkim")).await
    }

    async fn transit_sign(&self, key: &str, digest: &[u8], rsa: bool) -> anyhow::Result<Vec<u8>> {
        self.0.transit_sign(key, digest, rsa).await
    }
}
