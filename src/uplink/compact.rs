//! `payload = "compact"`: the point order of each device ([`Layout`]), its retained `meta`
//! and the per-poll message. Pure functions and data; the publisher keeps the state.
//!
//! One retained message per device and poll on `<prefix>/<device>` (the device mode's topic:
//! a gateway runs one mode, and the topic is what Home Assistant and consumers already
//! follow):
//! `{"ts":<unix ms>,"seq":<n>,"boot":<b>,"m":"<version>","v":[230.1,-3,1,"SDM120",null]}`.
//! `v` holds every point of the device in the order of `<prefix>/<device>/meta`:
//! `{"m":"<version>","points":[{"name":"voltage","type":"number","unit":"V"},…]}` (retained).
//! The version is a hash of the point list (names, order, types, units), so it changes when
//! any of them changes and stays the same across restarts with the same map: a consumer
//! decodes a message only with the meta of the version it names.
//!
//! Values are what json mode publishes, in fewer bytes: numbers in the same shortest exact
//! decimal form (an f32 register's 230.1 is `230.1`, see `poll::modbus::codec::widen_f32`),
//! integers as integers, bools (`"type":"bool"`) as `1`/`0`, text as a JSON string. A point
//! without a value is `null`, and the reason is in `"q":{"<index>":"timeout"}` (the words of
//! json mode's `quality`; the key is absent when every point has a value). A `null` without a
//! `q` entry is a point not read yet since the agent started (its interval group not polled).
//!
//! `boot` is in every message rather than in the meta: readings buffered by an earlier boot
//! are replayed after a restart, when the retained meta is already the new boot's, and each
//! must still say its own `(boot, seq)`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use crate::buffer::ReadingNumber;
use crate::config::{DataType, Device, DeviceKind, LineValueKind};
use crate::model::{Quality, Value};

/// How a consumer reads one entry of `v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A JSON number, as json mode's `value`.
    Number,
    /// `1` or `0` for json mode's `true` / `false`.
    Bool,
    /// A JSON string.
    Text,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Number => "number",
            Kind::Bool => "bool",
            Kind::Text => "text",
        }
    }

    fn of_value(value: &Value) -> Kind {
        match value {
            Value::Bool(_) => Kind::Bool,
            Value::Text(_) => Kind::Text,
            Value::Int(_) | Value::UInt(_) | Value::Float(_) => Kind::Number,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    name: Arc<str>,
    kind: Kind,
    unit: Option<Arc<str>>,
}

/// The points of one device in the order of `v`, and the version naming that order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    slots: Vec<Slot>,
    index: HashMap<Arc<str>, usize>,
    version: String,
}

impl Layout {
    /// The device's points in the order of its configuration.
    pub fn of_device(device: &Device) -> Layout {
        let slots = match &device.kind {
            DeviceKind::Modbus(m) => m
                .points
                .iter()
                .map(|p| Slot {
                    name: Arc::from(p.name.as_str()),
                    kind: match p.data_type {
                        DataType::Bool => Kind::Bool,
                        DataType::String { .. } => Kind::Text,
                        _ => Kind::Number,
                    },
                    unit: p.unit.as_deref().map(Arc::from),
                })
                .collect(),
            DeviceKind::SerialLine(l) => l
                .points
                .iter()
                .map(|p| Slot {
                    name: Arc::from(p.name.as_str()),
                    kind: match p.kind {
                        LineValueKind::String => Kind::Text,
                        LineValueKind::Number | LineValueKind::Integer => Kind::Number,
                    },
                    unit: p.unit.as_deref().map(Arc::from),
                })
                .collect(),
        };
        Layout::new(slots)
    }

    /// A device the configuration did not describe: its points are added as they are read.
    pub fn empty() -> Layout {
        Layout::new(Vec::new())
    }

