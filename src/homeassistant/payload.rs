//! The discovery configs: pure functions from the checked config to topics and JSON
//! payloads. No I/O, no clock; what is published when is `discovery`'s and the uplink's.
//!
//! One config per point on `<discovery_prefix>/<component>/<gateway id>/<device>_<point>/config`
//! and three for the gateway itself (its link status, dropped and queued readings, from the
//! `status` and `health` topics), so that every field device hangs `via_device` under a
//! gateway device Home Assistant knows. What a point becomes:
//!
//! | point | component | state |
//! |---|---|---|
//! | number, read-only | `sensor` | value, unit, classes (`config::ha_classes`) |
//! | string | `sensor` | the text |
//! | bool, read-only | `binary_sensor` | `ON`/`OFF` |
//! | number, `writable` | `number` | + `command_topic`, `min`/`max`/`step` |
//! | bool, `writable` | `switch` | + `command_topic`, `ON`/`OFF` |
//!
//! Availability is a list with `availability_mode: all`: the gateway's `status`, the
//! device's `status`, and (json and device payloads) the point's own state topic, whose
//! template says `offline` while the reading carries a `quality` (a point that cannot be
//! read) and `online` once a good value comes. So a bad point shows as unavailable, and
//! without `expire_after`, which would make report-by-exception values flap. Plain payloads
//! carry no quality (a bad point publishes nothing), so they have the first two only.
//!
//! Templates index `value_json['values']` with brackets: in Jinja `value_json.values` is
//! the dict's `values` method, not the key. In device mode a batch holds only the points of
//! that poll (intervals differ, and a deadband leaves unchanged ones out); for a missing
//! point the templates render nothing, which Home Assistant ignores for numbers, bools and
//! availability (a text sensor keeps its state with `this.state`).
//!
//! In compact mode a point is `value_json.v[<index>]`, the index of its place in the
//! device's configured point list (`uplink::compact`); the templates read it only from a
//! message whose meta version `m` is the one of the configs, so a message retained before a
//! reload changed the list is not read with the new indices. A `null` renders nothing; the
//! availability template says `offline` while `q` names the index.

use serde_json::{json, Map, Value as Json};

use crate::config::ha_classes::{self, ha_unit};
use crate::config::{
    Config, DataType, Device, DeviceKind, HaEntity, HaPoint, HomeAssistant, PayloadMode,
};
use crate::uplink::compact;
use crate::uplink::topic;

/// One retained discovery message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// The `origin` block: which software published the config.
fn origin() -> Json {
    json!({"name": "fieldlink", "sw_version": env!("CARGO_PKG_VERSION")})
}

/// `fieldlink_<gateway>`: the gateway's device identifier, and the root of every unique id.
fn gateway_identifier(gateway: &str) -> String {
    format!("fieldlink_{gateway}")
}

/// The entity id Home Assistant would make of `text`: lower case `[a-z0-9_]`, no leading,
/// trailing or doubled `_` (it refuses entity ids with those).
pub fn slug(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '_'
        };
        if c == '_' && (out.is_empty() || out.ends_with('_')) {
            continue;
        }
        out.push(c);
    }
    while out.ends_with('_') {
        out.pop();
    }
    if out.is_empty() {
        out.push_str("point");
    }
    out
}

/// `import_active_energy` → `Import active energy`: the entity's name (Home Assistant shows
/// it after the device's name).
fn human(name: &str) -> String {
    let spaced = name.replace(['_', '.'], " ");
    let mut chars = spaced.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => spaced,
    }
}

fn topic_of(ha: &HomeAssistant, component: &str, gateway: &str, object_id: &str) -> String {
    format!(
        "{}/{component}/{gateway}/{object_id}/config",
        ha.discovery_prefix
    )
}

/// `{topic, payload_available, payload_not_available}` for one of fieldlink's status topics.
fn status_availability(topic: String) -> Json {
    json!({
        "topic": topic,
        "payload_available": topic::ONLINE,
        "payload_not_available": topic::OFFLINE,
    })
}

/// Every discovery config of `config`, gateway first, then devices and points in file
/// order. Empty when discovery is off.
pub fn discovery_configs(config: &Config) -> Vec<DiscoveryConfig> {
    let ha = &config.homeassistant;
    if !ha.enabled {
        return Vec::new();
    }
    let mut out = gateway_configs(config);
    for device in &config.devices {
        out.extend(device_configs(config, device));
    }
    out
}

fn gateway_device(config: &Config) -> Json {
    let gateway = &config.gateway.id;
    json!({
        "identifiers": [gateway_identifier(gateway)],
        "name": format!("fieldlink {gateway}"),
        "manufacturer": "fieldlink",
        "model": "fieldlink gateway",
        "sw_version": env!("CARGO_PKG_VERSION"),
    })
}

