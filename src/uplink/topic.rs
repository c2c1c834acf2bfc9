//! Topics and payloads: pure functions from readings and link facts to MQTT topic strings and
//! payload bytes. Owns the wire format consumers depend on; touches no I/O and no rumqttc.
//!
//! Reading payload (`payload = "json"`):
//! `{"value":…,"unit":"V","ts":<unix ms>,"seq":<n>,"boot":<b>}`. `unit` is omitted when the
//! point has none. `(boot, seq)` identifies a reading: `boot` counts the agent's starts and
//! `seq` counts readings from 1 within one start, taking no number for status or meta
//! messages, so within one boot every gap in `seq` is a reading lost (and counted in the
//! health topic's `dropped`); a consumer dedupes on `(boot, seq)`. A point without a value
//! carries `"value":null` and a `quality` saying why: a float that is NaN or infinite (not a
//! JSON number) is `"nan"`, `"inf"` or `"-inf"`; a point that could not be read ([`Quality`],
//! published once when it turns bad) is `"timeout"`, `"exception:<code>"`, `"decode"`,
//! `"stale"`, `"garbled"` or `"disconnected"`. Every other reading carries no `quality` key
//! (consumers treat its absence as good). [`quality_text`] is the one place these words are
//! made.
//! With `payload = "plain"` the payload is the value alone as text (`true`, `42`, `230.5`,
//! `NaN`, `inf`, `-inf`, or the string as is); plain payloads carry no `seq`. Plain mode
//! publishes nothing for a point without a value, and nothing for an empty string: a
//! zero-length retained message would delete the topic's retained value ([`publishes`]).
//!
//! With `payload = "device"` each poll of a device is one retained message on
//! `<prefix>/<device>`:
//! `{"ts":<unix ms>,"seq":<n>,"boot":<b>,"values":{"voltage":230.1,"status":"ok"}}` (one
//! `seq` per message), `ts` being the time of the poll's last read. A point without a value
//! (non-finite, or bad) is `null` in `values` and named in
//! `"quality":{"<point>":"nan"|"timeout"|…}` (the key is absent when every point has a
//! value). Units
//! are not repeated per poll: the retained `<prefix>/<device>/meta` holds
//! `{"units":{"voltage":"V",…}}` (points without a unit left out), published before the
//! device's first batch and again when a batch brings a point it did not list yet. With a
//! deadband, `values` holds only the points that passed it, so a consumer keeps the last
//! value per point; the retained message is the last batch, not the full state.
//!
//! With `payload = "compact"` the same topic carries every point of the device in the order
//! of its configuration, `{"ts":…,"seq":…,"boot":…,"m":"<meta version>","v":[230.1,…]}`,
//! the names, types and units once in the retained meta: see `uplink::compact`.

use serde_json::{Map, Value as Json};

use std::borrow::Cow;

use crate::buffer::ReadingNumber;
use crate::config::PayloadMode;
use crate::health::HealthReport;
use crate::model::{Quality, Reading, Value};

/// `<prefix>/<device>/<point>`: one retained reading per point.
pub fn reading_topic(prefix: &str, device: &str, point: &str) -> String {
    format!("{prefix}/{device}/{point}")
}

/// `<prefix>/<device>`: the device-batched readings (`payload = "device"` or `"compact"`),
/// retained.
pub fn device_topic(prefix: &str, device: &str) -> String {
    format!("{prefix}/{device}")
}

/// `<prefix>/<device>/meta`: the units of a device's points (`payload = "device"`), or the
/// order, types and units of the compact array (`payload = "compact"`); retained.
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

/// `<prefix>/+/+/set`: what the agent subscribes to when a point is writable. One level per
/// device and point, so `…/set/result` (one level more) is never taken for a command.
pub fn command_filter(prefix: &str) -> String {
    format!("{prefix}/+/+/set")
}

