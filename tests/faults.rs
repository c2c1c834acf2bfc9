//! Modbus-side faults against the running agent: a TCP server that dies and comes back,
//! serial ports that are missing or disappear (the pty's link path goes away and returns, as
//! a udev /dev/serial/by-id link does when an adapter is pulled and plugged back), devices
//! and gateways that close connections, and devices that answer only in part: a silent or
//! late register block, an exception burst, line noise, a unit that is still booting.
mod support;

use std::time::{Duration, Instant};

use support::agent::{self, Agent};
use support::expect;
use support::modbus::{self, Bank, Behaviour, Habit, Read, SimDevice};
use support::pty::PtyPair;
use support::watch::{Message, Watch};
use support::Broker;
use tokio_modbus::prelude::ExceptionCode;

const FIRST_READING: Duration = Duration::from_secs(15);

fn one_point_device(name: &str, bus: &str, unit: u8) -> String {
    format!(
        r#"
[[device]]
name = "{name}"
bus = "{bus}"
unit = {unit}
interval = "100ms"

[[device.point]]
name = "v"
table = "holding"
address = 0
type = "u16"
"#
    )
}

fn rtu_bus(path: &str) -> String {
    format!(
        r#"
[[bus]]
name = "rtu0"
type = "modbus_rtu"
path = "{path}"
baud = 19200
parity = "none"
response_timeout = "200ms"
inter_request_delay = "5ms"
"#
    )
}

