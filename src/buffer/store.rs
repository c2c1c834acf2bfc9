//! The on-disk store: one SQLite database, `buffer.db`, in the state directory.
//!
//! Owns the file, its schema, its bounds and its recovery. Knows nothing about links,
//! retain flags or what is in flight: when a bound wants a record gone it asks the caller
//! for a [`Verdict`], so it never drops a record that is on the wire or was acknowledged.
//!
//! The row format, the tables and the migrations are in [`super::schema`].
//!
//! Ages (`max_age`) are measured on the boot-time clock: see [`super::age`].
//!
//! # Maybe delivered (`sent`)
//! A record that was on the wire when the link died may have reached the broker (its PUBACK
//! lost). Counting it as dropped could be a lie, so the bounds never drop it; it goes
//! again first after the reconnect. `sent` keeps that knowledge across a clean restart.
//!
//! `newest` lets a new run tell that a stored record was superseded by a reading that was
//! published (and acknowledged, so deleted) before the restart: without it that stored
//! record would look newest and be replayed retained over a newer retained value.
//! `sum` exists because SQLite checks its page structure, not the bytes inside a row: a
//! row cut by a truncation or torn by a bad sector can read back "fine" with zeros or
//! garbage in it, and a wrong reading published is worse than a lost one. Every read
//! checks it; a mismatch is damage (recovery skips the row, a running store reopens and
//! recovers).
//!
//! No index on `topic`: it would double the bytes written per reading (SD-card wear) to
//! speed up `latest_per_topic`, which runs once per replay episode and at start.
//!
//! # Invariants
//! - `seq` values are unique and come from the caller; a record is written at most once
//!   (`INSERT OR IGNORE`: re-spilling a record already on disk is a no-op).
//! - `meta.next_seq` is greater than every `seq` ever handed out by any run that used this
//!   file: [`Store::append`] raises it in the same transaction, and callers reserve blocks
//!   ahead with [`Store::reserve_seqs`], so a new run never reuses a sequence number even
//!   after a crash that lost memory. If `meta` is lost to damage, recovery restarts numbering
//!   at `max(recovered seq + 1, unix ms × 1000)` (monotonic unless the clock went back).
//! - The bound is on *stored bytes* = Σ (len(topic) + len(payload) + [`ROW_OVERHEAD`]),
//!   tracked in memory (summed at open). Chosen over `page_count × page_size` because that
//!   figure only moves in whole pages, includes free pages and the B-tree's slack, and does
//!   not tell how many rows to drop. Measured (schema 2, rows stamped with the boot-time
//!   clock): 466 752 readings of ~100 bytes at the 64 MiB bound make a 63.1 MiB file (B-tree
//!   slack is covered by the overhead), plus the WAL, which `journal_size_limit` caps at
//!   4 MiB after checkpoints.
//! - Dropped records are counted in `meta` (`dropped_full`, `dropped_age`) in the same
//!   transaction that deletes them, so counts survive restarts.
//! - The store never decides alone that a record is dropped: the bounds walk candidates
//!   oldest first and ask the caller ([`Verdict`]) inside the transaction. Only what the
//!   caller gave up (removed from memory at that moment) is counted; what the broker already
//!   acknowledged is deleted uncounted; what is on the wire or maybe delivered stays, even
//!   past `max_size` (by at most the send window per link loss).
//!
//! # Durability: WAL, `synchronous = NORMAL`, and FULL for commits that add records
//! WAL appends instead of rewriting pages in place (less SD wear than a rollback journal)
//! and readers never block the writer. With `synchronous = NORMAL` SQLite fsyncs only at
//! checkpoints: a process crash (`kill -9`, panic) loses nothing committed, and a power cut
//! never corrupts the file, but it may roll back the commits since the last WAL sync. That
//! loss is acceptable for commits that only *remove* records (a lost delete resurrects an
//! acknowledged record: a duplicate, which at-least-once allows), not for commits that
//! *add* them, so [`Store::append`] switches to `synchronous = FULL` for its transaction
//! (one fsync of the WAL per append batch: once per `commit_interval` in "always" mode,
//! once per spill in "outage" mode). After a power cut, every appended batch whose
//! `append` returned is on disk.
//!
//! # Writes per reading
//! A WAL commit writes every page it touched, whole (4 KiB, plus the page again at the next
//! checkpoint unless it changed in between). Besides the pages the new rows fill, a commit
//! touches a handful that change by a few bytes: the table's root, the pointer map
//! (`auto_vacuum`), the freelist, page 1, `newest`, `os_boots`, and the last leaf, half
//! filled. [`Store::write`] therefore does a round's whole work in one transaction: the
//! new rows, `sent` flags, `newest`, and the deletes of acknowledged rows, deleted first
//! (in `always` mode the deletes wait for the next commit, see `state`). Those few pages
//! are then written once per `commit_interval`, not once per statement group, and the
//! leaves the deletes free are reused by the same commit's rows, so the checkpoints copy
//! a small pool of pages over and over instead of fresh ones. Measured with
//! `cargo bench --bench drain` (1000 readings/s, `commit_interval` 1 s, JSON payloads of
//! ~45 bytes on ~25-byte topics): `always` mode 299 bytes written per reading with three
//! transactions per round (append, `newest`, deletes every 256 acks), 133 with one. What
//! remains is mostly the rows themselves: a spill with the link down, which writes each row
//! to the WAL and once more at the checkpoint, costs 152 bytes a reading, so ~75 bytes of
//! row and cell, a third of it the topic. Below 100 needs smaller rows, not fewer commits:
//! a topic table with integer ids (a schema change) saved ~30 bytes a reading in a
//! simulation of this load. 1 KiB pages made it worse (244 bytes in a spill, 144 in
//! `always`: more interior and pointer-map pages, and a checkpoint every 1 MiB of WAL
//! instead of 4).
//!
//! # Recovery
//! On open, `PRAGMA quick_check`: O(pages), ~120-150 ms for a full 64 MiB buffer with a warm
//! page cache here (`benches/buffer.rs`; expect seconds from a cold SD card). `integrity_check`
//! costs the same here and adds only index cross-checks, which a table with no secondary
//! index does not need. A
//! file that fails it, or is not a database at all, is renamed to
//! `buffer.db.corrupt-<unix time>` (its WAL alongside), every row that can still be read is
//! copied into a fresh `buffer.db` (seeking past damaged pages), and an error is logged
//! that says what happened and where the damaged file went.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::age::AgeRule;
pub use super::age::Now;
use super::clock::OsBoot;
use super::error::{BufferError, Result};
use super::record::Record;
use super::recover::Recovery;
use super::schema::{
    insert_row, migrate_from_1, read_record, row_bytes, to_i64, to_u64, truncated_to_nothing,
    INSERT_ROW, SCHEMA_SQL, SCHEMA_VERSION,
};
pub use super::schema::{FILE_NAME, ROW_OVERHEAD};
use super::stats::{bytes_on_disk, Stats};
use crate::config::WhenFull;

