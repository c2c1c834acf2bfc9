//! Topics and payloads: pure functions from readings and link facts to MQTT topic strings and
//! payload bytes. Owns the wire format consumers depend on; touches no I/O and no rumqttc.
//!
//! Reading payload (`payload = "json"`): `{"value":…,"unit":"V","ts":<unix ms>,"seq":<n>}`.
//! `unit` is omitted when the point has none. A float that is NaN or infinite cannot be a JSON
//! number, so it is sent as `"value":null` plus `"quality":"nan"`, `"inf"` or `"-inf"`; every
//! other reading carries no `quality` key (consumers treat its absence as good).
//! With `payload = "plain"` the payload is the value alone as text (`true`, `42`, `230.5`,
//! `NaN`, `inf`, `-inf`, or the string as is); plain payloads carry no `seq`.
//!
//! With `payload = "device"` each poll of a device is one retained message on
//! `<prefix>/<device>`: `{"ts":<unix ms>,"seq":<n>,"values":{"voltage":230.1,"status":"ok"}}`,
//! `ts` being the time of the poll's last read. A non-finite float is `null` in `values`
//! and named in `"quality":{"<point>":"nan"}` (the key is absent when all are finite). Units
//! are not repeated per poll: the retained `<prefix>/<device>/meta` holds
//! `{"units":{"voltage":"V",…}}` (points without a unit left out), published before the
//! device's first batch and again when a batch brings a point it did not list yet. With a
//! deadband, `values` holds only the points that passed it, so a consumer keeps the last
//! value per point; the retained message is the last batch, not the full state.

use serde_json::{Map, Value as Json};

use crate::config::PayloadMode;
use crate::health::HealthReport;
use crate::model::{Reading, Value};

/// `<prefix>/<device>/<point>`: one retained reading per point.
pub fn reading_topic(prefix: &str, device: &str, point: &str) -> String {
    format!("{prefix}/{device}/{point}")
}

/// `<prefix>/<device>`: the device-batched readings (`payload = "device"`), retained.
pub fn device_topic(prefix: &str, device: &str) -> String {
    format!("{prefix}/{device}")
}

/// `<prefix>/<device>/meta`: the units of a device's points (`payload = "device"`), retained.
pub fn device_meta_topic(prefix: &str, device: &str) -> String {
    format!("{prefix}/{device}/meta")
}

/// `<prefix>/<device>/status`: `online` / `offline`, retained.
pub fn device_status_topic(prefix: &str, device: &str) -> String {
    format!("{prefix}/{device}/status")
}

/// `<prefix>/status`: the gateway's birth (`online`) and last will (`offline`), retained.
pub fn gateway_status_topic(prefix: &str) -> String {
    format!("{prefix}/status")
}

/// `<prefix>/health`: retained JSON about the link and the outbox.
pub fn health_topic(prefix: &str) -> String {
    format!("{prefix}/health")
}

pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";

pub fn availability_payload(online: bool) -> &'static [u8] {
    if online {
        ONLINE.as_bytes()
    } else {
        OFFLINE.as_bytes()
    }
}

/// The payload of one reading; `seq` is the outbox's sequence number for it.
pub fn reading_payload(mode: PayloadMode, reading: &Reading, seq: u64) -> Vec<u8> {
    match mode {
        PayloadMode::Plain => plain_value(&reading.value).into_bytes(),
        // A lone reading in device mode (the publisher batches; this is for completeness).
        PayloadMode::Device => device_payload(
            reading.ts_ms,
            seq,
            std::iter::once((reading.point.as_ref(), &reading.value)),
        ),
        PayloadMode::Json => {
            let mut obj = Map::new();
            let (value, quality) = json_value(&reading.value);
            obj.insert("value".into(), value);
            if let Some(unit) = &reading.unit {
                obj.insert("unit".into(), Json::from(unit.as_ref()));
            }
            obj.insert("ts".into(), Json::from(reading.ts_ms));
            obj.insert("seq".into(), Json::from(seq));
            if let Some(q) = quality {
                obj.insert("quality".into(), Json::from(q));
            }
            // Serializing a map of plain JSON values cannot fail.
            serde_json::to_vec(&Json::Object(obj)).unwrap_or_default()
        }
    }
}

