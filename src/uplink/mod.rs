//! Uplink: everything MQTT. `topic` builds topics and payloads, `state` is the link state
//! machine (no I/O, time passed in), `mqtt` is the only importer of rumqttc, `tls` reads the
//! certificates, `user_timeout` bounds blocked writes on the broker socket.
//!
//! Owns the path from a [`Sample`] to the broker. Must not touch the buses, the config file or
//! systemd: it reports link state through [`Health`] and nothing else.

mod mqtt;
pub mod state;
mod tls;
pub mod topic;
mod user_timeout;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Mqtt, PayloadMode};
use crate::health::Health;
use crate::model::{Sample, SampleSink};
use crate::queue::Outbox;

pub use mqtt::password_path;

/// Turns samples from the bus tasks into outbox records (topic + payload with `seq`).
/// Never blocks and never fails: the outbox bounds memory.
#[derive(Debug)]
pub struct Publisher {
    outbox: Arc<Outbox>,
    prefix: String,
    payload: PayloadMode,
}

impl Publisher {
    pub fn new(mqtt: &Mqtt, outbox: Arc<Outbox>) -> Self {
        Publisher {
            outbox,
            prefix: mqtt.prefix.clone(),
            payload: mqtt.payload,
        }
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }
}

impl SampleSink for Publisher {
    fn send(&self, sample: Sample) {
        match sample {
            Sample::Reading(reading) => {
                let topic = topic::reading_topic(&self.prefix, &reading.device, &reading.point);
                let mode = self.payload;
                self.outbox.push(topic, reading.ts_ms, |seq| {
                    topic::reading_payload(mode, &reading, seq)
                });
            }
            Sample::DeviceAvailability { device, online } => {
                let topic = topic::device_status_topic(&self.prefix, &device);
                self.outbox.push(topic, crate::model::unix_ms_now(), |_| {
                    topic::availability_payload(online).to_vec()
                });
            }
        }
    }
}

/// Keeps the MQTT link up and drains the outbox until `shutdown` fires, then publishes what
/// is queued (bounded in time), the retained `offline` status, and disconnects. Returns an
/// error only for a configuration the user must fix (an unreadable TLS file); link failures
/// are retried with backoff for as long as it runs.
pub async fn run(
    mqtt: Mqtt,
    outbox: Arc<Outbox>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    mqtt::run(mqtt, outbox, health, shutdown).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{Reading, Value};

    fn mqtt(payload: PayloadMode) -> Mqtt {
        Mqtt {
            host: "localhost".into(),
            port: 1883,
            client_id: "gw1".into(),
            keep_alive: Duration::from_secs(15),
            qos: 1,
            prefix: "fl/gw1".into(),
            username: None,
            password_file: None,
            tls: None,
            connect_timeout: Duration::from_secs(20),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            payload,
            queue_capacity: 100,
        }
    }

    #[test]
    fn a_reading_becomes_a_record_with_its_seq_in_the_payload() {
        let outbox = Arc::new(Outbox::new(10, 41));
        let publisher = Publisher::new(&mqtt(PayloadMode::Json), outbox.clone());
        publisher.send(Sample::Reading(Reading {
            device: Arc::from("m1"),
            point: Arc::from("v"),
            value: Value::Float(1.5),
            unit: Some(Arc::from("V")),
            ts_ms: 5,
        }));
        publisher.send(Sample::DeviceAvailability {
            device: Arc::from("m1"),
            online: false,
        });
        let records = outbox.take(10);
        assert_eq!(records[0].topic, "fl/gw1/m1/v");
        let json: serde_json::Value = serde_json::from_slice(&records[0].payload).unwrap();
        assert_eq!(json["seq"], 41);
        assert_eq!(records[1].topic, "fl/gw1/m1/status");
        assert_eq!(records[1].payload, b"offline");
    }
}
