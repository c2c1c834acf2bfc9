//! The short chaos soak (issue 10, item 8): every fault kind once, in an order drawn from a
//! fixed seed, against the real agent with ten devices, then the exact accounting of every
//! reading. The engine is tests/chaos; `cargo bench --bench soak -- --minutes N` runs it long.
//!
//! Not run under qemu-user (packaging/cross-build.sh skips this file): it needs ptys, which
//! qemu-user cannot configure, and its timings assume a native agent.

mod chaos;
mod support;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_chaos_soak_delivers_or_counts_every_reading() {
    let settings = chaos::Settings {
        seed: chaos::Settings::seed_from_env(1),
        duration: Duration::from_secs(45),
        each_kind_first: true,
        max_faults: Some(chaos::Kind::ALL.len()),
        gap: (Duration::from_millis(300), Duration::from_millis(800)),
        hold: (Duration::from_millis(800), Duration::from_millis(1500)),
        warm_up: Duration::from_secs(3),
        drain_deadline: Duration::from_secs(10),
    };
    let report = chaos::run(settings).await;
    let table = report.table();
    println!("{table}");
    assert!(report.violations.is_empty(), "{table}");
    // Early in a run the buffer's WAL is still growing, so a full disk must be noticed (a
    // long run may fill it when the WAL has room left: the agent then needs no new block).
    let disk = &report.kinds[&chaos::Kind::DiskFull];
    assert!(
        disk.noticed.is_none_or(|n| n > 0),
        "the agent never reported the full disk\n{table}"
    );
    for (kind, stats) in &report.kinds {
        assert!(
            stats.injected > 0 || stats.skipped.is_some(),
            "{} was neither injected nor skipped with a reason",
            kind.name()
        );
    }
}
