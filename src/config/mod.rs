//! Configuration: the TOML device map and agent settings.
//!
//! Owns parsing (`raw`, serde types that mirror the file, with spans) and validation
//! (`validate`, which turns raw types into the checked types below and reports **every**
//! problem at once, each with file, line and column). Nothing else reads the config file.
//! The types in this file are the contract the rest of the agent builds on: they are
//! already checked, so consumers never re-validate.

pub mod raw;
pub mod units;
pub mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use validate::{load, load_str, ConfigError, ConfigErrors};

/// Where the packaged binary looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/fieldlink/fieldlink.toml";

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this config was loaded from (for messages and for resolving relative paths).
    pub source: PathBuf,
    pub gateway: Gateway,
    pub mqtt: Mqtt,
    pub log: Log,
    pub buses: Vec<Bus>,
    pub devices: Vec<Device>,
}

impl Config {
    pub fn bus(&self, name: &str) -> Option<&Bus> {
        self.buses.iter().find(|b| b.name == name)
    }
    pub fn device(&self, name: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.name == name)
    }
    /// The devices on one bus, in file order.
    pub fn devices_on<'a>(&'a self, bus: &'a str) -> impl Iterator<Item = &'a Device> + 'a {
        self.devices.iter().filter(move |d| d.bus == bus)
    }
    pub fn dir(&self) -> &Path {
        self.source.parent().unwrap_or(Path::new("."))
    }
}

#[derive(Debug, Clone)]
pub struct Gateway {
    /// Used in the default topic prefix and client id; `[A-Za-z0-9_-]+`.
    pub id: String,
}

#[derive(Debug, Clone)]
pub struct Mqtt {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub keep_alive: Duration,
    /// 0 or 1.
    pub qos: u8,
    /// Topic prefix without a trailing slash, default `fieldlink/<gateway id>`.
    pub prefix: String,
    pub username: Option<String>,
    /// Read at connect time (so a rotated secret is picked up); may be resolved from
    /// `$CREDENTIALS_DIRECTORY` by the uplink.
    pub password_file: Option<PathBuf>,
    pub tls: Option<Tls>,
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub payload: PayloadMode,
    /// Readings held in memory while the link is down, before the oldest is dropped.
    pub queue_capacity: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// PEM CA bundle; `None` = the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key (PEM) for mutual TLS; both or neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadMode {
    /// `{"value":…,"unit":"V","ts":<unix ms>,"seq":<n>}`
    Json,
    /// Just the value as text.
    Plain,
}

#[derive(Debug, Clone)]
pub struct Log {
    /// An `EnvFilter` directive such as "info" or "fieldlink=debug"; RUST_LOG wins if set.
    pub level: String,
}

#[derive(Debug, Clone)]
pub struct Bus {
    pub name: String,
    pub kind: BusKind,
}

#[derive(Debug, Clone)]
pub enum BusKind {
    ModbusTcp(ModbusTcp),
    ModbusRtu(ModbusRtu),
    /// Sensors that stream or answer ASCII lines (NMEA GPS, weather stations, scales).
    SerialLine(SerialLine),
}

#[derive(Debug, Clone)]
pub struct ModbusTcp {
    /// `host:port` (port defaults to 502), resolved on every connect.
    pub address: String,
    /// Per request, and for connecting.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ModbusRtu {
    pub serial: SerialSettings,
    pub response_timeout: Duration,
    /// Silence kept between the end of one exchange and the next request (>= t3.5).
    pub inter_request_delay: Duration,
}

