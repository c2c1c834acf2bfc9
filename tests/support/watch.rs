//! An MQTT subscriber (rumqttc) that records every message it sees, for assertions.
//!
//! [`Watch::start_surviving_restarts`] makes one that survives a broker restart: a clean
//! session forgets the subscription, so every CONNACK after the first subscribes again (and
//! [`Watch::subacks`] counts the SUBACKs, so a test can wait until the subscriber is back
//! before letting the agent publish again). A plain [`Watch::start`] stays deaf after a
//! restart, which suites that start a fresh watcher on the new broker rely on (a resubscribing
//! old one would see every message twice).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
}

impl Message {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// Subscribes to `filter` on the broker at `port` and keeps every message in arrival order.
pub struct Watch {
    pub messages: Arc<Mutex<Vec<Message>>>,
    subacks: Arc<AtomicU64>,
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// Connects, subscribes and returns once the SUBACK has arrived (so nothing published
    /// afterwards is missed, and retained messages are delivered).
    pub async fn start(port: u16, filter: &str) -> Watch {
        Watch::connect(port, filter, false, None).await
    }

    /// Like [`Watch::start`], as MQTT user `user` (no password: for a broker whose ACL names
    /// users but checks no passwords).
    pub async fn start_as(port: u16, filter: &str, user: &str) -> Watch {
        Watch::connect(port, filter, false, Some(user)).await
    }

    /// Like [`Watch::start`], but subscribes again after every reconnect.
    pub async fn start_surviving_restarts(port: u16, filter: &str) -> Watch {
        Watch::connect(port, filter, true, None).await
    }

    async fn connect(port: u16, filter: &str, resubscribe: bool, user: Option<&str>) -> Watch {
        let mut opts = MqttOptions::new(super::unique("watch"), "127.0.0.1", port);
        if let Some(user) = user {
            opts.set_credentials(user, "");
        }
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (subacked_tx, subacked_rx) = tokio::sync::oneshot::channel();
        let sink = messages.clone();
        let subacks = Arc::new(AtomicU64::new(0));
        let subacks_seen = subacks.clone();
        let resubscriber = client.clone();
        let filter = filter.to_string();
        let task = tokio::spawn(async move {
            let mut subacked = Some(subacked_tx);
            let mut connacks = 0u64;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connacks += 1;
                        // try_: this task is the one that drains the request channel, so an
                        // awaited send could wait on itself.
                        if resubscribe && connacks > 1 {
                            let _ = resubscriber.try_subscribe(filter.as_str(), QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subacks_seen.fetch_add(1, Ordering::SeqCst);
                        if let Some(tx) = subacked.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        sink.lock().unwrap().push(Message {
                            topic: p.topic.clone(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subacked_rx)
            .await
            .expect("SUBACK within 10 s")
            .unwrap();
        Watch {
            messages,
            subacks,
            client,
            task,
        }
    }

    /// SUBACKs received: 1 after [`Watch::start`], one more after each resubscription.
    pub fn subacks(&self) -> u64 {
        self.subacks.load(Ordering::SeqCst)
    }

    pub fn snapshot(&self) -> Vec<Message> {
        self.messages.lock().unwrap().clone()
    }

    /// Messages on exactly `topic`.
    pub fn on(&self, topic: &str) -> Vec<Message> {
        self.snapshot()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    }

    pub fn last_on(&self, topic: &str) -> Option<Message> {
        self.on(topic).pop()
    }

    /// Waits until a message on `topic` satisfies `pred`.
    pub async fn wait_for(
        &self,
        topic: &str,
        deadline: Duration,
        pred: impl Fn(&Message) -> bool,
    ) -> Message {
        super::wait_until(&format!("a matching message on {topic}"), deadline, || {
            self.on(topic).into_iter().find(|m| pred(m))
        })
        .await
    }

    /// Publishes `payload` on `topic` at QoS 1 from this client (its own subscription sees it
    /// too when the filter matches).
    pub async fn publish(&self, topic: &str, payload: &str, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
            .await
            .unwrap();
    }

    pub async fn stop(self) {
        let _ = self.client.disconnect().await;
        self.task.abort();
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