/// The bounds a store enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_size: u64,
    pub max_age: Duration,
    pub when_full: WhenFull,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_size: crate::config::Buffer::DEFAULT_MAX_SIZE,
            max_age: crate::config::Buffer::DEFAULT_MAX_AGE,
            when_full: WhenFull::DropOldest,
        }
    }
}

/// What an [`Store::append`] did beyond writing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Records now on disk (new or already there), in seq order.
    pub stored: Vec<u64>,
    /// Records of the batch not stored because the buffer was full (`drop_newest`): dropped
    /// and counted.
    pub rejected: Vec<u64>,
    /// Older records removed to make room (`drop_oldest`): dropped and counted.
    pub evicted: Vec<u64>,
    /// Acknowledged records whose rows went to make room (no drop).
    pub freed: Vec<u64>,
}

/// The caller's answer for a record a bound (`max_size`, `max_age`) wants gone, given
/// while the store's transaction is open so nothing changes between the answer and the
/// delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The broker acknowledged it: delete it; it is not a drop.
    Acknowledged,
    /// On the wire or maybe delivered: keep it, the bound waits.
    Keep,
    /// The caller let it go (and forgot it in memory): delete it and count it dropped.
    Drop,
}

/// Asked with candidates in seq order; answers one verdict per candidate.
pub type Decide<'a> = dyn FnMut(&[u64]) -> Vec<Verdict> + 'a;

/// A [`Decide`] for callers that hold nothing else: keep `protect`, drop the rest.
pub fn protecting(protect: &HashSet<u64>) -> impl FnMut(&[u64]) -> Vec<Verdict> + '_ {
    |seqs| {
        seqs.iter()
            .map(|s| {
                if protect.contains(s) {
                    Verdict::Keep
                } else {
                    Verdict::Drop
                }
            })
            .collect()
    }
}

