//! A real three-node nats-server cluster (Debian's 2.9.10) with JetStream and an MQTT
//! listener on every node, on free loopback ports, stopped when dropped. MQTT retained
//! messages live in a JetStream stream replicated to all three nodes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet};

use super::broker::listen_port;

pub struct Node {
    pub name: String,
    pub mqtt_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

pub fn nats_bin() -> PathBuf {
    for p in ["/usr/bin/nats-server", "/usr/sbin/nats-server"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("nats-server is not installed: run the README's test command, which installs it");
}

impl Cluster {
    /// Starts three nodes and returns once every node answers an MQTT CONNECT (JetStream,
    /// which MQTT needs, is up and has a leader).
    pub async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| (listen_port(), listen_port(), listen_port()))
            .collect();
        let mut nodes = Vec::new();
        for (i, &(client, route, mqtt)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, &(_, r, _))| format!("nats-route://127.0.0.1:{r}"))
                .collect();
            let store = dir.path().join(&name);
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client}\n\
                     jetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: fieldlink, listen: 127.0.0.1:{route}, routes: [{}] }}\n\
                     mqtt {{ listen: 127.0.0.1:{mqtt}, stream_replicas: 3 }}\n",
                    store.display(),
                    routes.join(", ")
                ),
            )
            .unwrap();
            let mut node = Node {
                log: dir.path().join(format!("{name}.log")),
                name,
                mqtt_port: mqtt,
                config,
                child: None,
            };
            node.spawn();
            nodes.push(node);
        }
        let cluster = Cluster { nodes, _dir: dir };
        for node in &cluster.nodes {
            if !node.mqtt_within(Duration::from_secs(90)).await {
                // A cluster that does not form is usually a peer's doing: show every log.
                let logs: Vec<String> = cluster
                    .nodes
                    .iter()
                    .map(|n| format!("--- {} ---\n{}", n.name, n.log()))
                    .collect();
                panic!(
                    "nats node {} gave no CONNACK within 90 s; the nodes' logs:\n{}",
                    node.name,
                    logs.join("\n")
                );
            }
        }
        cluster
    }

    pub fn node_by_port(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.mqtt_port == port)
            .expect("a node of the cluster")
    }
}

impl Node {
    fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(nats_bin())
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
    }

    /// SIGKILL: the node dies with its connections, as a crashed cluster member does.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether an MQTT client gets a CONNACK from this node within `deadline`.
    async fn mqtt_within(&self, deadline: Duration) -> bool {
        let start = Instant::now();
        loop {
            if mqtt_answers(self.mqtt_port).await {
                return true;
            }
            if start.elapsed() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn mqtt_answers(port: u16) -> bool {
    let opts = MqttOptions::new(super::unique("probe"), "127.0.0.1", port);
    let (_client, mut eventloop) = AsyncClient::new(opts, 10);
    matches!(
        tokio::time::timeout(Duration::from_secs(3), eventloop.poll()).await,
        Ok(Ok(Event::Incoming(Packet::ConnAck(_))))
    )
}
