//! One agent per state directory: an exclusive `flock` on `<dir>/fieldlink.lock`, held for
//! the life of the process.
//!
//! Owns the lock file and nothing else. Two agents on one directory would write the same
//! `buffer.db` and publish under the same client id (each kicking the other off the
//! broker). The kernel releases a `flock` when its holder dies, `kill -9` included, so a
//! crash never leaves a stale lock; the pid written into the file is only there to name
//! the holder in the refusal. `fieldlink buffer stats` takes no lock: it only reads.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "fieldlink.lock";

/// Held while the agent runs; dropping it (or the process ending) releases the lock.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another fieldlink (pid {}) is already running on the state directory {}: stop it \
         first, or give this one its own [buffer] path (or STATE_DIRECTORY)",
        pid.map_or_else(|| "unknown".to_string(), |p| p.to_string()),
        dir.display()
    )]
    Held { dir: PathBuf, pid: Option<u32> },
    /// The directory cannot hold a lock file (read-only, missing permissions): the caller
    /// decides whether to run unlocked.
    #[error("cannot lock the state directory {} ({detail})", dir.display())]
    Unavailable { dir: PathBuf, detail: String },
}

impl StateLock {
    /// Takes the lock on `dir` (creating the directory and the file if needed) and writes
    /// our pid into it. Never waits: a held lock is an immediate [`LockError::Held`].
    pub fn acquire(dir: &Path) -> Result<StateLock, LockError> {
        let unavailable = |e: std::io::Error| LockError::Unavailable {
            dir: dir.to_path_buf(),
            detail: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(unavailable)?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(unavailable)?;
        // SAFETY: flock on a file descriptor we own and keep open.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            return Err(unavailable(err));
        }
        // A full disk may refuse the pid; the lock itself holds regardless.
        let _ = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        Ok(StateLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        let err = StateLock::acquire(dir.path()).unwrap_err();
        assert!(
            matches!(err, LockError::Held { pid: Some(p), .. } if p == std::process::id()),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        drop(first);
        StateLock::acquire(dir.path()).expect("released with its holder");
    }
}