/// A serial port carrying text lines (`type = "serial_line"`). Its devices carry their
/// extraction rules in [`Device::serial_line`].
#[derive(Debug, Clone)]
pub struct SerialLine {
    pub serial: SerialSettings,
    /// The bytes that end a line (escape sequences already decoded; default `\n`). A `\r`
    /// just before it, or a `\n` just after a `\r` terminator, is dropped as well.
    pub terminator: Vec<u8>,
    /// Longest line in bytes (terminator excluded); longer ones are counted and skipped.
    pub max_line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    pub path: PathBuf,
    pub baud: u32,
    /// 5..=8
    pub data_bits: u8,
    pub parity: Parity,
    /// 1 or 2
    pub stop_bits: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

#[derive(Debug, Clone)]
pub struct Device {
    pub name: String,
    /// Name of a bus in `Config::buses` (validated to exist).
    pub bus: String,
    /// Modbus unit (slave) id, 0..=247.
    pub unit: u8,
    pub interval: Duration,
    /// Largest run of unwanted registers (or bits) the planner may read to merge two requests.
    pub max_gap: u16,
    /// Modbus points; empty for a device on a serial_line bus.
    pub points: Vec<Point>,
    /// Extraction rules for a device on a serial_line bus (`None` for Modbus devices, whose
    /// `unit` is then 0 and `max_gap` meaningless). For a query sensor `interval` is the
    /// query period; for a streaming one it is the expected time between lines.
    pub serial_line: Option<SerialLineDevice>,
}

/// How one sensor on a serial_line bus is read.
#[derive(Debug, Clone)]
pub struct SerialLineDevice {
    /// Request/response: sent every `Device::interval`; `None` for a streaming sensor.
    pub query: Option<LineQuery>,
    /// A line must match this to belong to the device (e.g. `^\$GPGGA`).
    pub filter: Option<regex::Regex>,
    pub checksum: Option<ChecksumKind>,
    /// The device goes offline when no good line arrived for this long.
    pub stale_after: Duration,
    pub points: Vec<SerialLinePoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineQuery {
    /// The bytes sent, escape sequences (`\r`, `\n`, `\xNN`) decoded.
    pub bytes: Vec<u8>,
    pub response_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumKind {
    /// `$...*HH`: XOR of the bytes between `$` (or `!`) and `*`, as two hex digits.
    Nmea,
}

#[derive(Debug, Clone)]
pub struct SerialLinePoint {
    pub name: String,
    pub extract: Extract,
    pub kind: LineValueKind,
    pub scale: f64,
    pub offset: f64,
    pub unit: Option<String>,
}

/// Where a point's text is in a line.
#[derive(Debug, Clone)]
pub enum Extract {
    /// The named capture `capture` of `regex` (validated to exist).
    Regex {
        regex: regex::Regex,
        capture: String,
    },
    /// Field `index` (0-based) of the line split at `delimiter`.
    Field { delimiter: String, index: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineValueKind {
    /// A decimal number, published as a float.
    Number,
    /// A whole number, published as an integer (a float when scaled).
    Integer,
    /// The text itself, trimmed.
    String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub name: String,
    pub table: Table,
    /// 0-based protocol address (4xxxx/3xxxx notations are converted by validation).
    pub address: u16,
    pub data_type: DataType,
    pub order: WordOrder,
    pub scale: f64,
    pub offset: f64,
    pub unit: Option<String>,
    /// Overrides the device interval for this point.
    pub interval: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Coil,
    Discrete,
    Input,
    Holding,
}

impl Table {
    /// Coils and discrete inputs are addressed in bits, the other two in 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// ASCII, two characters per register, `registers` registers long; trailing NULs and
    /// spaces are trimmed.
    String {
        registers: u16,
    },
}

impl DataType {
    /// How many registers (or bits, for a bool in a bit table) the point spans.
    pub fn width(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String { registers } => registers,
        }
    }
}

/// Byte order within the value, written as the letters of the big-endian value A (most
/// significant byte) to D. `ABCD` is Modbus' big-endian; `CDAB` swaps 16-bit words (common
/// in meters); `BADC` swaps bytes within each word; `DCBA` is fully little-endian. For 64-bit
/// values the same rule extends to ABCDEFGH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WordOrder {
    Abcd,
    Cdab,
    Badc,
    Dcba,
}
