//! Buffer figures, printed (never asserted): store append / delete throughput, bytes
//! written per reading in each durability mode with the link up and down, and what the
//! open-time integrity check costs on a full 64 MiB buffer.
//!
//! `cargo bench --bench buffer` (set FIELDLINK_BENCH_DIR to measure on another filesystem;
//! the default is a temporary directory under the system temp dir, which must not be a
//! tmpfs for the write_bytes column to mean anything).

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use fieldlink::buffer::store::{protecting, Limits, Store};
use fieldlink::buffer::Record;
use fieldlink::buffer::{IoDriver, Outbox, Settings};
use fieldlink::config::{Durability, Replay, WhenFull};

/// A typical reading: 30-byte topic, 70-byte JSON payload.
fn reading(seq: u64) -> Record {
    Record {
        seq,
        topic: format!("fieldlink/gw-0001/meter{}/voltage", seq % 10).into(),
        payload: format!(
            "{{\"value\":{}.{},\"unit\":\"V\",\"ts\":1764000000000,\"seq\":{seq}}}",
            220 + seq % 20,
            seq % 10
        )
        .into(),
        ts_ms: fieldlink::model::unix_ms_now(),
        queued_at: fieldlink::buffer::clock::Queued::UNKNOWN,
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Io {
    wchar: u64,
    write_bytes: u64,
}

fn io_now() -> Io {
    let text = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Io {
        wchar: field("wchar:"),
        write_bytes: field("write_bytes:"),
    }
}

fn limits() -> Limits {
    Limits {
        max_size: 64 * 1024 * 1024,
        max_age: Duration::from_secs(7 * 24 * 3600),
        when_full: WhenFull::DropOldest,
    }
}

fn store_throughput(base: &Path) {
    let dir = base.join("throughput");
    let (mut store, _) = Store::open(&dir, limits()).unwrap();
    let n = 100_000u64;
    let t = Instant::now();
    for chunk in (1..=n).collect::<Vec<_>>().chunks(100) {
        let batch: Vec<Record> = chunk.iter().map(|&s| reading(s)).collect();
        store
            .append(&batch, &HashSet::new(), &mut protecting(&HashSet::new()))
            .unwrap();
    }
    let append = t.elapsed();
    let t = Instant::now();
    for chunk in (1..=n).collect::<Vec<_>>().chunks(256) {
        store.delete(chunk).unwrap();
    }
    let delete = t.elapsed();
    println!("store, {n} readings of ~100 B");
    println!(
        "  append (batches of 100, fsync each): {:>9.0} readings/s",
        n as f64 / append.as_secs_f64()
    );
    println!(
        "  delete (batches of 256):             {:>9.0} readings/s",
        n as f64 / delete.as_secs_f64()
    );
}

fn settings(dir: &Path, durability: Durability) -> Settings {
    Settings {
        dir: dir.to_path_buf(),
        durability,
        commit_interval: Duration::ZERO,
        limits: limits(),
        replay: Replay::All,
        replay_rate: None,
        spill_threshold: 1000,
        capacity: 100_000,
        clock: std::sync::Arc::new(fieldlink::buffer::clock::SystemClock::new()),
    }
}

/// Drives `n` readings through a durable outbox with one I/O round every `per_round`
/// readings (≈ one commit_interval at 50 readings/s when per_round = 50).
fn bytes_per_reading(base: &Path, name: &str, durability: Durability, link_up: bool) {
    let dir = base.join(name);
    let d = Outbox::open(settings(&dir, durability), 1, IoDriver::Manual);
    d.io_step().unwrap();
    let n = 20_000u64;
    let per_round = 50;
    let before = io_now();
    let t = Instant::now();
    for i in 0..n {
        let r = reading(i);
        d.push(r.topic, r.ts_ms, r.payload.to_vec());
        if link_up {
            for r in d.take(64) {
                d.ack(r.seq);
            }
        }
        if i % per_round == per_round - 1 {
            let _ = d.io_step();
        }
    }
    let _ = d.io_step();
    let elapsed = t.elapsed();
    let after = io_now();
    let per = |v: u64| v as f64 / n as f64;
    println!(
        "  {:<26} {:>9.1} {:>13.1} {:>12.0}",
        name,
        per(after.wchar - before.wchar),
        per(after.write_bytes - before.write_bytes),
        n as f64 / elapsed.as_secs_f64()
    );
    d.shutdown().unwrap();
}

fn integrity_check_cost(base: &Path) {
    let dir = base.join("full64");
    let (mut store, _) = Store::open(&dir, limits()).unwrap();
    let mut seq = 1;
    while store.stored_bytes() < 64 * 1024 * 1024 - 200_000 {
        let batch: Vec<Record> = (seq..seq + 5000).map(reading).collect();
        store
            .append(&batch, &HashSet::new(), &mut protecting(&HashSet::new()))
            .unwrap();
        seq += 5000;
    }
    let depth = store.depth();
    drop(store);
    let file = dir.join(fieldlink::buffer::store::FILE_NAME);
    let size = std::fs::metadata(&file).unwrap().len();
    let conn = rusqlite::Connection::open(&file).unwrap();
    let time = |sql: &str| {
        let t = Instant::now();
        let _: String = conn.query_row(sql, [], |r| r.get(0)).unwrap();
        t.elapsed()
    };
    let quick = time("PRAGMA quick_check");
    let full = time("PRAGMA integrity_check");
    drop(conn);
    let t = Instant::now();
    let (store, _) = Store::open(&dir, limits()).unwrap();
    let open = t.elapsed();
    let t = Instant::now();
    let latest = store.newest_per_topic().unwrap().len();
    let newest = t.elapsed();
    println!(
        "full buffer: {depth} readings, file {:.1} MiB (page cache warm)",
        size as f64 / 1048576.0
    );
    println!(
        "  PRAGMA quick_check:      {:>8.1} ms",
        quick.as_secs_f64() * 1e3
    );
    println!(
        "  PRAGMA integrity_check:  {:>8.1} ms",
        full.as_secs_f64() * 1e3
    );
    println!(
        "  Store::open (check + sums): {:>5.1} ms",
        open.as_secs_f64() * 1e3
    );
    println!(
        "  newest_per_topic ({latest} topics): {:>5.1} ms",
        newest.as_secs_f64() * 1e3
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base = match std::env::var_os("FIELDLINK_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir_in("/var/tmp").unwrap(),
    };
    store_throughput(base.path());
    println!("durable outbox, 20000 readings, one I/O round per 50 readings");
    println!(
        "  {:<26} {:>9} {:>13} {:>12}",
        "mode / link", "wchar/rdg", "write_bytes/rdg", "readings/s"
    );
    bytes_per_reading(base.path(), "outage, link up", Durability::Outage, true);
    bytes_per_reading(base.path(), "outage, link down", Durability::Outage, false);
    bytes_per_reading(base.path(), "always, link up", Durability::Always, true);
    bytes_per_reading(base.path(), "always, link down", Durability::Always, false);
    integrity_check_cost(base.path());
}
