//! Uplink: everything MQTT. `topic` builds topics and payloads, `state` is the link state
//! machine (no I/O, time passed in), `mqtt` drives rumqttc and is the only module that does,
//! `tls` reads the certificates, `password` the password, `user_timeout` bounds blocked
//! writes on the broker socket. Sans-IO decisions `mqtt` acts on: `delivery` (delivered means
//! PUBACKed: requested, written with a packet id, acknowledged, settled; the send window),
//! `session_end` (how a connection ended and what to say about it), `diagnose` (connection
//! failures as typed causes and in words), `broker_check` (after each connect: did the broker
//! keep our retained messages, does it deliver ours), `republish` (the retained state we
//! own, put back when a broker lost it), `quarantine` (finding a record the broker will
//! never take; `give_up` acts on its verdicts), `failover` (which broker of the list next,
//! and when), `settings` (what every attempt shares), `subscriptions` (which subscription a
//! SUBACK answers), `homeassistant`
//! (discovery's subscriptions and what arrives on them). Commands received on `…/set` are
//! handed to a [`CommandSink`](crate::model::CommandSink) at once; what they do is the business
//! of `writes`.
//!
//! Owns the path from a [`Sample`] to the broker. Must not touch the buses, the config file or
//! systemd: it reports link state through [`Health`] and nothing else.

mod broker_check;
mod delivery;
mod diagnose;
mod event_loop;
mod failover;
mod give_up;
mod homeassistant;
mod mqtt;
mod password;
mod quarantine;
pub mod report;
mod republish;
mod session_end;
mod settings;
pub mod state;
mod subscriptions;
mod tls;
pub mod topic;
mod user_timeout;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::buffer::Outbox;
use crate::config::{Mqtt, PayloadMode};
use crate::model::{Reading, Sample, SampleSink};
use report::ExceptionFilter;

pub use mqtt::run;
pub use password::password_path;

/// Turns samples from the bus tasks into outbox records (topic + payload with `seq`).
/// Never blocks and never fails: the outbox bounds memory.
///
/// Report by exception ([`report`]) and device batching keep per-point and per-device state
/// behind one short-held lock; without either the path takes no lock of its own.
#[derive(Debug)]
pub struct Publisher {
    outbox: Arc<Outbox>,
    prefix: String,
    payload: PayloadMode,
    /// `None` when every reading goes straight to the outbox (json/plain, no deadband).
    shaping: Option<Mutex<Shaping>>,
}

/// What the publisher remembers between samples when it batches or filters.
#[derive(Debug, Default)]
struct Shaping {
    filter: Option<ExceptionFilter>,
    /// Readings of the poll in progress, per device (`payload = "device"` only).
    batches: HashMap<Arc<str>, Vec<Reading>>,
    /// Units already announced on `<device>/meta`, per device and point.
    announced_units: HashMap<Arc<str>, BTreeMap<Arc<str>, Arc<str>>>,
}

