//! What `check` accepts, `run` must run: the real agent with every configured duration at the
//! shortest, then at the longest value the validator accepts (read from
//! `fieldlink::config::limits`, so the test follows the rules), against a real mosquitto, a
//! Modbus TCP device, a Modbus RTU device on a pty and serial_line sensors on ptys. It must
//! poll, publish, lose and regain its broker (the backoff path), and stop cleanly on SIGTERM,
//! without a panic. Durations of ~3e11 years, which `check` used to accept, aborted `run`
//! with an overflow.
mod support;

use std::time::Duration;

use fieldlink::config::limits::{self, DurationRange};
use fieldlink::config::units::{format_duration, rtu_min_silence};
use tokio::io::AsyncWriteExt;
use tokio_serial::SerialStream;

use support::agent::{self, Agent};
use support::modbus::{self, Bank, SimDevice};
use support::pty::PtyPair;
use support::watch::Watch;
use support::Broker;

/// The RTU bus's baud rate: fast, so that the shortest response timeout (10 ms) is more than
/// a frame's time on the (emulated) wire.
const RTU_BAUD: u32 = 115_200;

#[derive(Clone, Copy, PartialEq)]
enum End {
    Shortest,
    Longest,
}

/// The value of `range` at `end`, as the config file writes it.
fn at(range: &DurationRange, end: End) -> String {
    let d = match end {
        End::Shortest => range.min,
        End::Longest => range.max,
    };
    format!("\"{}\"", format_duration(d))
}

fn config(end: End, broker_port: u16, prefix: &str, peers: &Peers) -> String {
    let poll = at(&limits::POLL_INTERVAL, end);
    let timeout = at(&limits::REQUEST_TIMEOUT, end);
    let inter_request_delay = match end {
        End::Shortest => rtu_min_silence(RTU_BAUD, 8, false, 1),
        End::Longest => limits::INTER_REQUEST_DELAY_MAX,
    };
    // A query must be answered within its interval: the query sensor's interval is the
    // shortest one that leaves room for the shortest timeout (at the long end, both maxima).
    let (query_interval, query_stale_after) = match end {
        End::Shortest => {
            let i = limits::REQUEST_TIMEOUT.min * 2;
            (
                format!("\"{}\"", format_duration(i)),
                format!("\"{}\"", format_duration(i)),
            )
        }
        End::Longest => (poll.clone(), at(&limits::STALE_AFTER, end)),
    };
    format!(
        r#"[gateway]
id = "{gateway}"

[mqtt]
host = "127.0.0.1"
port = {broker_port}
prefix = "{prefix}"
keep_alive = {keep_alive}
connect_timeout = {connect_timeout}
backoff_initial = {backoff_initial}
backoff_max = {backoff_max}
deadband = 0.5
max_interval = {max_interval}

[buffer]
durability = "{durability}"
commit_interval = {commit_interval}
max_age = {max_age}

[[bus]]
name = "tcp"
type = "modbus_tcp"
address = "{tcp}"
timeout = {timeout}

[[bus]]
name = "refusing"
type = "modbus_tcp"
address = "{refusing}"
timeout = {timeout}

[[bus]]
name = "rtu"
type = "modbus_rtu"
path = "{rtu}"
baud = {RTU_BAUD}
response_timeout = {timeout}
inter_request_delay = "{inter_request_delay}"

[[bus]]
name = "stream"
type = "serial_line"
path = "{stream}"

[[bus]]
name = "asked"
type = "serial_line"
path = "{asked}"

[[device]]
name = "plc"
bus = "tcp"
unit = 1
interval = {poll}
point = [
    {{ name = "level", table = "holding", address = 0, type = "u16", interval = {poll} }},
]

[[device]]
name = "gone"
bus = "refusing"
unit = 1
interval = {poll}
point = [{{ name = "level", table = "holding", address = 0, type = "u16" }}]

[[device]]
name = "meter"
bus = "rtu"
unit = 1
interval = {poll}
point = [{{ name = "level", table = "holding", address = 0, type = "u16" }}]

[[device]]
name = "thermo"
bus = "stream"
interval = {poll}
stale_after = {stale_after}
point = [{{ name = "temp", regex = 'T=(?P<value>[0-9.]+)' }}]

[[device]]
name = "silent"
bus = "asked"
interval = {query_interval}
query = "R\r"
response_timeout = {timeout}
stale_after = {query_stale_after}
point = [{{ name = "temp", regex = 'T=(?P<value>[0-9.]+)' }}]
"#,
        gateway = support::unique("gw"),
        // "always" commits every reading before it is published, so at the long end the
        // first reading would wait a whole commit interval (1 minute): there the buffer runs
        // in "outage" mode, where the interval is accepted but paces nothing.
        durability = match end {
            End::Shortest => "always",
            End::Longest => "outage",
        },
        keep_alive = at(&limits::KEEP_ALIVE, end),
        connect_timeout = at(&limits::CONNECT_TIMEOUT, end),
        backoff_initial = at(&limits::BACKOFF_INITIAL, end),
        backoff_max = at(&limits::BACKOFF_MAX, end),
        max_interval = at(&limits::MAX_INTERVAL, end),
        commit_interval = at(&limits::COMMIT_INTERVAL, end),
        max_age = at(&limits::MAX_AGE, end),
        stale_after = at(&limits::STALE_AFTER, end),
        inter_request_delay = format_duration(inter_request_delay),
        tcp = peers.tcp.address(),
        refusing = peers.refusing,
        rtu = peers.rtu.agent.display(),
        stream = peers.stream_path.display(),
        asked = peers.asked_path.display(),
    )
}

