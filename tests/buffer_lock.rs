//! One agent per state directory (issue 10, item 4), through the real binary: a second
//! `fieldlink run` on the same directory refuses to start, naming the directory and the
//! first agent's pid; the first runs on undisturbed; `buffer stats` still reads beside it;
//! and a `kill -9` leaves no stale lock.
mod support;

use std::time::Duration;

use support::agent::{self, run_command_to_end, Agent};
use support::modbus::{self, Bank, SimDevice};
use support::watch::Watch;
use support::{wait_until, Broker};

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_state_directory_refuses_to_start_and_the_first_runs_on() {
    let broker = Broker::start();
    let prefix = agent::prefix("fl-lock");
    let device = SimDevice::new(1);
    device.set_registers(Bank::Holding, 0, &[230]);
    let sim = modbus::serve_tcp(&[&device]).await;
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let mut toml = agent::head(broker.port, &prefix);
    toml += &format!(
        "\n[[bus]]\nname = \"plant\"\ntype = \"modbus_tcp\"\naddress = \"{}\"\n\
         \n[[device]]\nname = \"dev1\"\nbus = \"plant\"\nunit = 1\ninterval = \"100ms\"\n\
         \n[[device.point]]\nname = \"v\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\n",
        sim.address()
    );
    let mut first = Agent::start(&toml);
    let topic = format!("{prefix}/dev1/v");
    watch.wait_for(&topic, DEADLINE, |_| true).await;

    let second = first.command_beside(&["run", "--config", first.config.path_str()]);
    let out = run_command_to_end(second, "a second run", DEADLINE).await;
    assert_eq!(out.status.code(), Some(1), "{}", out.all_output());
    let dir = first.state_dir().display().to_string();
    assert!(
        out.stderr.contains(&dir) && out.stderr.contains(&format!("pid {}", first.pid())),
        "the refusal names the directory {dir} and the running agent's pid {}: {}",
        first.pid(),
        out.stderr
    );
    assert_eq!(
        out.stderr.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "one line, nothing else started: {}",
        out.stderr
    );

    // The first is undisturbed: still running and still publishing.
    let before = watch.on(&topic).len();
    wait_until("more readings from the first agent", DEADLINE, || {
        (watch.on(&topic).len() > before + 5).then_some(())
    })
    .await;
    assert!(first.is_running());
    assert!(
        !first
            .stderr
            .any(|l| l.contains("ERROR") || l.contains("WARN")),
        "{}",
        first.stderr.text()
    );
    let stats = first.buffer_stats().await;
    assert!(
        stats.status.success() && stats.stdout.contains("depth:"),
        "buffer stats reads beside a running agent: {}",
        stats.all_output()
    );

    // kill -9: the kernel drops the lock with its holder, so a new agent starts.
    first.sigkill();
    first.restart();
    first
        .wait_stderr("the restarted agent running", DEADLINE, |l| {
            l.contains("fieldlink started")
        })
        .await;
    assert!(first.is_running());
    first.sigterm();
    assert!(first.wait_exit(DEADLINE).await.success());
}