    fn new(slots: Vec<Slot>) -> Layout {
        let index = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let mut layout = Layout {
            slots,
            index,
            version: String::new(),
        };
        layout.version = format!("{:08x}", fnv1a(&layout.points_json()));
        layout
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// The position of `point` in `v`.
    pub fn index_of(&self, point: &str) -> Option<usize> {
        self.index.get(point).copied()
    }

    /// The position of a point, added at the end (a new version) when the layout lacks it.
    pub fn slot_for(
        &mut self,
        point: &Arc<str>,
        unit: Option<&Arc<str>>,
        value: &Result<Value, Quality>,
    ) -> usize {
        if let Some(i) = self.index_of(point) {
            return i;
        }
        let mut slots = std::mem::take(&mut self.slots);
        slots.push(Slot {
            name: point.clone(),
            kind: value.as_ref().map_or(Kind::Number, Kind::of_value),
            unit: unit.cloned(),
        });
        *self = Layout::new(slots);
        self.slots.len() - 1
    }

    fn points_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 * self.slots.len() + 2);
        out.push(b'[');
        for (i, slot) in self.slots.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"name\":");
            write_json_str(&mut out, &slot.name);
            out.extend_from_slice(b",\"type\":\"");
            out.extend_from_slice(slot.kind.word().as_bytes());
            out.push(b'"');
            if let Some(unit) = &slot.unit {
                out.extend_from_slice(b",\"unit\":");
                write_json_str(&mut out, unit);
            }
            out.push(b'}');
        }
        out.push(b']');
        out
    }

    /// `{"m":"<version>","points":[{"name":…,"type":…,"unit":…},…]}` for
    /// `<prefix>/<device>/meta`.
    pub fn meta_payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 * self.slots.len() + 32);
        out.extend_from_slice(b"{\"m\":\"");
        out.extend_from_slice(self.version.as_bytes());
        out.extend_from_slice(b"\",\"points\":");
        out.extend_from_slice(&self.points_json());
        out.push(b'}');
        out
    }
}

/// The layout of every device of the configuration, by device name.
pub fn layouts(devices: &[Device]) -> HashMap<Arc<str>, Layout> {
    devices
        .iter()
        .map(|d| (Arc::from(d.name.as_str()), Layout::of_device(d)))
        .collect()
}

/// 32-bit FNV-1a: a short, stable name for a point list (not a defence against anyone).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// One compact message: `values[i]` is the newest value of the layout's point `i`, `None`
/// when it was not read yet.
pub fn payload(
    ts_ms: u64,
    number: ReadingNumber,
    version: &str,
    values: &[Option<Result<Value, Quality>>],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + 10 * values.len());
    out.extend_from_slice(b"{\"ts\":");
    push_int(&mut out, ts_ms);
    out.extend_from_slice(b",\"seq\":");
    push_int(&mut out, number.seq);
    out.extend_from_slice(b",\"boot\":");
    push_int(&mut out, number.boot);
    out.extend_from_slice(b",\"m\":\"");
    out.extend_from_slice(version.as_bytes());
    out.extend_from_slice(b"\",\"v\":[");
    let mut bad: Vec<(usize, Cow<'static, str>)> = Vec::new();
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match value {
            None => out.extend_from_slice(b"null"),
            Some(Err(q)) => {
                out.extend_from_slice(b"null");
                bad.push((i, super::topic::quality_text(*q)));
            }
            Some(Ok(v)) => {
                if let Some(q) = write_value(&mut out, v) {
                    bad.push((i, Cow::Borrowed(q)));
                }
            }
        }
    }
    out.push(b']');
    if !bad.is_empty() {
        out.extend_from_slice(b",\"q\":{");
        for (n, (i, q)) in bad.into_iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.push(b'"');
            push_int(&mut out, i as u64);
            out.extend_from_slice(b"\":");
            write_json_str(&mut out, &q);
        }
        out.push(b'}');
    }
    out.push(b'}');
    out
}

/// Writes one value; a float that is no JSON number is `null` and its quality word returned.
fn write_value(out: &mut Vec<u8>, value: &Value) -> Option<&'static str> {
    match value {
        Value::Bool(b) => out.push(if *b { b'1' } else { b'0' }),
        Value::Int(i) => {
            if *i < 0 {
                out.push(b'-');
            }
            push_int(out, i.unsigned_abs());
        }
        Value::UInt(u) => push_int(out, *u),
        Value::Float(f) if f.is_nan() => {
            out.extend_from_slice(b"null");
            return Some("nan");
        }
        Value::Float(f) if f.is_infinite() => {
            out.extend_from_slice(b"null");
            return Some(if *f > 0.0 { "inf" } else { "-inf" });
        }
        // serde_json writes finite f64s as json mode does: the shortest form that reads back
        // as the same f64 (`1.0` for a whole float, as json mode has it).
        Value::Float(f) => {
            let _ = serde_json::to_writer(&mut *out, f);
        }
        Value::Text(s) => write_json_str(out, s),
    }
    None
}

