//! The typed errors of the buffer. A caller keeps running from memory on any of them; the
//! variants only decide what it says in the log and the health topic.

use std::path::PathBuf;

use rusqlite::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error(
        "the disk holding {path} is full: readings stay in memory until space is freed \
         (free space on that filesystem or lower [buffer] max_size)"
    )]
    DiskFull { path: PathBuf },

    #[error(
        "cannot write to {path} ({detail}): readings stay in memory only; make the \
         directory writable by the fieldlink user or point [buffer] path elsewhere"
    )]
    ReadOnly { path: PathBuf, detail: String },

    #[error("{path} is damaged ({detail})")]
    Corrupt { path: PathBuf, detail: String },

    #[error(
        "{path} was written by a newer fieldlink (schema {found}, this build reads up to \
         {known}): upgrade fieldlink or move the file away"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },

    #[error("buffer I/O on {path} failed: {detail}")]
    Io { path: PathBuf, detail: String },
}

impl BufferError {
    /// Sorts a SQLite error into the cases a caller handles differently.
    pub(crate) fn from_sqlite(path: &std::path::Path, err: rusqlite::Error) -> BufferError {
        let path = path.to_path_buf();
        let detail = err.to_string();
        match err.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => BufferError::DiskFull { path },
            Some(ErrorCode::ReadOnly)
            | Some(ErrorCode::PermissionDenied)
            | Some(ErrorCode::CannotOpen) => BufferError::ReadOnly { path, detail },
            Some(ErrorCode::DatabaseCorrupt) | Some(ErrorCode::NotADatabase) => {
                BufferError::Corrupt { path, detail }
            }
            _ => BufferError::Io { path, detail },
        }
    }

    pub(crate) fn from_io(path: &std::path::Path, err: std::io::Error) -> BufferError {
        let path = path.to_path_buf();
        match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => {
                BufferError::DiskFull { path }
            }
            Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM) => BufferError::ReadOnly {
                path,
                detail: err.to_string(),
            },
            _ => BufferError::Io {
                path,
                detail: err.to_string(),
            },
        }
    }

    /// Damage is handled by recovery (move aside, salvage); everything else by retrying.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, BufferError::Corrupt { .. })
    }
}

pub type Result<T, E = BufferError> = std::result::Result<T, E>;