/// Everything the agent talks to besides the broker.
struct Peers {
    tcp: modbus::TcpSim,
    /// A port nobody listens on: every connect is refused (the failure and backoff path).
    refusing: String,
    rtu: PtyPair,
    _rtu_sim: modbus::RtuSim,
    /// The streaming sensor's pty master, written by `_streamer`.
    stream_path: std::path::PathBuf,
    _streamer: tokio::task::JoinHandle<()>,
    /// A query sensor that never answers: its response timeout always runs out.
    asked_path: std::path::PathBuf,
    _asked: (SerialStream, SerialStream),
    _links: tempfile::TempDir,
}

async fn peers() -> Peers {
    let device = SimDevice::new(1);
    device.set_registers(Bank::Holding, 0, &[42]);
    let tcp = modbus::serve_tcp(&[&device]).await;
    let refusing = format!("127.0.0.1:{}", support::free_port());
    let rtu = PtyPair::start();
    let rtu_sim = modbus::serve_rtu(&rtu.sim, RTU_BAUD, &[&device]);

    let links = tempfile::tempdir().unwrap();
    let (mut stream_master, stream_slave) = SerialStream::pair().expect("openpty");
    let stream_path = links.path().join("stream-tty");
    std::os::unix::fs::symlink(
        tokio_serial::SerialPort::name(&stream_slave).unwrap(),
        &stream_path,
    )
    .unwrap();
    // The sensor's own cadence (a peer's behaviour, not a wait of the test).
    let streamer = tokio::spawn(async move {
        let _slave = stream_slave;
        loop {
            if stream_master.write_all(b"T=21.5\r\n").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let (asked_master, asked_slave) = SerialStream::pair().expect("openpty");
    let asked_path = links.path().join("asked-tty");
    std::os::unix::fs::symlink(
        tokio_serial::SerialPort::name(&asked_slave).unwrap(),
        &asked_path,
    )
    .unwrap();
    Peers {
        tcp,
        refusing,
        rtu,
        _rtu_sim: rtu_sim,
        stream_path,
        _streamer: streamer,
        asked_path,
        _asked: (asked_master, asked_slave),
        _links: links,
    }
}

/// Waits for a message on `topic`, failing at once (with the line) if the agent panicked.
async fn published(watch: &Watch, agent: &Agent, topic: &str) {
    support::wait_until(
        &format!("a message on {topic}"),
        Duration::from_secs(20),
        || {
            if let Some(line) = agent
                .stderr
                .snapshot()
                .iter()
                .find(|l| l.contains("panicked"))
            {
                panic!("the agent panicked: {line}");
            }
            (!watch.on(topic).is_empty()).then_some(())
        },
    )
    .await;
}

/// Runs the agent with every duration at `end` through polling, publishing, losing the
/// broker and stopping, and checks that it never panicked.
async fn the_agent_runs_with_every_duration_at(end: End) {
    let mut broker = Broker::start();
    let prefix = agent::prefix("extremes");
    let peers = peers().await;
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let toml = config(end, broker.port, &prefix, &peers);
    let mut agent = Agent::start(&toml);

    // Every poll loop went round at least once: each device said whether it answers. At the
    // long end, where no timeout can run out on a healthy peer, the answering ones published
    // readings too. (At the short end a 10 ms timeout on a busy machine may or may not be
    // met, so only the availability is awaited there.)
    let deadline = Duration::from_secs(20);
    // The query sensor that never answers goes offline only after `stale_after`: at the long
    // end that is a week away, and it stays in its first wait.
    let devices: &[&str] = match end {
        End::Shortest => &["plc", "gone", "meter", "thermo", "silent"],
        End::Longest => &["plc", "gone", "meter", "thermo"],
    };
    for device in devices {
        published(&watch, &agent, &format!("{prefix}/{device}/status")).await;
    }
    if end == End::Longest {
        for topic in ["plc/level", "meter/level", "thermo/temp"] {
            published(&watch, &agent, &format!("{prefix}/{topic}")).await;
        }
    }
    published(&watch, &agent, &format!("{prefix}/health")).await;

    // The broker goes: the uplink computes its backoff from the configured bounds.
    broker.kill();
    agent
        .wait_stderr("the link declared down", deadline, |l| {
            l.contains("MQTT link down")
        })
        .await;
    if end == End::Shortest {
        // Backoff starts at 100 ms: the agent is back as soon as the broker is.
        broker.restart();
        let ups = || {
            agent
                .stderr
                .snapshot()
                .iter()
                .filter(|l| l.contains("MQTT link up"))
                .count()
        };
        support::wait_until("the link up again", deadline, || (ups() >= 2).then_some(())).await;
    }

    agent.sigterm();
    let exit = agent.wait_exit(Duration::from_secs(15)).await;
    let panics: Vec<String> = agent
        .stderr
        .snapshot()
        .into_iter()
        .filter(|l| l.contains("panicked"))
        .collect();
    assert!(panics.is_empty(), "the agent panicked: {panics:#?}");
    assert_eq!(exit.code(), Some(0), "exit status after SIGTERM: {exit:?}");
}

#[tokio::test]
async fn the_agent_runs_with_every_duration_at_the_shortest_accepted_value() {
    the_agent_runs_with_every_duration_at(End::Shortest).await;
}

#[tokio::test]
async fn the_agent_runs_with_every_duration_at_the_longest_accepted_value() {
    the_agent_runs_with_every_duration_at(End::Longest).await;
}
