//! Issue 10 item 6: broker behaviours that must not silently lose or stall, against a real
//! mosquitto configured to behave like the ones in the field: a `max_packet_size` below one
//! reading, refused credentials, `retain_available false`, and an ACL that drops our
//! publishes while acknowledging them. (TLS failures: tests/tls.rs.)
mod support;
#[path = "uplink_agent/mod.rs"]
mod uplink_agent;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fieldlink::buffer::{IoDriver, Outbox, Settings};
use fieldlink::config::Durability;
use fieldlink::model::{Reading, Sample, SampleSink, Value};
use support::agent::{self, ConfigDir};
use support::broker::Options;
use support::modbus::{serve_tcp, Bank, SimDevice};
use support::watch::Watch;
use support::{unique, wait_until, Broker};
use uplink_agent::{all_arrived, buffer_settings, missing, mqtt, seqs, Agent};

const KA: Duration = Duration::from_secs(5);
const DEADLINE: Duration = Duration::from_secs(30);

fn broker_with(lines: &[&str]) -> Broker {
    Broker::start_with(Options {
        persistence: false,
        extra: lines.iter().map(|l| l.to_string()).collect(),
    })
}

// ------------------------------------------------------------ one oversize reading

/// Regression: one reading larger than the broker's max_packet_size was requeued at the head,
/// resent, disconnected, forever, and nothing behind it was ever delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_oversize_reading_is_quarantined_counted_and_the_readings_behind_it_are_delivered() {
    let broker = broker_with(&["max_packet_size 2000"]);
    let prefix = unique("fl/oversize");
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let health = Watch::start(broker.port, &format!("{prefix}/health")).await;
    let mut cfg = mqtt(broker.port, &prefix, KA);
    cfg.backoff_initial = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_millis(200);
    let agent = Agent::start(cfg);
    watch
        .wait_for(&format!("{prefix}/status"), DEADLINE, |m| {
            m.payload == "online"
        })
        .await;
    for i in 0..5 {
        agent.reading(&format!("p{i}"), i as f64);
    }
    agent.publisher.send(Sample::Reading(Reading {
        device: Arc::from("dev"),
        point: Arc::from("big"),
        value: Ok(Value::Text("x".repeat(5000))),
        unit: None,
        ts_ms: fieldlink::model::unix_ms_now(),
    }));
    let big_seq = agent.last_seq();
    for i in 5..10 {
        agent.reading(&format!("p{i}"), i as f64);
    }
    let last = agent.last_seq();

    wait_until(
        "every reading but the oversize one delivered",
        DEADLINE,
        || (missing(&seqs(&watch.snapshot()), last) == [big_seq]).then_some(()),
    )
    .await;
    wait_until("the outbox empty", DEADLINE, || {
        (agent.outbox.depth() == 0).then_some(())
    })
    .await;
    assert_eq!(agent.outbox.dropped(), 1, "counted as dropped");
    let link = agent.link();
    assert_eq!(link.quarantined, 1);
    let why = link.last_quarantined.unwrap_or_default();
    assert!(
        why.contains(&format!("{prefix}/dev/big")) && why.contains("bytes"),
        "{why}"
    );
    let told = health
        .wait_for(&format!("{prefix}/health"), DEADLINE, |m| {
            m.json()["quarantined"] == 1
        })
        .await
        .json();
    assert_eq!(told["dropped"], 1, "{told}");
    assert!(told["last_quarantined"]
        .as_str()
        .is_some_and(|w| w.contains("max_packet_size")));
    assert!(
        link.reconnects >= 3,
        "three disconnects before giving up: {}",
        link.reconnects
    );
}

/// Resets of a busy link make suspects of what was in flight; resent alone, each is
/// acknowledged and cleared: nothing is given up, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_right_after_sending_on_a_flaky_link_quarantine_nothing() {
    let broker = Broker::start();
    let proxy = support::proxy::Proxy::start(broker.port).await;
    let prefix = unique("fl/flaky");
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let mut cfg = mqtt(proxy.port, &prefix, KA);
    cfg.backoff_initial = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_millis(200);
    let mut agent = Agent::start(cfg);
    agent.produce(4, Duration::from_millis(5));
    for round in 1..=6u64 {
        let seen = seqs(&watch.snapshot()).len();
        wait_until("readings flowing", DEADLINE, || {
            (seqs(&watch.snapshot()).len() > seen + 10).then_some(())
        })
        .await;
        proxy.reset_all();
        wait_until("reconnected after the reset", DEADLINE, || {
            (agent.is_up() && agent.link().reconnects == round).then_some(())
        })
        .await;
    }
    agent.stop_producing();
    let last = agent.last_seq();
    agent.drained(DEADLINE).await;
    all_arrived(last, DEADLINE, || seqs(&watch.snapshot())).await;
    assert_eq!(agent.link().quarantined, 0);
    assert_eq!(agent.outbox.dropped(), 0);
}