/// What one [`Store::write`] transaction does: records to add, `sent` flags, the newest
/// seq per topic, and acknowledged records to delete (unknown seqs are ignored).
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    pub records: &'a [Record],
    pub sent: &'a HashSet<u64>,
    pub newest: &'a [(Arc<str>, u64)],
    pub acked: &'a [u64],
}

static NO_SEQS: std::sync::LazyLock<HashSet<u64>> = std::sync::LazyLock::new(HashSet::new);

impl Default for Write<'_> {
    fn default() -> Self {
        Write {
            records: &[],
            sent: &NO_SEQS,
            newest: &[],
            acked: &[],
        }
    }
}

/// Candidates asked about per verdict call: one lock of the caller's state per chunk.
const VERDICT_CHUNK: usize = 256;

#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    limits: Limits,
    stored_bytes: u64,
    depth: u64,
    next_seq: u64,
    dropped_full: u64,
    dropped_age: u64,
    dropped_given_up: u64,
    /// This OS boot's number in `os_boots`, once [`Store::enter_os_boot`] ran.
    os_boot: Option<i64>,
}

impl Store {
    /// Opens (or creates) `dir/buffer.db`, checking and if needed recovering it.
    pub fn open(dir: &Path, limits: Limits) -> Result<(Store, Option<Recovery>)> {
        let path = dir.join(FILE_NAME);
        std::fs::create_dir_all(dir).map_err(|e| BufferError::from_io(dir, e))?;
        let attempt = if truncated_to_nothing(&path) {
            // SQLite would happily treat it as a new database, losing `meta.next_seq`.
            Err(BufferError::Corrupt {
                path: path.clone(),
                detail: "the file is empty: truncated to zero bytes".into(),
            })
        } else {
            Store::open_checked(&path, limits)
        };
        match attempt {
            Ok(store) => Ok((store, None)),
            Err(BufferError::Corrupt { detail, .. }) => {
                let recovery = super::recover::salvage(&path, &detail)?;
                let store = Store::open_checked(&path, limits)?;
                tracing::error!(
                    moved_to = %recovery.moved_to.display(),
                    rows_recovered = recovery.rows_recovered,
                    "{recovery}"
                );
                Ok((store, Some(recovery)))
            }
            Err(e) => Err(e),
        }
    }

