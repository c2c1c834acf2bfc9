//! End to end: the real `fieldlink` binary between a real mosquitto and in-process Modbus
//! devices (TCP, and RTU over a pseudo-terminal pair). Each test has its own broker, topic
//! prefix and peers; every wait has a deadline.
mod support;

use std::time::{Duration, Instant};

use support::agent::{self, Agent, ConfigDir};
use support::expect;
use support::modbus::{self, words, Bank, Behaviour, SimDevice};
use support::pty::PtyPair;
use support::watch::Watch;
use support::Broker;
use tokio_modbus::prelude::ExceptionCode;

const FIRST_READING: Duration = Duration::from_secs(15);

/// A device with one point of each common shape, values chosen so that a wrong type, a
/// wrong word order or a missed scale gives a different number. Registers 0..64 of both
/// banks exist (zero unless set), so requests the planner merges across gaps are answered.
fn meter(unit: u8) -> SimDevice {
    let d = SimDevice::new(unit);
    d.set_registers(Bank::Holding, 0, &[0; 64])
        .set_registers(Bank::Input, 0, &[0; 64])
        .set_bits(Bank::Coil, 0, &[false; 16])
        .set_registers(Bank::Holding, 0, &words::i16(-123))
        .set_registers(Bank::Input, 10, &words::u32(305_419_896))
        .set_registers(Bank::Holding, 20, &words::f32(3.5))
        .set_registers(Bank::Holding, 30, &words::f32_cdab(-1234.5))
        .set_registers(Bank::Input, 40, &words::i32(-70_000))
        .set_bits(Bank::Coil, 0, &[false, true]);
    d
}

/// `(point name, expected value)` for [`meter`], computed from the values set above.
const METER_EXPECTED: &[(&str, f64)] = &[
    ("temp", -12.3),
    ("energy", 305_419_896.0),
    ("voltage", 3.5),
    ("power", -1234.5),
    ("flow", -70_000.0),
    ("relay", 1.0),
];

fn meter_points() -> &'static str {
    r#"
[[device.point]]
name = "temp"
table = "holding"
address = 0
type = "i16"
scale = 0.1
unit = "°C"

[[device.point]]
name = "energy"
table = "input"
address = 10
type = "u32"
unit = "Wh"

[[device.point]]
name = "voltage"
table = "holding"
address = 20
type = "f32"
unit = "V"

[[device.point]]
name = "power"
table = "holding"
address = 30
type = "f32"
order = "CDAB"
unit = "W"

[[device.point]]
name = "flow"
table = "input"
address = 40
type = "i32"

[[device.point]]
name = "relay"
table = "coil"
address = 1
type = "bool"
"#
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

fn single_point(name: &str, table: &str, address: u16, ty: &str) -> String {
    format!(
        r#"
[[device.point]]
name = "{name}"
table = "{table}"
address = {address}
type = "{ty}"
"#
    )
}

/// Broker, one meter on a TCP sim, an agent polling it every 100 ms, and a watcher on the
/// whole prefix started before the agent.
struct MeterRig {
    broker: Broker,
    prefix: String,
    _sim: modbus::TcpSim,
    agent: Agent,
    watch: Watch,
}

