//! Uplink: everything MQTT. `topic` builds topics and payloads, `state` is the link state
//! machine (no I/O, time passed in), `mqtt` drives rumqttc and is the only module that does,
//! `tls` reads the certificates, `password` the password, `user_timeout` bounds blocked
//! writes on the broker socket, `ack_pacing` keeps its ACKs delayed while PUBACKs stream
//! back. Sans-IO decisions `mqtt` acts on: `delivery` (delivered means PUBACKed: requested,
//! written with a packet id, acknowledged, settled; the send window),
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

mod ack_pacing;
mod broker_check;
pub mod compact;
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
use crate::config::{Device, Mqtt, PayloadMode};
use crate::model::{Quality, Reading, Sample, SampleSink, Value};
use compact::Layout;
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
    /// The topic of every configured point, built once: the outbox's records share these
    /// instead of each formatting (and allocating) its own.
    point_topics: PointTopics,
}

/// `<prefix>/<device>/<point>` by device and point name.
type PointTopics = HashMap<Arc<str>, HashMap<Arc<str>, Arc<str>>>;

/// What the publisher remembers between samples when it batches or filters.
#[derive(Debug, Default)]
struct Shaping {
    filter: Option<ExceptionFilter>,
    /// Readings of the poll in progress, per device (`payload = "device"` only).
    batches: HashMap<Arc<str>, Vec<Reading>>,
    /// Units already announced on `<device>/meta`, per device and point.
    announced_units: HashMap<Arc<str>, BTreeMap<Arc<str>, Arc<str>>>,
    /// `payload = "compact"`: each device's layout, newest values and poll in progress.
    compact: HashMap<Arc<str>, CompactDevice>,
}

/// What the publisher keeps of one device in compact mode.
#[derive(Debug)]
struct CompactDevice {
    layout: Layout,
    /// The newest published value of each point of `layout`, by index.
    values: Vec<Option<Result<Value, Quality>>>,
    /// The version whose meta went to the outbox (`None`: none yet from this publisher).
    announced: Option<String>,
    /// Readings of the poll in progress.
    pending: Vec<Reading>,
    /// Whether a reading of the poll in progress passed the deadband (always, without one).
    admitted: bool,
}

impl CompactDevice {
    fn new(layout: Layout) -> CompactDevice {
        CompactDevice {
            values: vec![None; layout.len()],
            layout,
            announced: None,
            pending: Vec::new(),
            admitted: false,
        }
    }

    fn set(&mut self, reading: &Reading) {
        let i = self
            .layout
            .slot_for(&reading.point, reading.unit.as_ref(), &reading.value);
        if i >= self.values.len() {
            self.values.resize(i + 1, None);
        }
        self.values[i] = Some(reading.value.clone());
    }
}

