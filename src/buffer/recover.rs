//! Salvage of a damaged `buffer.db`: move it aside, copy every row that still reads into a
//! fresh database. Touches only the damaged file (read) and the fresh one (write).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::clock::OsBoot;
use super::error::{BufferError, Result};
use super::record::Record;
use super::schema::{
    insert_row, read_record, to_i64, unix_now_secs, INSERT_ROW, SCHEMA_SQL, SCHEMA_VERSION,
};

/// Consecutive read failures after which the rest of the file is given up.
const MAX_FAILED_SEEKS: u32 = 64;

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Renames `path` (and its WAL) to `<path>.corrupt-<unix time>`, salvages its rows into a
/// fresh file at `path`, and says what it did. The fresh file is created by the caller's
/// next open; this only fills it.
pub(crate) fn salvage(path: &Path, reason: &str) -> Result<Recovery> {
    let mut moved_to = with_suffix(path, &format!(".corrupt-{}", unix_now_secs()));
    let mut n = 1;
    while moved_to.exists() {
        moved_to = with_suffix(path, &format!(".corrupt-{}-{n}", unix_now_secs()));
        n += 1;
    }
    std::fs::rename(path, &moved_to).map_err(|e| BufferError::from_io(path, e))?;
    // The WAL must move with its database (SQLite finds it by name) or its frames would be
    // applied to the fresh file. The shared-memory index is rebuilt from the WAL.
    let wal = with_suffix(path, "-wal");
    if wal.exists() {
        std::fs::rename(&wal, with_suffix(&moved_to, "-wal"))
            .map_err(|e| BufferError::from_io(&wal, e))?;
    }
    let _ = std::fs::remove_file(with_suffix(path, "-shm"));

    let (rows, meta, read_errors) = read_what_survives(&moved_to);
    let rows_recovered = rows.len() as u64;
    write_fresh(path, &rows, meta)?;
    Ok(Recovery {
        reason: reason.to_string(),
        moved_to,
        rows_recovered,
        read_errors,
    })
}

/// What `Store::open` had to do to a damaged file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Recovery {
    pub reason: String,
    pub moved_to: PathBuf,
    pub rows_recovered: u64,
    /// Read errors met while salvaging (each skipped a damaged stretch).
    pub read_errors: u64,
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the buffer database was damaged ({}); it was moved to {} and {} readings were \
             recovered into a fresh buffer ({} unreadable stretches skipped)",
            self.reason,
            self.moved_to.display(),
            self.rows_recovered,
            self.read_errors
        )
    }
}

#[derive(Debug, Default, Clone)]
struct SurvivingMeta {
    next_seq: Option<u64>,
    dropped_full: Option<u64>,
    dropped_age: Option<u64>,
    dropped_given_up: Option<u64>,
    boot: Option<u64>,
    /// `os_boots` rows (id, boot_id, last_ms): rows refer to them by id.
    os_boots: Vec<(i64, String, i64)>,
}

/// A salvaged row: the record and its `sent` flag.
type Row = (Record, bool);

