//! Configuration reload on SIGHUP, on the real agent binary with mosquitto and Modbus TCP
//! simulators: a device added, a device removed, an interval changed, the broker changed, and
//! a broken file. Across each reload, the readings of a device the reload did not touch keep
//! their cadence and none is lost (every reading number in the run arrives, in order).
//!
//! Every test signals only once the agent's first reading arrived: the agent installs its
//! SIGHUP handler before it reports READY and polls only after that, so the signal never
//! meets a process without its handler (also under qemu-user, whose signal delivery to a
//! guest still starting up is what tests/signals.rs works around).
mod support;

use std::time::Duration;

use support::agent::{self, Agent};
use support::modbus::{self, Bank, SimDevice, TcpSim};
use support::watch::{Message, Watch};
use support::Broker;

const FIRST_READING: Duration = Duration::from_secs(15);
const RELOADED: Duration = Duration::from_secs(10);
/// The unchanged device's poll interval in these tests.
const STEADY: Duration = Duration::from_millis(500);

fn bus(name: &str, address: &str) -> String {
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

fn device(name: &str, bus: &str, interval: Duration) -> String {
    format!(
        r#"
[[device]]
name = "{name}"
bus = "{bus}"
unit = 1
interval = "{}ms"

[[device.point]]
name = "level"
table = "holding"
address = 0
type = "u16"
"#,
        interval.as_millis()
    )
}

fn sim_device(value: u16) -> SimDevice {
    let d = SimDevice::new(1);
    d.set_registers(Bank::Holding, 0, &[value]);
    d
}

/// Two buses with one device each, on their own simulators: `m1` on `tcp0` (never changed
/// by the tests), `m2` on `tcp1`.
struct Site {
    broker: Broker,
    prefix: String,
    /// Made once: `agent::head` gives every call a new gateway id (and so a new client id,
    /// which would restart the uplink).
    head: String,
    sim0: TcpSim,
    sim1: TcpSim,
    devices: (SimDevice, SimDevice),
}

impl Site {
    async fn start(test: &str) -> Site {
        let broker = Broker::start();
        let (d0, d1) = (sim_device(10), sim_device(20));
        let sim0 = modbus::serve_tcp(&[&d0]).await;
        let sim1 = modbus::serve_tcp(&[&d1]).await;
        let prefix = agent::prefix(test);
        Site {
            head: agent::head(broker.port, &prefix),
            broker,
            prefix,
            sim0,
            sim1,
            devices: (d0, d1),
        }
    }

    /// `m1` alone.
    fn one(&self) -> String {
        format!(
            "{}{}{}",
            self.head,
            bus("tcp0", &self.sim0.address()),
            device("m1", "tcp0", STEADY)
        )
    }

    /// `m1`, and `m2` polled every `m2_interval`.
    fn two(&self, m2_interval: Duration) -> String {
        format!(
            "{}{}{}",
            self.one(),
            bus("tcp1", &self.sim1.address()),
            device("m2", "tcp1", m2_interval)
        )
    }

    fn topic(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }
}

/// Writes `toml` over the agent's config file and sends SIGHUP; returns once the agent said
/// the reload is done (applied or refused), counted from the `nth` such line.
async fn reload(agent: &Agent, toml: &str, nth: usize) {
    std::fs::write(&agent.config.path, toml).unwrap();
    agent.signal(libc::SIGHUP);
    let stderr = agent.stderr.clone();
    support::wait_until("the reload to finish", RELOADED, || {
        let done = stderr
            .snapshot()
            .iter()
            .filter(|l| {
                l.contains("configuration reloaded") || l.contains("configuration reload refused")
            })
            .count();
        (done >= nth).then_some(())
    })
    .await;
}

fn ts(m: &Message) -> u64 {
    m.json()["ts"]
        .as_u64()
        .unwrap_or_else(|| panic!("no ts: {}", m.payload))
}

fn seq(m: &Message) -> Option<u64> {
    m.json()["seq"].as_u64()
}

/// The unchanged device's readings kept their cadence: no two in a row further apart than
/// two intervals (none missed, none late by more than one interval).
fn kept_cadence(readings: &[Message], interval: Duration) {
    assert!(readings.len() >= 4, "too few readings: {}", readings.len());
    let worst = readings
        .windows(2)
        .map(|w| ts(&w[1]).saturating_sub(ts(&w[0])))
        .max()
        .unwrap();
    assert!(
        worst <= 2 * interval.as_millis() as u64,
        "a reading of the unchanged device came {worst} ms after the one before (interval {interval:?})"
    );
}

/// Every reading number from the first to the last one seen arrived: none lost anywhere.
fn no_reading_lost(watch: &Watch) {
    let mut seqs: Vec<u64> = watch.snapshot().iter().filter_map(seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let (first, last) = (seqs[0], *seqs.last().unwrap());
    assert_eq!(
        seqs.len() as u64,
        last - first + 1,
        "reading numbers missing between {first} and {last}"
    );
}

/// Waits until `count` readings of `topic` were published after `ts_ms`.
async fn readings_after(watch: &Watch, topic: &str, ts_ms: u64, count: usize) -> Vec<Message> {
    support::wait_until(
        &format!("{count} readings on {topic} after the reload"),
        FIRST_READING,
        || {
            let after: Vec<Message> = watch
                .on(topic)
                .into_iter()
                .filter(|m| ts(m) > ts_ms)
                .collect();
            (after.len() >= count).then_some(after)
        },
    )
    .await
}

fn now_ms() -> u64 {
    fieldlink::model::unix_ms_now()
}

#[tokio::test]
async fn reload_adds_a_device_and_leaves_the_link_and_the_other_bus_alone() {
    let site = Site::start("reload-add").await;
    let watch = Watch::start(site.broker.port, &format!("{}/#", site.prefix)).await;
    let agent = Agent::start(&site.one());
    let m1 = site.topic("m1/level");
    watch.wait_for(&m1, FIRST_READING, |_| true).await;
    let connections_before = site.sim0.connections();

    let at = now_ms();
    reload(&agent, &site.two(STEADY), 1).await;
    support::expect::reading(&watch, &site.topic("m2/level"), 20.0, FIRST_READING).await;
    readings_after(&watch, &m1, at + 2000, 2).await;

    kept_cadence(&watch.on(&m1), STEADY);
    no_reading_lost(&watch);
    assert_eq!(
        site.sim0.connections(),
        connections_before,
        "the unchanged bus was reconnected"
    );
    assert_eq!(
        support::expect::statuses(&watch, &site.topic("status")),
        ["online"],
        "the link was restarted"
    );
    assert!(agent.stderr.any(|l| l.contains("uplink kept")));
}

#[tokio::test]
async fn reload_removes_a_device_whose_status_goes_offline_and_whose_readings_stay_retained() {
    let site = Site::start("reload-remove").await;
    let watch = Watch::start(site.broker.port, &format!("{}/#", site.prefix)).await;
    let agent = Agent::start(&site.two(STEADY));
    let (m1, m2) = (site.topic("m1/level"), site.topic("m2/level"));
    watch.wait_for(&m1, FIRST_READING, |_| true).await;
    watch.wait_for(&m2, FIRST_READING, |_| true).await;
    support::expect::status(&watch, &site.topic("m2/status"), "online", FIRST_READING).await;

    let at = now_ms();
    reload(&agent, &site.one(), 1).await;
    let polled = site.devices.1.requests();
    support::expect::status(&watch, &site.topic("m2/status"), "offline", RELOADED).await;
    readings_after(&watch, &m1, at + 2000, 2).await;
    // The bus of m2 was closed before the reload was done: m2 was never asked again.
    assert_eq!(
        site.devices.1.requests(),
        polled,
        "m2 still polled after its removal"
    );

    // A late subscriber finds m2's last reading retained, and its status offline.
    let late = Watch::start(site.broker.port, &format!("{}/m2/#", site.prefix)).await;
    let retained = late.wait_for(&m2, RELOADED, |m| m.retain).await;
    assert_eq!(retained.json()["value"], 20);
    let status = late
        .wait_for(&site.topic("m2/status"), RELOADED, |m| m.retain)
        .await;
    assert_eq!(status.payload, "offline");

    kept_cadence(&watch.on(&m1), STEADY);
    no_reading_lost(&watch);
}

#[tokio::test]
async fn reload_changes_an_interval_and_the_new_cadence_is_observed() {
    let site = Site::start("reload-interval").await;
    let watch = Watch::start(site.broker.port, &format!("{}/#", site.prefix)).await;
    let agent = Agent::start(&site.two(Duration::from_secs(2)));
    let (m1, m2) = (site.topic("m1/level"), site.topic("m2/level"));
    watch.wait_for(&m2, FIRST_READING, |_| true).await;

    let at = now_ms();
    reload(&agent, &site.two(Duration::from_millis(100)), 1).await;
    let after = readings_after(&watch, &m2, at, 20).await;
    let span = ts(after.last().unwrap()) - ts(&after[0]);
    // 19 gaps of 100 ms: far below the 38 s the old interval would take.
    assert!(
        span < 19 * 300,
        "20 readings of m2 took {span} ms after the interval went to 100 ms"
    );
    readings_after(&watch, &m1, at + 1000, 2).await;
    kept_cadence(&watch.on(&m1), STEADY);
    no_reading_lost(&watch);
}

#[tokio::test]
async fn reload_to_another_broker_says_offline_on_the_old_one_and_connects_to_the_new_one() {
    let site = Site::start("reload-broker").await;
    let other = Broker::start();
    let watch = Watch::start(site.broker.port, &format!("{}/#", site.prefix)).await;
    let watch_other = Watch::start(other.port, &format!("{}/#", site.prefix)).await;
    let agent = Agent::start(&site.one());
    let m1 = site.topic("m1/level");
    watch.wait_for(&m1, FIRST_READING, |_| true).await;

    let moved = site.one().replace(
        &format!("port = {}", site.broker.port),
        &format!("port = {}", other.port),
    );
    reload(&agent, &moved, 1).await;
    support::expect::status(&watch, &site.topic("status"), "offline", RELOADED).await;
    support::expect::status(&watch_other, &site.topic("status"), "online", RELOADED).await;
    watch_other.wait_for(&m1, RELOADED, |_| true).await;
    assert!(agent
        .stderr
        .any(|l| l.contains("uplink restarted") && l.contains("[mqtt] changed")));
    // Whatever was queued at the switch reached one broker or the other: together, every
    // reading number arrives.
    let mut seqs: Vec<u64> = watch
        .snapshot()
        .iter()
        .chain(watch_other.snapshot().iter())
        .filter_map(seq)
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs.len() as u64,
        seqs.last().unwrap() - seqs[0] + 1,
        "reading numbers missing across the two brokers"
    );
}

#[tokio::test]
async fn reload_of_a_broken_file_keeps_the_old_config_logs_every_error_and_says_so_on_health() {
    let site = Site::start("reload-broken").await;
    let watch = Watch::start(site.broker.port, &format!("{}/#", site.prefix)).await;
    let agent = Agent::start(&site.one());
    let m1 = site.topic("m1/level");
    watch.wait_for(&m1, FIRST_READING, |_| true).await;

    // Two problems: an unknown key and an interval out of range.
    let broken = site
        .two(STEADY)
        .replace("timeout = \"300ms\"", "timeout = \"300ms\"\nspeed = 9")
        .replace(
            &format!("interval = \"{}ms\"", STEADY.as_millis()),
            "interval = \"0ms\"",
        );
    let at = now_ms();
    reload(&agent, &broken, 1).await;
    let file = agent.config.path_str().to_string();
    let located = agent
        .stderr
        .snapshot()
        .into_iter()
        .filter(|l| l.contains(&format!("{file}:")))
        .count();
    assert!(
        located >= 2,
        "each error on its own line with file:line:col:\n{}",
        agent.stderr.text()
    );
    let health = watch
        .wait_for(&site.topic("health"), FIRST_READING, |m| {
            m.json()["reload"]["status"] == "failed"
        })
        .await;
    let section = &health.json()["reload"];
    assert!(section["errors"].as_u64().unwrap() >= 2, "{section}");
    assert!(
        section["first_error"].as_str().unwrap().contains(&file),
        "{section}"
    );
    // The old config runs on: m1 still polled, m2 never started.
    readings_after(&watch, &m1, at + 1000, 2).await;
    assert!(watch.on(&site.topic("m2/level")).is_empty());

    // Fixed: the next reload applies it and the health report says so.
    reload(&agent, &site.two(STEADY), 2).await;
    watch
        .wait_for(&site.topic("m2/level"), FIRST_READING, |_| true)
        .await;
    watch
        .wait_for(&site.topic("health"), FIRST_READING, |m| {
            m.json()["reload"]["status"] == "ok"
        })
        .await;
    kept_cadence(&watch.on(&m1), STEADY);
    no_reading_lost(&watch);
}

/// Every point writable, with no spacing between writes.
fn writable(toml: &str) -> String {
    toml.replace(
        "type = \"u16\"",
        "type = \"u16\"\nwritable = true\nmin_write_interval = \"0s\"",
    )
}

async fn command(watch: &Watch, site: &Site, device: &str, value: u16, id: &str) -> String {
    let topic = site.topic(&format!("{device}/level/set"));
    let payload = format!("{{\"value\":{value},\"id\":\"{id}\"}}");
    watch.publish(&topic, &payload, false).await;
    let answer = watch
        .wait_for(&format!("{topic}/result"), RELOADED, |m| {
            m.json()["id"] == id
        })
        .await;
    answer.json()["status"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn reload_routes_commands_to_a_restarted_bus_and_to_an_added_device_and_refuses_a_removed_one(
) {
    let site = Site::start("reload-commands").await;
    let watch = Watch::start(site.broker.port, &format!("{}/#", site.prefix)).await;
    let agent = Agent::start(&writable(&site.one()));
    watch
        .wait_for(&site.topic("m1/level"), FIRST_READING, |_| true)
        .await;
    support::expect::status(&watch, &site.topic("status"), "online", FIRST_READING).await;
    assert_eq!(command(&watch, &site, "m1", 11, "before").await, "ok");

    // m1's bus restarts (new interval) and m2 arrives with a writable point: the router takes
    // the new map in place, the uplink keeps its subscription.
    let faster = writable(&site.two(Duration::from_millis(300)))
        .replace("interval = \"500ms\"", "interval = \"250ms\"");
    reload(&agent, &faster, 1).await;
    assert!(agent.stderr.any(|l| l.contains("uplink kept")));
    assert_eq!(command(&watch, &site, "m1", 12, "restarted").await, "ok");
    assert_eq!(site.devices.0.holding(0, 1), [12]);
    assert_eq!(command(&watch, &site, "m2", 21, "added").await, "ok");
    assert_eq!(site.devices.1.holding(0, 1), [21]);

    // m2 removed: its commands are refused in words, nothing is written.
    reload(&agent, &writable(&site.one()).replace("500ms", "250ms"), 2).await;
    assert_eq!(
        command(&watch, &site, "m2", 22, "removed").await,
        "rejected"
    );
    assert_eq!(site.devices.1.holding(0, 1), [21]);
    assert_eq!(
        support::expect::statuses(&watch, &site.topic("status")),
        ["online"],
        "the link was restarted"
    );
}
