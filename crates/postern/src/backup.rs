//! Encrypted backups of a running server: `postern backup create | verify | restore | keygen`, and
//! the scheduled backups of `[backup]`.
//!
//! A backup is an [age](https://age-encryption.org) file (the `age` crate: X25519 recipients or
//! a scrypt passphrase, ChaCha20-Poly1305 in 64 KiB authenticated chunks, so a truncated or
//! altered file is detected) holding a tar archive:
//! - `postern.toml`, the configuration as it was;
//! - `db/postern.db`, a consistent copy of the database taken while the server runs
//!   (`VACUUM INTO`, see `postern_store::backup`);
//! - `files/…`, the TLS certificate and key when they live under the data directory;
//! - `blobs/ab/abcd…`, every message body the database copy references;
//! - `MANIFEST.json` last: format, version, what the database holds, the master key's id, and
//!   the size and SHA-256 of every other entry.
//!
//! From the moment before the database copy until the last body is written, the blob store's
//! backup guard defers every removal of a body, so the archive never misses one the copy lists.
//!
//! **The master key is not in a backup**, by design: a backup and a stolen data directory must
//! each be useless alone. The manifest names the key's id; restore refuses to finish (and removes
//! what it wrote) unless the same key is reachable. The backup key must not be the master key.
//!
//! An age file can be read with the `age` tool too (`age -d -i KEY FILE | tar t`), so a backup
//! does not depend on this program to be inspected.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use age::secrecy::SecretString;
use anyhow::{anyhow, bail, Context, Result};
use postern_config::Config;
use postern_store::backup::SnapshotInfo;
use postern_store::Store;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::actor::{record, Actor};
use crate::keys::Keys;

const FORMAT: &str = "postern-backup/1";
const MANIFEST: &str = "MANIFEST.json";
const CONFIG: &str = "postern.toml";
const DB: &str = "db/postern.db";

/// The key of a backup, from its reference's text.
pub enum BackupKey {
    /// `AGE-SECRET-KEY-1…`: makes and reads backups.
    Identity(age::x25519::Identity),
    /// `age1…`: makes backups only; the identity that reads them can stay off the server.
    Recipient(age::x25519::Recipient),
    /// Any other text: a passphrase (scrypt).
    Passphrase(SecretString),
}

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackupKey::Identity(_) => "BackupKey::Identity([REDACTED])",
            BackupKey::Recipient(_) => "BackupKey::Recipient",
            BackupKey::Passphrase(_) => "BackupKey::Passphrase([REDACTED])",
        })
    }
}

impl BackupKey {
    pub fn parse(text: &str) -> Result<BackupKey> {
        // an age key file: comment lines (`# public key: …`) and the key on its own line
        let keyish: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let t = match keyish.as_slice() {
            [one] if one.starts_with("AGE-SECRET-KEY-") || one.starts_with("age1") => *one,
            _ => text.trim(),
        };
        if t.starts_with("AGE-SECRET-KEY-") {
            return t
                .parse()
                .map(BackupKey::Identity)
                .map_err(|e| anyhow!("the backup key is not a valid age identity: {e}"));
        }
        if t.starts_with("age1") && !t.contains(char::is_whitespace) {
            return t
                .parse()
                .map(BackupKey::Recipient)
                .map_err(|e| anyhow!("the backup key is not a valid age recipient: {e}"));
        }
        if t.chars().count() < 16 {
            bail!("a backup passphrase must have at least 16 characters (or use `postern backup keygen`)");
        }
        Ok(BackupKey::Passphrase(SecretString::from(t.to_owned())))
    }

    fn encryptor(&self) -> age::Encryptor {
        match self {
            BackupKey::Identity(i) => {
                age::Encryptor::with_recipients(std::iter::once(&i.to_public() as _))
            }
            BackupKey::Recipient(r) => age::Encryptor::with_recipients(std::iter::once(r as _)),
            BackupKey::Passphrase(p) => return age::Encryptor::with_user_passphrase(p.clone()),
        }
        .expect("one native recipient is always a valid set")
    }

