//! Serde types that mirror the config file one table at a time, with spans.
//!
//! Owns the shape of the file: which keys each table accepts (`deny_unknown_fields`) and
//! their TOML types. Every key is optional here so that one missing or mistyped key never
//! hides the others; what is required, the ranges and the cross-references are checked by
//! `validate`, which also splits child tables (`[mqtt.tls]`, `[[device.point]]`, a
//! profile's `[[point]]`) off their parents and decodes them on their own. Nothing here
//! reads files or decides defaults.

use serde::Deserialize;
use toml::Spanned;

use super::units::{AddressText, DeadbandText, HumanDuration, HumanSize};

/// Keys allowed at the top of the file, beside the tables below.
pub const ROOT_KEYS: &[&str] = &[
    "gateway",
    "mqtt",
    "log",
    "buffer",
    "bus",
    "device",
    "profile_dirs",
    "homeassistant",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRootScalars {
    /// Extra folders searched for profiles before the built-in ones, relative to the file.
    pub profile_dirs: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub id: Option<Spanned<String>>,
}

/// `[mqtt]` without its `tls` child table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    pub url: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub client_id: Option<Spanned<String>>,
    pub keep_alive: Option<Spanned<HumanDuration>>,
    pub qos: Option<Spanned<i64>>,
    pub prefix: Option<Spanned<String>>,
    pub username: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<HumanDuration>>,
    pub backoff_initial: Option<Spanned<HumanDuration>>,
    pub backoff_max: Option<Spanned<HumanDuration>>,
    pub payload: Option<Spanned<String>>,
    pub queue_capacity: Option<Spanned<i64>>,
    pub deadband: Option<Spanned<DeadbandText>>,
    pub max_interval: Option<Spanned<HumanDuration>>,
    pub command_max_age: Option<Spanned<HumanDuration>>,
    pub servers: Option<Spanned<Vec<Spanned<String>>>>,
    pub health_interval: Option<Spanned<HumanDuration>>,
}

/// `[mqtt.tls]`: its presence turns TLS on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub ca_file: Option<Spanned<String>>,
    pub client_cert: Option<Spanned<String>>,
    pub client_key: Option<Spanned<String>>,
}

/// `[buffer]`: the durable store-and-forward buffer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuffer {
    pub path: Option<Spanned<String>>,
    pub durability: Option<Spanned<String>>,
    pub commit_interval: Option<Spanned<HumanDuration>>,
    pub max_size: Option<Spanned<HumanSize>>,
    pub max_age: Option<Spanned<HumanDuration>>,
    pub when_full: Option<Spanned<String>>,
    pub replay: Option<Spanned<String>>,
    pub replay_rate: Option<Spanned<i64>>,
    pub spill_threshold: Option<Spanned<i64>>,
}

/// `[homeassistant]`: MQTT discovery for Home Assistant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHomeAssistant {
    pub enabled: Option<Spanned<bool>>,
    pub discovery_prefix: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<Spanned<String>>,
}

/// `[[bus]]` with `type = "modbus_tcp"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTcpBus {
    pub name: Option<Spanned<String>>,
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub address: Option<Spanned<String>>,
    pub timeout: Option<Spanned<HumanDuration>>,
    pub connection: Option<Spanned<String>>,
}

/// `[[bus]]` with `type = "modbus_rtu_tcp"`: RTU frames over TCP (serial device servers).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRtuTcpBus {
    pub name: Option<Spanned<String>>,
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub address: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<HumanDuration>>,
    pub inter_request_delay: Option<Spanned<HumanDuration>>,
}

/// `[[bus]]` with `type = "modbus_rtu"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRtuBus {
    pub name: Option<Spanned<String>>,
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub baud: Option<Spanned<i64>>,
    pub data_bits: Option<Spanned<i64>>,
    pub parity: Option<Spanned<String>>,
    pub stop_bits: Option<Spanned<i64>>,
    pub response_timeout: Option<Spanned<HumanDuration>>,
    pub inter_request_delay: Option<Spanned<HumanDuration>>,
}

/// `[[bus]]` with `type = "serial_line"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLineBus {
    pub name: Option<Spanned<String>>,
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub baud: Option<Spanned<i64>>,
    pub data_bits: Option<Spanned<i64>>,
    pub parity: Option<Spanned<String>>,
    pub stop_bits: Option<Spanned<i64>>,
    pub terminator: Option<Spanned<String>>,
    pub max_line: Option<Spanned<i64>>,
}

/// `[[device]]` on a serial_line bus, without its `point` children.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLineDevice {
    pub name: Option<Spanned<String>>,
    pub bus: Option<Spanned<String>>,
    pub interval: Option<Spanned<HumanDuration>>,
    pub query: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<HumanDuration>>,
    pub filter: Option<Spanned<String>>,
    pub checksum: Option<Spanned<String>>,
    pub stale_after: Option<Spanned<HumanDuration>>,
}

/// `[[device.point]]` of a device on a serial_line bus.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLinePoint {
    pub name: Option<Spanned<String>>,
    pub regex: Option<Spanned<String>>,
    pub capture: Option<Spanned<String>>,
    pub delimiter: Option<Spanned<String>>,
    pub field: Option<Spanned<i64>>,
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub scale: Option<Spanned<f64>>,
    pub offset: Option<Spanned<f64>>,
    pub unit: Option<Spanned<String>>,
    pub ha_device_class: Option<Spanned<String>>,
    pub ha_state_class: Option<Spanned<String>>,
}

/// `[[device]]` without its `point` children.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    pub name: Option<Spanned<String>>,
    pub bus: Option<Spanned<String>>,
    pub unit: Option<Spanned<i64>>,
    pub interval: Option<Spanned<HumanDuration>>,
    pub max_gap: Option<Spanned<i64>>,
    pub offline_after: Option<Spanned<i64>>,
    pub profile: Option<Spanned<String>>,
}

/// `[[device.point]]` and a profile's `[[point]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoint {
    pub name: Option<Spanned<String>>,
    pub table: Option<Spanned<String>>,
    pub address: Option<Spanned<AddressText>>,
    #[serde(rename = "type")]
    pub data_type: Option<Spanned<String>>,
    pub registers: Option<Spanned<i64>>,
    pub order: Option<Spanned<String>>,
    pub scale: Option<Spanned<f64>>,
    pub offset: Option<Spanned<f64>>,
    pub unit: Option<Spanned<String>>,
    pub interval: Option<Spanned<HumanDuration>>,
    pub writable: Option<Spanned<bool>>,
    pub min: Option<Spanned<f64>>,
    pub max: Option<Spanned<f64>>,
    pub write_function: Option<Spanned<String>>,
    pub min_write_interval: Option<Spanned<HumanDuration>>,
    pub ha_device_class: Option<Spanned<String>>,
    pub ha_state_class: Option<Spanned<String>>,
}

/// The top of a profile file, without its `point` array.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    pub description: Option<Spanned<String>>,
    pub manufacturer: Option<Spanned<String>>,
    pub model: Option<Spanned<String>>,
    /// Where the register table comes from (a manual's title, revision, URL).
    pub source: Option<Spanned<String>>,
    pub interval: Option<Spanned<HumanDuration>>,
}
