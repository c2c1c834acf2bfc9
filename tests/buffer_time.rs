//! Time and identity in the durable buffer (issue 10, items 4 and 5), with the clock
//! injected (`ManualClock`): a wall-clock step must not age readings, an OS reboot ages
//! stored readings by the least time they can have, a schema-1 file is migrated in place,
//! every start is a new boot epoch with reading numbers from 1, and a rate-held replay waits
//! on the runtime clock (paused in the test).

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fieldlink::buffer::clock::{Clock, ManualClock};
use fieldlink::buffer::store::Limits;
use fieldlink::buffer::Record;
use fieldlink::buffer::{IoDriver, Outbox, Settings};
use fieldlink::config::{Durability, Replay, WhenFull};

const HOUR_MS: u64 = 3600 * 1000;
const WALL: u64 = 1_764_000_000_000;

fn settings(dir: &Path, clock: &ManualClock) -> Settings {
    Settings {
        dir: dir.to_path_buf(),
        durability: Durability::Outage,
        commit_interval: Duration::from_secs(1),
        limits: Limits {
            max_size: 1 << 30,
            max_age: Duration::from_millis(HOUR_MS),
            when_full: WhenFull::DropOldest,
        },
        replay: Replay::All,
        replay_rate: None,
        spill_threshold: usize::MAX,
        capacity: usize::MAX,
        clock: Arc::new(clock.clone()),
    }
}

fn open(dir: &Path, clock: &ManualClock) -> Outbox {
    Outbox::open(settings(dir, clock), 1, IoDriver::Manual)
}

/// Pushes `n` readings stamped with the wall clock, `every_ms` apart.
fn push_readings(d: &Outbox, clock: &ManualClock, n: usize, every_ms: u64) {
    for _ in 0..n {
        d.push_reading("t/a", clock.wall_ms(), |n| {
            format!("{}/{}", n.boot, n.seq).into_bytes()
        });
        clock.advance(every_ms);
    }
}

fn drain(d: &Outbox) -> Vec<Record> {
    let _ = d.take(0);
    let mut out = Vec::new();
    for _ in 0..10_000 {
        d.io_step().unwrap();
        let batch = d.take(64);
        if batch.is_empty() && d.depth() == 0 {
            return out;
        }
        for r in &batch {
            d.ack(r.seq);
        }
        out.extend(batch);
    }
    panic!("did not drain");
}

/// What the buffer logged while `f` ran (in this thread: the I/O is driven by the test).
fn logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&sink.0.lock().unwrap()).into_owned();
    (out, text)
}

#[test]
fn an_ntp_step_of_hours_during_an_outage_neither_ages_readings_nor_goes_unlogged() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(WALL, 120_000, "boot-1");
    let d = open(dir.path(), &clock);
    // A 70 s outage at 10 readings/s... then NTP syncs and steps the clock 3 h forward.
    push_readings(&d, &clock, 100, 700);
    d.requeue_inflight();
    d.io_step().unwrap();
    let (_, log) = logs(|| {
        clock.step_wall(3 * HOUR_MS as i64);
        clock.advance(61_000); // the next age check is due
        d.io_step().unwrap();
        clock.advance(1_000);
        d.io_step().unwrap();
    });
    assert_eq!(
        d.dropped(),
        0,
        "readings 2 minutes old are not older than max_age (1h)"
    );
    let steps: Vec<&str> = log.lines().filter(|l| l.contains("stepped")).collect();
    assert_eq!(steps.len(), 1, "one line per step: {log}");
    assert!(
        steps[0].contains("WARN") && steps[0].contains("+3h"),
        "{}",
        steps[0]
    );
    // An hour of real time later they are.
    let (_, log) = logs(|| {
        clock.advance(HOUR_MS);
        d.io_step().unwrap();
    });
    assert_eq!(d.dropped(), 100);
    assert!(log.contains("older than max_age"), "{log}");
    assert_eq!(d.depth(), 0);
}

#[test]
fn a_wall_clock_set_back_does_not_keep_old_readings_forever() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(WALL, 120_000, "boot-1");
    let d = open(dir.path(), &clock);
    push_readings(&d, &clock, 10, 100);
    d.requeue_inflight();
    d.io_step().unwrap();
    clock.step_wall(-24 * HOUR_MS as i64);
    clock.advance(HOUR_MS + 60_000);
    d.io_step().unwrap();
    assert_eq!(d.dropped(), 10);
}

#[test]
fn after_an_os_reboot_stored_readings_age_by_the_time_the_gateway_demonstrably_ran() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(WALL, 50_000, "boot-1");
    let d = open(dir.path(), &clock);
    push_readings(&d, &clock, 10, 1000);
    clock.advance(20 * 60_000); // 20 more minutes of that boot, nothing new written
    d.shutdown().unwrap();
    drop(d);
    // Power off, on again a day later; the RTC-less clock comes back a day ahead.
    clock.reboot("boot-2", 30_000, WALL + 24 * HOUR_MS);
    let d = open(dir.path(), &clock);
    d.io_step().unwrap();
    assert_eq!(
        d.dropped(),
        0,
        "10 s of the old boot after them + 30 s of this one: far from max_age (1h); the \
         wall clock's day is not proof"
    );
    // Once this boot alone has run past max_age, they are certainly older.
    clock.advance(HOUR_MS);
    d.io_step().unwrap();
    assert_eq!(d.dropped(), 10);
}