    fn decrypt<R: Read>(&self, input: R) -> Result<age::stream::StreamReader<R>> {
        let d = age::Decryptor::new(input)
            .map_err(|e| anyhow!("this is not a Postern backup, or its header is damaged ({e})"))?;
        let r = match self {
            BackupKey::Identity(i) => d.decrypt(std::iter::once(i as &dyn age::Identity)),
            BackupKey::Passphrase(p) => {
                let mut id = age::scrypt::Identity::new(p.clone());
                id.set_max_work_factor(22);
                d.decrypt(std::iter::once(&id as &dyn age::Identity))
            }
            BackupKey::Recipient(_) => bail!(
                "the backup key is a recipient (age1…), which makes backups but cannot read them; give the identity (AGE-SECRET-KEY-1…) that goes with it"
            ),
        };
        r.map_err(|e| match e {
            age::DecryptError::NoMatchingKeys | age::DecryptError::DecryptionFailed => {
                anyhow!("wrong key: this backup was not made for the key given")
            }
            other => anyhow!("the backup cannot be opened: {other}"),
        })
    }
}

/// Where a relative `file:` reference points from.
#[derive(Clone, Copy)]
pub enum KeyBase {
    /// A command-line argument: the current directory.
    Cwd,
    /// `[backup] key`: the configuration file's directory.
    Config,
}

/// Reads a backup key reference (`env:`, `file:`, `vault:`). With a store, a `vault:` read is
/// audited like every secret read.
pub async fn load_key(
    cfg: Option<&Config>,
    keys: Option<&Keys>,
    reference: &str,
    base: KeyBase,
) -> Result<BackupKey> {
    let text: Zeroizing<String> = if let Some(name) = reference.strip_prefix("env:") {
        Zeroizing::new(
            std::env::var(name)
                .with_context(|| format!("environment variable {name} is not set"))?,
        )
    } else if let Some(p) = reference.strip_prefix("file:") {
        let path = match (cfg, base) {
            (Some(c), KeyBase::Config) => c.path(Path::new(p)),
            _ => PathBuf::from(p),
        };
        let meta = fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            bail!(
                "the backup key file {} is readable by group or others; chmod 600 it",
                path.display()
            );
        }
        Zeroizing::new(
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
        )
    } else if reference.starts_with("vault:") {
        let keys = keys.context(
            "a vault: backup key needs the configuration ([secrets] vault_addr): pass --config",
        )?;
        keys.resolve(reference, "backup key").await?
    } else {
        bail!("the backup key must be a reference: env:NAME, file:PATH or vault:MOUNT/PATH#FIELD (never the key itself on the command line)");
    };
    // The master key alone must never open a backup: a stolen data directory would then hold
    // everything needed to read every backup.
    if let Some(cfg) = cfg {
        if let Ok(m) = postern_secrets::MasterKey::decode(text.trim(), "backup key") {
            if let Ok(master) =
                postern_secrets::MasterKey::load(&cfg.secrets.master_key, &cfg.base_dir)
            {
                if m.id() == master.id() {
                    bail!("the backup key is the master key; use a separate key (`postern backup keygen`), kept away from the data directory");
                }
            }
        }
    }
    BackupKey::parse(&text)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub postern_version: String,
    pub commit: String,
    pub created: i64,
    pub hostname: String,
    /// The id of the master key that seals the database's secrets (not the key).
    pub master_key_id: String,
    /// Where the configuration takes the master key from (a reference, not a secret).
    pub master_key_reference: String,
    pub database: SnapshotInfo,
    pub entries: Vec<Entry>,
    /// What a restore needs that is not in the backup.
    pub not_included: Vec<String>,
}

/// What a finished backup holds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub path: PathBuf,
    pub bytes: u64,
    pub messages: i64,
    pub accounts: i64,
    pub queued: i64,
    pub blobs: usize,
    pub master_key_id: String,
}

