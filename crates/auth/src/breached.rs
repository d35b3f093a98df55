//! Look-ups in a breached-password list in the Have I Been Pwned "Pwned Passwords" format: one
//! upper-case SHA-1 hex digest per line, optionally followed by `:COUNT`, the file sorted by hash.
//!
//! The file is tens of gigabytes, so it is never loaded: each look-up is a binary search over byte
//! offsets (seek, skip to the next line start, compare), about 35 reads for a billion lines.
//! Hand-written because no maintained crate searches this format on disk.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

/// A handle on a sorted SHA-1 list. Cheap to clone; each look-up opens the file itself so that
/// concurrent look-ups need no lock.
#[derive(Debug, Clone)]
pub struct BreachedList {
    path: PathBuf,
}

impl BreachedList {
    /// Checks that the file can be opened and starts with a hash line.
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut f = File::open(path)?;
        let mut head = [0u8; 40];
        let n = read_full(&mut f, &mut head)?;
        if n > 0 && (n < 40 || !head.iter().all(|b| b.is_ascii_hexdigit())) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a Pwned Passwords SHA-1 file (lines of 40 hex digits, sorted)",
            ));
        }
        Ok(BreachedList {
            path: path.to_owned(),
        })
    }

    /// True if the SHA-1 of `password` is in the list.
    pub fn contains(&self, password: &str) -> io::Result<bool> {
        let digest = hex::encode_upper(Sha1::digest(password.as_bytes()));
        self.contains_hash(digest.as_bytes())
    }

    fn contains_hash(&self, target: &[u8]) -> io::Result<bool> {
        let mut f = File::open(&self.path)?;
        let len = f.metadata()?.len();
        // Invariant: every line starting before `lo` sorts before target; every line starting at or
        // after `hi` sorts after it.
        let (mut lo, mut hi) = (0u64, len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let Some((start, hash)) = line_at_or_after(&mut f, mid, len)? else {
                hi = mid;
                continue;
            };
            if start >= hi {
                hi = mid;
                continue;
            }
            match compare_ci(&hash, target) {
                std::cmp::Ordering::Equal => return Ok(true),
                std::cmp::Ordering::Less => lo = start + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        // `lo` may sit inside the first line (offset 0 is never skipped by line_at_or_after).
        if let Some((_, hash)) = line_at_or_after(&mut f, 0, len)? {
            return Ok(compare_ci(&hash, target).is_eq());
        }
        Ok(false)
    }
}

fn compare_ci(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.iter()
        .map(u8::to_ascii_uppercase)
        .cmp(b.iter().map(u8::to_ascii_uppercase))
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The first line that starts at or after `pos` (offset 0 counts as a line start): its offset and
/// its 40-character hash.
fn line_at_or_after(f: &mut File, pos: u64, len: u64) -> io::Result<Option<(u64, Vec<u8>)>> {
    let mut start = pos;
    let mut buf = [0u8; 256];
    if pos > 0 {
        // Find the end of the line that contains pos-1.
        f.seek(SeekFrom::Start(pos - 1))?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(None);
            }
            if let Some(i) = buf[..n].iter().position(|&b| b == b'\n') {
                start += i as u64;
                break;
            }
            start += n as u64;
        }
    }
    if start >= len {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(start))?;
    let n = read_full(f, &mut buf[..40])?;
    if n < 40 {
        return Ok(None);
    }
    Ok(Some((start, buf[..40].to_vec())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn list_with(passwords: &[&str], filler: usize) -> (tempfile::NamedTempFile, BreachedList) {
        let mut hashes: Vec<String> = passwords
            .iter()
            .map(|p| hex::encode_upper(Sha1::digest(p.as_bytes())))
            .collect();
        for i in 0..filler {
            hashes.push(hex::encode_upper(Sha1::digest(
                format!("filler-{i}").as_bytes(),
            )));
        }
        hashes.sort();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for (i, h) in hashes.iter().enumerate() {
            write!(f, "{h}:{}\r\n", i * 7 + 1).unwrap();
        }
        f.flush().unwrap();
        let list = BreachedList::open(f.path()).unwrap();
        (f, list)
    }

    #[test]
    fn finds_every_listed_password_and_no_other() {
        let pw = ["password1", "correct horse battery staple", "Tr0ub4dor&3"];
        let (_f, list) = list_with(&pw, 5000);
        for p in pw {
            assert!(list.contains(p).unwrap(), "{p}");
        }
        for i in 0..5000 {
            assert!(list.contains(&format!("filler-{i}")).unwrap());
        }
        for p in ["not there", "password2", ""] {
            assert!(!list.contains(p).unwrap(), "{p}");
        }
    }

    #[test]
    fn single_line_and_empty_files() {
        let (_f, list) = list_with(&["only"], 0);
        assert!(list.contains("only").unwrap());
        assert!(!list.contains("other").unwrap());
        let empty = tempfile::NamedTempFile::new().unwrap();
        let list = BreachedList::open(empty.path()).unwrap();
        assert!(!list.contains("x").unwrap());
    }

    #[test]
    fn refuses_a_file_of_another_format() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "hello world, this is not a hash list at all").unwrap();
        assert!(BreachedList::open(f.path()).is_err());
    }
}
