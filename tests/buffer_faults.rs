//! The buffer on a disk that fills up or turns read-only, and behind the `Outbox` with its
//! own I/O thread: typed errors, no panic, memory keeps the readings flowing.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use std::sync::Arc;
use std::time::Duration;
use support::mount::Mount;

use fieldlink::buffer::store::{Limits, Store};
use fieldlink::buffer::{BufferError, IoDriver, Outbox, Settings};
use fieldlink::config::{Durability, Replay, WhenFull};

fn settings(dir: &Path, durability: Durability) -> Settings {
    Settings {
        dir: dir.to_path_buf(),
        durability,
        commit_interval: Duration::from_millis(50),
        limits: Limits {
            max_size: 1 << 30,
            max_age: Duration::from_secs(3600 * 24 * 365),
            when_full: WhenFull::DropOldest,
        },
        replay: Replay::All,
        replay_rate: None,
        spill_threshold: usize::MAX,
        capacity: 100_000,
        clock: std::sync::Arc::new(fieldlink::buffer::clock::SystemClock::new()),
    }
}

fn push_big(d: &Outbox, n: usize) -> Vec<u64> {
    (0..n)
        .map(|i| d.push(format!("t/{}", i % 5), 0, vec![0x5a; 4096]))
        .collect()
}

/// Fills the filesystem under `dir` through a spill, then checks the outbox kept working.
fn disk_full_scenario(dir: &Path) -> BufferError {
    let d = Outbox::open(settings(dir, Durability::Outage), 1, IoDriver::Manual);
    assert_eq!(
        d.status().unwrap().disk_error,
        None,
        "the store opens on the empty filesystem"
    );
    let seqs = push_big(&d, 300); // 1.2 MB of payload for a 256 KiB filesystem
    d.requeue_inflight();
    let err = d.io_step().expect_err("the spill cannot fit");
    let status = d.status().unwrap();
    assert!(status.disk_error.is_some(), "{status:?}");
    // Memory keeps every reading and the link drains them.
    assert_eq!(d.depth(), 300);
    let mut delivered = Vec::new();
    for _ in 0..1000 {
        let _ = d.io_step();
        let batch = d.take(32);
        if batch.is_empty() && d.depth() == 0 {
            break;
        }
        for r in &batch {
            assert!(d.ack(r.seq));
        }
        delivered.extend(batch.iter().map(|r| r.seq));
    }
    assert_eq!(delivered, seqs, "nothing lost, nothing out of order");
    assert_eq!(d.dropped(), 0);
    err
}

#[test]
fn a_full_disk_gives_a_typed_error_and_memory_keeps_the_readings_flowing() {
    let tmp = tempfile::tempdir().unwrap();
    let at = tmp.path().join("mnt");
    let Some(_mount) = Mount::tmpfs(&at, "size=256k") else {
        eprintln!("cannot mount a tmpfs here: the RLIMIT_FSIZE test covers disk full");
        return;
    };
    let err = disk_full_scenario(&at);
    assert!(matches!(err, BufferError::DiskFull { .. }), "{err:?}");
    assert!(err.to_string().contains("is full"), "{err}");
}

#[test]
fn a_file_size_limit_gives_a_typed_error_and_memory_keeps_the_readings_flowing() {
    // RLIMIT_FSIZE is per process: run the scenario in a child copy of this test binary.
    let tmp = tempfile::tempdir().unwrap();
    // Under the cross runner (qemu) the child needs the runner in front of it too.
    let exe = std::env::current_exe().unwrap();
    let mut child = match support::bin::runner() {
        Some(words) if !words.is_empty() => {
            let mut c = Command::new(&words[0]);
            c.args(&words[1..]).arg(&exe);
            c
        }
        _ => Command::new(&exe),
    };
    let out = child
        .args([
            "--exact",
            "file_size_limit_child",
            "--include-ignored",
            "--nocapture",
        ])
        .env("FIELDLINK_FSIZE_DIR", tmp.path())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}

#[test]
#[ignore = "run by a_file_size_limit_gives_a_typed_error_and_memory_keeps_the_readings_flowing"]
fn file_size_limit_child() {
    let dir = PathBuf::from(std::env::var_os("FIELDLINK_FSIZE_DIR").expect("run by its parent"));
    // SAFETY: plain libc calls on this process; SIGXFSZ ignored so writes fail with EFBIG
    // instead of killing the process.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let limit = libc::rlimit {
            rlim_cur: 256 * 1024,
            rlim_max: 256 * 1024,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
    let err = disk_full_scenario(&dir);
    assert!(
        matches!(err, BufferError::DiskFull { .. } | BufferError::Io { .. }),
        "{err:?}"
    );
}