#[tokio::test]
async fn a_modbus_tcp_server_that_dies_and_restarts_takes_its_device_offline_and_back() {
    let broker = Broker::start();
    let prefix = agent::prefix("tcp-restart");
    let dev = SimDevice::new(1);
    dev.set_registers(Bank::Holding, 0, &[100]);
    let sim = modbus::serve_tcp(&[&dev]).await;
    let addr = sim.addr;
    let toml = format!(
        r#"{}
[[bus]]
name = "tcp0"
type = "modbus_tcp"
address = "{addr}"
timeout = "300ms"
{}"#,
        agent::head(broker.port, &prefix),
        one_point_device("d1", "tcp0", 1)
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let mut agent = Agent::start(&toml);
    let value = format!("{prefix}/d1/v");
    let status = format!("{prefix}/d1/status");
    expect::reading(&watch, &value, 100.0, FIRST_READING).await;
    expect::status(&watch, &status, "online", FIRST_READING).await;

    sim.stop().await;
    expect::status(&watch, &status, "offline", Duration::from_secs(15)).await;
    assert!(
        agent.is_running(),
        "the agent exited when its Modbus server died"
    );

    // A new value, so that a resumed reading cannot be an old one replayed.
    dev.set_registers(Bank::Holding, 0, &[200]);
    let _sim = modbus::serve_tcp_at(addr, &[&dev]).await;
    let back = Instant::now();
    watch
        .wait_for(&value, Duration::from_secs(30), |m| {
            expect::has_value(m, 200.0)
        })
        .await;
    expect::status(&watch, &status, "online", Duration::from_secs(10)).await;
    eprintln!(
        "readings resumed {:?} after the server came back",
        back.elapsed()
    );
    for m in watch.on(&value) {
        assert!(
            expect::has_value(&m, 100.0) || expect::has_value(&m, 200.0),
            "{value}: {}",
            m.payload
        );
    }
}

#[tokio::test]
async fn a_missing_rtu_port_at_start_is_reported_and_picked_up_when_it_appears() {
    let broker = Broker::start();
    let prefix = agent::prefix("rtu-missing");
    let dir = tempfile::tempdir().unwrap();
    let agent_tty = dir.path().join("ttyUSB-by-id-test");
    let sim_tty = dir.path().join("sim-end");
    let toml = format!(
        "{}{}{}",
        agent::head(broker.port, &prefix),
        rtu_bus(agent::path_str(&agent_tty)),
        one_point_device("d1", "rtu0", 1)
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let mut agent = Agent::start(&toml);
    let shown = agent_tty.display().to_string();
    let line = agent
        .wait_stderr(
            "an error naming the missing serial path",
            Duration::from_secs(15),
            |l| l.contains(&shown),
        )
        .await;
    eprintln!("agent said: {line}");
    expect::status(&watch, &format!("{prefix}/status"), "online", FIRST_READING).await;
    assert!(
        agent.is_running(),
        "the agent gave up on a missing serial port"
    );

    let dev = SimDevice::new(1);
    dev.set_registers(Bank::Holding, 0, &[777]);
    let pty = PtyPair::at(&sim_tty, &agent_tty);
    let _sim = modbus::serve_rtu(&pty.sim, 19200, &[&dev]);
    let appeared = Instant::now();
    expect::reading(
        &watch,
        &format!("{prefix}/d1/v"),
        777.0,
        Duration::from_secs(20),
    )
    .await;
    eprintln!(
        "first reading {:?} after the port appeared",
        appeared.elapsed()
    );
    expect::status(
        &watch,
        &format!("{prefix}/d1/status"),
        "online",
        Duration::from_secs(5),
    )
    .await;
}

/// Issue 6: the adapter is pulled (the pty and its link vanish) and plugged back at the same
/// path while the agent runs.
#[tokio::test]
async fn an_rtu_port_that_vanishes_and_returns_takes_its_devices_offline_and_back() {
    let broker = Broker::start();
    let prefix = agent::prefix("rtu-replug");
    let dir = tempfile::tempdir().unwrap();
    let agent_tty = dir.path().join("ttyUSB-by-id-test");
    let sim_tty = dir.path().join("sim-end");
    let dev = SimDevice::new(1);
    dev.set_registers(Bank::Holding, 0, &[10]);
    let mut pty = PtyPair::at(&sim_tty, &agent_tty);
    let sim = modbus::serve_rtu(&pty.sim, 19200, &[&dev]);
    let toml = format!(
        "{}{}{}",
        agent::head(broker.port, &prefix),
        rtu_bus(agent::path_str(&agent_tty)),
        one_point_device("d1", "rtu0", 1)
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let mut agent = Agent::start(&toml);
    let value = format!("{prefix}/d1/v");
    let status = format!("{prefix}/d1/status");
    expect::reading(&watch, &value, 10.0, FIRST_READING).await;
    expect::status(&watch, &status, "online", FIRST_READING).await;

    sim.stop().await;
    pty.unplug();
    expect::status(&watch, &status, "offline", Duration::from_secs(15)).await;
    assert!(
        agent.is_running(),
        "the agent exited when its serial port vanished"
    );

    dev.set_registers(Bank::Holding, 0, &[20]);
    let pty = PtyPair::at(&sim_tty, &agent_tty);
    let _sim = modbus::serve_rtu(&pty.sim, 19200, &[&dev]);
    let back = Instant::now();
    watch
        .wait_for(&value, Duration::from_secs(20), |m| {
            expect::has_value(m, 20.0)
        })
        .await;
    expect::status(&watch, &status, "online", Duration::from_secs(5)).await;
    eprintln!(
        "readings resumed {:?} after the port came back",
        back.elapsed()
    );
}

fn tcp_bus(name: &str, address: &str) -> String {
    format!(
        r#"
[[bus]]
name = "{name}"
type = "modbus_tcp"
address = "{address}"
timeout = "300ms"
"#
    )
}

fn device(name: &str, bus: &str, unit: u8, interval: &str) -> String {
    format!(
        r#"
[[device]]
name = "{name}"
bus = "{bus}"
unit = {unit}
interval = "{interval}"
"#
    )
}

fn point(name: &str, address: u16) -> String {
    format!(
        r#"
[[device.point]]
name = "{name}"
table = "holding"
address = {address}
type = "u16"
"#
    )
}

/// `{"value":null,"quality":"<quality>",…}`: a point published as bad.
fn is_bad(m: &Message, quality: &str) -> bool {
    let json = m.json();
    json.get("value") == Some(&serde_json::Value::Null) && json["quality"] == quality
}

fn bad_messages(watch: &Watch, topic: &str) -> Vec<Message> {
    watch
        .on(topic)
        .into_iter()
        .filter(|m| m.json().get("quality").is_some())
        .collect()
}

fn never_offline(watch: &Watch, status_topic: &str) {
    let statuses: Vec<String> = watch
        .on(status_topic)
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert!(
        !statuses.iter().any(|s| s == "offline"),
        "{status_topic} went offline: {statuses:?}"
    );
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("online"),
        "{status_topic}: {statuses:?}"
    );
}

/// Readings with a value on `topic` that arrive while `more` readings arrive on `reference`.
async fn readings_while(watch: &Watch, topic: &str, reference: &str, more: usize) -> usize {
    let count = |t: &str| {
        watch
            .on(t)
            .iter()
            .filter(|m| expect::number(m).is_some())
            .count()
    };
    let (before, reference_before) = (count(topic), count(reference));
    support::wait_until(
        &format!("{more} more readings on {reference}"),
        Duration::from_secs(30),
        || (count(reference) >= reference_before + more).then_some(()),
    )
    .await;
    count(topic) - before
}

/// The agent's log must say what happened in words, never a bare errno such as
/// "Success (os error 0)" or "Operation now in progress (os error 115)".
fn assert_no_bare_errno(agent: &Agent) {
    let bare: Vec<String> = agent
        .stderr
        .snapshot()
        .into_iter()
        .filter(|l| l.contains("os error"))
        .collect();
    assert!(
        bare.is_empty(),
        "log lines with a bare errno:\n{}",
        bare.join("\n")
    );
}

/// Issue 10 item 1: many devices and TCP-to-RS-485 gateways close the connection after each
/// reply. Two requests per poll, so a stale connection would be hit within every poll too.
#[tokio::test]
async fn a_tcp_device_that_closes_the_connection_after_every_reply_stays_online_and_is_read_every_poll(
) {
    let broker = Broker::start();
    let prefix = agent::prefix("close-each");
    let dev = SimDevice::new(1);
    dev.set_registers(Bank::Holding, 0, &[11])
        .set_registers(Bank::Holding, 100, &[22]);
    let sim = modbus::serve_tcp_with(&[&dev], Habit::CloseAfterReply).await;
    let toml = format!(
        "{}{}{}{}{}",
        agent::head(broker.port, &prefix),
        tcp_bus("tcp0", &sim.address()),
        device("d1", "tcp0", 1, "100ms"),
        point("a", 0),
        point("b", 100),
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let agent = Agent::start(&toml);
    let (a, b) = (format!("{prefix}/d1/a"), format!("{prefix}/d1/b"));
    expect::reading(&watch, &a, 11.0, FIRST_READING).await;
    expect::reading(&watch, &b, 22.0, FIRST_READING).await;
    let polls = readings_while(&watch, &b, &a, 20).await;
    assert!(
        polls >= 18,
        "b was read {polls} times while a was read 20 times"
    );
    never_offline(&watch, &format!("{prefix}/d1/status"));
    assert!(bad_messages(&watch, &a).is_empty() && bad_messages(&watch, &b).is_empty());
    assert!(
        sim.connections() >= 40,
        "one connection per request expected, the sim saw {}",
        sim.connections()
    );
    assert_no_bare_errno(&agent);
}

/// Issue 10 item 1: a device that closes connections idle for 300 ms, polled every 2 s:
/// every poll finds the connection closed and must reopen it without a failure. (The second
/// poll goes on the wall-clock grid, so it can come half an interval after the first: at a
/// 1 s interval, a first poll slower than 200 ms under qemu left the connection open for it.)
#[tokio::test]
async fn a_tcp_device_that_closes_idle_connections_is_read_at_every_poll_without_going_offline() {
    let broker = Broker::start();
    let prefix = agent::prefix("close-idle");
    let dev = SimDevice::new(1);
    dev.set_registers(Bank::Holding, 0, &[33]);
    let sim =
        modbus::serve_tcp_with(&[&dev], Habit::CloseWhenIdle(Duration::from_millis(300))).await;
    let toml = format!(
        "{}{}{}{}",
        agent::head(broker.port, &prefix),
        tcp_bus("tcp0", &sim.address()),
        device("d1", "tcp0", 1, "2s"),
        point("a", 0),
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let agent = Agent::start(&toml);
    let a = format!("{prefix}/d1/a");
    expect::reading(&watch, &a, 33.0, FIRST_READING).await;
    let seen = watch.on(&a).len();
    support::wait_until("4 more polls", Duration::from_secs(30), || {
        (watch.on(&a).len() >= seen + 4).then_some(())
    })
    .await;
    never_offline(&watch, &format!("{prefix}/d1/status"));
    for m in watch.on(&a) {
        assert!(expect::has_value(&m, 33.0), "{a}: {}", m.payload);
    }
    assert!(
        sim.connections() >= 5,
        "each poll should have reconnected: {} connections",
        sim.connections()
    );
    assert_no_bare_errno(&agent);
}

/// Issue 10 item 1: a connect that really fails, and a device that really closes every
/// connection before answering, still count as failures, and the log says what happened.
#[tokio::test]
async fn tcp_devices_that_refuse_or_drop_every_connection_go_offline_with_the_cause_in_words() {
    let broker = Broker::start();
    let prefix = agent::prefix("close-words");
    let dev = SimDevice::new(1);
    dev.set_registers(Bank::Holding, 0, &[1]);
    let dropping = modbus::serve_tcp_with(&[&dev], Habit::CloseAtOnce).await;
    let nobody = format!("127.0.0.1:{}", support::free_port());
    let toml = format!(
        "{}{}{}{}{}{}{}",
        agent::head(broker.port, &prefix),
        tcp_bus("gw", &dropping.address()),
        device("dropped", "gw", 1, "100ms"),
        point("a", 0),
        tcp_bus("void", &nobody),
        device("refused", "void", 1, "100ms"),
        point("a", 0),
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let agent = Agent::start(&toml);
    for d in ["dropped", "refused"] {
        expect::status(
            &watch,
            &format!("{prefix}/{d}/status"),
            "offline",
            FIRST_READING,
        )
        .await;
    }
    let refused = agent
        .wait_stderr(
            "the refused connect, in words",
            Duration::from_secs(5),
            |l| l.contains("refused") && l.contains(&format!("connection refused by {nobody}")),
        )
        .await;
    let closed = agent
        .wait_stderr(
            "the dropped connection, in words",
            Duration::from_secs(5),
            |l| l.contains("dropped") && l.contains("closed the connection"),
        )
        .await;
    eprintln!("{refused}\n{closed}");
    assert_no_bare_errno(&agent);
}

/// Issue 10 item 2: one register block never answers (`mute`), or always answers after the
/// timeout (`slow`). Each device stays online, its good points keep the rate of a healthy
/// reference device on the same server, and the bad block is published once as timeout.
#[tokio::test]
async fn a_silent_or_late_register_block_leaves_the_device_online_and_is_published_as_timeout_once()
{
    let broker = Broker::start();
    let prefix = agent::prefix("bad-block");
    let reference = SimDevice::new(1);
    reference.set_registers(Bank::Holding, 0, &[1]);
    let mute = SimDevice::new(2);
    let slow = SimDevice::new(3);
    for d in [&mute, &slow] {
        d.set_registers(Bank::Holding, 0, &[111])
            .set_registers(Bank::Holding, 100, &[999])
            .set_registers(Bank::Holding, 200, &[222]);
    }
    mute.set_silent_at(Bank::Holding, 100);
    slow.set_late_at(Bank::Holding, 100, Duration::from_millis(600));
    let sim = modbus::serve_tcp(&[&reference, &mute, &slow]).await;
    let mut toml = format!(
        "{}{}{}{}",
        agent::head(broker.port, &prefix),
        tcp_bus("tcp0", &sim.address()),
        device("reference", "tcp0", 1, "100ms"),
        point("a", 0),
    );
    for (name, unit) in [("mute", 2), ("slow", 3)] {
        toml += &device(name, "tcp0", unit, "100ms");
        toml += &point("a", 0);
        toml += &point("block", 100);
        toml += &point("b", 200);
    }
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let _agent = Agent::start(&toml);
    let reference_topic = format!("{prefix}/reference/a");
    for d in ["mute", "slow"] {
        expect::reading(&watch, &format!("{prefix}/{d}/a"), 111.0, FIRST_READING).await;
        expect::reading(&watch, &format!("{prefix}/{d}/b"), 222.0, FIRST_READING).await;
        watch
            .wait_for(&format!("{prefix}/{d}/block"), FIRST_READING, |m| {
                is_bad(m, "timeout")
            })
            .await;
    }
    // The bad block is tried again now and then (backoff), without effect on the rest.
    let tries = |d: &SimDevice| d.reads().iter().filter(|r| r.start == 100).count();
    support::wait_until(
        "the bad blocks tried 3 times",
        Duration::from_secs(20),
        || (tries(&mute) >= 3 && tries(&slow) >= 3).then_some(()),
    )
    .await;
    let window = 30;
    for d in ["mute", "slow"] {
        for p in ["a", "b"] {
            let topic = format!("{prefix}/{d}/{p}");
            let n = readings_while(&watch, &topic, &reference_topic, window).await;
            assert!(
                n * 10 >= window * 6,
                "{topic}: {n} readings while the reference had {window}"
            );
        }
    }
    for d in ["mute", "slow"] {
        never_offline(&watch, &format!("{prefix}/{d}/status"));
        let block = format!("{prefix}/{d}/block");
        let all: Vec<String> = watch.on(&block).into_iter().map(|m| m.payload).collect();
        assert_eq!(
            all.len(),
            1,
            "{block} should be published once, as bad: {all:?}"
        );
        let json = watch.on(&block)[0].json();
        assert!(json["ts"].is_u64() && json["seq"].is_u64(), "{json}");
    }
}

/// Issue 10 item 2: a device that refuses everything for a while (busy) is alive: it stays
/// online, each point is published once as `exception:6`, then values resume.
#[tokio::test]
async fn an_exception_burst_publishes_each_point_bad_once_and_values_resume_after_it() {
    let broker = Broker::start();
    let prefix = agent::prefix("exc-burst");
    let dev = SimDevice::new(1);
    dev.set_registers(Bank::Holding, 0, &[5])
        .set_registers(Bank::Holding, 100, &[6]);
    let sim = modbus::serve_tcp(&[&dev]).await;
    let toml = format!(
        "{}{}{}{}{}",
        agent::head(broker.port, &prefix),
        tcp_bus("tcp0", &sim.address()),
        device("d1", "tcp0", 1, "100ms"),
        point("a", 0),
        point("b", 100),
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let _agent = Agent::start(&toml);
    let (a, b) = (format!("{prefix}/d1/a"), format!("{prefix}/d1/b"));
    expect::reading(&watch, &a, 5.0, FIRST_READING).await;
    expect::reading(&watch, &b, 6.0, FIRST_READING).await;

    dev.set_behaviour(Behaviour::Exception(ExceptionCode::ServerDeviceBusy));
    for t in [&a, &b] {
        watch
            .wait_for(t, Duration::from_secs(5), |m| is_bad(m, "exception:6"))
            .await;
    }
    let refused_from = dev.requests();
    support::wait_until("10 more refused requests", Duration::from_secs(10), || {
        (dev.requests() >= refused_from + 10).then_some(())
    })
    .await;
    dev.set_behaviour(Behaviour::Normal);
    for (t, v) in [(&a, 5.0), (&b, 6.0)] {
        let resumed = watch.on(t).len();
        support::wait_until(
            &format!("a value on {t} again"),
            Duration::from_secs(5),
            || {
                watch.on(t)[resumed..]
                    .iter()
                    .any(|m| expect::has_value(m, v))
                    .then_some(())
            },
        )
        .await;
        let bad = bad_messages(&watch, t);
        assert_eq!(bad.len(), 1, "{t}: bad once per burst, got {bad:?}");
    }
    never_offline(&watch, &format!("{prefix}/d1/status"));
}

/// Issue 10 item 2: one garbled reply on an RS-485 line (a broken CRC) is retried at once;
/// the device neither goes offline nor has a point published bad.
#[tokio::test]
async fn a_garbled_rtu_reply_is_retried_once_and_the_device_stays_online() {
    let broker = Broker::start();
    let prefix = agent::prefix("rtu-noise");
    let pty = PtyPair::start();
    let dev = SimDevice::new(7);
    dev.set_registers(Bank::Holding, 0, &[70]);
    let _sim = modbus::serve_rtu(&pty.sim, 19200, &[&dev]);
    let toml = format!(
        "{}{}{}",
        agent::head(broker.port, &prefix),
        rtu_bus(agent::path_str(&pty.agent)),
        one_point_device("d7", "rtu0", 7),
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let _agent = Agent::start(&toml);
    let v = format!("{prefix}/d7/v");
    expect::reading(&watch, &v, 70.0, FIRST_READING).await;
    for round in 1..=3 {
        dev.garble_next(1);
        support::wait_until("the garbled reply sent", Duration::from_secs(5), || {
            (dev.garbled_replies() >= round).then_some(())
        })
        .await;
        let seen = watch.on(&v).len();
        support::wait_until("5 more readings", Duration::from_secs(10), || {
            (watch.on(&v).len() >= seen + 5).then_some(())
        })
        .await;
    }
    never_offline(&watch, &format!("{prefix}/d7/status"));
    assert!(
        bad_messages(&watch, &v).is_empty(),
        "{:?}",
        bad_messages(&watch, &v)
    );
}

/// Issue 10 item 2: `offline_after` (default 3) consecutive failed polls take a device
/// offline; two in a row do not.
#[tokio::test]
async fn a_device_goes_offline_after_three_failed_polls_in_a_row_and_not_after_two() {
    let broker = Broker::start();
    let prefix = agent::prefix("offline-after");
    let dev = SimDevice::new(1);
    dev.set_registers(Bank::Holding, 0, &[9]);
    let sim = modbus::serve_tcp(&[&dev]).await;
    let toml = format!(
        "{}{}{}{}",
        agent::head(broker.port, &prefix),
        tcp_bus("tcp0", &sim.address()),
        device("d1", "tcp0", 1, "100ms"),
        point("a", 0),
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let _agent = Agent::start(&toml);
    let (a, status) = (format!("{prefix}/d1/a"), format!("{prefix}/d1/status"));
    expect::reading(&watch, &a, 9.0, FIRST_READING).await;
    expect::status(&watch, &status, "online", FIRST_READING).await;

    for _ in 0..3 {
        let from = dev.requests();
        dev.silent_for_next(2);
        support::wait_until(
            "two failed polls and an answer",
            Duration::from_secs(10),
            || (dev.requests() >= from + 4).then_some(()),
        )
        .await;
    }
    never_offline(&watch, &status);
    assert!(
        bad_messages(&watch, &a).is_empty(),
        "{:?}",
        bad_messages(&watch, &a)
    );

    let from = dev.requests();
    dev.set_behaviour(Behaviour::Silent);
    expect::status(&watch, &status, "offline", Duration::from_secs(10)).await;
    assert!(
        dev.requests() - from >= 3,
        "offline after {} unanswered requests",
        dev.requests() - from
    );
    dev.set_behaviour(Behaviour::Normal);
    expect::status(&watch, &status, "online", Duration::from_secs(10)).await;
}

/// Issue 10 item 2: a booting device refuses everything with exception 2 for a while. The
/// agent then reads the points of a merged request one by one, but restores the merged read
/// once the device answers, since the points leave no gap. Where the device really lacks the
/// registers between two points (`gappy`), the split stays, proven by single reads.
#[tokio::test]
async fn a_merged_read_refused_while_the_device_boots_is_restored_once_it_answers() {
    let broker = Broker::start();
    let prefix = agent::prefix("boot-exc2");
    let booting = SimDevice::new(1);
    booting.set_registers(Bank::Holding, 0, &[10, 20]);
    booting.set_behaviour(Behaviour::Exception(ExceptionCode::IllegalDataAddress));
    let gappy = SimDevice::new(2);
    gappy
        .set_registers(Bank::Holding, 0, &[30])
        .set_registers(Bank::Holding, 5, &[40]);
    let sim = modbus::serve_tcp(&[&booting, &gappy]).await;
    let toml = format!(
        "{}{}{}{}{}{}{}{}",
        agent::head(broker.port, &prefix),
        tcp_bus("tcp0", &sim.address()),
        device("booting", "tcp0", 1, "100ms"),
        point("a", 0),
        point("b", 1),
        device("gappy", "tcp0", 2, "100ms"),
        point("a", 0),
        point("b", 5),
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let _agent = Agent::start(&toml);
    let merged = Read {
        bank: Bank::Holding,
        start: 0,
        count: 2,
    };
    let single = Read {
        bank: Bank::Holding,
        start: 0,
        count: 1,
    };
    support::wait_until(
        "the booting device read point by point",
        FIRST_READING,
        || booting.reads().contains(&single).then_some(()),
    )
    .await;
    booting.set_behaviour(Behaviour::Normal);
    let booted = booting.reads().len();
    expect::reading(&watch, &format!("{prefix}/booting/b"), 20.0, FIRST_READING).await;
    support::wait_until(
        "five merged reads in a row after the boot",
        Duration::from_secs(30),
        || {
            let reads = booting.reads();
            (reads.len() >= booted + 5 && reads[reads.len() - 5..].iter().all(|r| *r == merged))
                .then_some(())
        },
    )
    .await;
    expect::reading(&watch, &format!("{prefix}/booting/a"), 10.0, FIRST_READING).await;

    let gappy_merged = Read {
        bank: Bank::Holding,
        start: 0,
        count: 6,
    };
    let b = format!("{prefix}/gappy/b");
    expect::reading(&watch, &b, 40.0, FIRST_READING).await;
    let seen = watch.on(&b).len();
    support::wait_until(
        "100 more readings of gappy",
        Duration::from_secs(30),
        || (watch.on(&b).len() >= seen + 100).then_some(()),
    )
    .await;
    let tries = gappy.reads().iter().filter(|r| **r == gappy_merged).count();
    assert!(
        tries <= 2,
        "the proven gap's merged read was tried {tries} times"
    );
    for d in ["booting", "gappy"] {
        never_offline(&watch, &format!("{prefix}/{d}/status"));
    }
}