/// Reads while hashing.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    n: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    entries: &mut Vec<Entry>,
    name: &str,
    file: &Path,
) -> Result<()> {
    let f = File::open(file).with_context(|| format!("reading {}", file.display()))?;
    let size = f.metadata()?.len();
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o600);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    let mut r = Hashing {
        inner: BufReader::new(f).take(size),
        hash: Sha256::new(),
        n: 0,
    };
    tar.append_data(&mut h, name, &mut r)
        .with_context(|| format!("writing {name} into the backup"))?;
    if r.n != size {
        bail!("{} changed size while it was copied", file.display());
    }
    entries.push(Entry {
        path: name.to_owned(),
        size,
        sha256: hex::encode(r.hash.finalize()),
    });
    Ok(())
}

/// Files the configuration names that live under its directory and that a restore needs:
/// (name in the archive, path now).
fn config_files(cfg: &Config) -> (Vec<(String, PathBuf)>, Vec<String>) {
    let mut inside = Vec::new();
    let mut outside = Vec::new();
    for (what, p) in [
        ("TLS certificate", &cfg.tls.cert),
        ("TLS key", &cfg.tls.key),
    ] {
        if p.is_relative() && p.components().all(|c| matches!(c, Component::Normal(_))) {
            inside.push((format!("files/{}", p.display()), cfg.path(p)));
        } else {
            outside.push(format!(
                "{what} {} (outside the data directory)",
                p.display()
            ));
        }
    }
    (inside, outside)
}

/// Makes a backup of the running installation at `to` (which must not exist). The file appears
/// under its name only once complete and fsynced.
pub async fn create(
    cfg: &Config,
    store: &Store,
    keys: &Keys,
    key: &BackupKey,
    to: &Path,
    actor: &Actor,
) -> Result<Summary> {
    if to.exists() {
        bail!("{} exists; a backup never overwrites a file", to.display());
    }
    if cfg.storage.postgres_url().is_some() {
        bail!(
            "`postern backup` copies a SQLite installation; on PostgreSQL back up the database with \
             its own tools (pg_dump, or continuous archiving), which see every node's writes"
        );
    }
    if cfg.storage.database.is_absolute() || cfg.storage.blobs.is_absolute() {
        bail!("[storage] database and blobs must be relative to the configuration's directory for a backup that can be restored elsewhere");
    }
    let config_text =
        fs::read(&cfg.file).with_context(|| format!("reading {}", cfg.file.display()))?;
    let master_key_id = keys.key_id().await;
    let staging = cfg.path(&cfg.storage.database).with_file_name(format!(
        ".backup-{}",
        hex::encode(rand::random::<[u8; 6]>())
    ));
    fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let res = async {
        let staging = &staging;
        let blobs = store.blobs().clone();
        let guard = tokio::task::spawn_blocking(move || blobs.backup_guard()).await??;
        let snap = staging.join("postern.db");
        store
            .snapshot_into(&snap)
            .await
            .context("copying the database")?;
        let info = postern_store::backup::snapshot_info(&snap).await?;
        let (files, mut not_included) = config_files(cfg);
        not_included.insert(
            0,
            format!(
                "the master key ({}, id {master_key_id}): keep it separately; restore needs it",
                cfg.secrets.master_key
            ),
        );
        let manifest = Manifest {
            format: FORMAT.into(),
            postern_version: env!("CARGO_PKG_VERSION").into(),
            commit: env!("POSTERN_COMMIT").into(),
            created: postern_store::now(),
            hostname: cfg.server.hostname.clone(),
            master_key_id: master_key_id.clone(),
            master_key_reference: cfg.secrets.master_key.clone(),
            database: info,
            entries: Vec::new(),
            not_included,
        };
        let encryptor = key.encryptor();
        let to = to.to_owned();
        let staging = staging.to_owned();
        let blob_store = store.blobs().clone();
        tokio::task::spawn_blocking(move || -> Result<(Manifest, u64)> {
            let partial = to.with_extension("partial");
            let mut opts = OpenOptions::new();
            opts.write(true).create_new(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let out = opts
                .open(&partial)
                .with_context(|| format!("creating {}", partial.display()))?;
            let written = (|| -> Result<(Manifest, u64)> {
                let w = encryptor.wrap_output(BufWriter::with_capacity(1 << 16, out))?;
                let mut tar = tar::Builder::new(w);
                let mut m = manifest;
                let mut entries = Vec::new();
                let cfg_path = staging.join("config");
                fs::write(&cfg_path, &config_text)?;
                append(&mut tar, &mut entries, CONFIG, &cfg_path)?;
                append(&mut tar, &mut entries, DB, &snap)?;
                for (name, p) in &files {
                    if p.exists() {
                        append(&mut tar, &mut entries, name, p)?;
                    }
                }
                for id in &m.database.blobs {
                    let p = blob_store.path(id)?;
                    append(
                        &mut tar,
                        &mut entries,
                        &format!("blobs/{}/{id}", &id[..2]),
                        &p,
                    )
                    .with_context(|| format!("the body {id} the database lists"))?;
                }
                drop(guard);
                m.entries = entries;
                let json = serde_json::to_vec_pretty(&m)?;
                let mut h = tar::Header::new_gnu();
                h.set_size(json.len() as u64);
                h.set_mode(0o600);
                h.set_mtime(0);
                tar.append_data(&mut h, MANIFEST, &json[..])?;
                let w = tar.into_inner()?;
                let buf = w.finish()?;
                let f = buf.into_inner().map_err(|e| e.into_error())?;
                f.sync_all()?;
                let n = f.metadata()?.len();
                Ok((m, n))
            })();
            match written {
                Ok(r) => {
                    fs::rename(&partial, &to)?;
                    if let Some(dir) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
                        File::open(dir)?.sync_all()?;
                    }
                    Ok(r)
                }
                Err(e) => {
                    let _ = fs::remove_file(&partial);
                    Err(e)
                }
            }
        })
        .await?
    }
    .await;
    let _ = fs::remove_dir_all(&staging);
    let (m, bytes) = res?;
    let summary = Summary {
        path: to.to_owned(),
        bytes,
        messages: m.database.messages,
        accounts: m.database.accounts,
        queued: m.database.queued,
        blobs: m.database.blobs.len(),
        master_key_id,
    };
    record(
        store,
        actor,
        "backup_created",
        &to.display().to_string(),
        &format!(
            "{} bytes, {} accounts, {} messages, {} queued",
            bytes, summary.accounts, summary.messages, summary.queued
        ),
    )
    .await?;
    Ok(summary)
}