    fn open_checked(path: &Path, limits: Limits) -> Result<Store> {
        let sql = |e| BufferError::from_sqlite(path, e);
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql)?;
        // A busy timeout only matters if `fieldlink buffer stats` reads at the same moment.
        conn.busy_timeout(Duration::from_secs(2)).map_err(sql)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(sql)?;
        if check != "ok" {
            return Err(BufferError::Corrupt {
                path: path.into(),
                detail: format!("quick_check: {check}"),
            });
        }
        // auto_vacuum only takes effect before the first table exists.
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")
            .map_err(sql)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(sql)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(BufferError::Io {
                path: path.into(),
                detail: format!("the filesystem refused WAL mode (got {mode})"),
            });
        }
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL;
             PRAGMA journal_size_limit = 4194304;",
        )
        .map_err(sql)?;
        conn.execute_batch(SCHEMA_SQL).map_err(sql)?;
        let meta = |key: &str| -> Result<Option<i64>> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
                .map_err(sql)
        };
        match meta("schema_version")? {
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                    [SCHEMA_VERSION],
                )
                .map_err(sql)?;
            }
            Some(found) if found > SCHEMA_VERSION => {
                return Err(BufferError::NewerSchema {
                    path: path.into(),
                    found,
                    known: SCHEMA_VERSION,
                })
            }
            Some(1) => {
                migrate_from_1(&conn).map_err(sql)?;
                tracing::info!(
                    path = %path.display(),
                    "buffer migrated from schema 1 to {SCHEMA_VERSION}: stored readings kept"
                );
            }
            Some(_) => {}
        }
        let (depth, stored_bytes, max_seq): (i64, i64, Option<i64>) = conn
            .query_row(
                "SELECT count(*), coalesce(sum(length(topic) + length(payload)), 0), max(seq)
                 FROM records",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(sql)?;
        let next_seq = to_u64(meta("next_seq")?.unwrap_or(1))
            .max(max_seq.map_or(1, |m| to_u64(m) + 1))
            .max(1);
        Ok(Store {
            path: path.into(),
            limits,
            stored_bytes: to_u64(stored_bytes) + to_u64(depth) * ROW_OVERHEAD,
            depth: to_u64(depth),
            next_seq,
            dropped_full: to_u64(meta("dropped_full")?.unwrap_or(0)),
            dropped_age: to_u64(meta("dropped_age")?.unwrap_or(0)),
            dropped_given_up: to_u64(meta("dropped_given_up")?.unwrap_or(0)),
            os_boot: None,
            conn,
        })
    }

    /// Registers the OS boot this process runs in (by the kernel's boot id) and returns its
    /// number: records queued in it are stored with that number (see `super::age`).
    pub fn enter_os_boot(&mut self, boot_id: &str, boot_ms: u64) -> Result<i64> {
        let path = self.path.clone();
        let sql = |e| BufferError::from_sqlite(&path, e);
        self.conn
            .execute(
                "INSERT INTO os_boots (boot_id, last_ms) VALUES (?1, ?2)
                 ON CONFLICT(boot_id) DO UPDATE SET last_ms = max(last_ms, excluded.last_ms)",
                params![boot_id, to_i64(boot_ms)],
            )
            .map_err(sql)?;
        let id: i64 = self
            .conn
            .query_row(
                "SELECT id FROM os_boots WHERE boot_id = ?1",
                [boot_id],
                |r| r.get(0),
            )
            .map_err(sql)?;
        self.os_boot = Some(id);
        Ok(id)
    }

    /// The agent's next boot epoch: `meta.boot` + 1, raised to `at_least`, written before it
    /// is returned so no two starts get the same one.
    pub fn next_boot(&mut self, at_least: u64) -> Result<u64> {
        let path = self.path.clone();
        let sql = |e| BufferError::from_sqlite(&path, e);
        let stored: Option<i64> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'boot'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql)?;
        let boot = (stored.map_or(0, to_u64) + 1).max(at_least);
        self.raise_boot(boot)?;
        Ok(boot)
    }

    /// Makes sure every later start gets an epoch above `boot` (used when the epoch had to
    /// be made up without the store, see `outbox`).
    pub fn raise_boot(&mut self, boot: u64) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES ('boot', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                [to_i64(boot)],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// Seqs of stored records that were on the wire when a link died (see "Maybe delivered").
    pub fn maybe_delivered(&self) -> Result<Vec<u64>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq FROM records WHERE sent != 0")
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| r.get::<_, i64>(0).map(to_u64))
            .map_err(self.sql())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.sql())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> BufferError + '_ {
        |e| BufferError::from_sqlite(&self.path, e)
    }

    /// The first sequence number a new run may use (see the invariants).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn depth(&self) -> u64 {
        self.depth
    }

    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    pub fn dropped_full(&self) -> u64 {
        self.dropped_full
    }

    pub fn dropped_age(&self) -> u64 {
        self.dropped_age
    }

    pub fn dropped_given_up(&self) -> u64 {
        self.dropped_given_up
    }

    /// Every drop this file has counted: full, aged out, and given up.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_full + self.dropped_age + self.dropped_given_up
    }

    /// Counts `n` more records given up because the broker would never take them (their
    /// rows, if any, go with the acknowledged ones' batched delete). Persisted at once, so
    /// the dropped count survives a restart like the other drops.
    pub fn note_given_up(&mut self, n: u64) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES ('dropped_given_up', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [to_i64(self.dropped_given_up + n)],
            )
            .map_err(self.sql())?;
        self.dropped_given_up += n;
        Ok(())
    }

    /// Records that sequence numbers below `upto` may be handed out, so a run after a
    /// crash starts at `upto` at the latest. One small write per block of numbers.
    pub fn reserve_seqs(&mut self, upto: u64) -> Result<()> {
        if upto <= self.next_seq {
            return Ok(());
        }
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES ('next_seq', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                [to_i64(upto)],
            )
            .map_err(self.sql())?;
        self.next_seq = upto;
        Ok(())
    }

    /// Writes a batch in one durable transaction (see the module doc), flags `sent` records
    /// (of the batch or stored before) as maybe delivered, then enforces `max_size`: every
    /// record the bound wants gone, oldest first (`drop_oldest`) or of the batch
    /// (`drop_newest`), is only dropped if `decide` says so, inside the transaction.
    pub fn append(
        &mut self,
        records: &[Record],
        sent: &HashSet<u64>,
        decide: &mut Decide<'_>,
    ) -> Result<Appended> {
        self.write(
            Write {
                records,
                sent,
                ..Write::default()
            },
            decide,
        )
    }

    /// [`Store::append`], [`Store::note_newest`] and [`Store::delete`] of acknowledged
    /// records in one transaction (see "Writes per reading" in the module doc). The deletes
    /// go first, so the bound neither counts nor asks about a row that is leaving anyway.
    pub fn write(&mut self, w: Write<'_>, decide: &mut Decide<'_>) -> Result<Appended> {
        let mut out = Appended::default();
        if w.records.is_empty() && w.sent.is_empty() && w.newest.is_empty() && w.acked.is_empty() {
            return Ok(out);
        }
        // Only a transaction that adds records needs its fsync (see "Durability").
        let durable = !w.records.is_empty() || !w.sent.is_empty();
        if durable {
            self.conn
                .execute_batch("PRAGMA synchronous = FULL")
                .map_err(self.sql())?;
        }
        let result = self.write_tx(&w, decide, &mut out);
        // Restore NORMAL even when the write failed, so deletes stay cheap.
        let restore = if durable {
            self.conn
                .execute_batch("PRAGMA synchronous = NORMAL")
                .map_err(self.sql())
        } else {
            Ok(())
        };
        let removed = result?;
        restore?;
        if self.depth == 0 && removed > 0 {
            // The write is committed: failing it now would make the caller take back what
            // its bound dropped (counted already). The next drained delete vacuums again.
            if let Err(e) = self.vacuum() {
                tracing::debug!("incremental vacuum after a write: {e}");
            }
        }
        Ok(out)
    }

    /// Hands the pages of a drained backlog back to the filesystem (one write).
    fn vacuum(&self) -> Result<()> {
        self.conn
            .execute_batch("PRAGMA incremental_vacuum")
            .map_err(self.sql())
    }

    /// The transaction of [`Store::write`]; returns how many acknowledged rows went.
    fn write_tx(
        &mut self,
        w: &Write<'_>,
        decide: &mut Decide<'_>,
        out: &mut Appended,
    ) -> Result<u64> {
        let Write {
            records,
            sent,
            newest,
            acked,
        } = *w;
        let path = self.path.clone();
        let sql = |e| BufferError::from_sqlite(&path, e);
        let os_boot = self.os_boot;
        let tx = self.conn.transaction().map_err(sql)?;
        let (acked_removed, acked_bytes) = delete_rows(&tx, acked.iter()).map_err(sql)?;
        let mut bytes = self.stored_bytes.saturating_sub(acked_bytes);
        let mut depth = self.depth.saturating_sub(acked_removed);
        let mut max_seq = 0;
        let mut newest_boot_ms = None;

        // `drop_newest`: what does not fit is asked about; what the caller keeps (on the
        // wire, maybe delivered) is stored past the bound.
        let mut store_it = vec![true; records.len()];
        if self.limits.when_full == WhenFull::DropNewest {
            let mut exists = tx
                .prepare_cached("SELECT 1 FROM records WHERE seq = ?1")
                .map_err(sql)?;
            let mut would_be = bytes;
            let mut misfits = Vec::new();
            for (i, r) in records.iter().enumerate() {
                let size = row_bytes(&r.topic, &r.payload);
                if would_be + size <= self.limits.max_size {
                    would_be += size;
                } else if !exists.exists([to_i64(r.seq)]).map_err(sql)? {
                    store_it[i] = false;
                    misfits.push(i);
                }
            }
            for chunk in misfits.chunks(VERDICT_CHUNK) {
                let seqs: Vec<u64> = chunk.iter().map(|&i| records[i].seq).collect();
                for (&i, verdict) in chunk.iter().zip(ask(decide, &seqs)) {
                    match verdict {
                        Verdict::Keep => store_it[i] = true,
                        Verdict::Drop => out.rejected.push(records[i].seq),
                        Verdict::Acknowledged => {}
                    }
                }
            }
        }
        {
            let mut insert = tx.prepare_cached(INSERT_ROW).map_err(sql)?;
            for (r, _) in records.iter().zip(&store_it).filter(|(_, &keep)| keep) {
                let (boot, boot_ms) = match r.queued_at.os_boot {
                    OsBoot::This => {
                        newest_boot_ms = newest_boot_ms.max(Some(r.queued_at.boot_ms));
                        (os_boot, os_boot.map(|_| to_i64(r.queued_at.boot_ms)))
                    }
                    OsBoot::Stored(id) => (Some(id), Some(to_i64(r.queued_at.boot_ms))),
                    OsBoot::Unknown => (None, None),
                };
                if insert_row(&mut insert, r, boot, boot_ms, sent.contains(&r.seq)).map_err(sql)? {
                    bytes += row_bytes(&r.topic, &r.payload);
                    depth += 1;
                }
                max_seq = max_seq.max(r.seq);
                out.stored.push(r.seq);
            }
        }
        if !sent.is_empty() {
            // Most are in the batch (inserted flagged above); this catches those stored
            // by an earlier write (`always` mode commits before sending).
            let mut flag = tx
                .prepare_cached("UPDATE records SET sent = 1 WHERE seq = ?1 AND sent = 0")
                .map_err(sql)?;
            for seq in sent {
                flag.execute([to_i64(*seq)]).map_err(sql)?;
            }
        }

        // `drop_oldest`: walk from the oldest row, asking only about as many rows as the
        // excess needs (a `Drop` verdict already took the record out of the caller's memory).
        let mut gone_bytes = 0;
        if self.limits.when_full == WhenFull::DropOldest && bytes > self.limits.max_size {
            let excess = bytes - self.limits.max_size;
            let mut after = 0u64;
            let mut next_rows = tx
                .prepare_cached(
                    "SELECT seq, length(topic) + length(payload) FROM records WHERE seq > ?1
                     ORDER BY seq LIMIT ?2",
                )
                .map_err(sql)?;
            let mut delete = tx
                .prepare_cached("DELETE FROM records WHERE seq = ?1")
                .map_err(sql)?;
            while gone_bytes < excess {
                let rows: Vec<(u64, u64)> = next_rows
                    .query_map(params![to_i64(after), VERDICT_CHUNK as i64], |r| {
                        Ok((to_u64(r.get(0)?), to_u64(r.get(1)?) + ROW_OVERHEAD))
                    })
                    .map_err(sql)?
                    .collect::<rusqlite::Result<_>>()
                    .map_err(sql)?;
                if rows.is_empty() {
                    break;
                }
                // Just enough candidates to cover what is still missing if all go.
                let mut want = 0;
                let mut covered = 0;
                for (_, size) in &rows {
                    want += 1;
                    covered += size;
                    if gone_bytes + covered >= excess {
                        break;
                    }
                }
                let chunk = &rows[..want];
                after = chunk[want - 1].0;
                let seqs: Vec<u64> = chunk.iter().map(|(s, _)| *s).collect();
                for (&(seq, size), verdict) in chunk.iter().zip(ask(decide, &seqs)) {
                    match verdict {
                        Verdict::Keep => continue,
                        Verdict::Drop => out.evicted.push(seq),
                        Verdict::Acknowledged => out.freed.push(seq),
                    }
                    delete.execute([to_i64(seq)]).map_err(sql)?;
                    gone_bytes += size;
                }
            }
        }
        let removed = out.evicted.len() + out.freed.len();
        if removed > 0 {
            // A set, not `Vec::contains`: a full buffer under a sustained backlog evicts
            // thousands per append, and the quadratic scan took 37 % of the agent's CPU
            // (perf, throughput bench).
            let gone: HashSet<u64> = out.evicted.iter().chain(&out.freed).copied().collect();
            out.stored.retain(|s| !gone.contains(s));
        }
        let dropped_now = (out.evicted.len() + out.rejected.len()) as u64;
        if dropped_now > 0 {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('dropped_full', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [to_i64(self.dropped_full + dropped_now)],
            )
            .map_err(sql)?;
        }
        let next_seq = self.next_seq.max(max_seq + 1);
        if next_seq > self.next_seq {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('next_seq', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                [to_i64(next_seq)],
            )
            .map_err(sql)?;
        }
        if let (Some(id), Some(ms)) = (os_boot, newest_boot_ms) {
            tx.execute(
                "UPDATE os_boots SET last_ms = max(last_ms, ?2) WHERE id = ?1",
                params![id, to_i64(ms)],
            )
            .map_err(sql)?;
        }
        upsert_newest(&tx, newest).map_err(sql)?;
        tx.commit().map_err(sql)?;
        self.stored_bytes = bytes.saturating_sub(gone_bytes);
        self.depth = depth.saturating_sub(removed as u64);
        self.dropped_full += dropped_now;
        self.next_seq = next_seq;
        Ok(acked_removed)
    }

    /// Raises the newest known seq of each topic (see `newest` in the module doc).
    pub fn note_newest(&mut self, newest: &[(Arc<str>, u64)]) -> Result<()> {
        if newest.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let sql = |e| BufferError::from_sqlite(&path, e);
        let tx = self.conn.transaction().map_err(sql)?;
        upsert_newest(&tx, newest).map_err(sql)?;
        tx.commit().map_err(sql)
    }

    /// The newest seq per topic: the `newest` table merged with the stored records.
    pub fn newest_per_topic(&self) -> Result<Vec<(String, u64)>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT topic, max(seq) FROM
                   (SELECT topic, seq FROM newest
                    UNION ALL SELECT topic, max(seq) FROM records GROUP BY topic)
                 GROUP BY topic",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, to_u64(r.get(1)?))))
            .map_err(self.sql())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.sql())
    }

    /// Up to `n` records with `seq > after`, oldest first.
    pub fn read_after(&self, after: u64, n: usize) -> Result<Vec<Record>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, topic, payload, ts_ms, sum, os_boot, boot_ms FROM records
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map(params![to_i64(after), to_i64(n as u64)], read_record)
            .map_err(self.sql())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.sql())
    }

    /// Deletes acknowledged records in one transaction; unknown seqs are ignored. Returns
    /// how many rows went. Gives the emptied file's free pages back when the store drains.
    pub fn delete(&mut self, seqs: &[u64]) -> Result<u64> {
        if seqs.is_empty() {
            return Ok(0);
        }
        let path = self.path.clone();
        let sql = |e| BufferError::from_sqlite(&path, e);
        let tx = self.conn.transaction().map_err(sql)?;
        let (removed, freed) = delete_rows(&tx, seqs.iter()).map_err(sql)?;
        tx.commit().map_err(sql)?;
        self.depth = self.depth.saturating_sub(removed);
        self.stored_bytes = self.stored_bytes.saturating_sub(freed);
        if self.depth == 0 && removed > 0 {
            self.vacuum()?;
        }
        Ok(removed)
    }

    /// The newest record of every topic, in seq order.
    pub fn latest_per_topic(&self) -> Result<Vec<Record>> {
        // SQLite returns the bare columns of the row that holds max(seq) in each group.
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, topic, payload, ts_ms, sum, os_boot, boot_ms FROM
                   (SELECT max(seq) AS seq, topic, payload, ts_ms, sum, os_boot, boot_ms
                    FROM records GROUP BY topic)
                 ORDER BY seq",
            )
            .map_err(self.sql())?;
        let rows = stmt.query_map([], read_record).map_err(self.sql())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.sql())
    }

    /// `replay = "latest"`: removes every record that a newer one of its topic supersedes,
    /// except `protect`ed ones. Not counted as dropped: it is the configured replay.
    pub fn prune_superseded(&mut self, protect: &HashSet<u64>) -> Result<u64> {
        let doomed: Vec<u64> = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT seq FROM records WHERE seq NOT IN
                       (SELECT max(seq) FROM records GROUP BY topic)",
                )
                .map_err(self.sql())?;
            let rows = stmt
                .query_map([], |r| r.get::<_, i64>(0))
                .map_err(self.sql())?;
            rows.map(|r| r.map(to_u64))
                .filter(|r| !matches!(r, Ok(s) if protect.contains(s)))
                .collect::<rusqlite::Result<_>>()
                .map_err(self.sql())?
        };
        self.delete(&doomed)
    }

    /// Drops records older than `max_age` (see `super::age`) that `decide` lets
    /// go, counting them in the same transaction. Walks from the oldest seq and stops at the
    /// first record young enough, so it reads only what it drops. Returns the dropped seqs.
    pub fn expire(&mut self, now: Now, decide: &mut Decide<'_>) -> Result<Vec<u64>> {
        let max_age = self.limits.max_age.as_millis() as u64;
        let ages = self.age_rule(now)?;
        let path = self.path.clone();
        let sql = |e| BufferError::from_sqlite(&path, e);
        let old: Vec<u64> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT seq, ts_ms, os_boot, boot_ms FROM records ORDER BY seq")
                .map_err(sql)?;
            let mut rows = stmt.query([]).map_err(sql)?;
            let mut old = Vec::new();
            while let Some(row) = rows.next().map_err(sql)? {
                let seq = to_u64(row.get(0).map_err(sql)?);
                let ts = to_u64(row.get(1).map_err(sql)?);
                let os_boot: Option<i64> = row.get(2).map_err(sql)?;
                let boot_ms: Option<i64> = row.get(3).map_err(sql)?;
                if ages.age(ts, os_boot, boot_ms.map(to_u64)) < max_age {
                    break;
                }
                old.push(seq);
            }
            old
        };
        if old.is_empty() {
            return Ok(old);
        }
        let mut doomed = Vec::new();
        let mut freed = Vec::new();
        for chunk in old.chunks(VERDICT_CHUNK) {
            for (&seq, verdict) in chunk.iter().zip(ask(decide, chunk)) {
                match verdict {
                    Verdict::Drop => doomed.push(seq),
                    Verdict::Acknowledged => freed.push(seq),
                    Verdict::Keep => {}
                }
            }
        }
        let tx = self.conn.transaction().map_err(sql)?;
        let (removed, bytes) = delete_rows(&tx, doomed.iter().chain(&freed)).map_err(sql)?;
        if !doomed.is_empty() {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('dropped_age', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [to_i64(self.dropped_age + doomed.len() as u64)],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        self.depth = self.depth.saturating_sub(removed);
        self.stored_bytes = self.stored_bytes.saturating_sub(bytes);
        self.dropped_age += doomed.len() as u64;
        Ok(doomed)
    }

    /// What the age rule needs from `os_boots`, read once per expiry run.
    fn age_rule(&self, now: Now) -> Result<AgeRule> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, last_ms FROM os_boots ORDER BY id DESC")
            .map_err(self.sql())?;
        let boots: Vec<(i64, u64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, to_u64(r.get(1)?))))
            .map_err(self.sql())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.sql())?;
        Ok(AgeRule::new(now, self.os_boot, boots))
    }

    pub fn stats(&self) -> Result<Stats> {
        let oldest: Option<i64> = self
            .conn
            .query_row("SELECT ts_ms FROM records ORDER BY seq LIMIT 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.sql())?;
        Ok(Stats {
            path: self.path.clone(),
            depth: self.depth,
            oldest_ts_ms: oldest.map(to_u64),
            bytes_on_disk: bytes_on_disk(&self.path),
            stored_bytes: self.stored_bytes,
            dropped_full: self.dropped_full,
            dropped_age: self.dropped_age,
            dropped_given_up: self.dropped_given_up,
            next_seq: self.next_seq,
            boot: to_u64(
                self.conn
                    .query_row("SELECT value FROM meta WHERE key = 'boot'", [], |r| {
                        r.get(0)
                    })
                    .optional()
                    .map_err(self.sql())?
                    .unwrap_or(0),
            ),
            taken_at_ms: crate::model::unix_ms_now(),
        })
    }
}

