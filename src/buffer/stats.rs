//! The buffer's figures for `fieldlink buffer stats` and the health topic: what a running
//! store reports about itself, and a read-only look at a state directory while the agent
//! may hold it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::error::{BufferError, Result};
use super::schema::{to_u64, FILE_NAME, ROW_OVERHEAD};

/// A snapshot of the store for `fieldlink buffer stats` and the health topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub path: PathBuf,
    pub depth: u64,
    pub oldest_ts_ms: Option<u64>,
    /// Database + WAL + shared-memory index, as the filesystem reports them.
    pub bytes_on_disk: u64,
    /// The figure bounded by `max_size`.
    pub stored_bytes: u64,
    pub dropped_full: u64,
    pub dropped_age: u64,
    /// Records the broker would never take (quarantined by the uplink).
    pub dropped_given_up: u64,
    pub next_seq: u64,
    /// The agent's boot epoch of the last start (`boot` in reading payloads).
    pub boot: u64,
    /// When the snapshot was taken (unix ms), for the age of the oldest reading.
    pub taken_at_ms: u64,
}

impl Stats {
    pub fn dropped(&self) -> u64 {
        self.dropped_full + self.dropped_age + self.dropped_given_up
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "buffer:   {}", self.path.display())?;
        writeln!(f, "depth:    {} readings", self.depth)?;
        match self.oldest_ts_ms {
            Some(ts) => {
                let age = Duration::from_secs(self.taken_at_ms.saturating_sub(ts) / 1000);
                writeln!(f, "oldest:   {} ago", humantime::format_duration(age))?
            }
            None => writeln!(f, "oldest:   -")?,
        }
        writeln!(
            f,
            "on disk:  {} (stored readings {})",
            bytesize::ByteSize::b(self.bytes_on_disk).display().iec(),
            bytesize::ByteSize::b(self.stored_bytes).display().iec()
        )?;
        writeln!(
            f,
            "dropped:  {} (buffer full: {}, older than max_age: {}, refused by the broker: {})",
            self.dropped(),
            self.dropped_full,
            self.dropped_age,
            self.dropped_given_up
        )?;
        write!(f, "boot:     {} (the agent's start count)", self.boot)
    }
}

/// The database, its WAL and its shared-memory index, as `ls` would add them up.
pub fn bytes_on_disk(db: &Path) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let mut p = db.as_os_str().to_owned();
            p.push(suffix);
            std::fs::metadata(PathBuf::from(p)).ok().map(|m| m.len())
        })
        .sum()
}

/// `fieldlink buffer stats`: reads `path` (the state directory or the database file) without
/// changing it, while the agent may be running.
pub fn stats(path: &Path) -> Result<Stats> {
    let db = if path.is_dir() {
        path.join(FILE_NAME)
    } else {
        path.to_path_buf()
    };
    if !db.exists() {
        return Err(BufferError::Io {
            path: db,
            detail: "no buffer database here: check [buffer] path, or the agent has not \
                     started yet"
                .into(),
        });
    }
    let sql = |e| BufferError::from_sqlite(&db, e);
    let conn = Connection::open_with_flags(
        &db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql)?;
    conn.busy_timeout(Duration::from_secs(2)).map_err(sql)?;
    let meta = |key: &str| -> Result<u64> {
        Ok(conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map_err(sql)?
            .map_or(0, to_u64))
    };
    let (depth, payload, oldest): (i64, i64, Option<i64>) = conn
        .query_row(
            "SELECT count(*), coalesce(sum(length(topic) + length(payload)), 0),
                    (SELECT ts_ms FROM records ORDER BY seq LIMIT 1)
             FROM records",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(sql)?;
    Ok(Stats {
        depth: to_u64(depth),
        oldest_ts_ms: oldest.map(to_u64),
        bytes_on_disk: bytes_on_disk(&db),
        stored_bytes: to_u64(payload) + to_u64(depth) * ROW_OVERHEAD,
        dropped_full: meta("dropped_full")?,
        dropped_age: meta("dropped_age")?,
        dropped_given_up: meta("dropped_given_up")?,
        next_seq: meta("next_seq")?,
        boot: meta("boot")?,
        taken_at_ms: crate::model::unix_ms_now(),
        path: db,
    })
}