/// The device and point a command topic names (`<prefix>/<device>/<point>/set`), or `None`
/// for any other topic.
pub fn command_target<'t>(prefix: &str, topic: &'t str) -> Option<(&'t str, &'t str)> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let rest = rest.strip_suffix("/set")?;
    let (device, point) = rest.split_once('/')?;
    (!device.is_empty() && !point.is_empty() && !point.contains('/')).then_some((device, point))
}

/// `<prefix>/<device>/<point>/set/result`: one result per command, never retained (a retained
/// result would answer a command nobody sent to the next subscriber).
pub fn command_result_topic(prefix: &str, device: &str, point: &str) -> String {
    format!("{prefix}/{device}/{point}/set/result")
}

/// Whether a record on `topic` goes out retained when it is the newest of its topic:
/// everything but command results (four levels below the prefix, where readings, statuses and
/// meta have one or two, so a device named `set` with a point named `result` stays retained).
pub fn retained_when_newest(prefix: &str, topic: &str) -> bool {
    // Called for every record sent: the common case answers without splitting anything.
    let Some(head) = topic.strip_suffix("/set/result") else {
        return true;
    };
    let Some(target) = head.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) else {
        return true;
    };
    // `<device>/<point>`: exactly two levels.
    target.split('/').count() != 2
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

/// Whether `reading` is published at all in `mode`: plain mode has no way to say "no value"
/// (a zero-length retained message deletes the retained value instead), so it leaves out
/// bad points and empty strings. Every reading is published in the other modes.
pub fn publishes(mode: PayloadMode, reading: &Reading) -> bool {
    mode != PayloadMode::Plain || plain_value(&reading.value).is_some()
}

/// The payload of one reading; `number` is the outbox's `(boot, seq)` for it. Call only for
/// readings that [`publishes`] accepts (plain mode would give an empty payload otherwise).
pub fn reading_payload(mode: PayloadMode, reading: &Reading, number: ReadingNumber) -> Vec<u8> {
    match mode {
        PayloadMode::Plain => plain_value(&reading.value).unwrap_or_default().into_bytes(),
        // A lone reading in device or compact mode (the publisher batches both; this is for
        // completeness, in the form that needs no meta to read).
        PayloadMode::Device | PayloadMode::Compact => device_payload(
            reading.ts_ms,
            number,
            std::iter::once((reading.point.as_ref(), &reading.value)),
        ),
        PayloadMode::Json => {
            // Written field by field, in the order the README shows: this runs once per
            // reading, and a `serde_json::Map` would cost an allocation per key.
            let (value, quality) = json_value(&reading.value);
            let mut out = Vec::with_capacity(96);
            out.extend_from_slice(b"{\"value\":");
            // Writing a plain JSON value into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, &value);
            if let Some(q) = quality {
                out.extend_from_slice(b",\"quality\":");
                write_json_str(&mut out, &q);
            }
            if let Some(unit) = &reading.unit {
                out.extend_from_slice(b",\"unit\":");
                write_json_str(&mut out, unit);
            }
            write_number_field(&mut out, "ts", reading.ts_ms);
            write_number_field(&mut out, "seq", number.seq);
            write_number_field(&mut out, "boot", number.boot);
            out.push(b'}');
            out
        }
    }
}

/// `,"<key>":<n>`; keys are ours and need no escaping.
fn write_number_field(out: &mut Vec<u8>, key: &str, n: u64) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    // Writing into a Vec cannot fail.
    let _ = std::io::Write::write_fmt(out, format_args!("{n}"));
}