async fn meter_rig(test: &str) -> MeterRig {
    let broker = Broker::start();
    let prefix = agent::prefix(test);
    let sim = modbus::serve_tcp(&[&meter(1)]).await;
    let toml = format!(
        "{}{}{}{}",
        agent::head(broker.port, &prefix),
        tcp_bus("tcp0", &sim.address()),
        device("m1", "tcp0", 1, "100ms"),
        meter_points()
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let agent = Agent::start(&toml);
    MeterRig {
        broker,
        prefix,
        _sim: sim,
        agent,
        watch,
    }
}

#[tokio::test]
async fn readings_arrive_with_the_values_set_in_the_device_registers() {
    let rig = meter_rig("values").await;
    for (point, expected) in METER_EXPECTED {
        let topic = format!("{}/m1/{point}", rig.prefix);
        expect::reading(&rig.watch, &topic, *expected, FIRST_READING).await;
    }
    let temp = rig
        .watch
        .last_on(&format!("{}/m1/temp", rig.prefix))
        .unwrap();
    let json = temp.json();
    assert_eq!(json["unit"], "°C", "unit of measure in {}", temp.payload);
    let ts = json["ts"].as_u64().expect("ts is unix milliseconds");
    let now = support_now_ms();
    assert!(
        ts <= now && now - ts < 60_000,
        "ts {ts} should be a recent unix ms time (now {now})"
    );
    // Every later reading of every point keeps the same value (the registers do not change).
    for (point, expected) in METER_EXPECTED {
        let topic = format!("{}/m1/{point}", rig.prefix);
        for m in rig.watch.on(&topic) {
            assert!(expect::has_value(&m, *expected), "{topic}: {}", m.payload);
        }
    }
}

fn support_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn a_late_subscriber_gets_every_reading_and_the_status_retained() {
    let rig = meter_rig("late-sub").await;
    for (point, _) in METER_EXPECTED {
        let topic = format!("{}/m1/{point}", rig.prefix);
        rig.watch
            .wait_for(&topic, FIRST_READING, |m| expect::number(m).is_some())
            .await;
    }
    let late = Watch::start(rig.broker.port, &format!("{}/#", rig.prefix)).await;
    for (point, expected) in METER_EXPECTED {
        let topic = format!("{}/m1/{point}", rig.prefix);
        let m = late
            .wait_for(&topic, Duration::from_secs(5), |m| m.retain)
            .await;
        assert!(expect::has_value(&m, *expected), "{topic}: {}", m.payload);
    }
    let status = late
        .wait_for(
            &format!("{}/status", rig.prefix),
            Duration::from_secs(5),
            |m| m.retain,
        )
        .await;
    assert_eq!(status.payload, "online");
    let device_status = late
        .wait_for(
            &format!("{}/m1/status", rig.prefix),
            Duration::from_secs(5),
            |m| m.retain,
        )
        .await;
    assert_eq!(device_status.payload, "online");
}

#[tokio::test]
async fn the_gateway_status_is_online_after_connect() {
    let rig = meter_rig("online").await;
    expect::status(
        &rig.watch,
        &format!("{}/status", rig.prefix),
        "online",
        FIRST_READING,
    )
    .await;
}

#[tokio::test]
async fn a_killed_agent_is_reported_offline_by_the_broker_will() {
    let mut rig = meter_rig("will").await;
    let status_topic = format!("{}/status", rig.prefix);
    expect::status(&rig.watch, &status_topic, "online", FIRST_READING).await;
    rig.agent.sigkill();
    // mosquitto checks keep-alives about every 5 s: the will fires 1.5 x KA (2 s) plus up to
    // ~6 s after the last packet; a little more for a loaded machine.
    expect::status(
        &rig.watch,
        &status_topic,
        "offline",
        Duration::from_secs(3 + 6 + 6),
    )
    .await;
    let late = Watch::start(rig.broker.port, &status_topic).await;
    let m = late
        .wait_for(&status_topic, Duration::from_secs(5), |m| m.retain)
        .await;
    assert_eq!(m.payload, "offline", "the will is retained");
}

#[tokio::test]
async fn sigterm_publishes_offline_retained_and_exits_zero_within_5_s() {
    let mut rig = meter_rig("sigterm").await;
    let status_topic = format!("{}/status", rig.prefix);
    expect::status(&rig.watch, &status_topic, "online", FIRST_READING).await;
    rig.watch
        .wait_for(&format!("{}/m1/temp", rig.prefix), FIRST_READING, |_| true)
        .await;
    let asked = Instant::now();
    rig.agent.sigterm();
    let exit = rig.agent.wait_exit(Duration::from_secs(5)).await;
    eprintln!("agent exited {:?} after SIGTERM", asked.elapsed());
    assert_eq!(exit.code(), Some(0), "exit status after SIGTERM: {exit:?}");
    // Published before the clean disconnect, so no will was needed: it is already there.
    expect::status(&rig.watch, &status_topic, "offline", Duration::from_secs(2)).await;
    let late = Watch::start(rig.broker.port, &status_topic).await;
    let m = late
        .wait_for(&status_topic, Duration::from_secs(5), |m| m.retain)
        .await;
    assert_eq!(m.payload, "offline");
}

#[tokio::test]
async fn sigint_stops_the_agent_like_sigterm() {
    let mut rig = meter_rig("sigint").await;
    let status_topic = format!("{}/status", rig.prefix);
    expect::status(&rig.watch, &status_topic, "online", FIRST_READING).await;
    rig.agent.sigint();
    let exit = rig.agent.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(exit.code(), Some(0), "exit status after SIGINT: {exit:?}");
    expect::status(&rig.watch, &status_topic, "offline", Duration::from_secs(2)).await;
}

/// Readings on `topic` that arrived during `window` from now.
async fn count_during(watch: &Watch, topic: &str, window: Duration) -> usize {
    let before = watch.on(topic).len();
    tokio::time::sleep(window).await;
    watch.on(topic).len() - before
}

#[tokio::test]
async fn a_silent_device_goes_offline_while_its_neighbour_on_the_bus_keeps_its_poll_rate() {
    let broker = Broker::start();
    let prefix = agent::prefix("silent");
    let steady = SimDevice::new(1);
    steady.set_registers(Bank::Holding, 0, &[111]);
    let dying = SimDevice::new(2);
    dying.set_registers(Bank::Holding, 0, &[222]);
    let sim = modbus::serve_tcp(&[&steady, &dying]).await;
    let toml = format!(
        "{}{}{}{}{}{}",
        agent::head(broker.port, &prefix),
        tcp_bus("tcp0", &sim.address()),
        device("steady", "tcp0", 1, "100ms"),
        single_point("v", "holding", 0, "u16"),
        device("dying", "tcp0", 2, "100ms"),
        single_point("v", "holding", 0, "u16"),
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let _agent = Agent::start(&toml);
    let steady_topic = format!("{prefix}/steady/v");
    expect::reading(&watch, &steady_topic, 111.0, FIRST_READING).await;
    expect::reading(&watch, &format!("{prefix}/dying/v"), 222.0, FIRST_READING).await;
    expect::status(
        &watch,
        &format!("{prefix}/dying/status"),
        "online",
        FIRST_READING,
    )
    .await;

    // The window is long against the interval so that scheduling noise averages out; the
    // comparison is between two windows of the same run, never against a wall-clock rate.
    let window = Duration::from_secs(3);
    let before = count_during(&watch, &steady_topic, window).await;
    dying.set_behaviour(Behaviour::Silent);
    expect::status(
        &watch,
        &format!("{prefix}/dying/status"),
        "offline",
        Duration::from_secs(15),
    )
    .await;
    let during = count_during(&watch, &steady_topic, window).await;
    eprintln!(
        "steady readings per {window:?}: {before} before, {during} while its neighbour is silent"
    );
    assert!(
        before >= 5,
        "steady device should be polled every 100 ms: {before} in {window:?}"
    );
    assert!(
        during * 10 >= before * 6,
        "steady device slowed down by its silent neighbour: {before} -> {during} readings per {window:?}"
    );
    assert_eq!(
        watch
            .last_on(&format!("{prefix}/steady/status"))
            .map(|m| m.payload),
        Some("online".to_string()),
        "the steady device never left"
    );
    assert!(
        !watch
            .on(&format!("{prefix}/steady/status"))
            .iter()
            .any(|m| m.payload == "offline"),
        "the steady device was reported offline"
    );

    // And it comes back when it answers again.
    dying.set_behaviour(Behaviour::Normal);
    expect::status(
        &watch,
        &format!("{prefix}/dying/status"),
        "online",
        Duration::from_secs(30),
    )
    .await;
}

#[tokio::test]
async fn a_refused_address_marks_only_that_point_bad_and_the_device_stays_online() {
    let broker = Broker::start();
    let prefix = agent::prefix("exception");
    let dev = SimDevice::new(1);
    // Holding 0 and input 5 are mapped; holding 120 is not, so the device refuses it with
    // IllegalDataAddress. 120 registers away: no planner may merge it with address 0.
    dev.set_registers(Bank::Holding, 0, &[4242])
        .set_registers(Bank::Input, 5, &words::i16(-7));
    let sim = modbus::serve_tcp(&[&dev]).await;
    let toml = format!(
        "{}{}{}{}{}{}",
        agent::head(broker.port, &prefix),
        tcp_bus("tcp0", &sim.address()),
        device("d1", "tcp0", 1, "100ms"),
        single_point("good", "holding", 0, "u16"),
        single_point("refused", "holding", 120, "u16"),
        single_point("other", "input", 5, "i16"),
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let _agent = Agent::start(&toml);
    let good = format!("{prefix}/d1/good");
    let other = format!("{prefix}/d1/other");
    expect::reading(&watch, &good, 4242.0, FIRST_READING).await;
    expect::reading(&watch, &other, -7.0, FIRST_READING).await;
    // Several poll cycles with the refusal in each.
    let seen = watch.on(&good).len();
    support::wait_until(
        "10 more readings of the good point",
        Duration::from_secs(15),
        || (watch.on(&good).len() >= seen + 10).then_some(()),
    )
    .await;
    let refused = watch.on(&format!("{prefix}/d1/refused"));
    assert!(
        refused.iter().all(|m| expect::number(m).is_none()),
        "a refused point must not be published with a value: {refused:?}"
    );
    let statuses: Vec<_> = watch
        .on(&format!("{prefix}/d1/status"))
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("online"),
        "device status: {statuses:?}"
    );
    assert!(
        !statuses.iter().any(|s| s == "offline"),
        "a device that answers with an exception is alive: {statuses:?}"
    );
    for m in watch.on(&good) {
        assert!(expect::has_value(&m, 4242.0), "{good}: {}", m.payload);
    }
}

#[tokio::test]
async fn a_device_refusing_everything_stays_online_without_readings() {
    let broker = Broker::start();
    let prefix = agent::prefix("busy");
    let ok = SimDevice::new(1);
    ok.set_registers(Bank::Holding, 0, &[1]);
    let busy = SimDevice::new(2);
    busy.set_registers(Bank::Holding, 0, &[2]);
    busy.set_behaviour(Behaviour::Exception(ExceptionCode::ServerDeviceBusy));
    let sim = modbus::serve_tcp(&[&ok, &busy]).await;
    let toml = format!(
        "{}{}{}{}{}{}",
        agent::head(broker.port, &prefix),
        tcp_bus("tcp0", &sim.address()),
        device("ok", "tcp0", 1, "100ms"),
        single_point("v", "holding", 0, "u16"),
        device("busy", "tcp0", 2, "100ms"),
        single_point("v", "holding", 0, "u16"),
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let _agent = Agent::start(&toml);
    let ok_topic = format!("{prefix}/ok/v");
    expect::reading(&watch, &ok_topic, 1.0, FIRST_READING).await;
    support::wait_until(
        "10 readings of the answering device",
        Duration::from_secs(15),
        || (watch.on(&ok_topic).len() >= 10).then_some(()),
    )
    .await;
    let busy_values: Vec<_> = watch
        .on(&format!("{prefix}/busy/v"))
        .into_iter()
        .filter(|m| expect::number(m).is_some())
        .collect();
    assert!(
        busy_values.is_empty(),
        "refused reads published: {busy_values:?}"
    );
    assert!(
        !watch
            .on(&format!("{prefix}/busy/status"))
            .iter()
            .any(|m| m.payload == "offline"),
        "a device that refuses is alive, not offline"
    );
}

fn rtu_bus(name: &str, path: &str) -> String {
    format!(
        r#"
[[bus]]
name = "{name}"
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
async fn rtu_readings_over_a_pty_pair_arrive_with_their_values() {
    let broker = Broker::start();
    let prefix = agent::prefix("rtu");
    let pty = PtyPair::start();
    let _sim = modbus::serve_rtu(&pty.sim, 19200, &[&meter(7)]);
    let toml = format!(
        "{}{}{}{}",
        agent::head(broker.port, &prefix),
        rtu_bus("rtu0", agent::path_str(&pty.agent)),
        device("m7", "rtu0", 7, "100ms"),
        meter_points()
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let _agent = Agent::start(&toml);
    for (point, expected) in METER_EXPECTED {
        expect::reading(
            &watch,
            &format!("{prefix}/m7/{point}"),
            *expected,
            FIRST_READING,
        )
        .await;
    }
    expect::status(
        &watch,
        &format!("{prefix}/m7/status"),
        "online",
        FIRST_READING,
    )
    .await;
}

/// RTU frames carry no transaction id: a reply that comes after the agent gave up looks
/// exactly like the answer to its next request when that goes to the same unit with the same
/// function and quantity. The agent must wait the line out and flush before asking again.
/// Here one unit, two single-register points in two requests, and the second request is
/// answered 1.5 x the response timeout late every other time (a slow but working device):
/// a naive client would publish 4444 as `c` on the cycle after a late `d`
/// (peers_selftest shows the trap catching tokio-modbus' own client).
#[tokio::test]
async fn a_late_rtu_reply_is_never_taken_as_the_answer_to_the_next_request() {
    let broker = Broker::start();
    let prefix = agent::prefix("rtu-late");
    let pty = PtyPair::start();
    let slow = SimDevice::new(2);
    slow.set_registers(Bank::Holding, 0, &[3333])
        .set_registers(Bank::Holding, 200, &[4444]);
    slow.set_late_at_every(Bank::Holding, 200, Duration::from_millis(300), 2);
    let _sim = modbus::serve_rtu(&pty.sim, 19200, &[&slow]);
    let toml = format!(
        "{}{}{}{}{}",
        agent::head(broker.port, &prefix),
        rtu_bus("rtu0", agent::path_str(&pty.agent)),
        device("slow", "rtu0", 2, "100ms"),
        single_point("c", "holding", 0, "u16"),
        single_point("d", "holding", 200, "u16"),
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let _agent = Agent::start(&toml);
    let c = format!("{prefix}/slow/c");
    let d = format!("{prefix}/slow/d");
    expect::reading(&watch, &c, 3333.0, FIRST_READING).await;
    support::wait_until("4 late replies sent", Duration::from_secs(30), || {
        (slow.late_replies() >= 4).then_some(())
    })
    .await;
    // Polling goes on after the late replies: what follows each of them is what matters.
    let c_seen = watch.on(&c).len();
    support::wait_until(
        "3 more readings of c after the late replies",
        Duration::from_secs(20),
        || (watch.on(&c).len() >= c_seen + 3).then_some(()),
    )
    .await;
    assert_only_values(&watch, &[(&c, 3333.0), (&d, 4444.0)]);
    eprintln!(
        "slow device: {} requests, {} late replies; readings c: {}, d: {}",
        slow.requests(),
        slow.late_replies(),
        watch.on(&c).len(),
        watch.on(&d).len()
    );
}

/// Every numeric reading on each topic is that topic's own value.
fn assert_only_values(watch: &Watch, expected: &[(&str, f64)]) {
    for (topic, value) in expected {
        for m in watch.on(topic) {
            if let Some(v) = expect::number(&m) {
                assert!(
                    expect::close(v, *value),
                    "{topic} published {v}, the value of another request (expected {value}); \
                     a late reply was taken as an answer"
                );
            }
        }
    }
}

/// Same line, two units: the slow one's late replies must neither be taken as answers to the
/// prompt one nor stop it being polled.
#[tokio::test]
async fn a_late_rtu_unit_does_not_disturb_the_readings_of_another_unit_on_the_line() {
    let broker = Broker::start();
    let prefix = agent::prefix("rtu-late2");
    let pty = PtyPair::start();
    let prompt = SimDevice::new(1);
    prompt
        .set_registers(Bank::Holding, 0, &[1111])
        .set_registers(Bank::Holding, 200, &[2222]);
    let slow = SimDevice::new(2);
    slow.set_registers(Bank::Holding, 0, &[3333])
        .set_registers(Bank::Holding, 200, &[4444]);
    slow.set_late_at(Bank::Holding, 0, Duration::from_millis(300));
    let _sim = modbus::serve_rtu(&pty.sim, 19200, &[&prompt, &slow]);
    let toml = format!(
        "{}{}{}{}{}{}{}{}",
        agent::head(broker.port, &prefix),
        rtu_bus("rtu0", agent::path_str(&pty.agent)),
        device("prompt", "rtu0", 1, "100ms"),
        single_point("a", "holding", 0, "u16"),
        single_point("b", "holding", 200, "u16"),
        device("slow", "rtu0", 2, "100ms"),
        single_point("c", "holding", 0, "u16"),
        single_point("d", "holding", 200, "u16"),
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let _agent = Agent::start(&toml);
    let a = format!("{prefix}/prompt/a");
    let b = format!("{prefix}/prompt/b");
    expect::reading(&watch, &a, 1111.0, FIRST_READING).await;
    expect::reading(&watch, &b, 2222.0, FIRST_READING).await;
    support::wait_until(
        "3 late replies sent by the slow unit",
        Duration::from_secs(30),
        || (slow.late_replies() >= 3).then_some(()),
    )
    .await;
    let a_seen = watch.on(&a).len();
    support::wait_until(
        "10 more readings of prompt/a",
        Duration::from_secs(15),
        || (watch.on(&a).len() >= a_seen + 10).then_some(()),
    )
    .await;
    let c = format!("{prefix}/slow/c");
    let d = format!("{prefix}/slow/d");
    assert_only_values(
        &watch,
        &[(&a, 1111.0), (&b, 2222.0), (&c, 3333.0), (&d, 4444.0)],
    );
    assert!(
        !watch
            .on(&format!("{prefix}/prompt/status"))
            .iter()
            .any(|m| m.payload == "offline"),
        "the prompt unit was reported offline because of its slow neighbour"
    );
}

const GOOD_CHECK_CONFIG: &str = r#"[gateway]
id = "check-gw"

[mqtt]
host = "127.0.0.1"
port = 1883

[[bus]]
name = "tcp0"
type = "modbus_tcp"
address = "127.0.0.1:5020"
timeout = "300ms"

[[device]]
name = "d1"
bus = "tcp0"
unit = 1
interval = "1s"

[[device.point]]
name = "temp"
table = "input"
address = 0
type = "i16"
scale = 0.1
unit = "°C"
"#;

#[tokio::test]
async fn check_passes_a_good_config() {
    let dir = ConfigDir::new(GOOD_CHECK_CONFIG);
    let out = agent::run_to_end(
        &["check", "--config", dir.path_str()],
        Duration::from_secs(20),
    )
    .await;
    assert!(
        out.status.success(),
        "check failed on a good config:\n{}",
        out.all_output()
    );
    assert!(
        out.stdout.contains("d1") && out.stdout.contains("temp"),
        "check lists devices and points:\n{}",
        out.stdout
    );
}

#[tokio::test]
async fn check_fails_a_bad_config_naming_file_line_and_column_of_every_error() {
    // Two errors at once: a key the format does not know, and a device on a bus that is not
    // there; both must be reported, each at its own line.
    let bad = GOOD_CHECK_CONFIG
        .replace(
            "timeout = \"300ms\"\n",
            "timeout = \"300ms\"\ncolour = \"red\"\n",
        )
        .replace("bus = \"tcp0\"", "bus = \"nowhere\"");
    let lines: Vec<&str> = bad.lines().collect();
    let colour_line = lines.iter().position(|l| l.starts_with("colour")).unwrap() + 1;
    let bus_line = lines.iter().position(|l| l.contains("nowhere")).unwrap() + 1;
    let dir = ConfigDir::new(&bad);
    let out = agent::run_to_end(
        &["check", "--config", dir.path_str()],
        Duration::from_secs(20),
    )
    .await;
    let text = out.all_output();
    assert!(!out.status.success(), "check passed a bad config:\n{text}");
    let located = |line: usize, word: &str| {
        text.lines()
            .any(|l| l.contains(&format!("fieldlink.toml:{line}:")) && l.contains(word))
    };
    assert!(
        located(colour_line, "colour"),
        "no `fieldlink.toml:{colour_line}:<col>: ... colour ...` line in:\n{text}"
    );
    assert!(
        located(bus_line, "nowhere"),
        "no `fieldlink.toml:{bus_line}:<col>: ... nowhere ...` line in:\n{text}"
    );
}

#[tokio::test]
async fn read_prints_the_decoded_values_of_one_device() {
    let sim = modbus::serve_tcp(&[&meter(1)]).await;
    // No broker: `read` is the commissioning tool and must not need one.
    let toml = format!(
        "{}{}{}{}",
        agent::head(support::free_port(), "t/read"),
        tcp_bus("tcp0", &sim.address()),
        device("m1", "tcp0", 1, "1s"),
        meter_points()
    );
    let dir = ConfigDir::new(&toml);
    let out = agent::run_to_end(
        &["read", "--config", dir.path_str(), "--device", "m1"],
        Duration::from_secs(20),
    )
    .await;
    assert!(out.status.success(), "read failed:\n{}", out.all_output());
    for (point, shown) in [
        ("temp", "-12.3"),
        ("energy", "305419896"),
        ("voltage", "3.5"),
        ("power", "-1234.5"),
        ("flow", "-70000"),
    ] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.contains(point) && l.contains(shown)),
            "no line with {point} = {shown} in:\n{}",
            out.stdout
        );
    }
}

/// Issue 10 item 7: `check` shows the reads `run` makes, one interval group at a time: a
/// point with its own interval is never merged into the device's read.
#[tokio::test]
async fn check_prints_the_reads_of_each_interval_group_as_run_polls_them() {
    let toml = GOOD_CHECK_CONFIG.replace(
        "unit = \"°C\"\n",
        "unit = \"°C\"\n\n[[device.point]]\nname = \"setpoint\"\ntable = \"input\"\naddress = 1\ntype = \"i16\"\ninterval = \"10s\"\n",
    );
    let dir = ConfigDir::new(&toml);
    let out = agent::run_to_end(
        &["check", "--config", dir.path_str()],
        Duration::from_secs(20),
    )
    .await;
    assert!(out.status.success(), "check failed:\n{}", out.all_output());
    let lines: Vec<&str> = out.stdout.lines().collect();
    let after = |heading: &str, read: &str| {
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with(heading));
        at.is_some_and(|i| lines.get(i + 1).is_some_and(|l| l.contains(read)))
    };
    assert!(
        after("every 1s", "read Input 0..0") && after("every 10s", "read Input 1..1"),
        "check should list the 1 s and the 10 s reads apart:\n{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("0..1"),
        "check shows a merged read that run never makes:\n{}",
        out.stdout
    );
}

/// Issue 10 item 7: `read` polls like `run`, including the fallback to single reads when a
/// device refuses a read merged across registers it does not map.
#[tokio::test]
async fn read_falls_back_to_single_reads_where_the_device_refuses_a_merged_read_as_run_does() {
    let dev = SimDevice::new(1);
    // 1..4 unmapped: the default max_gap (8) merges 0 and 5 into one read, which is refused.
    dev.set_registers(Bank::Holding, 0, &[12])
        .set_registers(Bank::Holding, 5, &[34]);
    let sim = modbus::serve_tcp(&[&dev]).await;
    let toml = format!(
        "{}{}{}{}{}",
        agent::head(support::free_port(), "t/read-split"),
        tcp_bus("tcp0", &sim.address()),
        device("m1", "tcp0", 1, "1s"),
        single_point("low", "holding", 0, "u16"),
        single_point("high", "holding", 5, "u16"),
    );
    let dir = ConfigDir::new(&toml);
    let out = agent::run_to_end(
        &["read", "--config", dir.path_str(), "--device", "m1"],
        Duration::from_secs(20),
    )
    .await;
    assert!(out.status.success(), "read failed:\n{}", out.all_output());
    eprintln!("{}", out.stdout);
    for (point, shown) in [("low", "12"), ("high", "34")] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(point) && l.contains(shown)),
            "no line with {point} = {shown} in:\n{}",
            out.stdout
        );
    }
}

/// Issue 10 item 7: in `payload = "plain"` an empty string would be a zero-length retained
/// message, which deletes the topic's retained value: it is never published.
#[tokio::test]
async fn plain_mode_never_publishes_an_empty_string_as_a_zero_length_payload() {
    let broker = Broker::start();
    let prefix = agent::prefix("plain-empty");
    let dev = SimDevice::new(1);
    dev.set_registers(Bank::Holding, 0, &words::ascii("AB", 2))
        .set_registers(Bank::Holding, 10, &[5]);
    let sim = modbus::serve_tcp(&[&dev]).await;
    let toml = format!(
        "{}payload = \"plain\"\n{}{}{}\nregisters = 2\n{}",
        agent::head(broker.port, &prefix),
        tcp_bus("tcp0", &sim.address()),
        device("d1", "tcp0", 1, "100ms"),
        single_point("name", "holding", 0, "string").trim_end(),
        single_point("n", "holding", 10, "u16"),
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let _agent = Agent::start(&toml);
    let (name, n) = (format!("{prefix}/d1/name"), format!("{prefix}/d1/n"));
    watch
        .wait_for(&name, FIRST_READING, |m| m.payload == "AB")
        .await;
    dev.set_registers(Bank::Holding, 0, &[0, 0]);
    let seen = watch.on(&n).len();
    support::wait_until("10 more polls", Duration::from_secs(10), || {
        (watch.on(&n).len() >= seen + 10).then_some(())
    })
    .await;
    let empty: Vec<_> = watch
        .on(&name)
        .into_iter()
        .filter(|m| m.payload.is_empty())
        .collect();
    assert!(
        empty.is_empty(),
        "zero-length payloads on {name}: {empty:?}"
    );
}

/// Issue 10 item 2 with `payload = "device"`: a silent block is `null` in `values` and named
/// in the `quality` map beside it, in the poll where it turned bad.
#[tokio::test]
async fn device_mode_names_a_silent_block_in_the_quality_map_with_a_null_value() {
    let broker = Broker::start();
    let prefix = agent::prefix("device-quality");
    let dev = SimDevice::new(1);
    dev.set_registers(Bank::Holding, 0, &[1])
        .set_registers(Bank::Holding, 100, &[2]);
    dev.set_silent_at(Bank::Holding, 100);
    let sim = modbus::serve_tcp(&[&dev]).await;
    let toml = format!(
        "{}payload = \"device\"\n{}{}{}{}",
        agent::head(broker.port, &prefix),
        tcp_bus("tcp0", &sim.address()),
        device("d1", "tcp0", 1, "100ms"),
        single_point("good", "holding", 0, "u16"),
        single_point("block", "holding", 100, "u16"),
    );
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let _agent = Agent::start(&toml);
    let topic = format!("{prefix}/d1");
    let bad = watch
        .wait_for(&topic, FIRST_READING, |m| {
            m.json()["quality"]["block"] == "timeout"
        })
        .await;
    let json = bad.json();
    assert!(json["values"]["block"].is_null(), "{json}");
    assert!(json["ts"].is_u64() && json["seq"].is_u64(), "{json}");
    let seen = watch.on(&topic).len();
    support::wait_until("10 more polls", Duration::from_secs(10), || {
        (watch.on(&topic).len() >= seen + 10).then_some(())
    })
    .await;
    let marked = watch
        .on(&topic)
        .iter()
        .filter(|m| m.json().get("quality").is_some())
        .count();
    assert_eq!(marked, 1, "the block turned bad once");
    assert!(watch.on(&topic)[seen..]
        .iter()
        .all(|m| m.json()["values"]["good"] == 1));
}

#[tokio::test]
async fn demo_prints_online_and_retained_readings() {
    let out = agent::run_to_end(&["demo", "--seconds", "10"], Duration::from_secs(40)).await;
    let text = out.all_output();
    assert!(out.status.success(), "demo failed:\n{text}");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("/status") && l.contains("online")),
        "demo printed no `online` status:\n{text}"
    );
    // The demo marks retained messages with a leading `R`.
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("R ") && l.contains("\"value\"")),
        "demo printed no retained readings:\n{text}"
    );
}