fn upsert_newest(
    tx: &rusqlite::Transaction<'_>,
    newest: &[(Arc<str>, u64)],
) -> rusqlite::Result<()> {
    if newest.is_empty() {
        return Ok(());
    }
    let mut upsert = tx.prepare_cached(
        "INSERT INTO newest (topic, seq) VALUES (?1, ?2)
         ON CONFLICT(topic) DO UPDATE SET seq = max(seq, excluded.seq)",
    )?;
    for (topic, seq) in newest {
        upsert.execute(params![&**topic, to_i64(*seq)])?;
    }
    Ok(())
}

/// Deletes the rows of `seqs` that exist (others are ignored): how many went, and the
/// bytes they counted against `max_size`.
fn delete_rows<'s>(
    tx: &rusqlite::Transaction<'_>,
    seqs: impl Iterator<Item = &'s u64>,
) -> rusqlite::Result<(u64, u64)> {
    let mut delete = tx.prepare_cached(
        "DELETE FROM records WHERE seq = ?1 RETURNING length(topic) + length(payload)",
    )?;
    let (mut removed, mut bytes) = (0, 0);
    for seq in seqs {
        let len: Option<i64> = delete.query_row([to_i64(*seq)], |r| r.get(0)).optional()?;
        if let Some(len) = len {
            removed += 1;
            bytes += to_u64(len) + ROW_OVERHEAD;
        }
    }
    Ok((removed, bytes))
}

/// Asks `decide` about `seqs`; a short answer keeps the rest (never drop unanswered).
fn ask(decide: &mut Decide<'_>, seqs: &[u64]) -> Vec<Verdict> {
    let mut verdicts = decide(seqs);
    verdicts.resize(seqs.len(), Verdict::Keep);
    verdicts
}