/// `{"ts":…,"seq":…,"boot":…,"values":{…}}` for one device poll; points keep the order given.
pub fn device_payload<'a>(
    ts_ms: u64,
    number: ReadingNumber,
    values: impl IntoIterator<Item = (&'a str, &'a Result<Value, Quality>)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"ts\":");
    out.extend_from_slice(ts_ms.to_string().as_bytes());
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(number.seq.to_string().as_bytes());
    out.extend_from_slice(b",\"boot\":");
    out.extend_from_slice(number.boot.to_string().as_bytes());
    out.extend_from_slice(b",\"values\":{");
    let mut bad: Vec<(&str, Cow<'static, str>)> = Vec::new();
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
            write_json_str(&mut out, &q);
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

/// The word a consumer sees for a point without a value (`"quality":…`).
pub fn quality_text(quality: Quality) -> Cow<'static, str> {
    match quality {
        Quality::Timeout => Cow::Borrowed("timeout"),
        Quality::Exception(code) => Cow::Owned(format!("exception:{code}")),
        Quality::Decode => Cow::Borrowed("decode"),
        Quality::Stale => Cow::Borrowed("stale"),
        Quality::Garbled => Cow::Borrowed("garbled"),
        Quality::Disconnected => Cow::Borrowed("disconnected"),
    }
}

/// The JSON value of a reading, and the quality word when it has no value.
fn json_value(value: &Result<Value, Quality>) -> (Json, Option<Cow<'static, str>>) {
    let value = match value {
        Ok(v) => v,
        Err(quality) => return (Json::Null, Some(quality_text(*quality))),
    };
    match value {
        Value::Bool(b) => (Json::from(*b), None),
        Value::Int(i) => (Json::from(*i), None),
        Value::UInt(u) => (Json::from(*u), None),
        Value::Float(f) if f.is_nan() => (Json::Null, Some(Cow::Borrowed("nan"))),
        Value::Float(f) if f.is_infinite() => (
            Json::Null,
            Some(Cow::Borrowed(if *f > 0.0 { "inf" } else { "-inf" })),
        ),
        Value::Float(f) => (Json::from(*f), None),
        Value::Text(s) => (Json::from(s.as_str()), None),
    }
}

/// The plain payload, or `None` when there is nothing a plain payload can carry.
fn plain_value(value: &Result<Value, Quality>) -> Option<String> {
    match value.as_ref().ok()? {
        Value::Bool(b) => Some(b.to_string()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Text(s) if s.is_empty() => None,
        Value::Text(s) => Some(s.clone()),
    }
}

/// Outbox facts the health payload reports next to the link report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxFacts {
    pub depth: usize,
    pub dropped: u64,
}

