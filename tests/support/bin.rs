//! Starting the agent binary from tests, with the cross runner (qemu) in front when the tests
//! themselves run under one: binfmt_misc is not always mounted, so a foreign binary cannot
//! be exec'd directly even though the test process runs fine under `qemu-*-static`.

use std::process::Command;

/// Path of the `fieldlink` binary cargo built for this test run.
pub const AGENT_BIN: &str = env!("CARGO_BIN_EXE_fieldlink");

/// A `Command` that runs the agent binary: `FIELDLINK_TEST_RUNNER` (e.g.
/// `"qemu-aarch64-static -L /usr/aarch64-linux-gnu"`) or, failing that, cargo's
/// `CARGO_TARGET_<TRIPLE>_RUNNER` for the target these tests were built for, goes in front.
///
/// The agent's state directory (its store-and-forward buffer) defaults to a fresh folder of
/// its own, so tests never share, or replay, each other's readings through
/// /var/lib/fieldlink; a test that restarts an agent on the same state sets
/// `STATE_DIRECTORY` itself.
pub fn agent_command() -> Command {
    let mut cmd = match runner() {
        Some(words) if !words.is_empty() => {
            let mut cmd = Command::new(&words[0]);
            cmd.args(&words[1..]).arg(AGENT_BIN);
            cmd
        }
        _ => Command::new(AGENT_BIN),
    };
    cmd.env("STATE_DIRECTORY", fresh_state_dir());
    cmd
}

fn fresh_state_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    // Under cargo's own scratch folder for integration tests (target/tmp), so what a test
    // leaves behind never piles up in /tmp.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "state-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a test state directory");
    dir
}

/// The runner words, if any. Only the runner variable of *our* target counts: on a host
/// build the aarch64 runner may well be set for another cargo invocation.
pub fn runner() -> Option<Vec<String>> {
    let from = |key: &str| {
        std::env::var(key)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
    };
    if let Some(words) = from("FIELDLINK_TEST_RUNNER") {
        return Some(words);
    }
    own_target_runner_keys().iter().find_map(|key| from(key))
}

fn own_target_runner_keys() -> &'static [&'static str] {
    if cfg!(all(target_arch = "aarch64", target_env = "gnu")) {
        &["CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER"]
    } else if cfg!(all(target_arch = "arm", target_env = "gnu")) {
        &[
            "CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER",
            "CARGO_TARGET_ARM_UNKNOWN_LINUX_GNUEABIHF_RUNNER",
        ]
    } else {
        &[]
    }
}
