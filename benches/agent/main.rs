//! Issue 7 figures, printed and written as JSON (never asserted): footprint, throughput,
//! wire bytes per reading for each payload mode, idle cost, RTU bus time against the wire
//! bound, and binary sizes. The hand-timed micro benches of the hot paths are their own bench
//! (`benches/micro.rs`).
//!
//! Every whole-agent figure comes from the real release binary (`fieldlink run`, built by
//! `cargo bench` with the release profile) against a real mosquitto and in-process Modbus
//! simulators (TCP on loopback, RTU over a pty with wire timing), read from /proc.
//! Peer limits are measured in the same run so ratios survive a noisy machine.
//!
//! Run (needs mosquitto):
//!   cargo bench --no-default-features --bench agent              # full (about 9 min)
//!   cargo bench --no-default-features --bench agent -- --quick   # short windows (about 3 min)
//!   cargo bench --no-default-features --bench agent -- --only footprint,wire   # a subset
//! `--no-default-features` measures the binary as packaged (without the demo broker, which
//! adds about 4 MiB of code, much of it resident); without it the demo build is measured.
//! Scenarios for --only: size, footprint, idle, wire, throughput, rtu, commands.
//! Results: the table on stdout and `$CARGO_TARGET_DIR/bench/results.json` (else
//! `target/bench/results.json`). Cross-built binaries are sized when found under the target
//! dir or `FIELDLINK_CROSS_TARGET_DIR` (packaging/cross-build.sh puts them there).
//!
//! One file a concern: `report` (rows, table, JSON), `procfs` (what the agent costs),
//! `agent_proc` (the agent as a child process), `rig` (config text and simulated meters), and
//! one file a scenario.
#[path = "../../tests/support/mod.rs"]
mod support;

mod agent_proc;
mod commands;
mod footprint;
mod idle;
mod names;
mod procfs;
mod report;
mod rig;
mod rtu;
mod sizes;
mod throughput;
mod wire;

use std::time::{Duration, Instant};

use serde_json::json;

use report::Report;

/// Command line: `--quick` for short windows, `--only a,b` for a subset of the scenarios.
pub struct Args {
    pub quick: bool,
    only: Option<Vec<String>>,
}

impl Args {
    fn parse() -> Args {
        let mut a = Args {
            quick: false,
            only: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            match flag.as_str() {
                "--quick" => a.quick = true,
                "--only" => {
                    a.only = it
                        .next()
                        .map(|s| s.split(',').map(|p| p.trim().to_string()).collect())
                }
                _ => {}
            }
        }
        a
    }

    fn wants(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == scenario))
    }

    /// Footprint window: 60 s as the issue asks, 15 s with --quick.
    pub fn footprint_window(&self) -> Duration {
        Duration::from_secs(if self.quick { 15 } else { 60 })
    }

    pub fn window(&self, quick: u64, full: u64) -> Duration {
        Duration::from_secs(if self.quick { quick } else { full })
    }
}

fn main() {
    // `cargo test` runs bench targets without --bench only when asked; measure only here.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let args = Args::parse();
    let started = Instant::now();
    let mut report = Report::default();
    println!(
        "fieldlink bench ({}, footprint window {} s, agent binary {} the demo feature)",
        if args.quick { "--quick" } else { "full" },
        args.footprint_window().as_secs(),
        if cfg!(feature = "demo") {
            "with"
        } else {
            "without"
        },
    );
    if cfg!(feature = "demo") {
        println!("  note: packaged builds use --no-default-features; run `cargo bench --no-default-features --bench agent` to measure those");
    }
    if args
        .only
        .as_ref()
        .is_some_and(|o| o.iter().any(|s| s == "micro"))
    {
        println!("  note: the micro benches are their own bench now: cargo bench --bench micro");
    }
    if args.wants("size") {
        sizes::sizes(&mut report);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if args.wants("footprint") {
            footprint::footprint(&mut report, &args, 5, 24, None).await;
            footprint::footprint(
                &mut report,
                &args,
                5,
                24,
                Some((" device", "payload = \"device\"", "")),
            )
            .await;
            footprint::footprint(&mut report, &args, 50, 40, None).await;
            let spill = (" spill 20k", "", "spill_threshold = 20000");
            footprint::footprint(&mut report, &args, 50, 40, Some(spill)).await;
        }
        if args.wants("idle") {
            idle::idle(&mut report, &args).await;
        }
        if args.wants("wire") {
            wire::wire_bytes(&mut report, &args).await;
        }
        if args.wants("throughput") {
            throughput::throughput(&mut report, &args, None).await;
            throughput::throughput(
                &mut report,
                &args,
                Some(("spill 100k", "spill_threshold = 100000")),
            )
            .await;
        }
        if args.wants("commands") {
            commands::commands(&mut report, &args, None).await;
            commands::commands(&mut report, &args, Some(9600)).await;
        }
        if args.wants("rtu") {
            for baud in [9600, 19200] {
                rtu::rtu(&mut report, &args, baud, false).await;
                rtu::rtu(&mut report, &args, baud, true).await;
            }
        }
    });
    println!("\n{}", report.table());
    let settings = json!({
        "mode": if args.quick { "quick" } else { "full" },
        "footprint_window_s": args.footprint_window().as_secs(),
    });
    report.write("results", settings, started);
}