/// The gateway's own entities: whether it is connected, and what its buffer lost or holds.
/// Their object ids have no `_`, so they never meet a `<device>_<point>`.
fn gateway_configs(config: &Config) -> Vec<DiscoveryConfig> {
    let ha = &config.homeassistant;
    let gateway = &config.gateway.id;
    let prefix = &config.mqtt.prefix;
    let root = gateway_identifier(gateway);
    let common = |object: &str, component: &str, name: &str| -> Map<String, Json> {
        let mut m = Map::new();
        m.insert("name".into(), json!(name));
        m.insert("unique_id".into(), json!(format!("{root}_{object}")));
        let entity = slug(&format!("{root}_{object}"));
        m.insert("object_id".into(), json!(entity));
        m.insert(
            "default_entity_id".into(),
            json!(format!("{component}.{entity}")),
        );
        m.insert("device".into(), gateway_device(config));
        m.insert("origin".into(), origin());
        m.insert("entity_category".into(), json!("diagnostic"));
        m
    };
    let mut status = common("status", "binary_sensor", "Status");
    // No availability: this entity is the one that must show the gateway offline.
    status.insert(
        "state_topic".into(),
        json!(topic::gateway_status_topic(prefix)),
    );
    status.insert("payload_on".into(), json!(topic::ONLINE));
    status.insert("payload_off".into(), json!(topic::OFFLINE));
    status.insert("device_class".into(), json!("connectivity"));

    let health = topic::health_topic(prefix);
    let counter = |object: &str, name: &str, key: &str, state_class: &str| {
        let mut m = common(object, "sensor", name);
        m.insert("state_topic".into(), json!(health));
        m.insert(
            "value_template".into(),
            json!(format!("{{{{ value_json.{key} }}}}")),
        );
        m.insert("state_class".into(), json!(state_class));
        m.insert(
            "availability".into(),
            json!([status_availability(topic::gateway_status_topic(prefix))]),
        );
        m
    };
    let dropped = counter("dropped", "Dropped readings", "dropped", "total_increasing");
    let queued = counter("queued", "Queued readings", "outbox_depth", "measurement");
    [
        ("binary_sensor", "status", status),
        ("sensor", "dropped", dropped),
        ("sensor", "queued", queued),
    ]
    .into_iter()
    .map(|(component, object, body)| DiscoveryConfig {
        topic: topic_of(ha, component, gateway, object),
        payload: serde_json::to_vec(&Json::Object(body)).unwrap_or_default(),
    })
    .collect()
}

/// What discovery needs of one point, whatever its bus.
struct PointFacts<'a> {
    name: &'a str,
    entity: HaEntity,
    unit: Option<&'a str>,
    /// `(min, max, step, bounded)` for a number.
    range: Option<(f64, f64, f64, bool)>,
}

fn device_configs(config: &Config, device: &Device) -> Vec<DiscoveryConfig> {
    let ha = &config.homeassistant;
    let gateway = &config.gateway.id;
    let root = gateway_identifier(gateway);
    let mut block = Map::new();
    block.insert(
        "identifiers".into(),
        json!([format!("{root}_{}", device.name)]),
    );
    block.insert("name".into(), json!(device.name));
    if let Some(profile) = ha.devices.get(&device.name) {
        if let Some(m) = &profile.manufacturer {
            block.insert("manufacturer".into(), json!(m));
        }
        if let Some(m) = &profile.model {
            block.insert("model".into(), json!(m));
        }
    }
    block.insert("via_device".into(), json!(root));
    let block = Json::Object(block);

    let points: Vec<PointFacts<'_>> = match &device.kind {
        DeviceKind::Modbus(m) => m
            .points
            .iter()
            .map(|p| PointFacts {
                name: &p.name,
                entity: p.ha_entity(),
                unit: p.unit.as_deref(),
                range: p
                    .write
                    .as_ref()
                    .filter(|_| p.ha_entity() == HaEntity::Number)
                    .map(|w| number_range(p.data_type, p.scale, p.offset, w.min, w.max)),
            })
            .collect(),
        DeviceKind::SerialLine(l) => l
            .points
            .iter()
            .map(|p| PointFacts {
                name: &p.name,
                entity: p.ha_entity(),
                unit: p.unit.as_deref(),
                range: None,
            })
            .collect(),
    };
    let no_hints = HaPoint::default();
    points
        .iter()
        .map(|p| {
            let hints = ha
                .points
                .get(&(device.name.clone(), p.name.to_owned()))
                .unwrap_or(&no_hints);
            let body = point_config(config, device, p, hints, &block);
            let object_id = HomeAssistant::object_id(&device.name, p.name);
            DiscoveryConfig {
                topic: topic_of(ha, p.entity.component(), gateway, &object_id),
                payload: serde_json::to_vec(&Json::Object(body)).unwrap_or_default(),
            }
        })
        .collect()
}

