//! One data directory, one server: an advisory lock on `postern.lock` beside the database.
//!
//! `postern serve` takes the lock exclusively before it reads or writes anything (migrations, the
//! orphan-blob sweep, listeners) and holds it for its whole life; a second `serve` fails at once
//! and names the process that holds it. A CLI command that finds the directory free holds the lock
//! while it runs (so it may migrate the schema); one that finds a server running works beside it
//! through the database, as before, but never migrates. Work that must not run beside a server
//! (sweeps, migrations, restore) asks for [`DataLock::exclusive`] and is refused while one runs.
//!
//! The lock is `flock(2)` through `std::fs::File::try_lock`: the kernel drops it when the process
//! ends, however it ends (a SIGKILL leaves no stale lock behind). The file's text (PID and what
//! holds it) is only for the message a refused process prints.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Who holds a data directory's lock, as written in the lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<u32>,
    /// "serve", or the CLI command.
    pub what: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(p) => write!(f, "process {p} (postern {})", self.what),
            None => write!(f, "another process"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the data directory {dir} is in use by {holder}; one data directory serves one postern at a time")]
    Held { dir: String, holder: Holder },
    #[error("cannot open the lock file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DataLock {
    _file: File,
    path: PathBuf,
}

/// The lock file of the database at `db`: `postern.lock` in the database's directory.
pub fn lock_path(db: &Path) -> PathBuf {
    db.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("postern.lock")
}

fn read_holder(f: &mut File) -> Holder {
    let mut s = String::new();
    let _ = f.rewind();
    let _ = f.take(512).read_to_string(&mut s);
    let mut lines = s.lines();
    let pid = lines.next().and_then(|l| l.trim().parse().ok());
    let what = lines.next().unwrap_or("").trim().to_owned();
    Holder { pid, what }
}

impl DataLock {
    /// Takes the lock for `what` ("serve", "user add" …), or says who holds it.
    pub fn exclusive(db: &Path, what: &str) -> Result<DataLock, LockError> {
        let path = lock_path(db);
        let io = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    dir: path
                        .parent()
                        .unwrap_or(Path::new("."))
                        .display()
                        .to_string(),
                    holder: read_holder(&mut file),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        // Ours now: say who we are, for the message a refused process prints.
        let text = format!("{}\n{what}\n", std::process::id());
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(text.as_bytes()))
            .map_err(io)?;
        Ok(DataLock { _file: file, path })
    }

    /// Like [`DataLock::exclusive`], but waits up to `patience` for a short-lived holder (a CLI
    /// command) to finish. A running server is not waited for.
    pub fn exclusive_waiting(
        db: &Path,
        what: &str,
        patience: std::time::Duration,
    ) -> Result<DataLock, LockError> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match DataLock::exclusive(db, what) {
                Err(LockError::Held { holder, .. })
                    if holder.what != "serve"
                        && holder.what != "demo"
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                r => return r,
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_and_named() {
        let d = tempfile::tempdir().unwrap();
        let db = d.path().join("postern.db");
        let first = DataLock::exclusive(&db, "serve").unwrap();
        match DataLock::exclusive(&db, "serve") {
            Err(LockError::Held { holder, .. }) => {
                assert_eq!(holder.pid, Some(std::process::id()));
                assert_eq!(holder.what, "serve");
                assert!(holder.to_string().contains("postern serve"));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        // a server is not waited for
        let t = std::time::Instant::now();
        assert!(DataLock::exclusive_waiting(&db, "x", std::time::Duration::from_secs(5)).is_err());
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        drop(first);
        let again = DataLock::exclusive(&db, "user add").unwrap();
        assert_eq!(again.path(), d.path().join("postern.lock"));
    }
}