/// `{"ts":…,"seq":…,"values":{…}}` for one device poll; points keep the order given.
pub fn device_payload<'a>(
    ts_ms: u64,
    seq: u64,
    values: impl IntoIterator<Item = (&'a str, &'a Value)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"ts\":");
    out.extend_from_slice(ts_ms.to_string().as_bytes());
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"values\":{");
    let mut bad: Vec<(&str, &'static str)> = Vec::new();
    for (i, (point, value)) in values.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(&mut out, point);
        out.push(b':');
        let (json, quality) = json_value(value);
        // Writing a plain JSON value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &json);
        if let Some(q) = quality {
            bad.push((point, q));
        }
    }
    out.push(b'}');
    if !bad.is_empty() {
        out.extend_from_slice(b",\"quality\":{");
        for (i, (point, q)) in bad.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_str(&mut out, point);
            out.push(b':');
            write_json_str(&mut out, q);
        }
        out.push(b'}');
    }
    out.push(b'}');
    out
}

/// `{"units":{"voltage":"V",…}}` for `<prefix>/<device>/meta`.
pub fn device_meta_payload<'a>(units: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"units\":{");
    for (i, (point, unit)) in units.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(&mut out, point);
        out.push(b':');
        write_json_str(&mut out, unit);
    }
    out.extend_from_slice(b"}}");
    out
}

fn write_json_str(out: &mut Vec<u8>, text: &str) {
    let _ = serde_json::to_writer(&mut *out, text);
}

fn json_value(value: &Value) -> (Json, Option<&'static str>) {
    match value {
        Value::Bool(b) => (Json::from(*b), None),
        Value::Int(i) => (Json::from(*i), None),
        Value::UInt(u) => (Json::from(*u), None),
        Value::Float(f) if f.is_nan() => (Json::Null, Some("nan")),
        Value::Float(f) if f.is_infinite() => {
            (Json::Null, Some(if *f > 0.0 { "inf" } else { "-inf" }))
        }
        Value::Float(f) => (Json::from(*f), None),
        Value::Text(s) => (Json::from(s.as_str()), None),
    }
}

fn plain_value(value: &Value) -> String {
    match value {
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Text(s) => s.clone(),
    }
}

/// Outbox facts the health payload reports next to the link report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxFacts {
    pub depth: usize,
    pub dropped: u64,
}

