//! Message bodies as files: `DIR/ab/abcdef…` named by a random 128-bit id.
//!
//! A blob is durable when [`BlobStore::put`] returns: the file is written, fsynced, and so is its
//! directory, so the database row that points at it can be committed next (two-step delivery: blob,
//! then index). A crash between the two leaves an unreferenced file, never a row without a body.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
    /// Held exclusively by a running backup (see [`BlobStore::backup_guard`]); a removal that
    /// cannot take it shared is deferred, so a backup's snapshot never lists a body that is gone.
    guard: std::sync::Arc<File>,
    guard_path: PathBuf,
    /// Removals deferred while a backup ran; done by the next removal that may.
    deferred: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Bodies are rows of the database's `bodies` table instead of files (`[storage] bodies =
    /// "database"`): what several nodes read alike.
    db: Option<sqlx::AnyPool>,
}

/// A running backup's hold on the blob directory: no body is removed until it is dropped.
#[derive(Debug)]
pub struct BackupGuard {
    _file: File,
}

impl BlobStore {
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        // beside the blob directory (`blobs.backup.lock`), so that the directory holds bodies only
        let name = dir
            .file_name()
            .map_or("blobs".into(), |n| n.to_string_lossy().into_owned());
        let guard_path = dir.with_file_name(format!("{name}.backup.lock"));
        let guard = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&guard_path)?;
        Ok(BlobStore {
            dir: dir.to_owned(),
            guard: std::sync::Arc::new(guard),
            guard_path,
            deferred: Default::default(),
            db: None,
        })
    }

    /// Keeps bodies in the database of `pool` (written by the store with their rows).
    pub(crate) fn in_database(mut self, pool: sqlx::AnyPool) -> Self {
        self.db = Some(pool);
        self
    }

    /// Whether bodies are rows of the database rather than files.
    pub fn is_database(&self) -> bool {
        self.db.is_some()
    }

    /// A body, from its file or its row.
    pub async fn read(&self, id: &str) -> io::Result<Vec<u8>> {
        let Some(db) = &self.db else {
            return self.get(id);
        };
        use sqlx::Row;
        let row = sqlx::query("SELECT data FROM bodies WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await
            .map_err(io::Error::other)?;
        match row {
            Some(r) => r.try_get::<Vec<u8>, _>(0).map_err(io::Error::other),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "no such body")),
        }
    }

    /// The blob directory, for a backup.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops every removal of bodies (in this process and every other on the directory) until
    /// the guard is dropped: take it before a backup's database snapshot, drop it once every body
    /// the snapshot lists is copied. Waits for removals under way (blocking).
    pub fn backup_guard(&self) -> io::Result<BackupGuard> {
        let f = OpenOptions::new().write(true).open(&self.guard_path)?;
        f.lock()?;
        Ok(BackupGuard { _file: f })
    }

    /// The path of a blob, for a backup that streams it.
    pub fn path(&self, id: &str) -> io::Result<PathBuf> {
        self.path_of(id)
    }

    fn path_of(&self, id: &str) -> io::Result<PathBuf> {
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad blob id"));
        }
        Ok(self.dir.join(&id[..2]).join(id))
    }

    /// A fresh blob id (128 random bits, hex).
    pub fn new_id() -> String {
        hex::encode(rand::random::<[u8; 16]>())
    }

    /// Writes a new blob durably and returns its id. Blocking: call from a blocking thread.
    pub fn put(&self, parts: &[&[u8]]) -> io::Result<String> {
        let id = Self::new_id();
        let path = self.path_of(&id)?;
        let shard = path.parent().expect("blob path has a parent");
        let mut f = self.create(&path, true)?;
        let res = (|| {
            write_parts(&mut f, parts)?;
            f.sync_all()?;
            sync_dir(shard)
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(id)
    }

    /// Writes blob `id` (from [`BlobStore::new_id`]) without making it durable: the caller must
    /// [`BlobStore::sync_filesystem`] before anything points at it (the group committer does, once
    /// per batch). On failure nothing is left behind. Blocking.
    pub fn put_unsynced(&self, id: &str, parts: &[&[u8]]) -> io::Result<()> {
        let path = self.path_of(id)?;
        let mut f = self.create(&path, false)?;
        let res = write_parts(&mut f, parts);
        if let Err(e) = res {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(())
    }

    /// Creates a new blob file; its shard directory is made on first use (with `durable`, the new
    /// directory entry is fsynced too; otherwise the batch's syncfs covers it).
    fn create(&self, path: &Path, durable: bool) -> io::Result<File> {
        let open = || OpenOptions::new().write(true).create_new(true).open(path);
        match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(path.parent().expect("blob path has a parent"))?;
                if durable {
                    sync_dir(&self.dir)?;
                }
                open()
            }
            r => r,
        }
    }

    /// Makes every blob written so far durable, with their directory entries: one `syncfs(2)`
    /// of the filesystem that holds the blob directory (blocking). Cheaper than an fsync per file
    /// and per directory once several messages share it; it also flushes whatever else is dirty
    /// on that filesystem (see `[storage] batch_sync`).
    pub fn sync_filesystem(&self) -> io::Result<()> {
        let dir = File::open(&self.dir)?;
        rustix::fs::syncfs(&dir).map_err(io::Error::from)
    }

    pub fn get(&self, id: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path_of(id)?)
    }

    /// Ids of the blobs last modified before `before` (blocking).
    pub fn list_before(&self, before: std::time::SystemTime) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for shard in fs::read_dir(&self.dir)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(shard.path())? {
                let f = f?;
                let name = f.file_name().to_string_lossy().into_owned();
                if self.path_of(&name).is_err() {
                    continue;
                }
                if f.metadata()?.modified()? < before {
                    out.push(name);
                }
            }
        }
        Ok(out)
    }

    /// Removes a body, unless a backup is running: then the removal waits for the next one made
    /// after the backup (or, after a crash, for the start-up orphan sweep).
    ///
    /// In the database, a body is only marked unused here: another node may still show the
    /// message in an open session, so [`crate::Store::sweep_bodies`] removes it later.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        if let Some(db) = &self.db {
            let (db, id) = (db.clone(), id.to_owned());
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                // no runtime (a test): the sweep's age rule removes it
                return Ok(());
            };
            rt.spawn(async move {
                let r = sqlx::query("UPDATE bodies SET orphaned_at = $1 WHERE id = $2")
                    .bind(crate::now())
                    .bind(&id)
                    .execute(&db)
                    .await;
                if let Err(e) = r {
                    tracing::warn!(body = %id, error = %e, "could not mark a body unused");
                }
            });
            return Ok(());
        }
        let path = self.path_of(id)?;
        let mut deferred = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
        match self.guard.try_lock_shared() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                deferred.push(id.to_owned());
                return Ok(());
            }
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
        let res = (|| {
            for d in std::mem::take(&mut *deferred) {
                remove_file(&self.path_of(&d)?)?;
            }
            remove_file(&path)
        })();
        let _ = self.guard.unlock();
        res
    }

    /// Removals waiting for a backup to end.
    pub fn deferred(&self) -> usize {
        self.deferred
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

fn remove_file(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Writes the parts with vectored writes (one system call for a message's few parts, not one each).
fn write_parts(f: &mut File, parts: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice> = parts.iter().map(|p| io::IoSlice::new(p)).collect();
    let mut rest = &mut slices[..];
    io::IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        match f.write_vectored(rest) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => io::IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_remove() {
        let d = tempfile::tempdir().unwrap();
        let b = BlobStore::open(&d.path().join("blobs")).unwrap();
        let id = b.put(&[b"Return-Path: <a@b.test>\r\n", b"body"]).unwrap();
        assert_eq!(b.get(&id).unwrap(), b"Return-Path: <a@b.test>\r\nbody");
        b.remove(&id).unwrap();
        assert!(b.get(&id).is_err());
        assert!(b.get("../../etc/passwd").is_err());
    }

    #[test]
    fn a_backup_defers_removals() {
        let d = tempfile::tempdir().unwrap();
        let b = BlobStore::open(&d.path().join("blobs")).unwrap();
        // another process's store on the same directory
        let other = BlobStore::open(&d.path().join("blobs")).unwrap();
        let one = b.put(&[b"one"]).unwrap();
        let two = b.put(&[b"two"]).unwrap();
        let guard = b.backup_guard().unwrap();
        other.remove(&one).unwrap();
        b.remove(&two).unwrap();
        assert_eq!(b.get(&one).unwrap(), b"one", "kept while the backup runs");
        assert_eq!(b.get(&two).unwrap(), b"two");
        assert_eq!(other.deferred() + b.deferred(), 2);
        drop(guard);
        let three = b.put(&[b"three"]).unwrap();
        other.remove(&three).unwrap();
        assert!(other.get(&one).is_err() && other.get(&three).is_err());
        assert_eq!(other.deferred(), 0);
        b.remove(&three).unwrap();
        assert!(
            b.get(&two).is_err(),
            "the deferred removal is done by the next one"
        );
    }
}
