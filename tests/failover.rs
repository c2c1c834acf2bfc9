//! Broker failover (`[mqtt] servers`): when the broker the agent is connected to dies, the
//! next one of the list is tried at once, the birth and the retained state go out there, and
//! nothing accepted is lost. Against two independent mosquittos here, and against a real
//! three-node nats-server cluster in `tests/cluster.rs`.
mod support;
#[path = "uplink_agent/mod.rs"]
mod uplink_agent;

use std::time::{Duration, Instant};

use fieldlink::config::Server;
use support::watch::Watch;
use support::{unique, wait_until, Broker};
use uplink_agent::{all_arrived, mqtt, retained_on, seqs, Agent};

const KA: Duration = Duration::from_secs(2);
const DEADLINE: Duration = Duration::from_secs(30);
/// A backoff no test waits out: reaching the next server within a deadline proves none was
/// applied, without timing anything.
const NO_COMEBACK: Duration = Duration::from_secs(3600);

fn server(port: u16) -> Server {
    Server {
        host: "127.0.0.1".into(),
        port,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_broker_fails_over_to_the_next_of_the_list_with_nothing_lost() {
    let mut first = Broker::start();
    let second = Broker::start();
    let prefix = unique("fl/failover");
    let all = format!("{prefix}/#");
    let on_first = Watch::start(first.port, &all).await;
    let on_second = Watch::start(second.port, &all).await;
    let mut cfg = mqtt(first.port, &prefix, KA);
    cfg.servers = vec![server(first.port), server(second.port)];
    // A backoff would hold the agent back far beyond the deadlines below: the second
    // broker is reached only if it is tried at once.
    cfg.backoff_initial = NO_COMEBACK;
    cfg.backoff_max = NO_COMEBACK;
    let status = format!("{prefix}/status");
    let mut agent = Agent::start(cfg);
    on_first
        .wait_for(&status, DEADLINE, |m| m.payload == "online")
        .await;
    assert_eq!(
        agent.link().server.as_deref(),
        Some(format!("127.0.0.1:{}", first.port).as_str())
    );

    agent.produce(4, Duration::from_millis(20));
    let topic = format!("{prefix}/dev/p0");
    wait_until("readings on the first broker", DEADLINE, || {
        (on_first.on(&topic).len() >= 10).then_some(())
    })
    .await;
    first.kill();
    let killed = Instant::now();
    on_second
        .wait_for(&status, DEADLINE, |m| m.payload == "online")
        .await;
    let failover = killed.elapsed();
    eprintln!("failover to the second broker took {failover:?}");
    assert_eq!(
        agent.link().server.as_deref(),
        Some(format!("127.0.0.1:{}", second.port).as_str())
    );

    wait_until("readings on the second broker", DEADLINE, || {
        (on_second.on(&topic).len() >= 10).then_some(())
    })
    .await;
    agent.stop_producing();
    agent.drained(DEADLINE).await;
    let last = agent.last_seq();
    all_arrived(last, DEADLINE, || {
        let mut seen = seqs(&on_first.snapshot());
        seen.extend(seqs(&on_second.snapshot()));
        seen
    })
    .await;

    // The second broker never saw the readings of before the kill, yet holds the newest value
    // of every topic retained: the agent found it lacking our retained state and put it back.
    for p in 0..4 {
        let t = format!("{prefix}/dev/p{p}");
        let retained = retained_on(second.port, &t, DEADLINE).await;
        let newest = on_first
            .on(&t)
            .iter()
            .chain(on_second.on(&t).iter())
            .filter_map(|m| m.json()["seq"].as_u64())
            .max()
            .unwrap();
        assert_eq!(retained.json()["seq"].as_u64(), Some(newest), "{t}");
    }
    let health = retained_on(second.port, &format!("{prefix}/health"), DEADLINE).await;
    assert_eq!(
        health.json()["server"],
        format!("127.0.0.1:{}", second.port),
        "the health topic names the broker in use"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_first_in_the_list_costs_one_attempt_not_a_backoff() {
    let broker = Broker::start();
    let prefix = unique("fl/failover-dead-first");
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let mut cfg = mqtt(broker.port, &prefix, KA);
    // Nothing listens on the first: refused at once.
    cfg.servers = vec![server(support::free_port()), server(broker.port)];
    cfg.backoff_initial = NO_COMEBACK;
    cfg.backoff_max = NO_COMEBACK;
    let agent = Agent::start(cfg);
    watch
        .wait_for(&format!("{prefix}/status"), DEADLINE, |m| {
            m.payload == "online"
        })
        .await;
    assert_eq!(
        agent.link().reconnects,
        0,
        "one connection, the first that worked"
    );
}

/// A cluster node that cleans up a dead node's sessions may publish the old connection's will
/// after the new connection's birth (seen once on nats-server). The agent answers an
/// `offline` on its status topic, while its link is up, with its birth again, so the retained
/// status ends `online`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_published_after_the_birth_is_answered_with_online_again() {
    let broker = Broker::start();
    let prefix = unique("fl/late-will");
    let status = format!("{prefix}/status");
    let watch = Watch::start(broker.port, &format!("{prefix}/#")).await;
    let _agent = Agent::start(mqtt(broker.port, &prefix, KA));
    watch
        .wait_for(&status, DEADLINE, |m| m.payload == "online")
        .await;
    // A late will, as a broker would publish it: retained `offline`.
    watch.publish(&status, "offline", true).await;
    let offline_at = watch.on(&status).len();
    wait_until("online again after the late will", DEADLINE, || {
        let all = watch.on(&status);
        (all.len() > offline_at && all.last().unwrap().payload == "online").then_some(())
    })
    .await;
    let retained = retained_on(broker.port, &status, DEADLINE).await;
    assert_eq!(
        retained.payload, "online",
        "the retained status ends online"
    );
}