/// `{"link":"up","server":"b1:8883","routing":"ok","outbox_depth":0,"dropped":0,"ts":…}`,
/// with `last_error`, `reconnects`, `quarantined` and `last_quarantined` only when they are
/// set or non-zero, then one key per report section, e.g. `"buffer":{"boot":7}` and
/// `"serial_line":{"<bus>":{"garbage":0,"overlong":0,"bad_checksum":0,…}}`. A section
/// never replaces one of the fixed keys.
///
/// Null and zero fields are left out (absent means null or 0, as the README documents) so
/// that the heartbeat of an idle gateway stays small on a metered link; `outbox_depth` and
/// `dropped` are always there, Home Assistant's gateway sensors read them.
pub fn health_payload(report: &HealthReport, outbox: OutboxFacts, ts_ms: u64) -> Vec<u8> {
    let link = &report.link;
    let mut body = Map::new();
    body.insert("link".into(), serde_json::json!(link.state));
    if let Some(error) = &link.last_error {
        body.insert("last_error".into(), Json::from(error.as_str()));
    }
    if link.reconnects > 0 {
        body.insert("reconnects".into(), Json::from(link.reconnects));
    }
    if let Some(server) = &link.server {
        body.insert("server".into(), Json::from(server.as_str()));
    }
    body.insert("routing".into(), Json::from(link.routing.clone()));
    if link.quarantined > 0 {
        body.insert("quarantined".into(), Json::from(link.quarantined));
    }
    if let Some(last) = &link.last_quarantined {
        body.insert("last_quarantined".into(), Json::from(last.as_str()));
    }
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
    #[test]
    fn command_topics_name_one_device_and_one_point() {
        use super::{command_target, retained_when_newest};
        assert_eq!(
            command_target("fl/gw", "fl/gw/hvac/setpoint/set"),
            Some(("hvac", "setpoint"))
        );
        assert_eq!(
            command_target("fl/gw", "fl/gw/hvac/setpoint/set/result"),
            None
        );
        assert_eq!(command_target("fl/gw", "fl/gw/hvac/set"), None);
        assert_eq!(command_target("fl/gw", "fl/gw2/hvac/setpoint/set"), None);
        assert_eq!(command_target("fl/gw", "fl/gw//setpoint/set"), None);
        assert!(!retained_when_newest(
            "fl/gw",
            "fl/gw/hvac/setpoint/set/result"
        ));
        assert!(retained_when_newest("fl/gw", "fl/gw/set/result"));
        assert!(retained_when_newest("fl/gw", "fl/gw/hvac/setpoint"));
        assert!(retained_when_newest(
            "fl/gw",
            "other/hvac/setpoint/set/result"
        ));
    }

    use std::sync::Arc;

    use super::*;
    use crate::health::{LinkReport, LinkState, Section};

    fn reading(value: Value, unit: Option<&str>) -> Reading {
        bad_or_good(Ok(value), unit)
    }

    fn bad_or_good(value: Result<Value, Quality>, unit: Option<&str>) -> Reading {
        Reading {
            device: Arc::from("meter1"),
            point: Arc::from("voltage"),
            value,
            unit: unit.map(Arc::from),
            ts_ms: 1_700_000_000_123,
        }
    }

    fn n(seq: u64) -> ReadingNumber {
        ReadingNumber { boot: 3, seq }
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

    /// Carries value, unit, ts, seq and boot, in the order the README documents (the
    /// payload is written by hand, so its bytes are pinned as well as its meaning).
    #[test]
    fn json_reading_carries_value_unit_ts_seq_and_boot_in_the_documented_order() {
        let good = reading_payload(
            PayloadMode::Json,
            &reading(Value::Float(230.5), Some("V")),
            n(7),
        );
        assert_eq!(
            json(good.clone()),
            serde_json::json!({"value":230.5,"unit":"V","ts":1_700_000_000_123u64,"seq":7,"boot":3})
        );
        assert_eq!(
            String::from_utf8(good).unwrap(),
            r#"{"value":230.5,"unit":"V","ts":1700000000123,"seq":7,"boot":3}"#
        );
        let bad = reading_payload(
            PayloadMode::Json,
            &Reading {
                value: Err(Quality::Timeout),
                ..reading(Value::Int(0), None)
            },
            n(8),
        );
        assert_eq!(
            String::from_utf8(bad).unwrap(),
            r#"{"value":null,"quality":"timeout","ts":1700000000123,"seq":8,"boot":3}"#
        );
    }

    #[test]
    fn json_reading_without_unit_omits_the_key() {
        let p = reading_payload(PayloadMode::Json, &reading(Value::Int(-3), None), n(1));
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
                n(1),
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
            n(1),
        ));
        assert_eq!(v["value"], u64::MAX);
        let v = json(reading_payload(
            PayloadMode::Json,
            &reading(Value::Bool(true), None),
            n(1),
        ));
        assert_eq!(v["value"], true);
        let v = json(reading_payload(
            PayloadMode::Json,
            &reading(Value::Text("a\"b".into()), None),
            n(1),
        ));
        assert_eq!(v["value"], "a\"b");
    }

    #[test]
    fn device_payload_holds_every_point_with_ts_seq_and_boot() {
        let v = [
            Ok(Value::Float(230.5)),
            Ok(Value::Int(-3)),
            Ok(Value::Bool(true)),
            Ok(Value::Text("a\"b".into())),
        ];
        let p = device_payload(
            17,
            n(5),
            [
                ("voltage", &v[0]),
                ("temp", &v[1]),
                ("run", &v[2]),
                ("model", &v[3]),
            ],
        );
        assert_eq!(
            json(p),
            serde_json::json!({"ts":17,"seq":5,"boot":3,"values":{"voltage":230.5,"temp":-3,"run":true,"model":"a\"b"}})
        );
    }

    #[test]
    fn device_payload_names_non_finite_points_in_quality() {
        let v = [Ok(Value::Float(f64::NAN)), Ok(Value::Float(1.0))];
        let p = json(device_payload(1, n(2), [("a", &v[0]), ("b", &v[1])]));
        assert_eq!(p["values"]["a"], Json::Null);
        assert_eq!(p["values"]["b"], 1.0);
        assert_eq!(p["quality"], serde_json::json!({"a":"nan"}));
    }

    #[test]
    fn a_bad_point_is_null_with_its_quality_in_json_and_device_payloads() {
        for (quality, word) in [
            (Quality::Timeout, "timeout"),
            (Quality::Exception(2), "exception:2"),
            (Quality::Decode, "decode"),
            (Quality::Stale, "stale"),
            (Quality::Garbled, "garbled"),
            (Quality::Disconnected, "disconnected"),
        ] {
            let v = json(reading_payload(
                PayloadMode::Json,
                &bad_or_good(Err(quality), Some("V")),
                n(3),
            ));
            assert_eq!(
                v,
                serde_json::json!({"value":null,"quality":word,"unit":"V","ts":1_700_000_000_123u64,"seq":3,"boot":3})
            );
            let values = [Ok(Value::Int(1)), Err(quality)];
            let p = json(device_payload(
                1,
                n(2),
                [("good", &values[0]), ("bad", &values[1])],
            ));
            assert_eq!(
                p,
                serde_json::json!({"ts":1,"seq":2,"boot":3,"values":{"good":1,"bad":null},"quality":{"bad":word}})
            );
        }
    }

    #[test]
    fn plain_mode_publishes_neither_a_bad_point_nor_an_empty_string() {
        let bad = bad_or_good(Err(Quality::Timeout), None);
        let empty = reading(Value::Text(String::new()), None);
        let blank = reading(Value::Text(" ".into()), None);
        assert!(!publishes(PayloadMode::Plain, &bad));
        assert!(!publishes(PayloadMode::Plain, &empty));
        assert!(publishes(PayloadMode::Plain, &blank));
        for mode in [PayloadMode::Json, PayloadMode::Device] {
            assert!(publishes(mode, &bad) && publishes(mode, &empty));
        }
        assert_eq!(
            json(reading_payload(PayloadMode::Json, &empty, n(1)))["value"],
            ""
        );
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
                n(9),
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
            server: Some("b2.example:8883".into()),
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
        assert_eq!(v["server"], "b2.example:8883");
        assert_eq!(v["routing"], "not delivered: check its ACL");
        assert_eq!(v["quarantined"], 1);
        assert_eq!(v["last_quarantined"], "fl/gw1/m1/text (3000 bytes)");
        assert_eq!(v["outbox_depth"], 5);
        assert_eq!(v["dropped"], 1);
        assert_eq!(v["ts"], 42);
        assert_eq!(v["buffer"]["disk_error"], "read-only file system");
        assert_eq!(v["link"], "down", "a section never replaces a fixed key");
    }

    #[test]
    fn an_idle_healthy_health_payload_leaves_out_null_and_zero_fields() {
        let report = HealthReport {
            link: LinkReport {
                state: LinkState::Up,
                last_error: None,
                reconnects: 0,
                routing: "ok".into(),
                quarantined: 0,
                last_quarantined: None,
                server: Some("b1.example:8883".into()),
            },
            sections: vec![],
        };
        let facts = OutboxFacts {
            depth: 0,
            dropped: 0,
        };
        let payload = health_payload(&report, facts, 1_764_160_000_000);
        assert_eq!(
            json(payload),
            serde_json::json!({"link": "up", "server": "b1.example:8883", "routing": "ok",
                               "outbox_depth": 0, "dropped": 0, "ts": 1_764_160_000_000u64})
        );
    }
}
