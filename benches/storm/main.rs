//! Issue 14 item 4, the reconnect storm: N release agents (`fieldlink run`, one device each
//! on one shared in-process Modbus TCP simulator, keep-alive 5 s) against one mosquitto; once
//! all are online the broker is killed, kept down 10 s and started again on its port. Then
//! the same with the backoff's jitter switched off (`FIELDLINK_BENCH_NO_JITTER=1`, read by
//! `src/uplink/state.rs` for this bench only), to show what the jitter buys.
//!
//! Run (needs mosquitto):
//!   cargo bench --no-default-features --bench storm -- --agents 200 [--jitter on|off]
//! Printed: connection attempts a second (counted at the proxy in front of mosquitto: every
//! TCP connection an agent opened, refused ones included), the time until 50 %, 99 % and
//! 100 % of the agents were `online` again, readings lost ((boot, seq) contiguity per agent,
//! after the backlogs drained: must be 0), mosquitto's CPU (/proc/<pid>/stat) and the
//! agents' median RSS. Results also go to `target/bench/storm-<N>.{json,md}`.
//!
//! One file a concern: `fleet` (the agents), `sampler` (the broker side, a bin a second),
//! `ledger` (what the subscriber saw), `storm` (one run's timeline), `table` (the output).

#[path = "../../tests/support/mod.rs"]
mod support;

// Shared with the agent bench (`benches/agent`); this bench uses a part of each.
#[allow(dead_code)]
#[path = "../agent/agent_proc.rs"]
mod agent_proc;
#[path = "../agent/names.rs"]
mod names;
#[allow(dead_code)]
#[path = "../agent/procfs.rs"]
mod procfs;
#[allow(dead_code)]
#[path = "../agent/report.rs"]
mod report;
#[allow(dead_code)]
#[path = "../agent/rig.rs"]
mod rig;

mod fleet;
mod ledger;
mod sampler;
mod storm;
mod table;

use std::time::Instant;

struct Args {
    agents: usize,
    jitter: Vec<bool>,
}

impl Args {
    fn parse() -> Args {
        let mut a = Args {
            agents: 200,
            jitter: vec![true, false],
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            match flag.as_str() {
                "--agents" => {
                    let n = it.next().unwrap_or_default();
                    a.agents = n
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .unwrap_or_else(|| panic!("--agents {n}: a number above 0"));
                }
                "--jitter" => {
                    a.jitter = match it.next().as_deref() {
                        Some("on") => vec![true],
                        Some("off") => vec![false],
                        other => panic!("--jitter {other:?}: on or off"),
                    }
                }
                // cargo bench passes --bench to every bench binary.
                _ => {}
            }
        }
        a
    }
}

/// Descriptors this process holds in the storm: per agent its Modbus connection and both
/// sides of its proxied MQTT connection, plus a margin. mosquitto inherits the same limit.
fn check_fd_limit(agents: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let need = 4 * agents as u64 + 256;
    println!(
        "open files: soft limit {}, hard {}, this run needs about {need}",
        lim.rlim_cur, lim.rlim_max
    );
    if lim.rlim_cur < need {
        panic!(
            "the open-files limit ({}) is too low for {agents} agents: raise it (ulimit -n {need})",
            lim.rlim_cur
        );
    }
}

fn main() {
    let args = Args::parse();
    check_fd_limit(args.agents);
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcomes = rt.block_on(async {
        // One simulator, one meter (unit 1), every agent its own connection to it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim_port = listener.local_addr().unwrap().port();
        let _sim = fieldlink::sim::serve_tcp(listener, vec![rig::drifting_meter(1, 1)]);
        let mut outcomes = Vec::new();
        for &jitter in &args.jitter {
            outcomes.push(storm::run(args.agents, sim_port, jitter).await);
        }
        outcomes
    });
    println!();
    println!("{}", table::summary(&outcomes));
    println!("{}", table::histograms(&outcomes));
    let report = table::report(&outcomes);
    report.write(
        &format!("storm-{}", args.agents),
        serde_json::json!({ "agents": args.agents, "down_s": storm::DOWN.as_secs() }),
        started,
    );
    let lost: u64 = outcomes.iter().map(|o| o.tally.lost).sum();
    if lost > 0 {
        eprintln!("readings lost: {lost}");
        std::process::exit(1);
    }
}