fn durable_settings(dir: &Path) -> Settings {
    buffer_settings(dir, Durability::Always, Duration::ZERO)
}

#[test]
fn a_record_given_up_leaves_the_disk_buffer_too_and_stays_counted_as_dropped_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let durable = Outbox::open(durable_settings(dir.path()), 1, IoDriver::Manual);
    for topic in ["a", "b", "c"] {
        durable.push(topic, 0, topic.as_bytes().to_vec());
    }
    durable.io_step().unwrap();
    let taken = durable.take(10);
    assert_eq!(taken.len(), 3, "committed, then handed out");
    assert!(durable.discard(taken[1].seq));
    assert!(durable.ack(taken[0].seq) && durable.ack(taken[2].seq));
    assert_eq!(durable.dropped(), 1);
    assert_eq!(durable.depth(), 0);
    durable.shutdown().unwrap();
    drop(durable);

    let reopened = Outbox::open(durable_settings(dir.path()), 1, IoDriver::Manual);
    reopened.io_step().unwrap();
    assert_eq!(reopened.depth(), 0, "not replayed after a restart");
    assert!(reopened.take(10).is_empty());
    assert_eq!(
        reopened.dropped(),
        1,
        "the drop is still counted after a restart"
    );
    let stats = reopened.stats().unwrap().unwrap();
    assert_eq!((stats.dropped_given_up, stats.dropped()), (1, 1));
}

// ------------------------------------------------------------ the agent binary

/// The agent's config: `[mqtt]` extras, then one Modbus TCP device `meter` at `modbus`
/// polled every `interval`, with `points` (TOML).
fn agent_config(
    broker_port: u16,
    prefix: &str,
    mqtt_extra: &str,
    modbus: &str,
    interval: &str,
    points: &str,
) -> String {
    format!(
        r#"{head}backoff_initial = "100ms"
backoff_max = "200ms"
{mqtt_extra}

[[bus]]
name = "lan"
type = "modbus_tcp"
address = "{modbus}"
timeout = "1s"

[[device]]
name = "meter"
bus = "lan"
unit = 1
interval = "{interval}"
{points}"#,
        head = agent::head(broker_port, prefix)
    )
}

const ONE_POINT: &str = r#"
[[device.point]]
name = "v"
table = "holding"
address = 0
type = "u16"
"#;

fn warnings(agent: &agent::Agent) -> Vec<String> {
    agent
        .stderr
        .snapshot()
        .into_iter()
        .filter(|l| l.contains(" WARN "))
        .collect()
}