fn push_int(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn write_json_str(out: &mut Vec<u8>, text: &str) {
    let _ = serde_json::to_writer(&mut *out, text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Point, Table};
    use serde_json::{json, Value as Json};

    fn device(points: Vec<Point>) -> Device {
        Device {
            name: "m1".into(),
            bus: "b".into(),
            interval: Device::DEFAULT_INTERVAL,
            kind: DeviceKind::Modbus(crate::config::ModbusDevice {
                unit: 1,
                max_gap: 8,
                offline_after: 3,
                points,
            }),
        }
    }

    fn points() -> Vec<Point> {
        let mut v = Point::new("voltage", Table::Holding, 0, DataType::F32);
        v.unit = Some("V".into());
        vec![
            v,
            Point::new("run", Table::Coil, 0, DataType::Bool),
            Point::new(
                "model",
                Table::Holding,
                10,
                DataType::String { registers: 4 },
            ),
            Point::new("count", Table::Holding, 20, DataType::I32),
        ]
    }

    fn n(seq: u64) -> ReadingNumber {
        ReadingNumber { boot: 7, seq }
    }

    fn json(bytes: &[u8]) -> Json {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn meta_lists_points_in_config_order_with_types_and_units() {
        let layout = Layout::of_device(&device(points()));
        let meta = json(&layout.meta_payload());
        assert_eq!(
            meta,
            json!({"m": layout.version(), "points": [
                {"name":"voltage","type":"number","unit":"V"},
                {"name":"run","type":"bool"},
                {"name":"model","type":"text"},
                {"name":"count","type":"number"},
            ]})
        );
        assert_eq!(layout.version().len(), 8);
        assert_eq!(layout.index_of("model"), Some(2));
    }

    #[test]
    fn the_version_changes_with_order_names_types_and_units_and_only_then() {
        let base = Layout::of_device(&device(points()));
        assert_eq!(
            base.version(),
            Layout::of_device(&device(points())).version()
        );
        let mut reordered = points();
        reordered.swap(0, 3);
        let mut renamed = points();
        renamed[1].name = "running".into();
        let mut unit = points();
        unit[0].unit = Some("kV".into());
        let mut fewer = points();
        fewer.pop();
        let mut retyped = points();
        retyped[3].data_type = DataType::Bool;
        for other in [reordered, renamed, unit, fewer, retyped] {
            assert_ne!(base.version(), Layout::of_device(&device(other)).version());
        }
    }

    #[test]
    fn a_point_read_but_not_configured_is_added_with_a_new_version() {
        let mut layout = Layout::of_device(&device(points()));
        let before = layout.version().to_owned();
        let i = layout.slot_for(&Arc::from("extra"), None, &Ok(Value::Bool(true)));
        assert_eq!(i, 4);
        assert_ne!(layout.version(), before);
        assert_eq!(
            layout.slot_for(&Arc::from("voltage"), None, &Ok(Value::Int(1))),
            0
        );
    }

    #[test]
    fn values_are_written_as_json_mode_writes_them_bools_as_digits() {
        let values = [
            Some(Ok(Value::Float(230.1))),
            Some(Ok(Value::Bool(true))),
            Some(Ok(Value::Text("a\"b".into()))),
            Some(Ok(Value::Int(-3))),
            Some(Ok(Value::UInt(u64::MAX))),
            Some(Ok(Value::Float(2.0))),
            Some(Ok(Value::Bool(false))),
            Some(Ok(Value::Int(0))),
        ];
        let p = payload(1_764_160_000_000, n(42), "0badc0de", &values);
        assert_eq!(
            String::from_utf8(p).unwrap(),
            r#"{"ts":1764160000000,"seq":42,"boot":7,"m":"0badc0de","v":[230.1,1,"a\"b",-3,18446744073709551615,2.0,0,0]}"#
        );
        let p = payload(1, n(1), "x", &[Some(Ok(Value::Int(i64::MIN)))]);
        assert_eq!(json(&p)["v"][0], i64::MIN);
    }

    #[test]
    fn a_point_without_a_value_is_null_with_its_reason_in_q() {
        let values = [
            Some(Ok(Value::Int(1))),
            Some(Err(Quality::Exception(2))),
            None,
            Some(Ok(Value::Float(f64::NAN))),
            Some(Ok(Value::Float(f64::NEG_INFINITY))),
        ];
        let p = json(&payload(5, n(2), "v1", &values));
        assert_eq!(p["v"], json!([1, null, null, null, null]));
        assert_eq!(p["q"], json!({"1":"exception:2","3":"nan","4":"-inf"}));
        let good = json(&payload(5, n(3), "v1", &values[..1]));
        assert!(good.get("q").is_none());
    }
}
