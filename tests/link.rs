//! Issue 3: a silently dead link is spotted within 1.5 x keep-alive, the agent reconnects with
//! backoff, and nothing it accepted is lost. Real mosquitto behind the fault proxy.
mod support;
#[path = "uplink_agent/mod.rs"]
mod uplink_agent;

use std::time::{Duration, Instant};

use support::proxy::{Mode, Proxy};
use support::watch::Watch;
use support::{unique, wait_until, Broker};
use uplink_agent::{all_arrived, mqtt, newest_per_topic, seqs, Agent};

const KA: Duration = Duration::from_secs(2);
const DEADLINE: Duration = Duration::from_secs(30);

struct Rig {
    broker: Broker,
    proxy: Proxy,
    watch: Watch,
    agent: Agent,
    prefix: String,
}

impl Rig {
    async fn start(name: &str) -> Rig {
        let broker = Broker::start();
        let proxy = Proxy::start(broker.port).await;
        let prefix = unique(name);
        let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
        let agent = Agent::start(mqtt(proxy.port, &prefix, KA));
        let rig = Rig {
            broker,
            proxy,
            watch,
            agent,
            prefix,
        };
        rig.wait_online_count(1).await;
        rig
    }

    fn status(&self) -> String {
        format!("{}/status", self.prefix)
    }

    async fn wait_online_count(&self, n: usize) {
        wait_until(&format!("`online` #{n}"), DEADLINE, || {
            let online = self
                .watch
                .on(&self.status())
                .iter()
                .filter(|m| m.payload == "online")
                .count();
            (online >= n).then_some(())
        })
        .await;
    }

    /// Blackholes the link and returns how long after the last byte from the broker the agent
    /// declared it dead.
    async fn blackhole_and_time_the_verdict(&self) -> Duration {
        self.proxy.set(Mode::Blackhole);
        wait_until("the link declared down", DEADLINE, || {
            (!self.agent.is_up()).then_some(())
        })
        .await;
        let verdict = Instant::now();
        let last = self.proxy.last_byte_down().expect("bytes went down before");
        verdict - last
    }

    /// Stops producing, waits until the outbox drained, and checks that every seq arrived
    /// and that a late subscriber sees the newest reading of each point retained.
    async fn assert_nothing_lost(&mut self) {
        self.agent.stop_producing();
        let last = self.agent.last_seq();
        assert!(last > 0);
        self.agent.drained(DEADLINE).await;
        all_arrived(last, DEADLINE, || seqs(&self.watch.snapshot())).await;
        self.assert_retained_newest(&self.watch.snapshot()).await;
    }