/// Waits until the agent has failed to connect `n` more times after the first (each one
/// after the first is logged at debug only).
async fn failed_attempts(agent: &agent::Agent, n: usize) {
    wait_until(&format!("{n} repeated failed attempts"), DEADLINE, || {
        let again = agent
            .stderr
            .snapshot()
            .iter()
            .filter(|l| l.contains("MQTT connect failed again"))
            .count();
        (again >= n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_batch_is_logged_at_error_with_its_topic_and_size_and_polling_goes_on() {
    // `big`: four 240-character strings, one device batch of about 1 KB. Everything else the
    // agent sends (statuses, health, `small`'s one-point batches) stays well below 900 bytes.
    let broker = broker_with(&["max_packet_size 900"]);
    let big = SimDevice::new(1);
    big.set_registers(Bank::Holding, 0, &[0x7878; 480]);
    let small = SimDevice::new(2);
    small.set_registers(Bank::Holding, 0, &[42]);
    let sim = serve_tcp(&[&big, &small]).await;
    let prefix = agent::prefix("oversize-bin");
    let strings: String = (0..4)
        .map(|i| {
            format!(
                "\n[[device.point]]\nname = \"s{i}\"\ntable = \"holding\"\naddress = {}\n\
                 type = \"string\"\nregisters = 120\n",
                i * 120
            )
        })
        .collect();
    let mut toml = agent_config(
        broker.port,
        &prefix,
        "payload = \"device\"",
        &sim.address(),
        "1h",
        &strings,
    );
    toml.push_str(&format!(
        "\n[[device]]\nname = \"small\"\nbus = \"lan\"\nunit = 2\ninterval = \"200ms\"\n{ONE_POINT}"
    ));
    let watch = Watch::start(broker.port, &format!("{prefix}/small")).await;
    let agent = agent::Agent::start_with(ConfigDir::new(&toml), &[]);
    let line = agent
        .wait_stderr("the batch given up", DEADLINE, |l| {
            l.contains("ERROR") && l.contains("gave up")
        })
        .await;
    assert!(
        line.contains(&format!("{prefix}/meter")) && line.contains("bytes"),
        "{line}"
    );
    // The queue moved on: `small` keeps being delivered.
    let before = watch.on(&format!("{prefix}/small")).len();
    wait_until("more batches of the small device", DEADLINE, || {
        (watch.on(&format!("{prefix}/small")).len() >= before + 5).then_some(())
    })
    .await;
    let errors = agent
        .stderr
        .snapshot()
        .iter()
        .filter(|l| l.contains("ERROR"))
        .count();
    assert_eq!(errors, 1, "one record given up, once");
}

/// Regression: repeated connect failures went to debug after the first one, and a refusal
/// was logged like an unreachable broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_warned_about_once_with_the_reason_until_it_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    let status = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwd)
        .args(["gw1", "s3cret"])
        .status()
        .expect("mosquitto_passwd (from the mosquitto package)");
    assert!(status.success());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let broker = broker_with(&[
        "allow_anonymous false",
        &format!("password_file {}", passwd.display()),
    ]);
    let password = dir.path().join("password");
    std::fs::write(&password, "wrong\n").unwrap();
    let prefix = agent::prefix("refused");
    let toml = agent_config(
        broker.port,
        &prefix,
        &format!(
            "username = \"gw1\"\npassword_file = \"{}\"",
            password.display()
        ),
        "127.0.0.1:9",
        "1h",
        ONE_POINT,
    );
    let agent = agent::Agent::start_with(ConfigDir::new(&toml), &[]);
    failed_attempts(&agent, 4).await;
    let warned: Vec<String> = warnings(&agent)
        .into_iter()
        .filter(|l| l.contains("MQTT"))
        .collect();
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(
        warned[0].contains("refused the connection: not authorized")
            && warned[0].contains("mqtt.password_file"),
        "{}",
        warned[0]
    );

    // The password file is read at every attempt: fixing it is enough.
    std::fs::write(&password, "s3cret\n").unwrap();
    agent
        .wait_stderr("connected", DEADLINE, |l| l.contains("MQTT link up"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_refuses_retained_messages_is_warned_about_once_and_named_as_the_cause() {
    let broker = broker_with(&["retain_available false"]);
    let prefix = agent::prefix("no-retain");
    let toml = agent_config(broker.port, &prefix, "", "127.0.0.1:9", "1h", ONE_POINT);
    let agent = agent::Agent::start_with(ConfigDir::new(&toml), &[]);
    failed_attempts(&agent, 4).await;
    let warned: Vec<String> = warnings(&agent)
        .into_iter()
        .filter(|l| l.contains("MQTT"))
        .collect();
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(
        warned[0].contains("retained last will") && warned[0].contains("retain_available false"),
        "{}",
        warned[0]
    );
    let stderr = agent.stderr.text();
    assert!(
        !stderr.contains("MQTT link up") && !stderr.contains("gave up"),
        "never up, nothing given up:\n{stderr}"
    );
}

/// Regression: under MQTT 3.1.1 mosquitto acknowledges a publish its ACL denies, so every
/// reading vanished while the agent's health said all was well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_that_swallows_our_publishes_is_warned_about_and_shown_on_the_health_topic() {
    let prefix = agent::prefix("acl");
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    // Anonymous clients (the test's subscriber) read everything; the gateway may read its
    // prefix but write only its health topic.
    std::fs::write(
        &acl,
        format!("topic read #\n\nuser gw1\ntopic read {prefix}/#\ntopic write {prefix}/health\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&acl, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let broker = broker_with(&[&format!("acl_file {}", acl.display())]);
    let health = Watch::start(broker.port, &format!("{prefix}/health")).await;
    let toml = agent_config(
        broker.port,
        &prefix,
        "username = \"gw1\"",
        "127.0.0.1:9",
        "1h",
        ONE_POINT,
    );
    let agent = agent::Agent::start_with(ConfigDir::new(&toml), &[]);
    let line = agent
        .wait_stderr("the routing warning", DEADLINE, |l| {
            l.contains(" WARN ") && l.contains("does not deliver our messages")
        })
        .await;
    assert!(line.contains("ACL"), "{line}");
    let told = health
        .wait_for(&format!("{prefix}/health"), DEADLINE, |m| {
            m.json()["routing"]
                .as_str()
                .is_some_and(|r| r.starts_with("not delivered"))
        })
        .await;
    assert!(told.payload.contains("check its ACL"), "{}", told.payload);
}

/// A stand-in for brokers (AWS IoT Core among them) that close the connection on a
/// subscription they do not authorise instead of refusing it in the SUBACK: forwards MQTT
/// packets to mosquitto at `upstream` and drops the connection at the first SUBSCRIBE (whose
/// topic filter holds `needle`, when given).
async fn close_on_subscribe(upstream: u16, needle: Option<&'static str>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(broker) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_broker, mut to_broker) = broker.into_split();
                let down = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_broker, &mut to_client).await;
                });
                // Client to broker, one whole packet at a time: fixed header, remaining
                // length (1-4 bytes), body.
                loop {
                    let mut packet = vec![0u8; 1];
                    if from_client.read_exact(&mut packet).await.is_err() {
                        break;
                    }
                    let (mut length, mut shift) = (0usize, 0);
                    loop {
                        let mut byte = [0u8; 1];
                        if from_client.read_exact(&mut byte).await.is_err() {
                            down.abort();
                            return;
                        }
                        packet.push(byte[0]);
                        length |= ((byte[0] & 0x7F) as usize) << shift;
                        shift += 7;
                        if byte[0] & 0x80 == 0 {
                            break;
                        }
                    }
                    let start = packet.len();
                    packet.resize(start + length, 0);
                    if from_client.read_exact(&mut packet[start..]).await.is_err() {
                        break;
                    }
                    let refused =
                        needle.is_none_or(|n| packet.windows(n.len()).any(|w| w == n.as_bytes()));
                    if packet[0] >> 4 == 8 && refused {
                        break; // SUBSCRIBE: close both sides
                    }
                    if to_broker.write_all(&packet).await.is_err() {
                        break;
                    }
                }
                down.abort();
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_closes_the_connection_on_our_subscription_is_used_without_the_check() {
    let (_broker, agent) = closing_on_subscribe(None, None).await;
    let link = agent.link();
    assert!(link.routing.starts_with("unchecked:"), "{}", link.routing);
    assert!(
        link.routing.contains("closing the connection"),
        "{}",
        link.routing
    );
    assert_eq!(
        link.reconnects, 1,
        "one connection lost to the subscription"
    );
}

#[derive(Default)]
struct Commands(std::sync::Mutex<Vec<String>>);

impl fieldlink::model::CommandSink for Commands {
    fn command(&self, device: &str, point: &str, _payload: &[u8], _retained: bool) {
        self.0.lock().unwrap().push(format!("{device}/{point}"));
    }
}

/// Regression guard: asking for commands at every connection from a broker that closes the
/// connection over that subscription (AWS IoT Core without the permission) would cost every
/// other connection. One connection is lost; then the agent goes on without commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_closes_the_connection_on_our_command_subscription_costs_one_connection() {
    let commands = std::sync::Arc::new(Commands::default());
    let (_broker, agent) = closing_on_subscribe(Some("/set"), Some(commands)).await;
    let link = agent.link();
    assert_eq!(
        link.reconnects, 1,
        "one connection lost to the subscription"
    );
    assert_eq!(link.routing, "ok", "the broker check itself passed");
    // Not lost again: a window of two keep-alives, the span in which a broker that
    // minded anything else would have closed it.
    tokio::time::sleep(KA * 2).await;
    assert_eq!(agent.link().reconnects, 1);
    assert!(agent.is_up());
}

/// An agent (taking commands when `commands` is given) behind `close_on_subscribe(needle)`,
/// once it is online and delivered one reading.
async fn closing_on_subscribe(
    needle: Option<&'static str>,
    commands: Option<std::sync::Arc<Commands>>,
) -> (Broker, Agent) {
    let broker = Broker::start();
    let port = close_on_subscribe(broker.port, needle).await;
    let prefix = unique("fl/closing");
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let mut cfg = mqtt(port, &prefix, KA);
    cfg.backoff_initial = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_millis(200);
    let agent = match commands {
        Some(c) => Agent::start_with_commands(cfg, c),
        None => Agent::start(cfg),
    };
    watch
        .wait_for(&format!("{prefix}/status"), DEADLINE, |m| {
            m.payload == "online"
        })
        .await;
    agent.reading("v", 1.0);
    watch
        .wait_for(&format!("{prefix}/dev/v"), DEADLINE, |_| true)
        .await;
    (broker, agent)
}