/// A writable number's `(min, max, step, bounded)`: its own `min`/`max`, else what the
/// register can hold through its scale; the step is one raw count (at least Home
/// Assistant's 0.001). `bounded`: both limits came from the point.
fn number_range(
    data_type: DataType,
    scale: f64,
    offset: f64,
    min: Option<f64>,
    max: Option<f64>,
) -> (f64, f64, f64, bool) {
    let (raw_lo, raw_hi, integer) = match data_type {
        DataType::U16 => (0.0, f64::from(u16::MAX), true),
        DataType::I16 => (f64::from(i16::MIN), f64::from(i16::MAX), true),
        DataType::U32 => (0.0, f64::from(u32::MAX), true),
        DataType::I32 => (f64::from(i32::MIN), f64::from(i32::MAX), true),
        DataType::U64 => (0.0, u64::MAX as f64, true),
        DataType::I64 => (i64::MIN as f64, i64::MAX as f64, true),
        DataType::F32 => (f64::from(f32::MIN), f64::from(f32::MAX), false),
        DataType::F64 | DataType::Bool | DataType::String { .. } => (f64::MIN, f64::MAX, false),
    };
    let decimals = decimals_of(scale);
    let a = round_to(raw_lo * scale + offset, decimals);
    let b = round_to(raw_hi * scale + offset, decimals);
    let step = if integer {
        scale.abs().max(0.001)
    } else {
        0.001
    };
    (
        min.unwrap_or(a.min(b)),
        max.unwrap_or(a.max(b)),
        step,
        min.is_some() && max.is_some(),
    )
}

/// Decimal places of a scale such as 0.1 or 0.25 (as written; at most 9).
fn decimals_of(scale: f64) -> i32 {
    let text = format!("{}", scale.abs());
    text.split_once('.')
        .map_or(0, |(_, frac)| frac.len().min(9) as i32)
}

fn round_to(v: f64, decimals: i32) -> f64 {
    if !v.is_finite() || v.abs() > 1e15 {
        return v;
    }
    let f = 10f64.powi(decimals);
    (v * f).round() / f
}