    async fn assert_retained_newest(&self, all: &[support::watch::Message]) {
        let readings = format!("{}/dev/", self.prefix);
        let expected = newest_per_topic(
            &all.iter()
                .filter(|m| m.topic.starts_with(&readings))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let late = Watch::start(self.broker.port, &format!("{readings}#")).await;
        let retained = wait_until("every point retained", DEADLINE, || {
            let r: Vec<_> = late.snapshot().into_iter().filter(|m| m.retain).collect();
            (r.len() >= expected.len()).then_some(r)
        })
        .await;
        assert_eq!(newest_per_topic(&retained), expected, "retained != newest");
    }
}

async fn blackhole_then_recover(busy: bool) {
    let mut rig = Rig::start(if busy { "fl/bh-busy" } else { "fl/bh-idle" }).await;
    if busy {
        rig.agent.produce(4, Duration::from_millis(50));
    } else {
        for i in 0..8 {
            rig.agent.reading(&format!("p{}", i % 4), i as f64);
        }
    }
    // Let a keep-alive round trip (idle) or some PUBACKs (busy) pass the proxy first.
    let bytes = rig.proxy.bytes_down();
    wait_until("traffic from the broker", DEADLINE, || {
        (rig.proxy.bytes_down() > bytes + 4).then_some(())
    })
    .await;

    let detection = rig.blackhole_and_time_the_verdict().await;
    eprintln!("busy={busy}: dead link declared {detection:?} after the last byte from the broker");
    assert!(
        detection <= KA.mul_f64(1.5) + Duration::from_millis(500),
        "detection took {detection:?}"
    );
    assert!(rig.agent.link().last_error.unwrap().contains("keep-alive"));

    // Readings keep coming while the link is down.
    if !busy {
        for i in 8..16 {
            rig.agent.reading(&format!("p{}", i % 4), i as f64);
        }
    }
    rig.proxy.set(Mode::Pass);
    wait_until("reconnected", DEADLINE, || {
        (rig.agent.is_up() && rig.agent.link().reconnects == 1).then_some(())
    })
    .await;
    rig.wait_online_count(2).await;
    if !busy {
        for i in 16..24 {
            rig.agent.reading(&format!("p{}", i % 4), i as f64);
        }
    }
    rig.assert_nothing_lost().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_blackholed_link_is_declared_dead_within_one_and_a_half_keep_alives_and_loses_nothing(
) {
    blackhole_then_recover(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_blackholed_link_is_declared_dead_within_one_and_a_half_keep_alives_and_loses_nothing(
) {
    blackhole_then_recover(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_publishes_the_will_while_blackholed_and_online_follows_recovery() {
    let rig = Rig::start("fl/will").await;
    let bytes = rig.proxy.bytes_down();
    wait_until("a keep-alive round trip", DEADLINE, || {
        (rig.proxy.bytes_down() > bytes).then_some(())
    })
    .await;
    rig.proxy.set(Mode::Blackhole);
    let last = rig.proxy.last_byte_down().unwrap();
    // mosquitto checks keep-alives about every 5 s.
    let allowance = KA.mul_f64(1.5) + Duration::from_secs(6);
    let status = rig.status();
    rig.watch
        .wait_for(&status, allowance + Duration::from_secs(1), |m| {
            m.payload == "offline"
        })
        .await;
    eprintln!("will published {:?} after the last byte", last.elapsed());
    rig.proxy.set(Mode::Pass);
    wait_until("`online` after the will", DEADLINE, || {
        let msgs = rig.watch.on(&status);
        let offline = msgs.iter().position(|m| m.payload == "offline")?;
        msgs[offline..]
            .iter()
            .any(|m| m.payload == "online")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_ten_seconds_later_loses_nothing() {
    let mut rig = Rig::start("fl/restart").await;
    rig.agent.produce(4, Duration::from_millis(50));
    let before = rig.agent.last_seq();
    wait_until("some readings upstream", DEADLINE, || {
        (seqs(&rig.watch.snapshot()).len() as u64 > before + 10).then_some(())
    })
    .await;
    rig.broker.kill();
    wait_until("the link declared down", DEADLINE, || {
        (!rig.agent.is_up()).then_some(())
    })
    .await;
    // The outage itself is the scenario: the broker stays away for 10 s.
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Hold the agent off until a new subscriber is in place on the fresh broker (which
    // lost every session and subscription), so the test sees what the agent replays.
    rig.proxy.set(Mode::Refuse);
    rig.proxy.reset_all();
    rig.broker.restart();
    let second = Watch::start(rig.broker.port, &format!("{}/#", rig.prefix)).await;
    rig.proxy.set(Mode::Pass);
    wait_until("reconnected", DEADLINE, || {
        (rig.agent.is_up() && rig.agent.link().reconnects >= 1).then_some(())
    })
    .await;
    second
        .wait_for(&rig.status(), DEADLINE, |m| m.payload == "online")
        .await;
    rig.agent.stop_producing();
    let last = rig.agent.last_seq();
    rig.agent.drained(DEADLINE).await;
    all_arrived(last, DEADLINE, || {
        let mut all = seqs(&rig.watch.snapshot());
        all.extend(seqs(&second.snapshot()));
        all
    })
    .await;
    rig.assert_retained_newest(&second.snapshot()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connections_lose_nothing() {
    let mut rig = Rig::start("fl/reset").await;
    rig.agent.produce(4, Duration::from_millis(20));
    for round in 1..=3u64 {
        let seen = seqs(&rig.watch.snapshot()).len();
        wait_until("readings flowing", DEADLINE, || {
            (seqs(&rig.watch.snapshot()).len() > seen + 20).then_some(())
        })
        .await;
        rig.proxy.reset_all();
        wait_until("reconnected after the reset", DEADLINE, || {
            (rig.agent.is_up() && rig.agent.link().reconnects == round).then_some(())
        })
        .await;
    }
    rig.assert_nothing_lost().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_broker_is_retried_on_the_backoff_schedule_not_in_a_storm() {
    let mut rig = Rig::start("fl/refuse").await;
    rig.agent.produce(2, Duration::from_millis(50));
    rig.proxy.set(Mode::Refuse);
    rig.proxy.reset_all();
    wait_until("the link declared down", DEADLINE, || {
        (!rig.agent.is_up()).then_some(())
    })
    .await;
    let accepted = rig.proxy.accepted();
    let window = Duration::from_secs(8);
    // Observing the attempts over a window is the point of this test.
    tokio::time::sleep(window).await;
    let attempts = rig.proxy.accepted() - accepted;
    // Each delay is at least backoff_initial / 2 (see uplink::state).
    let floor = rig.agent.cfg.backoff_initial / 2;
    let most = (window.as_secs_f64() / floor.as_secs_f64()).ceil() as u64 + 1;
    eprintln!("{attempts} connection attempts in {window:?} (schedule allows at most {most})");
    assert!(attempts >= 2, "the agent stopped retrying");
    assert!(
        attempts <= most,
        "{attempts} attempts in {window:?}: a storm"
    );
    rig.proxy.set(Mode::Pass);
    rig.assert_nothing_lost().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_link_delivers_everything_without_reconnecting() {
    let mut rig = Rig::start("fl/throttle").await;
    rig.proxy.set(Mode::Throttle(4096));
    rig.agent.produce(4, Duration::from_millis(50));
    let seen = seqs(&rig.watch.snapshot()).len();
    wait_until("100 readings through the throttled link", DEADLINE, || {
        (seqs(&rig.watch.snapshot()).len() > seen + 100).then_some(())
    })
    .await;
    rig.assert_nothing_lost().await;
    assert_eq!(rig.agent.link().reconnects, 0);
    assert!(rig.agent.outbox.dropped() == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_link_within_the_keep_alive_stays_up() {
    let mut rig = Rig::start("fl/delay").await;
    rig.proxy.set(Mode::Delay(Duration::from_millis(300)));
    rig.agent.produce(2, Duration::from_millis(100));
    let seen = seqs(&rig.watch.snapshot()).len();
    wait_until("readings through the delayed link", DEADLINE, || {
        (seqs(&rig.watch.snapshot()).len() > seen + 40).then_some(())
    })
    .await;
    rig.assert_nothing_lost().await;
    assert_eq!(rig.agent.link().reconnects, 0);
}