/// Reads every entry of a backup: each through `sink` (name, reader), then checks the manifest
/// against what was read. Any damage, truncation or wrong key is an error.
fn read_archive(
    path: &Path,
    key: &BackupKey,
    mut sink: impl FnMut(&str, &mut dyn Read) -> Result<()>,
) -> Result<Manifest> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let r = key.decrypt(BufReader::with_capacity(1 << 16, f))?;
    let mut tar = tar::Archive::new(r);
    let mut seen: Vec<Entry> = Vec::new();
    let mut manifest: Option<Manifest> = None;
    let damaged = |e: io::Error| {
        anyhow!("the backup is damaged or truncated ({e}); nothing in it can be trusted")
    };
    for entry in tar.entries().map_err(damaged)? {
        let mut entry = entry.map_err(damaged)?;
        let name = entry
            .path()
            .map_err(damaged)?
            .to_string_lossy()
            .into_owned();
        if manifest.is_some() {
            bail!("the backup has entries after its manifest");
        }
        if name == MANIFEST {
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).map_err(damaged)?;
            let m: Manifest =
                serde_json::from_slice(&buf).context("the manifest is not readable")?;
            if m.format != FORMAT {
                bail!("backup format {:?} is not {FORMAT}", m.format);
            }
            manifest = Some(m);
            continue;
        }
        safe_name(&name)?;
        let mut h = Hashing {
            inner: &mut entry,
            hash: Sha256::new(),
            n: 0,
        };
        sink(&name, &mut h).map_err(|e| match e.downcast::<io::Error>() {
            Ok(io) => damaged(io),
            Err(e) => e,
        })?;
        io::copy(&mut h, &mut io::sink()).map_err(damaged)?;
        seen.push(Entry {
            path: name,
            size: h.n,
            sha256: hex::encode(h.hash.finalize()),
        });
    }
    let m = manifest.context("the backup is truncated: its manifest is missing")?;
    if m.entries.len() != seen.len() {
        bail!(
            "the backup holds {} entries and its manifest lists {}",
            seen.len(),
            m.entries.len()
        );
    }
    for (a, b) in m.entries.iter().zip(&seen) {
        if a.path != b.path || a.size != b.size || a.sha256 != b.sha256 {
            bail!("{} does not match the manifest (damaged backup)", b.path);
        }
    }
    let names: std::collections::HashSet<&str> = seen.iter().map(|e| e.path.as_str()).collect();
    for id in &m.database.blobs {
        let name = format!("blobs/{}/{id}", &id[..2.min(id.len())]);
        if !names.contains(name.as_str()) {
            bail!("the body {id} that the database lists is missing from the backup");
        }
    }
    Ok(m)
}