fn point_config(
    config: &Config,
    device: &Device,
    p: &PointFacts<'_>,
    hints: &HaPoint,
    block: &Json,
) -> Map<String, Json> {
    let prefix = &config.mqtt.prefix;
    let gateway = &config.gateway.id;
    let component = p.entity.component();
    let mut m = Map::new();
    m.insert("name".into(), json!(human(p.name)));
    m.insert(
        "unique_id".into(),
        json!(format!("fieldlink_{gateway}_{}_{}", device.name, p.name)),
    );
    let entity = slug(&format!("{}_{}", device.name, p.name));
    m.insert("object_id".into(), json!(entity));
    m.insert(
        "default_entity_id".into(),
        json!(format!("{component}.{entity}")),
    );
    m.insert("device".into(), block.clone());
    m.insert("origin".into(), origin());

    let bool_like = matches!(p.entity, HaEntity::BinarySensor | HaEntity::Switch);
    let mode = config.mqtt.payload;
    let (state_topic, value, quality) = match mode {
        PayloadMode::Json => (
            topic::reading_topic(prefix, &device.name, p.name),
            if bool_like {
                Some("{{ 'ON' if value_json.value else 'OFF' }}".to_owned())
            } else {
                Some("{{ value_json.value }}".to_owned())
            },
            Some("{{ 'offline' if value_json.quality is defined else 'online' }}".to_owned()),
        ),
        PayloadMode::Plain => (
            topic::reading_topic(prefix, &device.name, p.name),
            None,
            None,
        ),
        PayloadMode::Device => {
            let v = format!("value_json['values']['{}']", p.name);
            let present = format!("'{}' in value_json['values']", p.name);
            let value = value_when_present(p.entity, &v, &present);
            let quality = format!(
                "{{% if {present} %}}{{{{ 'offline' if value_json.quality is defined and '{}' in value_json.quality else 'online' }}}}{{% endif %}}",
                p.name
            );
            (
                topic::device_topic(prefix, &device.name),
                Some(value),
                Some(quality),
            )
        }
        PayloadMode::Compact => {
            let layout = compact::Layout::of_device(device);
            let i = layout.index_of(p.name).unwrap_or_default();
            let v = format!("value_json.v[{i}]");
            // A message of another layout (one retained before a reload) is not decoded.
            let ours = format!("value_json.m == '{}'", layout.version());
            let present = format!("{ours} and {v} is not none");
            let value = value_when_present(p.entity, &v, &present);
            let quality = format!(
                "{{% if {ours} %}}{{{{ 'offline' if value_json.q is defined and '{i}' in value_json.q else 'online' }}}}{{% endif %}}"
            );
            (
                topic::device_topic(prefix, &device.name),
                Some(value),
                Some(quality),
            )
        }
    };
    m.insert("state_topic".into(), json!(state_topic));
    if let Some(v) = value {
        m.insert("value_template".into(), json!(v));
    }
    let mut availability = vec![
        status_availability(topic::gateway_status_topic(prefix)),
        status_availability(topic::device_status_topic(prefix, &device.name)),
    ];
    if let Some(q) = quality {
        availability.push(json!({
            "topic": state_topic,
            "value_template": q,
            "payload_available": topic::ONLINE,
            "payload_not_available": topic::OFFLINE,
        }));
    }
    m.insert("availability".into(), Json::Array(availability));
    m.insert("availability_mode".into(), json!("all"));

    // Plain payloads spell bools `true` / `false`; the templates above turn the others into
    // Home Assistant's default `ON` / `OFF`.
    let plain_bools = mode == PayloadMode::Plain;
    match p.entity {
        HaEntity::BinarySensor if plain_bools => {
            m.insert("payload_on".into(), json!("true"));
            m.insert("payload_off".into(), json!("false"));
        }
        HaEntity::Switch => {
            if plain_bools {
                m.insert("state_on".into(), json!("true"));
                m.insert("state_off".into(), json!("false"));
            }
            m.insert("payload_on".into(), json!("ON"));
            m.insert("payload_off".into(), json!("OFF"));
        }
        _ => {}
    }
    if matches!(p.entity, HaEntity::Number | HaEntity::Switch) {
        m.insert(
            "command_topic".into(),
            json!(format!(
                "{}/set",
                topic::reading_topic(prefix, &device.name, p.name)
            )),
        );
    }
    if let Some((min, max, step, bounded)) = p.range {
        m.insert("min".into(), json!(min));
        m.insert("max".into(), json!(max));
        m.insert("step".into(), json!(step));
        if !bounded {
            // A slider over a register's whole range is useless.
            m.insert("mode".into(), json!("box"));
        }
    }
    if matches!(p.entity, HaEntity::Sensor | HaEntity::Number) {
        if let Some(unit) = p.unit {
            m.insert("unit_of_measurement".into(), json!(ha_unit(unit)));
        }
    }
    let (device_class, state_class) = ha_classes::classes(p.entity, hints, p.unit);
    if let Some(c) = device_class {
        m.insert("device_class".into(), json!(c));
    }
    if let Some(c) = state_class {
        m.insert("state_class".into(), json!(c));
    }
    m
}

/// The template of a point carried in a message with other points (device and compact
/// modes): its value when `present` holds of this message, else nothing (a text sensor keeps
/// its state).
fn value_when_present(entity: HaEntity, v: &str, present: &str) -> String {
    match entity {
        HaEntity::BinarySensor | HaEntity::Switch => {
            format!("{{% if {present} %}}{{{{ 'ON' if {v} else 'OFF' }}}}{{% endif %}}")
        }
        HaEntity::TextSensor => format!("{{{{ {v} if {present} else this.state }}}}"),
        HaEntity::Sensor | HaEntity::Number => {
            format!("{{% if {present} %}}{{{{ {v} }}}}{{% endif %}}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_ids_are_what_home_assistant_accepts() {
        assert_eq!(slug("meter-1_L1.voltage"), "meter_1_l1_voltage");
        assert_eq!(slug("__a--b__"), "a_b");
        assert_eq!(slug("-."), "point");
        assert_eq!(human("import_active_energy"), "Import active energy");
        assert_eq!(human("l1_voltage"), "L1 voltage");
    }

    #[test]
    fn a_writable_register_spans_what_it_can_hold_through_its_scale() {
        assert_eq!(
            number_range(DataType::I16, 0.1, 0.0, None, None),
            (-3276.8, 3276.7, 0.1, false)
        );
        assert_eq!(
            number_range(DataType::U16, 1.0, 0.0, Some(5.0), Some(30.0)),
            (5.0, 30.0, 1.0, true)
        );
        assert_eq!(
            number_range(DataType::U16, -0.5, 10.0, None, None),
            (-32757.5, 10.0, 0.5, false)
        );
        let (lo, hi, step, _) = number_range(DataType::F32, 1.0, 0.0, None, None);
        assert_eq!(
            (lo, hi, step),
            (f64::from(f32::MIN), f64::from(f32::MAX), 0.001)
        );
    }
}
