//! The long chaos soak (issue 10, item 8): `cargo bench --bench soak -- --minutes N`
//! [`--seed S`]. The engine (tests/chaos) injects a fault every 5-20 s, drawn from a seeded
//! RNG (printed; `--seed` or FIELDLINK_SOAK_SEED replays it), then checks that every
//! reading was delivered or counted dropped and prints the table. Exits 1 if an invariant
//! failed. Needs mosquitto and socat (tests/run.sh installs them); libfaketime and root
//! (for a tmpfs) enable the clock-step and disk-full faults, which are skipped otherwise.

#[path = "../tests/chaos/mod.rs"]
mod chaos;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let minutes: f64 = arg("--minutes").map_or(30.0, |m| {
        m.parse()
            .unwrap_or_else(|_| panic!("--minutes {m}: not a number"))
    });
    let default_seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let seed = arg("--seed")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| chaos::Settings::seed_from_env(default_seed));
    let settings = chaos::Settings {
        seed,
        duration: Duration::from_secs_f64(minutes * 60.0),
        each_kind_first: true,
        max_faults: None,
        gap: (Duration::from_secs(5), Duration::from_secs(20)),
        hold: (Duration::from_secs(2), Duration::from_secs(10)),
        warm_up: Duration::from_secs(30),
        drain_deadline: Duration::from_secs(60),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(chaos::run(settings));
    println!("{}", report.table());
    if !report.violations.is_empty() {
        std::process::exit(1);
    }
}