fn safe_name(name: &str) -> Result<()> {
    let p = Path::new(name);
    if name.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        bail!("the backup holds an unsafe path {name:?}");
    }
    Ok(())
}

/// Checks a backup end to end (decrypts, hashes every entry, compares with the manifest).
pub fn verify(path: &Path, key: &BackupKey) -> Result<Manifest> {
    read_archive(path, key, |_, _| Ok(()))
}

/// What a restore did.
#[derive(Debug, Serialize)]
pub struct Restored {
    pub dir: PathBuf,
    pub accounts: i64,
    pub messages: i64,
    pub queued: i64,
    pub audit_rows_verified: u64,
    pub created: i64,
}

/// Restores a backup into a new data directory `dir` (absent or empty). The master key must be
/// reachable: from `master_key` (a reference; a `file:` key is copied into the new directory
/// when the configuration names a file there) or from the configuration's own reference. On any
/// failure, what was written is removed.
pub async fn restore(
    path: &Path,
    key: &BackupKey,
    dir: &Path,
    master_key: Option<&str>,
) -> Result<Restored> {
    if dir.exists() && fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} is not empty; restore goes into a new data directory",
            dir.display()
        );
    }
    let created_dir = !dir.exists();
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let res = restore_into(path, key, dir, master_key).await;
    if res.is_err() {
        if created_dir {
            let _ = fs::remove_dir_all(dir);
        } else if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                let _ = if e.path().is_dir() {
                    fs::remove_dir_all(e.path())
                } else {
                    fs::remove_file(e.path())
                };
            }
        }
    }
    res
}