impl Publisher {
    pub fn new(mqtt: &Mqtt, outbox: Arc<Outbox>) -> Self {
        let shaping = (mqtt.payload == PayloadMode::Device || mqtt.report.is_some()).then(|| {
            Mutex::new(Shaping {
                filter: mqtt.report.map(ExceptionFilter::new),
                ..Shaping::default()
            })
        });
        Publisher {
            outbox,
            prefix: mqtt.prefix.clone(),
            payload: mqtt.payload,
            shaping,
        }
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    fn push_reading(&self, reading: &Reading) {
        if !topic::publishes(self.payload, reading) {
            return;
        }
        let topic = topic::reading_topic(&self.prefix, &reading.device, &reading.point);
        let mode = self.payload;
        self.outbox.push_reading(topic, reading.ts_ms, |number| {
            topic::reading_payload(mode, reading, number)
        });
    }

    fn push_command_result(&self, device: &str, point: &str, result: Vec<u8>) {
        let topic = topic::command_result_topic(&self.prefix, device, point);
        self.outbox.push(topic, crate::model::unix_ms_now(), result);
    }

    fn push_availability(&self, device: &str, online: bool) {
        let topic = topic::device_status_topic(&self.prefix, device);
        self.outbox.push(
            topic,
            crate::model::unix_ms_now(),
            topic::availability_payload(online).to_vec(),
        );
    }

    /// Publishes one device's batch: its meta first when it names a unit not announced yet.
    fn push_batch(&self, shaping: &mut Shaping, device: &Arc<str>, batch: Vec<Reading>) {
        let Some(ts_ms) = batch.iter().map(|r| r.ts_ms).max() else {
            return;
        };
        let announced = shaping.announced_units.entry(device.clone()).or_default();
        let mut new_unit = false;
        for r in &batch {
            if let Some(unit) = &r.unit {
                if announced.get(&r.point) != Some(unit) {
                    announced.insert(r.point.clone(), unit.clone());
                    new_unit = true;
                }
            }
        }
        if new_unit {
            let meta =
                topic::device_meta_payload(announced.iter().map(|(p, u)| (p.as_ref(), u.as_ref())));
            self.outbox
                .push(topic::device_meta_topic(&self.prefix, device), ts_ms, meta);
        }
        self.outbox
            .push_reading(topic::device_topic(&self.prefix, device), ts_ms, |number| {
                topic::device_payload(
                    ts_ms,
                    number,
                    batch.iter().map(|r| (r.point.as_ref(), &r.value)),
                )
            });
    }
}

impl SampleSink for Publisher {
    fn send(&self, sample: Sample) {
        let Some(shaping) = &self.shaping else {
            match sample {
                Sample::Reading(reading) => self.push_reading(&reading),
                Sample::DeviceAvailability { device, online } => {
                    self.push_availability(&device, online)
                }
                Sample::PollDone { .. } => {}
                Sample::WrittenValue(reading) => self.push_reading(&reading),
                Sample::CommandResult {
                    device,
                    point,
                    result,
                } => self.push_command_result(&device, &point, result),
            }
            return;
        };
        // Never poisoned in practice (nothing here panics); recover the state if it were.
        let mut shaping = shaping.lock().unwrap_or_else(|e| e.into_inner());
        match sample {
            Sample::Reading(reading) => {
                if let Some(filter) = &mut shaping.filter {
                    if !filter.admit(&reading) {
                        return;
                    }
                }
                if self.payload == PayloadMode::Device {
                    match shaping.batches.get_mut(&reading.device) {
                        Some(batch) => batch.push(reading),
                        None => {
                            shaping
                                .batches
                                .insert(reading.device.clone(), vec![reading]);
                        }
                    }
                } else {
                    self.push_reading(&reading);
                }
            }
            Sample::PollDone { device } => {
                if let Some(batch) = shaping.batches.remove(&device) {
                    self.push_batch(&mut shaping, &device, batch);
                }
            }
            Sample::WrittenValue(reading) => {
                if let Some(filter) = &mut shaping.filter {
                    filter.published(&reading);
                }
                if self.payload == PayloadMode::Device {
                    // The batch of a poll that was read before the write must not put the old
                    // value back when it is published.
                    if let Some(batch) = shaping.batches.get_mut(&reading.device) {
                        batch.retain(|r| r.point != reading.point);
                    }
                    let device = reading.device.clone();
                    self.push_batch(&mut shaping, &device, vec![reading]);
                } else {
                    self.push_reading(&reading);
                }
            }
            Sample::CommandResult {
                device,
                point,
                result,
            } => self.push_command_result(&device, &point, result),
            Sample::DeviceAvailability { device, online } => {
                if !online {
                    if let Some(filter) = &mut shaping.filter {
                        filter.forget_device(&device);
                    }
                }
                self.push_availability(&device, online);
            }
        }
    }
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
            report: None,
            command_max_age: Duration::from_secs(30),
            health_interval: Duration::from_secs(60),
            servers: vec![crate::config::Server {
                host: "localhost".into(),
                port: 1883,
            }],
        }
    }

    #[test]
    fn a_reading_becomes_a_record_with_its_boot_and_seq_in_the_payload() {
        let outbox = Arc::new(Outbox::new(10, 41));
        let publisher = Publisher::new(&mqtt(PayloadMode::Json), outbox.clone());
        publisher.send(Sample::Reading(Reading {
            device: Arc::from("m1"),
            point: Arc::from("v"),
            value: Ok(Value::Float(1.5)),
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
        assert_eq!((&json["boot"], &json["seq"]), (&41.into(), &1.into()));
        assert_eq!(records[1].topic, "fl/gw1/m1/status");
        assert_eq!(records[1].payload, b"offline");
        publisher.send(Sample::Reading(Reading {
            device: Arc::from("m1"),
            point: Arc::from("v"),
            value: Ok(Value::Float(1.6)),
            unit: Some(Arc::from("V")),
            ts_ms: 6,
        }));
        let json: serde_json::Value = serde_json::from_slice(&outbox.take(10)[0].payload).unwrap();
        assert_eq!(json["seq"], 2, "the status record took no reading number");
    }
}