fn read_what_survives(damaged: &Path) -> (Vec<Row>, SurvivingMeta, u64) {
    let mut errors = 0;
    let conn = match Connection::open_with_flags(
        damaged,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(c) => c,
        Err(_) => return (Vec::new(), SurvivingMeta::default(), 1),
    };
    let _ = conn.busy_timeout(Duration::from_millis(100));
    // A file shorter than its header says fails every statement unless the schema is
    // "writable", which makes SQLite trust the file size instead (read-only use here).
    let _ = conn.execute_batch("PRAGMA writable_schema = ON");
    let meta_value = |key: &str| -> Option<u64> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
            r.get::<_, i64>(0)
        })
        .optional()
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
    };
    let os_boots = conn
        .prepare("SELECT id, boot_id, last_ms FROM os_boots")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .unwrap_or_default();
    let meta = SurvivingMeta {
        next_seq: meta_value("next_seq"),
        dropped_full: meta_value("dropped_full"),
        dropped_age: meta_value("dropped_age"),
        dropped_given_up: meta_value("dropped_given_up"),
        boot: meta_value("boot"),
        os_boots,
    };

    // Seek by primary key from the last good row. A damaged leaf fails the seek into it;
    // skipping ahead by a doubling stride finds the next readable leaf through the
    // interior pages, so one bad page costs its rows, not the rest of the file.
    let mut rows = Vec::new();
    let mut from: i64 = i64::MIN;
    let mut stride: i64 = 1;
    let mut failed_seeks = 0;
    // Schema 2 first; a schema-1 file has no boot-time columns (its rows keep NULLs).
    let Ok(mut stmt) = conn
        .prepare(
            "SELECT seq, topic, payload, ts_ms, sum, os_boot, boot_ms, sent FROM records
             WHERE seq >= ?1 ORDER BY seq LIMIT 512",
        )
        .or_else(|_| {
            conn.prepare(
                "SELECT seq, topic, payload, ts_ms, sum, NULL, NULL, 0 FROM records
                 WHERE seq >= ?1 ORDER BY seq LIMIT 512",
            )
        })
    else {
        return (rows, meta, errors + 1);
    };
    loop {
        let mut got = 0;
        let mut failed = false;
        match stmt.query(params![from]) {
            Ok(mut cursor) => loop {
                match cursor.next() {
                    Ok(Some(row)) => match read_record(row)
                        .and_then(|record| Ok((record, row.get::<_, i64>(7)? != 0)))
                    {
                        Ok(salvaged) => {
                            from = i64::try_from(salvaged.0.seq)
                                .unwrap_or(i64::MAX)
                                .saturating_add(1);
                            rows.push(salvaged);
                            got += 1;
                        }
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    },
                    Ok(None) => break,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            },
            Err(_) => failed = true,
        }
        if got > 0 {
            stride = 1;
            failed_seeks = 0;
        }
        if failed {
            errors += 1;
            failed_seeks += 1;
            if failed_seeks > MAX_FAILED_SEEKS || from == i64::MAX {
                break;
            }
            if from == i64::MIN {
                from = 0;
            }
            from = from.saturating_add(stride);
            stride = stride.saturating_mul(2);
            continue;
        }
        if got == 0 {
            break;
        }
    }
    // A damaged page can yield rows out of place; keep each seq once, in order.
    rows.sort_by_key(|(r, _)| r.seq);
    rows.dedup_by_key(|(r, _)| r.seq);
    (rows, meta, errors)
}

fn write_fresh(path: &Path, rows: &[Row], meta: SurvivingMeta) -> Result<()> {
    let sql = |e| BufferError::from_sqlite(path, e);
    let mut conn = Connection::open(path).map_err(sql)?;
    conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL;")
        .map_err(sql)?;
    conn.execute_batch(SCHEMA_SQL).map_err(sql)?;
    let max_seq = rows.last().map_or(0, |(r, _)| r.seq);
    // Without a trustworthy next_seq, numbers already published might be handed out again
    // and de-duplicating consumers would discard new readings: jump to a clock-derived
    // floor that grows faster than any gateway consumes numbers.
    let floor = crate::model::unix_ms_now().saturating_mul(1000);
    let next_seq = match meta.next_seq {
        Some(n) => n.max(max_seq + 1),
        None => floor.max(max_seq + 1),
    };
    let tx = conn.transaction().map_err(sql)?;
    {
        let mut insert = tx.prepare(INSERT_ROW).map_err(sql)?;
        for (r, sent) in rows {
            let (os_boot, boot_ms) = match r.queued_at.os_boot {
                OsBoot::Stored(id) => (Some(id), Some(to_i64(r.queued_at.boot_ms))),
                OsBoot::This | OsBoot::Unknown => (None, None),
            };
            insert_row(&mut insert, r, os_boot, boot_ms, *sent).map_err(sql)?;
        }
        let mut boot = tx
            .prepare("INSERT OR IGNORE INTO os_boots (id, boot_id, last_ms) VALUES (?1, ?2, ?3)")
            .map_err(sql)?;
        for (id, boot_id, last_ms) in &meta.os_boots {
            boot.execute(params![id, boot_id, last_ms]).map_err(sql)?;
        }
        let mut set = tx
            .prepare("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")
            .map_err(sql)?;
        for (key, value) in [
            ("schema_version", Some(SCHEMA_VERSION as u64)),
            ("next_seq", Some(next_seq)),
            ("dropped_full", meta.dropped_full),
            ("dropped_age", meta.dropped_age),
            ("dropped_given_up", meta.dropped_given_up),
            // Lost with `meta`: a made-up epoch above any counted one (see `outbox`),
            // so no reading number of an earlier start is reused.
            (
                "boot",
                meta.boot.or(meta.next_seq.is_none().then(unix_now_secs)),
            ),
        ] {
            if let Some(v) = value {
                set.execute(params![key, i64::try_from(v).unwrap_or(i64::MAX)])
                    .map_err(sql)?;
            }
        }
    }
    tx.commit().map_err(sql)?;
    Ok(())
}