#[test]
fn a_read_only_state_directory_gives_a_typed_error_and_memory_keeps_working() {
    let tmp = tempfile::tempdir().unwrap();
    let at = tmp.path().join("ro");
    let mount = Mount::tmpfs(&at, "size=4m");
    if mount.is_none() {
        // Not root: permissions are enough to make the directory read-only.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    // A fresh directory that cannot be written: the store cannot even be created.
    if let Some(m) = &mount {
        m.remount("ro");
    }
    let err = Store::open(&at, Limits::default()).expect_err("nothing can be created");
    assert!(matches!(err, BufferError::ReadOnly { .. }), "{err:?}");
    assert!(err.to_string().contains("[buffer] path"), "{err}");

    // A buffer written earlier, then its filesystem turned read-only (a failing SD card
    // remounts itself read-only): the agent starts, runs from memory, reports.
    if let Some(m) = &mount {
        m.remount("rw");
        let d = Outbox::open(settings(&at, Durability::Outage), 1, IoDriver::Manual);
        push_big(&d, 5);
        d.shutdown().unwrap();
        drop(d);
        m.remount("ro");
    }
    let d = Outbox::open(settings(&at, Durability::Always), 1, IoDriver::Manual);
    let status = d.status().unwrap();
    assert!(status.disk_error.is_some(), "{status:?}");
    let seq = d.push("t/x", 0, b"1".to_vec());
    let _ = d.io_step();
    let got = d.take(10);
    assert!(
        got.iter().any(|r| r.seq == seq),
        "always mode stops waiting for commits"
    );
    assert!(d.ack(seq));
    if mount.is_none() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[tokio::test]
async fn the_outbox_with_a_buffer_spills_on_link_death_and_a_new_run_replays_after_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let open = || {
        Arc::new(Outbox::open(
            settings(tmp.path(), Durability::Outage),
            1,
            IoDriver::Thread,
        ))
    };
    let outbox = open();
    let seqs: Vec<u64> = (0..100)
        .map(|i| {
            let ts = fieldlink::model::unix_ms_now() + i;
            outbox.push(format!("t/{}", i % 4), ts, i.to_string().into_bytes())
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(5), outbox.wait_queued())
        .await
        .unwrap();
    let sent = outbox.take(60);
    for r in &sent[..30] {
        assert!(outbox.ack(r.seq));
    }
    assert_eq!(outbox.requeue_inflight(), 30); // the link died
    let buffer = &outbox;
    support::wait_until(
        "the spill reaches the disk",
        Duration::from_secs(10),
        || {
            buffer
                .stats()
                .and_then(|s| s.ok())
                .filter(|s| s.depth == 70)
        },
    )
    .await;
    drop(outbox); // a crash: no shutdown

    let outbox = open();
    let mut replayed = Vec::new();
    while replayed.len() < 70 {
        tokio::time::timeout(Duration::from_secs(5), outbox.wait_queued())
            .await
            .expect("the stored records are replayed");
        for r in outbox.take(16) {
            assert!(outbox.ack(r.seq));
            replayed.push(r.seq);
        }
    }
    assert_eq!(replayed, seqs[30..].to_vec());
    let next = outbox.push("t/0", 0, Vec::new());
    assert!(next > seqs[99], "numbering continues after the crash");
    outbox.shutdown().unwrap();
}

#[tokio::test]
async fn in_always_mode_a_reading_is_on_disk_before_it_is_handed_out() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Outbox::open(
        settings(tmp.path(), Durability::Always),
        1,
        IoDriver::Thread,
    );
    let seq = d.push("t/a", 0, b"42".to_vec());
    let _ = d.take(1); // the link is up, but nothing is committed yet
    tokio::time::timeout(Duration::from_secs(5), d.wait_queued())
        .await
        .expect("the commit interval passes");
    let stats = d.stats().unwrap().unwrap();
    assert_eq!(stats.depth, 1);
    let got = d.take(1);
    assert_eq!(got[0].seq, seq);
    d.ack(seq);
    d.shutdown().unwrap();
    let stats = fieldlink::buffer::stats(tmp.path()).unwrap();
    assert_eq!(stats.depth, 0, "acknowledged, so deleted");
}