#[test]
fn each_start_is_a_new_boot_whose_readings_count_from_1_and_status_records_take_no_number() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(WALL, 50_000, "boot-1");
    let payloads = |d: &Outbox| -> Vec<String> {
        drain(d)
            .into_iter()
            .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
            .collect()
    };
    let d = open(dir.path(), &clock);
    push_readings(&d, &clock, 2, 10);
    d.push("t/status", 0, b"online".to_vec());
    push_readings(&d, &clock, 1, 10);
    assert_eq!(payloads(&d), ["1/1", "1/2", "online", "1/3"]);
    assert_eq!(d.status().unwrap().boot, 1);
    d.shutdown().unwrap();
    drop(d);
    let d = open(dir.path(), &clock);
    push_readings(&d, &clock, 2, 10);
    assert_eq!(payloads(&d), ["2/1", "2/2"]);
    d.shutdown().unwrap();
    let stats = fieldlink::buffer::stats(dir.path()).unwrap();
    assert_eq!(stats.boot, 2);
    assert!(stats.to_string().contains("boot:     2"), "{stats}");
}

#[test]
fn without_a_usable_store_at_start_the_boot_is_made_up_from_the_clock_and_kept_once_it_works() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("state");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let clock = ManualClock::new(WALL, 50_000, "boot-1");
    let d = open(&blocker, &clock);
    assert!(d.status().unwrap().disk_error.is_some());
    let made_up = WALL / 1000;
    assert_eq!(d.status().unwrap().boot, made_up);
    push_readings(&d, &clock, 1, 10);
    // The directory is fixed; the store is attached on the way out and learns the epoch.
    std::fs::remove_file(&blocker).unwrap();
    d.shutdown().unwrap();
    drop(d);
    let d = open(&blocker, &clock);
    assert_eq!(
        d.status().unwrap().boot,
        made_up + 1,
        "later starts count on from above it"
    );
    let replayed: Vec<String> = drain(&d)
        .into_iter()
        .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(replayed, [format!("{made_up}/1")]);
}

// ------------------------------------------------------------------------- schema 1 -> 2

/// The schema-1 checksum (FNV-1a 64 over seq, topic length, topic, payload, ts).
fn v1_sum(seq: u64, topic: &str, payload: &[u8], ts: u64) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(&seq.to_le_bytes());
    feed(&(topic.len() as u64).to_le_bytes());
    feed(topic.as_bytes());
    feed(payload);
    feed(&ts.to_le_bytes());
    h as i64
}

/// A `buffer.db` as fieldlink wrote it before schema 2 (the SQL of that release).
fn write_v1(dir: &Path, rows: &[(u64, u64)]) {
    let conn = rusqlite::Connection::open(dir.join("buffer.db")).unwrap();
    conn.execute_batch(
        "PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL;
         CREATE TABLE records (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL,
             payload BLOB NOT NULL, ts_ms INTEGER NOT NULL, sum INTEGER NOT NULL);
         CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
         CREATE TABLE newest (topic TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
         INSERT INTO meta VALUES ('schema_version', 1), ('next_seq', 70000),
             ('dropped_full', 3), ('dropped_age', 0);",
    )
    .unwrap();
    for &(seq, ts) in rows {
        let payload = format!("{{\"seq\":{seq}}}");
        conn.execute(
            "INSERT INTO records VALUES (?1, 't/a', ?2, ?3, ?4)",
            rusqlite::params![
                seq as i64,
                payload.as_bytes(),
                ts as i64,
                v1_sum(seq, "t/a", payload.as_bytes(), ts)
            ],
        )
        .unwrap();
    }
}

#[test]
fn a_schema_1_buffer_is_migrated_in_place_and_its_backlog_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(WALL, 50_000, "boot-1");
    // 500 readings from before the upgrade, one of them older than max_age by its ts.
    let mut rows: Vec<(u64, u64)> = vec![(1, WALL - 2 * HOUR_MS)];
    rows.extend((2..=500).map(|s| (s, WALL - 60_000 + s)));
    write_v1(dir.path(), &rows);

    let d = open(dir.path(), &clock);
    assert_eq!(d.status().unwrap().disk_error, None);
    let delivered = drain(&d);
    let seqs: Vec<u64> = delivered.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (2..=500).collect::<Vec<_>>(),
        "every schema-1 reading young enough arrives; they are aged by their ts, the only \
         time they have"
    );
    assert_eq!(
        String::from_utf8_lossy(&delivered[0].payload),
        "{\"seq\":2}"
    );
    assert_eq!(d.dropped(), 3 + 1, "the drop counters carry over");
    let next = d.push("t/a", 0, Vec::new());
    assert!(next >= 70_000, "record numbers continue above the old ones");
    d.shutdown().unwrap();
    drop(d);

    let conn = rusqlite::Connection::open(dir.path().join("buffer.db")).unwrap();
    let version: i64 = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, 2);
    let columns: HashSet<String> = conn
        .prepare("SELECT name FROM pragma_table_info('records')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    for c in ["os_boot", "boot_ms", "sent"] {
        assert!(columns.contains(c), "{c} in {columns:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_replay_held_to_its_rate_waits_on_the_runtime_clock_so_a_paused_test_needs_no_sleep() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(WALL, HOUR_MS, "boot-a");
    let d = Outbox::open(
        Settings {
            replay_rate: Some(10),
            ..settings(dir.path(), &clock)
        },
        1,
        IoDriver::Manual,
    );
    push_readings(&d, &clock, 30, 10);
    d.spill();
    d.io_step().unwrap();
    assert!(
        d.take(100).is_empty(),
        "on disk only, and the link was down"
    );
    d.io_step().unwrap(); // the link is up: the replay read
    assert_eq!(d.take(100).len(), 10, "one second's worth");
    let start = tokio::time::Instant::now();
    let early = tokio::time::timeout(Duration::from_millis(99), d.wait_queued()).await;
    assert!(early.is_err(), "nothing before the next token");
    d.wait_queued().await;
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(d.take(100).len(), 1);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(
        d.take(100).len(),
        10,
        "a long wait refills one second's worth, no more"
    );
}