impl Publisher {
    pub fn new(mqtt: &Mqtt, outbox: Arc<Outbox>) -> Self {
        let shaping = (mqtt.payload.batches_devices() || mqtt.report.is_some()).then(|| {
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
            point_topics: PointTopics::new(),
        }
    }

    /// The configured devices, whose point lists fix the order of compact messages (a
    /// device missing here gets its points in the order they are first read).
    pub fn with_devices(mut self, devices: &[Device]) -> Self {
        if matches!(self.payload, PayloadMode::Json | PayloadMode::Plain) {
            self.point_topics = devices
                .iter()
                .map(|d| {
                    let topics = d
                        .point_names()
                        .map(|point| {
                            let topic = topic::reading_topic(&self.prefix, &d.name, point);
                            (Arc::from(point), Arc::from(topic))
                        })
                        .collect();
                    (Arc::from(d.name.as_str()), topics)
                })
                .collect();
        }
        if self.payload == PayloadMode::Compact {
            if let Some(shaping) = &self.shaping {
                let mut shaping = shaping.lock().unwrap_or_else(|e| e.into_inner());
                shaping.compact = compact::layouts(devices)
                    .into_iter()
                    .map(|(name, layout)| (name, CompactDevice::new(layout)))
                    .collect();
            }
        }
        self
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    fn push_reading(&self, reading: &Reading) {
        if !topic::publishes(self.payload, reading) {
            return;
        }
        let topic = match self
            .point_topics
            .get(&reading.device)
            .and_then(|points| points.get(&reading.point))
        {
            Some(topic) => topic.clone(),
            None => topic::reading_topic(&self.prefix, &reading.device, &reading.point).into(),
        };
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

    /// Publishes the whole state of one device in compact mode: the readings of its poll in
    /// progress (when one passed the deadband) or `written`, and its meta first when the
    /// layout is one the outbox has not carried yet.
    fn push_compact(&self, shaping: &mut Shaping, device: &Arc<str>, written: Option<Reading>) {
        let Shaping {
            filter, compact, ..
        } = shaping;
        let Some(state) = compact.get_mut(device) else {
            return;
        };
        let readings = std::mem::take(&mut state.pending);
        let admitted = std::mem::replace(&mut state.admitted, false);
        let readings = match written {
            Some(w) => vec![w],
            None if admitted => readings,
            None => return,
        };
        let Some(ts_ms) = readings.iter().map(|r| r.ts_ms).max() else {
            return;
        };
        for r in &readings {
            // The whole array goes out: what the deadband compares with is what was sent.
            if let Some(filter) = filter.as_mut() {
                filter.published(r);
            }
            state.set(r);
        }
        if state.announced.as_deref() != Some(state.layout.version()) {
            self.outbox.push(
                topic::device_meta_topic(&self.prefix, device),
                ts_ms,
                state.layout.meta_payload(),
            );
            state.announced = Some(state.layout.version().to_owned());
        }
        let (version, values) = (state.layout.version(), &state.values);
        self.outbox
            .push_reading(topic::device_topic(&self.prefix, device), ts_ms, |number| {
                compact::payload(ts_ms, number, version, values)
            });
    }

    fn compact_device<'s>(shaping: &'s mut Shaping, device: &Arc<str>) -> &'s mut CompactDevice {
        shaping
            .compact
            .entry(device.clone())
            .or_insert_with(|| CompactDevice::new(Layout::empty()))
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
            Sample::Reading(reading) if self.payload == PayloadMode::Compact => {
                let admitted = shaping.filter.as_mut().is_none_or(|f| f.admit(&reading));
                let state = Self::compact_device(&mut shaping, &reading.device);
                state.admitted |= admitted;
                state.pending.push(reading);
            }
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
            Sample::PollDone { device } if self.payload == PayloadMode::Compact => {
                self.push_compact(&mut shaping, &device, None);
            }
            Sample::PollDone { device } => {
                if let Some(batch) = shaping.batches.remove(&device) {
                    self.push_batch(&mut shaping, &device, batch);
                }
            }
            Sample::WrittenValue(reading) => {
                if self.payload == PayloadMode::Compact {
                    // The poll in progress was read before the write: its value of the point
                    // must not put the old one back. The read-back goes out at once, with the
                    // device's other points as last published.
                    let state = Self::compact_device(&mut shaping, &reading.device);
                    state.pending.retain(|r| r.point != reading.point);
                    let device = reading.device.clone();
                    let pending = std::mem::take(&mut state.pending);
                    let admitted = std::mem::replace(&mut state.admitted, false);
                    self.push_compact(&mut shaping, &device, Some(reading));
                    let state = Self::compact_device(&mut shaping, &device);
                    state.pending = pending;
                    state.admitted = admitted;
                    return;
                }
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

    fn sample(device: &str, point: &str, value: Result<Value, Quality>, ts_ms: u64) -> Reading {
        Reading {
            device: Arc::from(device),
            point: Arc::from(point),
            value,
            unit: None,
            ts_ms,
        }
    }

    fn poll(publisher: &Publisher, device: &str, values: &[(&str, f64)], ts_ms: u64) {
        for (point, v) in values {
            publisher.send(Sample::Reading(sample(
                device,
                point,
                Ok(Value::Float(*v)),
                ts_ms,
            )));
        }
        publisher.send(Sample::PollDone {
            device: Arc::from(device),
        });
    }

    fn compact_device(names: &[&str]) -> crate::config::Device {
        use crate::config::{DataType, ModbusDevice, Point, Table};
        crate::config::Device {
            name: "m1".into(),
            bus: "b".into(),
            interval: Duration::from_secs(1),
            kind: crate::config::DeviceKind::Modbus(ModbusDevice {
                unit: 1,
                max_gap: 8,
                offline_after: 3,
                points: names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| Point::new(n, Table::Holding, 2 * i as u16, DataType::F32))
                    .collect(),
            }),
        }
    }

    #[test]
    fn configured_and_unconfigured_points_publish_on_the_same_topic_scheme() {
        let outbox = Arc::new(Outbox::new(100, 1));
        let publisher = Publisher::new(&mqtt(PayloadMode::Json), outbox.clone())
            .with_devices(&[compact_device(&["a"])]);
        for (device, point) in [("m1", "a"), ("m1", "unmapped"), ("m9", "a"), ("m1", "a")] {
            publisher.send(Sample::Reading(sample(device, point, Ok(Value::Int(1)), 1)));
        }
        let topics: Vec<String> = payloads(&outbox).into_iter().map(|(t, _)| t).collect();
        assert_eq!(
            topics,
            [
                "fl/gw1/m1/a",
                "fl/gw1/m1/unmapped",
                "fl/gw1/m9/a",
                "fl/gw1/m1/a"
            ]
        );
    }

    fn payloads(outbox: &Outbox) -> Vec<(String, serde_json::Value)> {
        outbox
            .take(100)
            .into_iter()
            .map(|r| {
                (
                    r.topic.to_string(),
                    serde_json::from_slice(&r.payload).unwrap(),
                )
            })
            .collect()
    }

    /// The `v` arrays of the compact messages queued on `topic`.
    fn compact_arrays(outbox: &Outbox, topic: &str) -> Vec<serde_json::Value> {
        payloads(outbox)
            .into_iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| p["v"].clone())
            .collect()
    }

    #[test]
    fn compact_sends_the_meta_once_then_every_point_in_config_order_each_poll() {
        let outbox = Arc::new(Outbox::new(100, 1));
        let publisher = Publisher::new(&mqtt(PayloadMode::Compact), outbox.clone())
            .with_devices(&[compact_device(&["a", "b", "c"])]);
        // Read in another order than configured; `c` not read yet.
        poll(&publisher, "m1", &[("b", 2.5), ("a", 1.0)], 10);
        poll(&publisher, "m1", &[("c", 3.0)], 20);
        let got = payloads(&outbox);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].0, "fl/gw1/m1/meta");
        let version = got[0].1["m"].clone();
        assert_eq!(got[1].0, "fl/gw1/m1");
        assert_eq!(
            got[1].1,
            serde_json::json!({"ts":10,"seq":1,"boot":1,"m":version,"v":[1.0,2.5,null]})
        );
        assert_eq!(got[2].1["v"], serde_json::json!([1.0, 2.5, 3.0]));
        assert_eq!(got[2].1["ts"], 20);
    }

    #[test]
    fn compact_learns_an_unconfigured_device_and_a_new_point_is_a_new_meta() {
        let outbox = Arc::new(Outbox::new(100, 1));
        let publisher = Publisher::new(&mqtt(PayloadMode::Compact), outbox.clone());
        poll(&publisher, "x", &[("a", 1.0)], 10);
        poll(&publisher, "x", &[("a", 1.0), ("b", 2.0)], 20);
        let got = payloads(&outbox);
        let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            topics,
            ["fl/gw1/x/meta", "fl/gw1/x", "fl/gw1/x/meta", "fl/gw1/x"]
        );
        assert_ne!(got[0].1["m"], got[2].1["m"]);
        assert_eq!(got[3].1["m"], got[2].1["m"]);
        assert_eq!(got[2].1["points"][1]["name"], "b");
        assert_eq!(got[3].1["v"], serde_json::json!([1.0, 2.0]));
    }

    #[test]
    fn compact_with_a_deadband_sends_the_whole_array_when_any_point_passed_it() {
        let outbox = Arc::new(Outbox::new(100, 1));
        let mut cfg = mqtt(PayloadMode::Compact);
        cfg.report = Some(crate::config::ReportByException {
            deadband: crate::config::Deadband::Absolute(0.5),
            max_interval: Duration::from_secs(3600),
        });
        let publisher =
            Publisher::new(&cfg, outbox.clone()).with_devices(&[compact_device(&["a", "b"])]);
        poll(&publisher, "m1", &[("a", 1.0), ("b", 10.0)], 1000);
        // Neither moved past 0.5: nothing.
        poll(&publisher, "m1", &[("a", 1.2), ("b", 10.3)], 2000);
        // `b` moved past it: both current values go out.
        poll(&publisher, "m1", &[("a", 1.4), ("b", 10.6)], 3000);
        // `a` is compared with the 1.4 just sent, not with the 1.0 before.
        poll(&publisher, "m1", &[("a", 1.8), ("b", 10.6)], 4000);
        let arrays = compact_arrays(&outbox, "fl/gw1/m1");
        assert_eq!(
            arrays,
            [
                serde_json::json!([1.0, 10.0]),
                serde_json::json!([1.4, 10.6])
            ]
        );
    }

    #[test]
    fn compact_keeps_a_bad_point_null_with_its_reason_until_it_reads_again() {
        let outbox = Arc::new(Outbox::new(100, 1));
        let publisher = Publisher::new(&mqtt(PayloadMode::Compact), outbox.clone())
            .with_devices(&[compact_device(&["a", "b"])]);
        publisher.send(Sample::Reading(sample("m1", "a", Err(Quality::Timeout), 1)));
        poll(&publisher, "m1", &[("b", 2.0)], 1);
        // The poller reports a bad point once; the next poll brings only `b`.
        poll(&publisher, "m1", &[("b", 3.0)], 2);
        poll(&publisher, "m1", &[("a", 1.0), ("b", 3.0)], 3);
        let got = payloads(&outbox);
        let msgs: Vec<&serde_json::Value> = got
            .iter()
            .filter(|(t, _)| t == "fl/gw1/m1")
            .map(|(_, p)| p)
            .collect();
        assert_eq!(msgs[0]["q"], serde_json::json!({"0":"timeout"}));
        assert_eq!(msgs[1]["v"], serde_json::json!([null, 3.0]));
        assert_eq!(msgs[1]["q"], serde_json::json!({"0":"timeout"}));
        assert_eq!(msgs[2]["v"], serde_json::json!([1.0, 3.0]));
        assert!(msgs[2].get("q").is_none());
    }

    #[test]
    fn compact_publishes_a_write_read_back_at_once_and_the_older_poll_does_not_undo_it() {
        let outbox = Arc::new(Outbox::new(100, 1));
        let publisher = Publisher::new(&mqtt(PayloadMode::Compact), outbox.clone())
            .with_devices(&[compact_device(&["a", "b"])]);
        poll(&publisher, "m1", &[("a", 1.0), ("b", 2.0)], 1);
        // A poll read before the write is in progress when the read-back arrives.
        publisher.send(Sample::Reading(sample("m1", "a", Ok(Value::Float(1.0)), 2)));
        publisher.send(Sample::Reading(sample("m1", "b", Ok(Value::Float(2.2)), 2)));
        publisher.send(Sample::WrittenValue(sample(
            "m1",
            "a",
            Ok(Value::Float(5.0)),
            3,
        )));
        publisher.send(Sample::PollDone {
            device: Arc::from("m1"),
        });
        let arrays = compact_arrays(&outbox, "fl/gw1/m1");
        assert_eq!(
            arrays,
            [
                serde_json::json!([1.0, 2.0]),
                serde_json::json!([5.0, 2.0]),
                serde_json::json!([5.0, 2.2]),
            ]
        );
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
        assert_eq!(&*records[0].topic, "fl/gw1/m1/v");
        let json: serde_json::Value = serde_json::from_slice(&records[0].payload).unwrap();
        assert_eq!((&json["boot"], &json["seq"]), (&41.into(), &1.into()));
        assert_eq!(&*records[1].topic, "fl/gw1/m1/status");
        assert_eq!(&records[1].payload[..], b"offline");
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
