//! The row format: the tables of `buffer.db`, how a record becomes a row and back, and the
//! migrations between schema versions. Shared by the store and recovery, which write the
//! same rows; imports nothing else of the buffer but the record and its clock stamp.
//!
//! # Schema (version 2)
//! ```sql
//! CREATE TABLE records (seq INTEGER PRIMARY KEY,   -- the rowid: ordered, no extra index
//!                       topic TEXT NOT NULL, payload BLOB NOT NULL, ts_ms INTEGER NOT NULL,
//!                       sum INTEGER NOT NULL,      -- FNV-1a 64 of seq, topic, payload, ts_ms
//!                       os_boot INTEGER,           -- os_boots.id; NULL in schema-1 rows
//!                       boot_ms INTEGER,           -- CLOCK_BOOTTIME (ms) when queued; idem
//!                       sent INTEGER NOT NULL DEFAULT 0); -- 1: maybe delivered (`store`)
//! CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
//!   -- schema_version, next_seq, dropped_full, dropped_age, dropped_given_up, boot
//! CREATE TABLE newest (topic TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
//!   -- the newest seq ever pushed per topic, as of the last spill or commit
//! CREATE TABLE os_boots (id INTEGER PRIMARY KEY, boot_id TEXT NOT NULL UNIQUE,
//!                        last_ms INTEGER NOT NULL);
//!   -- every OS boot that wrote here, numbered in order; last_ms: the highest boot-time
//!   -- clock value written in it (a lower bound of how long that boot lasted)
//! ```
//! Schema 1 (fieldlink before boot-time stamps) is migrated in place at open, in one
//! transaction: `ALTER TABLE ... ADD COLUMN` (no row is rewritten, so a .deb upgrade keeps a
//! full backlog and costs no SD-card wear), then `schema_version = 2`.
//!
//! `meta.boot` is the agent's boot epoch: raised by one at every start ((`Store::next_boot`))
//! and published beside `seq`, so that `(boot, seq)` identifies a reading for good.
//!

use std::path::Path;

use rusqlite::{params, Connection};

use super::clock::{OsBoot, Queued};
use super::record::Record;

pub const FILE_NAME: &str = "buffer.db";
pub const SCHEMA_VERSION: i64 = 2;
/// The tables, as the module doc describes them (also used by recovery). On a schema-1
/// file `records` exists already and keeps its columns until `migrate_from_1` adds them.
pub const SCHEMA_SQL: &str = "
    CREATE TABLE IF NOT EXISTS records (
        seq INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        ts_ms INTEGER NOT NULL,
        sum INTEGER NOT NULL,
        os_boot INTEGER,
        boot_ms INTEGER,
        sent INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE IF NOT EXISTS os_boots (
        id INTEGER PRIMARY KEY,
        boot_id TEXT NOT NULL UNIQUE,
        last_ms INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS newest (
        topic TEXT PRIMARY KEY,
        seq INTEGER NOT NULL) WITHOUT ROWID;";
/// Per-row bytes counted against `max_size` on top of topic and payload: rowid, ts, sum,
/// os_boot, boot_ms and sent, the record header and the cell pointer, rounded up (40 in
/// schema 1, which had no boot-time stamps).
pub const ROW_OVERHEAD: u64 = 44;

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn row_bytes(topic: &str, payload: &[u8]) -> u64 {
    (topic.len() + payload.len()) as u64 + ROW_OVERHEAD
}

pub(crate) fn unix_now_secs() -> u64 {
    crate::model::unix_ms_now() / 1000
}

/// Schema 1 -> 2 in one transaction: new columns (NULL in old rows: aged by the wall
/// clock as before), `sent` = 0, the `os_boots` table (created by `SCHEMA_SQL` already).
pub(crate) fn migrate_from_1(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         ALTER TABLE records ADD COLUMN os_boot INTEGER;
         ALTER TABLE records ADD COLUMN boot_ms INTEGER;
         ALTER TABLE records ADD COLUMN sent INTEGER NOT NULL DEFAULT 0;
         UPDATE meta SET value = 2 WHERE key = 'schema_version';
         COMMIT;",
    )
    .inspect_err(|_| {
        let _ = conn.execute_batch("ROLLBACK");
    })
}

/// An existing, empty database file without a WAL: every store writes its schema at
/// creation, so this is a file cut to zero, not a new one. (A fresh store that crashed
/// before its first checkpoint has an empty file but a WAL holding everything.)
pub(crate) fn truncated_to_nothing(db: &Path) -> bool {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
    len(db) == Some(0) && len(Path::new(&wal)).unwrap_or(0) == 0
}

/// FNV-1a 64 over the fields, as stored in `sum`.
pub(crate) fn row_sum(r: &Record) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(&r.seq.to_le_bytes());
    feed(&(r.topic.len() as u64).to_le_bytes());
    feed(r.topic.as_bytes());
    feed(&r.payload);
    feed(&r.ts_ms.to_le_bytes());
    h as i64
}

/// Reads `seq, topic, payload, ts_ms, sum, os_boot, boot_ms` and checks the sum.
pub(crate) fn read_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let os_boot: Option<i64> = r.get(5)?;
    let boot_ms: Option<i64> = r.get(6)?;
    let record = Record {
        seq: to_u64(r.get(0)?),
        topic: r.get::<_, String>(1)?.into(),
        payload: r.get::<_, Vec<u8>>(2)?.into(),
        ts_ms: to_u64(r.get(3)?),
        queued_at: match (os_boot, boot_ms) {
            (Some(id), Some(ms)) => Queued {
                os_boot: OsBoot::Stored(id),
                boot_ms: to_u64(ms),
            },
            _ => Queued::UNKNOWN,
        },
    };
    let sum: i64 = r.get(4)?;
    if sum != row_sum(&record) {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(format!("record {} fails its checksum", record.seq)),
        ));
    }
    Ok(record)
}

/// One row; `INSERT OR IGNORE`, so writing a record that is on disk already is a no-op.
pub(crate) const INSERT_ROW: &str = "INSERT OR IGNORE INTO records
       (seq, topic, payload, ts_ms, sum, os_boot, boot_ms, sent)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// Writes `r` with [`INSERT_ROW`]; `os_boot` and `boot_ms` as the caller resolved them
/// (the store knows this OS boot's id, recovery copies stored ones). True if a row was added.
pub(crate) fn insert_row(
    insert: &mut rusqlite::Statement<'_>,
    r: &Record,
    os_boot: Option<i64>,
    boot_ms: Option<i64>,
    sent: bool,
) -> rusqlite::Result<bool> {
    let added = insert.execute(params![
        to_i64(r.seq),
        &*r.topic,
        &r.payload[..],
        to_i64(r.ts_ms),
        row_sum(r),
        os_boot,
        boot_ms,
        i64::from(sent),
    ])?;
    Ok(added == 1)
}
