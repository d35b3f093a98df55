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
}

impl BlobStore {
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(BlobStore {
            dir: dir.to_owned(),
        })
    }

    fn path_of(&self, id: &str) -> io::Result<PathBuf> {
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad blob id"));
        }
        Ok(self.dir.join(&id[..2]).join(id))
    }

    /// Writes a new blob durably and returns its id. Blocking: call from a blocking thread.
    pub fn put(&self, parts: &[&[u8]]) -> io::Result<String> {
        let id = hex::encode(rand::random::<[u8; 16]>());
        let path = self.path_of(&id)?;
        let shard = path.parent().expect("blob path has a parent");
        if !shard.exists() {
            fs::create_dir_all(shard)?;
            sync_dir(&self.dir)?;
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let res = (|| {
            for p in parts {
                f.write_all(p)?;
            }
            f.sync_all()?;
            sync_dir(shard)
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(id)
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

    pub fn remove(&self, id: &str) -> io::Result<()> {
        match fs::remove_file(self.path_of(id)?) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
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
        let b = BlobStore::open(d.path()).unwrap();
        let id = b.put(&[b"Return-Path: <a@b.test>\r\n", b"body"]).unwrap();
        assert_eq!(b.get(&id).unwrap(), b"Return-Path: <a@b.test>\r\nbody");
        b.remove(&id).unwrap();
        assert!(b.get(&id).is_err());
        assert!(b.get("../../etc/passwd").is_err());
    }
}