/// `{"link":"up","last_error":null,"reconnects":0,"routing":"ok","quarantined":0,
/// "last_quarantined":null,"outbox_depth":0,"dropped":0,"ts":…}`, then one key per report
/// section, e.g.
/// `"buffer":{"disk_error":null,"memory_depth":0,"disk_depth":0,"dropped":0,"recovery":null}`
/// and `"serial_line":{"<bus>":{"garbage":0,"overlong":0,"bad_checksum":0,…}}`. A section
/// never replaces one of the fixed keys.
pub fn health_payload(report: &HealthReport, outbox: OutboxFacts, ts_ms: u64) -> Vec<u8> {
    let link = &report.link;
    let mut body = Map::new();
    body.insert("link".into(), serde_json::json!(link.state));
    body.insert("last_error".into(), Json::from(link.last_error.clone()));
    body.insert("reconnects".into(), Json::from(link.reconnects));
    body.insert("routing".into(), Json::from(link.routing.clone()));
    body.insert("quarantined".into(), Json::from(link.quarantined));
    body.insert(
        "last_quarantined".into(),
        Json::from(link.last_quarantined.clone()),
    );
    body.insert("outbox_depth".into(), Json::from(outbox.depth));
    body.insert("dropped".into(), Json::from(outbox.dropped));
    body.insert("ts".into(), Json::from(ts_ms));
    for (key, section) in &report.sections {
        body.entry(key.clone())
            .or_insert_with(|| section.value.clone());
    }
    serde_json::to_vec(&Json::Object(body)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::health::{LinkReport, LinkState, Section};

    fn reading(value: Value, unit: Option<&str>) -> Reading {
        Reading {
            device: Arc::from("meter1"),
            point: Arc::from("voltage"),
            value,
            unit: unit.map(Arc::from),
            ts_ms: 1_700_000_000_123,
        }
    }

    fn json(bytes: Vec<u8>) -> Json {
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn topics_hang_under_the_prefix() {
        assert_eq!(reading_topic("fl/gw1", "m1", "v"), "fl/gw1/m1/v");
        assert_eq!(device_status_topic("fl/gw1", "m1"), "fl/gw1/m1/status");
        assert_eq!(gateway_status_topic("fl/gw1"), "fl/gw1/status");
        assert_eq!(health_topic("fl/gw1"), "fl/gw1/health");
    }

    #[test]
    fn json_reading_carries_value_unit_ts_and_seq() {
        let p = reading_payload(
            PayloadMode::Json,
            &reading(Value::Float(230.5), Some("V")),
            7,
        );
        assert_eq!(
            json(p),
            serde_json::json!({"value":230.5,"unit":"V","ts":1_700_000_000_123u64,"seq":7})
        );
    }

    #[test]
    fn json_reading_without_unit_omits_the_key() {
        let p = reading_payload(PayloadMode::Json, &reading(Value::Int(-3), None), 1);
        let v = json(p);
        assert_eq!(v["value"], -3);
        assert!(v.get("unit").is_none());
        assert!(v.get("quality").is_none());
    }

    #[test]
    fn non_finite_floats_become_null_with_a_quality() {
        for (f, q) in [
            (f64::NAN, "nan"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
        ] {
            let v = json(reading_payload(
                PayloadMode::Json,
                &reading(Value::Float(f), None),
                1,
            ));
            assert_eq!(v["value"], Json::Null);
            assert_eq!(v["quality"], q);
        }
    }

    #[test]
    fn big_unsigned_bools_and_text_keep_their_json_types() {
        let v = json(reading_payload(
            PayloadMode::Json,
            &reading(Value::UInt(u64::MAX), None),
            1,
        ));
        assert_eq!(v["value"], u64::MAX);
        let v = json(reading_payload(
            PayloadMode::Json,
            &reading(Value::Bool(true), None),
            1,
        ));
        assert_eq!(v["value"], true);
        let v = json(reading_payload(
            PayloadMode::Json,
            &reading(Value::Text("a\"b".into()), None),
            1,
        ));
        assert_eq!(v["value"], "a\"b");
    }

    #[test]
    fn device_payload_holds_every_point_with_ts_and_seq() {
        let v = [
            Value::Float(230.5),
            Value::Int(-3),
            Value::Bool(true),
            Value::Text("a\"b".into()),
        ];
        let p = device_payload(
            17,
            5,
            [
                ("voltage", &v[0]),
                ("temp", &v[1]),
                ("run", &v[2]),
                ("model", &v[3]),
            ],
        );
        assert_eq!(
            json(p),
            serde_json::json!({"ts":17,"seq":5,"values":{"voltage":230.5,"temp":-3,"run":true,"model":"a\"b"}})
        );
    }

    #[test]
    fn device_payload_names_non_finite_points_in_quality() {
        let v = [Value::Float(f64::NAN), Value::Float(1.0)];
        let p = json(device_payload(1, 2, [("a", &v[0]), ("b", &v[1])]));
        assert_eq!(p["values"]["a"], Json::Null);
        assert_eq!(p["values"]["b"], 1.0);
        assert_eq!(p["quality"], serde_json::json!({"a":"nan"}));
    }

    #[test]
    fn device_meta_lists_units() {
        let p = json(device_meta_payload([("voltage", "V"), ("power", "W")]));
        assert_eq!(p, serde_json::json!({"units":{"voltage":"V","power":"W"}}));
    }

    #[test]
    fn plain_payload_is_just_the_value() {
        let p = |v| {
            String::from_utf8(reading_payload(
                PayloadMode::Plain,
                &reading(v, Some("V")),
                9,
            ))
            .unwrap()
        };
        assert_eq!(p(Value::Float(230.5)), "230.5");
        assert_eq!(p(Value::Int(-4)), "-4");
        assert_eq!(p(Value::Bool(false)), "false");
        assert_eq!(p(Value::Float(f64::NAN)), "NaN");
        assert_eq!(p(Value::Text("SDM120".into())), "SDM120");
    }

    #[test]
    fn health_payload_reports_link_and_outbox() {
        let link = LinkReport {
            state: LinkState::Down,
            last_error: Some("keep-alive: nothing from the broker for 3s".into()),
            reconnects: 2,
            routing: "not delivered: check its ACL".into(),
            quarantined: 1,
            last_quarantined: Some("fl/gw1/m1/text (3000 bytes)".into()),
        };
        let report = HealthReport {
            link,
            sections: vec![
                (
                    "buffer".into(),
                    Section {
                        value: serde_json::json!({"disk_error": "read-only file system"}),
                        trouble: Some("read-only file system".into()),
                    },
                ),
                (
                    "link".into(),
                    Section {
                        value: serde_json::json!("not mine"),
                        trouble: None,
                    },
                ),
            ],
        };
        let v = json(health_payload(
            &report,
            OutboxFacts {
                depth: 5,
                dropped: 1,
            },
            42,
        ));
        assert_eq!(v["link"], "down");
        assert_eq!(v["reconnects"], 2);
        assert_eq!(v["routing"], "not delivered: check its ACL");
        assert_eq!(v["quarantined"], 1);
        assert_eq!(v["last_quarantined"], "fl/gw1/m1/text (3000 bytes)");
        assert_eq!(v["outbox_depth"], 5);
        assert_eq!(v["dropped"], 1);
        assert_eq!(v["ts"], 42);
        assert_eq!(v["buffer"]["disk_error"], "read-only file system");
        assert_eq!(v["link"], "down", "a section never replaces a fixed key");
    }
}
