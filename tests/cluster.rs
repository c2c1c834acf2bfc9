//! Failover across a real broker cluster: three nats-server 2.9.10 nodes (JetStream, an MQTT
//! listener each). The agent is given all three; the node it is connected to is killed.
mod support;
#[path = "uplink_agent/mod.rs"]
mod uplink_agent;

use std::time::{Duration, Instant};

use fieldlink::config::Server;
use support::nats::Cluster;
use support::watch::Watch;
use support::{unique, wait_until};
use uplink_agent::{all_arrived, mqtt, seqs, Agent};

const KA: Duration = Duration::from_secs(2);
const DEADLINE: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_cluster_node_in_use_fails_over_to_another_with_nothing_lost() {
    let mut cluster = Cluster::start().await;
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.mqtt_port).collect();
    let prefix = unique("fl/cluster");
    // The watcher sits on the third node: what it sees crossed the cluster.
    let watch = Watch::start(ports[2], &format!("{prefix}/#")).await;
    let mut cfg = mqtt(ports[0], &prefix, KA);
    cfg.servers = ports
        .iter()
        .map(|&port| Server {
            host: "127.0.0.1".into(),
            port,
        })
        .collect();
    cfg.connect_timeout = CONNECT_TIMEOUT;
    cfg.backoff_initial = Duration::from_millis(500);
    cfg.backoff_max = Duration::from_secs(4);
    let status = format!("{prefix}/status");
    let mut agent = Agent::start(cfg);
    watch
        .wait_for(&status, DEADLINE, |m| m.payload == "online")
        .await;
    let first = agent.link().server.expect("connected");

    agent.produce(4, Duration::from_millis(50));
    let topic = format!("{prefix}/dev/p0");
    wait_until("readings across the cluster", DEADLINE, || {
        (watch.on(&topic).len() >= 10).then_some(())
    })
    .await;
    let births = watch.on(&status).len();
    let in_use: u16 = first.rsplit(':').next().unwrap().parse().unwrap();
    cluster.node_by_port(in_use).kill();
    let killed = Instant::now();
    let moved_to = wait_until("the agent on another node", DEADLINE, || {
        let link = agent.link();
        (agent.is_up() && link.server.as_deref() != Some(first.as_str())).then_some(link.server)
    })
    .await
    .unwrap();
    let took = killed.elapsed();
    eprintln!(
        "failover from {first} to {moved_to}: {took:?} ({} reconnects)",
        agent.link().reconnects
    );
    // A dead link is seen within 1.5 x keep-alive (a kill: at once), and a survivor that
    // does not answer costs one connect attempt before the next is tried. nats survivors
    // sometimes give no CONNACK for a while after a node died ("timeout for request type
    // CD" in their logs): the agent then keeps cycling through the list until one does.
    let bound = KA.mul_f64(1.5) + CONNECT_TIMEOUT;
    if took > bound {
        eprintln!("the survivors kept new connections waiting: failover took {took:?}");
    }
    assert!(took < Duration::from_secs(60), "took {took:?}");
    watch
        .wait_for(&status, DEADLINE, |_| watch.on(&status).len() > births)
        .await;
    // Birth re-published; a will the cluster publishes late for the dead node's session is
    // answered with `online` again, so the last word is `online`.
    wait_until("the status ends online", DEADLINE, || {
        (watch.last_on(&status).unwrap().payload == "online").then_some(())
    })
    .await;

    wait_until("readings after the failover", DEADLINE, || {
        (watch.on(&topic).len() >= 30).then_some(())
    })
    .await;
    agent.stop_producing();
    agent.drained(DEADLINE).await;
    let last = agent.last_seq();
    all_arrived(last, DEADLINE, || seqs(&watch.snapshot())).await;

    // Retained values are readable from both surviving nodes, at their newest. A node that
    // lost a peer may take a moment to serve a new subscriber its retained messages, or serve
    // an older one for a while: each try is a fresh subscriber, as a consumer would be.
    let newest = watch
        .on(&topic)
        .iter()
        .filter_map(|m| m.json()["seq"].as_u64())
        .max()
        .unwrap();
    let since = Instant::now();
    for survivor in ports.iter().copied().filter(|&p| p != in_use) {
        let mut tries = 0;
        loop {
            tries += 1;
            let got = tokio::time::timeout(Duration::from_secs(5), async {
                Watch::start(survivor, &topic)
                    .await
                    .wait_for(&topic, Duration::from_secs(4), |m| m.retain)
                    .await
            })
            .await;
            let seq = got.ok().and_then(|m| m.json()["seq"].as_u64());
            if seq == Some(newest) {
                break;
            }
            let node = cluster.node_by_port(survivor);
            assert!(
                since.elapsed() < DEADLINE,
                "node {} ({survivor}) still serves {seq:?} as the retained {topic}, not {newest}, \
                 after {tries} tries; its log:\n{}",
                node.name,
                node.log()
            );
        }
        eprintln!(
            "retained value read from {survivor} after {tries} tries, {:?}",
            since.elapsed()
        );
    }
}