async fn restore_into(
    path: &Path,
    key: &BackupKey,
    dir: &Path,
    master_key: Option<&str>,
) -> Result<Restored> {
    let dir = fs::canonicalize(dir)?;
    let (path, key_dir) = (path.to_owned(), dir.clone());
    // 1. unpack while checking (the manifest comes last: nothing is used before it is checked)
    let key_ptr: &BackupKey = key;
    let manifest = tokio::task::block_in_place(|| {
        let mut cfg: Option<Config> = None;
        read_archive(&path, key_ptr, |name, r| {
            let dest = if name == CONFIG {
                key_dir.join(CONFIG)
            } else {
                let c = cfg
                    .as_ref()
                    .context("the configuration is not first in the backup")?;
                if name == DB {
                    c.path(&c.storage.database)
                } else if let Some(rest) = name.strip_prefix("blobs/") {
                    c.path(&c.storage.blobs).join(rest)
                } else if let Some(rest) = name.strip_prefix("files/") {
                    key_dir.join(rest)
                } else {
                    bail!("unexpected entry {name:?} in the backup");
                }
            };
            if let Some(p) = dest.parent() {
                fs::create_dir_all(p)?;
            }
            let mut opts = OpenOptions::new();
            opts.write(true).create_new(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts
                .open(&dest)
                .with_context(|| format!("creating {}", dest.display()))?;
            io::copy(r, &mut f)?;
            if name == CONFIG {
                let c = Config::load(&dest).context("the configuration in the backup")?;
                if c.storage.database.is_absolute() || c.storage.blobs.is_absolute() {
                    bail!("the backed-up configuration names absolute storage paths");
                }
                cfg = Some(c);
            }
            Ok(())
        })
    })?;
    let cfg = Config::load(&dir.join(CONFIG))?;
    // everything written, made durable at once (one syncfs instead of an fsync per file)
    postern_store::BlobStore::open(&cfg.path(&cfg.storage.blobs))?
        .sync_filesystem()
        .context("syncing the restored files")?;

    // 2. the master key: not in the backup, so it must come from somewhere else
    let reference = cfg.secrets.master_key.clone();
    if let Some(given) = master_key {
        match (reference.strip_prefix("file:"), given.strip_prefix("file:")) {
            (Some(target), Some(src)) => {
                let target = cfg.path(Path::new(target));
                if !target.exists() {
                    let data =
                        Zeroizing::new(fs::read(src).with_context(|| format!("reading {src}"))?);
                    if let Some(p) = target.parent() {
                        fs::create_dir_all(p)?;
                    }
                    let mut opts = OpenOptions::new();
                    opts.write(true).create_new(true);
                    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                    let mut f = opts.open(&target)?;
                    f.write_all(&data)?;
                    f.sync_all()?;
                }
            }
            _ => {
                let s = crate::keys::open_sealer(&cfg, given).await?;
                if s.key_id() != manifest.master_key_id {
                    bail!("--master-key {given} is key {}, and this backup's secrets are sealed with key {}", s.key_id(), manifest.master_key_id);
                }
                bail!("the restored configuration takes its master key from {reference}; make that reference reach key {} (or use a file: key)", manifest.master_key_id);
            }
        }
    }
    let sealer = crate::keys::open_sealer(&cfg, &reference).await.map_err(|e| {
        anyhow!(
            "the master key is not reachable ({e:#}). A backup never holds the master key: \
             give it with --master-key file:PATH (the key file kept apart from the data), or make {reference} reach it. \
             Its id is {}", manifest.master_key_id
        )
    })?;
    if sealer.key_id() != manifest.master_key_id {
        bail!(
            "the master key found ({}) is not the one this backup's secrets are sealed with ({}); give the right one with --master-key",
            sealer.key_id(),
            manifest.master_key_id
        );
    }

    // 3. the restored directory opens and its audit chain verifies
    let db = cfg.path(&cfg.storage.database);
    let lock = postern_store::lock::DataLock::exclusive(&db, "backup restore")?;
    let store = Store::open(&db, &cfg.path(&cfg.storage.blobs))
        .await?
        .with_lock(lock);
    let keys = Keys::load(&cfg, &store).await?;
    keys.load_audit_key().await?;
    let verified = match store.verify_audit().await? {
        Ok(n) => n,
        Err(e) => bail!("the restored audit log does not verify: {e}"),
    };
    let info = postern_store::backup::snapshot_info(&cfg.path(&cfg.storage.database)).await?;
    if info.messages != manifest.database.messages || info.accounts != manifest.database.accounts {
        bail!("the restored database does not hold what the manifest says");
    }
    record(
        &store,
        &Actor::cli(),
        "backup_restored",
        &dir.display().to_string(),
        &format!(
            "from {} (made {}); {} accounts, {} messages",
            path.display(),
            manifest.created,
            info.accounts,
            info.messages
        ),
    )
    .await?;
    store.close().await;
    Ok(Restored {
        dir,
        accounts: info.accounts,
        messages: info.messages,
        queued: info.queued,
        audit_rows_verified: verified,
        created: manifest.created,
    })
}

/// Writes a new age identity to `out` (mode 0600, never overwriting) and returns its recipient,
/// the public half that `[backup] key` may hold so the server can make backups it cannot read.
pub fn keygen(out: &Path) -> Result<String> {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(out)
        .with_context(|| format!("creating {} (it must not exist)", out.display()))?;
    let recipient = id.to_public().to_string();
    writeln!(f, "# public key: {recipient}")?;
    writeln!(f, "{}", id.to_string().expose_secret())?;
    f.sync_all()?;
    Ok(recipient)
}

/// File names of scheduled backups: `postern-YYYYMMDDTHHMMSSZ.tar.age`.
fn scheduled_name(ts: chrono::DateTime<chrono::Utc>) -> String {
    format!("postern-{}.tar.age", ts.format("%Y%m%dT%H%M%SZ"))
}

fn is_scheduled(name: &str) -> bool {
    name.len() == "postern-YYYYMMDDTHHMMSSZ.tar.age".len()
        && name.starts_with("postern-")
        && name.ends_with("Z.tar.age")
}

/// The scheduled backups in `dir`, oldest first.
pub fn scheduled(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| is_scheduled(&e.file_name().to_string_lossy()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// One scheduled backup now, then the oldest beyond `keep` removed.
pub async fn scheduled_once(cfg: &Config, store: &Store, keys: &Keys) -> Result<Summary> {
    let b = &cfg.backup;
    let (Some(dir), Some(key_ref)) = (&b.dir, &b.key) else {
        bail!("[backup] dir and key are not set");
    };
    let dir = cfg.path(dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = load_key(Some(cfg), Some(keys), key_ref, KeyBase::Config).await?;
    let to = dir.join(scheduled_name(chrono::Utc::now()));
    let s = create(cfg, store, keys, &key, &to, &Actor::system("backup")).await?;
    let all = scheduled(&dir);
    if all.len() > b.keep {
        for old in &all[..all.len() - b.keep] {
            if let Err(e) = fs::remove_file(old) {
                tracing::warn!(path = %old.display(), error = %e, "could not remove an old backup");
            }
        }
    }
    Ok(s)
}

/// The scheduler of `[backup]`: a backup when the newest is older than the interval.
pub async fn run_schedule(
    cfg: Config,
    store: Store,
    keys: std::sync::Arc<Keys>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let Some(dir) = cfg.backup.dir.as_ref().map(|d| cfg.path(d)) else {
        return;
    };
    let interval = std::time::Duration::from_secs(cfg.backup.interval_hours * 3600);
    loop {
        let newest_age = scheduled(&dir)
            .last()
            .and_then(|p| p.metadata().ok()?.modified().ok()?.elapsed().ok());
        let wait = match newest_age {
            Some(age) if age < interval => interval - age,
            _ => std::time::Duration::ZERO,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match scheduled_once(&cfg, &store, &keys).await {
            Ok(s) => {
                tracing::info!(path = %s.path.display(), bytes = s.bytes, messages = s.messages, "scheduled backup made")
            }
            Err(e) => {
                tracing::error!(target: "postern::alert", error = %format!("{e:#}"), "scheduled backup failed");
                let _ = record(
                    &store,
                    &Actor::system("backup"),
                    "backup_failed",
                    &dir.display().to_string(),
                    &format!("{e:#}"),
                )
                .await;
                // try again in an hour, not in a tight loop
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_kinds() {
        let id = age::x25519::Identity::generate();
        use age::secrecy::ExposeSecret;
        assert!(matches!(
            BackupKey::parse(id.to_string().expose_secret()).unwrap(),
            BackupKey::Identity(_)
        ));
        assert!(matches!(
            BackupKey::parse(&id.to_public().to_string()).unwrap(),
            BackupKey::Recipient(_)
        ));
        let file = format!(
            "# created: now\n# public key: {}\n{}\n",
            id.to_public(),
            id.to_string().expose_secret()
        );
        assert!(matches!(
            BackupKey::parse(&file).unwrap(),
            BackupKey::Identity(_)
        ));
        assert!(matches!(
            BackupKey::parse("correct horse battery staple").unwrap(),
            BackupKey::Passphrase(_)
        ));
        assert!(BackupKey::parse("short").is_err());
        assert!(BackupKey::parse("AGE-SECRET-KEY-1XYZ").is_err());
        let dbg = format!(
            "{:?}",
            BackupKey::parse(id.to_string().expose_secret()).unwrap()
        );
        assert!(!dbg.contains("AGE-SECRET"), "{dbg}");
    }

    #[test]
    fn scheduled_names() {
        let t = chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        let n = scheduled_name(t);
        assert!(is_scheduled(&n), "{n}");
        assert!(!is_scheduled("postern-x.tar.age"));
        assert!(!is_scheduled("other.tar.age"));
    }

    #[test]
    fn unsafe_names_refused() {
        for n in ["../x", "/etc/passwd", "a/../../b", ""] {
            assert!(safe_name(n).is_err(), "{n}");
        }
        safe_name("blobs/ab/abcdef").unwrap();
    }
}
