//! The checked configuration: the contract the rest of the agent builds on. Every value here
//! was checked by `validate`, so consumers never re-validate; the defaults the validator
//! fills in are named constants on these types (`config/fieldlink.toml` shows the same
//! values, a test keeps them in step).
//!
//! Plain data: imports nothing else of `config`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the packaged binary looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/fieldlink/fieldlink.toml";

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this config was loaded from (for messages and for resolving relative paths).
    pub source: PathBuf,
    pub gateway: Gateway,
    pub mqtt: Mqtt,
    pub log: Log,
    pub buses: Vec<Bus>,
    pub devices: Vec<Device>,
    /// `[buffer]`: the durable store-and-forward buffer (all keys optional).
    pub buffer: Buffer,
    /// `[homeassistant]`: MQTT discovery (off by default), with what the device map says
    /// about each device and point for it.
    pub homeassistant: HomeAssistant,
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

#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    /// Used in the default topic prefix and client id; `[A-Za-z0-9_-]+`.
    pub id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mqtt {
    /// The first of [`servers`](Self::servers): what messages name as "the broker".
    pub host: String,
    pub port: u16,
    /// The brokers to connect to, in order (`servers`, or the one `url` / `host` names):
    /// on a failed connect or a dead link the next one is tried. All with TLS or none.
    pub servers: Vec<Server>,
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
    /// `deadband` (+ `max_interval`): report by exception; `None` publishes every reading.
    pub report: Option<ReportByException>,
    /// A command whose sender's `ts` is older than this is not run (writes from MQTT).
    pub command_max_age: Duration,
    /// The retained health message goes out at least this often (the heartbeat; changes an
    /// operator must hear about go out early): consumers take a gateway whose health `ts` is
    /// older than twice this as offline (a cluster node's death can swallow the will).
    /// Five minutes by default: at keep-alive 15 s an idle gateway then costs under 3 KB/h.
    pub health_interval: Duration,
}

/// One broker of `[mqtt] servers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The defaults of `[mqtt]`: the validator fills them in, `config/fieldlink.toml` shows them
/// (a test keeps the two in step).
impl Mqtt {
    pub const DEFAULT_PORT: u16 = 1883;
    /// With TLS (`mqtts://` or a `[mqtt.tls]` table).
    pub const DEFAULT_TLS_PORT: u16 = 8883;
    pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);
    pub const DEFAULT_QOS: u8 = 1;
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
    pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
    pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);
    pub const DEFAULT_PAYLOAD: PayloadMode = PayloadMode::Json;
    pub const DEFAULT_QUEUE_CAPACITY: usize = 100_000;
    pub const DEFAULT_COMMAND_MAX_AGE: Duration = Duration::from_secs(30);
    pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(300);
}

/// Report by exception: a point's reading is published only when it moved past the deadband
/// from the last *published* value of that point, or when `max_interval` passed since then.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReportByException {
    pub deadband: Deadband,
    /// Heartbeat: a steady point is re-sent at least this often (default 5 min).
    pub max_interval: Duration,
}

impl ReportByException {
    pub const DEFAULT_MAX_INTERVAL: Duration = Duration::from_secs(300);
}

/// `deadband = 0.5` (absolute, in the point's unit) or `deadband = "2%"` (of the last
/// published value). Readings that are not numbers (bool, text) are published on any change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deadband {
    /// Finite, >= 0. A change must be strictly larger to be published; 0 = on any change.
    Absolute(f64),
    /// Percent of the magnitude of the last published value, finite, >= 0.
    Percent(f64),
}

#[derive(Debug, Clone, Default, PartialEq)]
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
    /// One message per device and poll on `<prefix>/<device>`:
    /// `{"ts":<unix ms>,"seq":<n>,"values":{"voltage":230.1,…}}`; units go once to the
    /// retained `<prefix>/<device>/meta` (see `uplink::topic`).
    Device,
    /// One message per device and poll on `<prefix>/<device>` holding every point's value
    /// in the order of the retained `<prefix>/<device>/meta`:
    /// `{"ts":…,"seq":…,"boot":…,"m":"<meta version>","v":[230.1,…]}` (see
    /// `uplink::compact`).
    Compact,
}

impl PayloadMode {
    /// The word `payload =` takes, as `check` prints it.
    pub fn word(self) -> &'static str {
        match self {
            PayloadMode::Json => "json",
            PayloadMode::Plain => "plain",
            PayloadMode::Device => "device",
            PayloadMode::Compact => "compact",
        }
    }

    /// One retained message per device and poll on `<prefix>/<device>`.
    pub fn batches_devices(self) -> bool {
        matches!(self, PayloadMode::Device | PayloadMode::Compact)
    }
}

/// `[homeassistant]`, and the facts discovery needs that the checked device types do not
/// carry: each device's profile (manufacturer, model) and the points' `ha_device_class` /
/// `ha_state_class`. Kept beside the devices rather than in them, so the poll path's types
/// stay as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HomeAssistant {
    /// `enabled` (default false).
    pub enabled: bool,
    /// `discovery_prefix`: the first topic level Home Assistant listens on.
    pub discovery_prefix: String,
    /// Devices that use a profile, by device name.
    pub devices: BTreeMap<String, HaDevice>,
    /// Points that set `ha_device_class` or `ha_state_class`, by (device, point).
    pub points: BTreeMap<(String, String), HaPoint>,
}

impl HomeAssistant {
    pub const DEFAULT_DISCOVERY_PREFIX: &'static str = "homeassistant";

    /// The `<object id>` level of a point's discovery topic, `<device>_<point>`: Home
    /// Assistant takes only `[a-zA-Z0-9_-]` there, so the `.` names may hold becomes `_`.
    /// Two points that give one id are refused by validation.
    pub fn object_id(device: &str, point: &str) -> String {
        let clean = |s: &str| s.replace('.', "_");
        format!("{}_{}", clean(device), clean(point))
    }
}

/// The kind of Home Assistant entity a point becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaEntity {
    /// A number with a unit, graphed and kept in long-term statistics.
    Sensor,
    /// A string point: shown as text.
    TextSensor,
    /// A read-only bool.
    BinarySensor,
    /// A writable number (`writable = true`).
    Number,
    /// A writable bool (`writable = true`).
    Switch,
}

impl HaEntity {
    /// A Modbus point of `data_type`, writable or not.
    pub fn of_register(data_type: DataType, writable: bool) -> HaEntity {
        match (data_type, writable) {
            (DataType::Bool, true) => HaEntity::Switch,
            (DataType::Bool, false) => HaEntity::BinarySensor,
            (DataType::String { .. }, _) => HaEntity::TextSensor,
            (_, true) => HaEntity::Number,
            (_, false) => HaEntity::Sensor,
        }
    }

    /// The discovery topic's `<component>` level.
    pub fn component(self) -> &'static str {
        match self {
            HaEntity::Sensor | HaEntity::TextSensor => "sensor",
            HaEntity::BinarySensor => "binary_sensor",
            HaEntity::Number => "number",
            HaEntity::Switch => "switch",
        }
    }
}

/// What a device's profile says it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HaDevice {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
}

/// A point's `ha_device_class` / `ha_state_class` (validated against the entity it becomes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HaPoint {
    pub device_class: Option<String>,
    pub state_class: Option<String>,
}

impl HaPoint {
    pub fn is_empty(&self) -> bool {
        self.device_class.is_none() && self.state_class.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    /// An `EnvFilter` directive such as "info" or "fieldlink=debug"; RUST_LOG wins if set.
    pub level: String,
}

impl Log {
    pub const DEFAULT_LEVEL: &'static str = "info";
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: Log::DEFAULT_LEVEL.to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bus {
    pub name: String,
    pub kind: BusKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BusKind {
    ModbusTcp(ModbusTcp),
    ModbusRtu(ModbusRtu),
    /// RTU frames (with CRC) over a TCP connection, as serial device servers (USR-TCP232,
    /// Moxa NPort in raw TCP mode) carry them: an RS-485 line at the far end of a socket.
    ModbusRtuTcp(ModbusRtuTcp),
    /// Sensors that stream or answer ASCII lines (NMEA GPS, weather stations, scales).
    SerialLine(SerialLine),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModbusTcp {
    /// `host:port` (port defaults to 502), resolved on every connect.
    pub address: String,
    /// Per request, and for connecting.
    pub timeout: Duration,
    /// `connection`; `None` (not set): shared when the bus has more than one device.
    pub connection: Option<TcpConnection>,
}

/// How the devices of a `modbus_tcp` bus reach its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpConnection {
    /// One connection and one poll loop per device: a silent unit never delays the others,
    /// at the cost of one connection slot per device.
    PerDevice,
    /// One connection for the whole bus, one request at a time, reopened after any
    /// timeout: for gateways that accept only 1 to 4 connections for all their unit ids.
    Shared,
}

impl ModbusTcp {
    /// What `connection` comes to for a bus of `devices` devices.
    pub fn connection_for(&self, devices: usize) -> TcpConnection {
        self.connection.unwrap_or(if devices > 1 {
            TcpConnection::Shared
        } else {
            TcpConnection::PerDevice
        })
    }
}

impl ModbusTcp {
    /// When `address` names no port.
    pub const DEFAULT_PORT: u16 = 502;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModbusRtuTcp {
    /// `host:port` of the device server, resolved on every connect.
    pub address: String,
    /// Per request (network and serial time together), and for connecting.
    pub response_timeout: Duration,
    /// Silence kept between the end of one exchange and the next request.
    pub inter_request_delay: Duration,
}

impl ModbusRtuTcp {
    /// A serial line behind a network hop: longer than a local port's default.
    pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
    pub const DEFAULT_INTER_REQUEST_DELAY: Duration = Duration::from_millis(20);
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModbusRtu {
    pub serial: SerialSettings,
    pub response_timeout: Duration,
    /// Silence kept between the end of one exchange and the next request (>= t3.5).
    pub inter_request_delay: Duration,
}

impl ModbusRtu {
    pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
    /// Stretched to t3.5 (rounded up to the millisecond) where that is longer, at slow baud
    /// rates.
    pub const DEFAULT_INTER_REQUEST_DELAY: Duration = Duration::from_millis(20);
}

/// A serial port carrying text lines (`type = "serial_line"`). Its devices carry their
/// extraction rules in [`SerialLineDevice`].
#[derive(Debug, Clone, PartialEq)]
pub struct SerialLine {
    pub serial: SerialSettings,
    /// The bytes that end a line (escape sequences already decoded; default `\n`). A `\r`
    /// just before it, or a `\n` just after a `\r` terminator, is dropped as well.
    pub terminator: Vec<u8>,
    /// Longest line in bytes (terminator excluded); longer ones are counted and skipped.
    pub max_line: usize,
}

impl SerialLine {
    pub const DEFAULT_TERMINATOR: &'static [u8] = b"\n";
    pub const DEFAULT_MAX_LINE: usize = 256;
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

/// The defaults of both serial bus types (`modbus_rtu`, `serial_line`): 9600 8N1.
impl SerialSettings {
    pub const DEFAULT_BAUD: u32 = 9600;
    pub const DEFAULT_DATA_BITS: u8 = 8;
    pub const DEFAULT_PARITY: Parity = Parity::None;
    pub const DEFAULT_STOP_BITS: u8 = 1;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// Device names that are (or will be) topic levels of the gateway itself, right under
/// `<prefix>/`, with why. Refused in every payload mode: with `payload = "device"` a device
/// publishes on `<prefix>/<device>` itself, and a config must stay valid when the mode
/// changes. Kept in step with `uplink::topic` by a test.
pub const RESERVED_DEVICE_NAMES: &[(&str, &str)] = &[
    (
        "status",
        "<prefix>/status is the gateway's own online/offline status",
    ),
    ("health", "<prefix>/health is the gateway's health report"),
    (
        "meta",
        "<prefix>/meta is reserved for the gateway's own metadata",
    ),
    (
        "set",
        "<prefix>/set is reserved for the command topics to come",
    ),
];

/// Point names that are (or will be) topic levels of their device, `<prefix>/<device>/…`,
/// with why. Refused in every payload mode, like [`RESERVED_DEVICE_NAMES`].
pub const RESERVED_POINT_NAMES: &[(&str, &str)] = &[
    (
        "status",
        "<prefix>/<device>/status is the device's availability topic",
    ),
    (
        "meta",
        "<prefix>/<device>/meta holds the units of the device's points (payload = \"device\")",
    ),
    (
        "set",
        "<prefix>/<device>/set is reserved for the command topics to come",
    ),
];

/// The longest gateway id, bus, device or point name, in characters: an MQTT topic level is
/// sensibly no longer than this (and dashboards show it).
pub const MAX_NAME_CHARS: usize = 64;

/// A `[[device]]`: what every kind of device has, and its kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub name: String,
    /// Name of a bus in `Config::buses` (validated to exist, and to be of the device's kind).
    pub bus: String,
    /// Modbus: how often the points are read (a point may have its own). A serial_line query
    /// sensor: the query period; a streaming one: the expected time between lines.
    pub interval: Duration,
    pub kind: DeviceKind,
}

impl Device {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

    /// The Modbus settings, for a device on a Modbus bus.
    pub fn modbus(&self) -> Option<&ModbusDevice> {
        match &self.kind {
            DeviceKind::Modbus(m) => Some(m),
            DeviceKind::SerialLine(_) => None,
        }
    }

    /// The extraction rules, for a device on a serial_line bus.
    pub fn serial_line(&self) -> Option<&SerialLineDevice> {
        match &self.kind {
            DeviceKind::SerialLine(l) => Some(l),
            DeviceKind::Modbus(_) => None,
        }
    }

    /// The names of the device's points, in the order of its configuration.
    pub fn point_names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match &self.kind {
            DeviceKind::Modbus(m) => Box::new(m.points.iter().map(|p| p.name.as_str())),
            DeviceKind::SerialLine(l) => Box::new(l.points.iter().map(|p| p.name.as_str())),
        }
    }
}

/// How a device is read: decided by the type of its bus.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceKind {
    /// A unit on a `modbus_tcp` or `modbus_rtu` bus, read register by register.
    Modbus(ModbusDevice),
    /// A sensor on a `serial_line` bus, read line by line.
    SerialLine(SerialLineDevice),
}

/// A Modbus unit: its id, its register map and how it is polled.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusDevice {
    /// Modbus unit (slave) id: 1..=247, or 255 on Modbus TCP.
    pub unit: u8,
    /// Largest run of unwanted registers (or bits) the planner may read to merge two requests.
    pub max_gap: u16,
    /// Polls in a row in which the device answers nothing before it is reported offline
    /// (1..=[`ModbusDevice::MAX_OFFLINE_AFTER`]). A serial_line device goes offline after
    /// its `stale_after` instead, whose default (3 x interval) is the same rule in time.
    pub offline_after: u32,
    pub points: Vec<Point>,
}

impl ModbusDevice {
    pub const DEFAULT_MAX_GAP: u16 = 8;
    pub const DEFAULT_OFFLINE_AFTER: u32 = 3;
    pub const MAX_OFFLINE_AFTER: u32 = 100;
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

/// A regex compares by its pattern (`regex::Regex` has no `PartialEq`): what a reload needs to
/// tell an edited filter from an unchanged one.
impl PartialEq for SerialLineDevice {
    fn eq(&self, other: &Self) -> bool {
        self.query == other.query
            && self.filter.as_ref().map(regex::Regex::as_str)
                == other.filter.as_ref().map(regex::Regex::as_str)
            && self.checksum == other.checksum
            && self.stale_after == other.stale_after
            && self.points == other.points
    }
}

impl SerialLineDevice {
    /// `stale_after` defaults to this many intervals: the Modbus rule of
    /// [`ModbusDevice::DEFAULT_OFFLINE_AFTER`] polls, in time.
    pub const DEFAULT_STALE_AFTER_INTERVALS: u32 = 3;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineQuery {
    /// The bytes sent, escape sequences (`\r`, `\n`, `\xNN`) decoded.
    pub bytes: Vec<u8>,
    pub response_timeout: Duration,
}

impl LineQuery {
    pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumKind {
    /// `$...*HH`: XOR of the bytes between `$` (or `!`) and `*`, as two hex digits.
    Nmea,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SerialLinePoint {
    pub name: String,
    pub extract: Extract,
    pub kind: LineValueKind,
    pub scale: f64,
    pub offset: f64,
    pub unit: Option<String>,
}

impl SerialLinePoint {
    /// What Home Assistant shows it as (serial_line points are read-only).
    pub fn ha_entity(&self) -> HaEntity {
        match self.kind {
            LineValueKind::String => HaEntity::TextSensor,
            LineValueKind::Number | LineValueKind::Integer => HaEntity::Sensor,
        }
    }
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

impl PartialEq for Extract {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Extract::Regex { regex, capture },
                Extract::Regex {
                    regex: other_regex,
                    capture: other_capture,
                },
            ) => regex.as_str() == other_regex.as_str() && capture == other_capture,
            (
                Extract::Field { delimiter, index },
                Extract::Field {
                    delimiter: other_delimiter,
                    index: other_index,
                },
            ) => delimiter == other_delimiter && index == other_index,
            _ => false,
        }
    }
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
    /// `writable = true` and its rules; `None`: the point is read-only (the default).
    pub write: Option<WriteSettings>,
}

/// How a writable point may be written (holding registers and coils only).
#[derive(Debug, Clone, PartialEq)]
pub struct WriteSettings {
    /// `min`, in engineering units: lower values are refused.
    pub min: Option<f64>,
    /// `max`, in engineering units: higher values are refused.
    pub max: Option<f64>,
    /// `write_function`: which Modbus function writes it.
    pub function: WriteFunction,
    /// `min_write_interval`: writes closer together are refused (EEPROM-backed registers
    /// wear out under frequent writes).
    pub min_write_interval: Duration,
}

impl WriteSettings {
    pub const DEFAULT_MIN_WRITE_INTERVAL: Duration = Duration::from_secs(1);
}

/// The Modbus function a write uses. Some devices implement only one of each pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFunction {
    /// Write Single Register (6) or Write Single Coil (5): one register or coil only.
    Single,
    /// Write Multiple Registers (16) or Write Multiple Coils (15).
    Multiple,
}

impl Point {
    /// What Home Assistant shows it as: writable points can be set from it.
    pub fn ha_entity(&self) -> HaEntity {
        HaEntity::of_register(self.data_type, self.write.is_some())
    }

    /// A point as the file writes it with only the required keys: no scaling, no unit, no
    /// interval of its own, big-endian (`ABCD`).
    pub fn new(name: &str, table: Table, address: u16, data_type: DataType) -> Point {
        Point {
            name: name.to_owned(),
            table,
            address,
            data_type,
            order: WordOrder::Abcd,
            scale: 1.0,
            offset: 0.0,
            unit: None,
            interval: None,
            write: None,
        }
    }
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

/// `[buffer]`: where and how readings survive outages, restarts and power cuts.
#[derive(Debug, Clone, PartialEq)]
pub struct Buffer {
    /// `path`: the state directory holding `buffer.db` (default `$STATE_DIRECTORY`, first
    /// entry, else `/var/lib/fieldlink`).
    pub path: PathBuf,
    /// `durability`.
    pub durability: Durability,
    /// `commit_interval` (`durability = "always"` only): how often queued readings are
    /// committed; a power cut loses at most this much. Default 1 s.
    pub commit_interval: Duration,
    /// `max_size`: bound on the stored readings (topic + payload + a fixed per-row overhead,
    /// see `buffer::store`). Default 64 MiB.
    pub max_size: u64,
    /// `max_age`: stored readings older than this are dropped and counted. Default 7 days.
    pub max_age: Duration,
    /// `when_full`.
    pub when_full: WhenFull,
    /// `replay`.
    pub replay: Replay,
    /// `replay_rate`: readings per second replayed from disk; `None` = unlimited (default).
    /// Live readings are never rate limited.
    pub replay_rate: Option<u32>,
    /// `spill_threshold`: readings held in memory (queued + in flight) beyond which they
    /// spill to disk even while the link is up (`durability = "outage"`). Default 1000, or
    /// two rounds of every device's points when the map is larger.
    pub spill_threshold: usize,
    /// `spill_threshold` was left out: it follows the map (a reload that grows the map does
    /// not call for a restart over it).
    pub spill_threshold_follows_map: bool,
}

/// `durability = "outage" | "always"`: SD-card wear against what a power cut can lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Nothing is written per reading while the link is healthy; queued and unacknowledged
    /// readings are written when the link dies, when the backlog passes `spill_threshold`,
    /// and on shutdown. A power cut while the link is up loses what was not yet acknowledged.
    Outage,
    /// Every reading is committed (batched every `commit_interval`) before it is published.
    /// A power cut loses at most the last `commit_interval`; costs one fsync per interval.
    Always,
}

/// `when_full = "drop_oldest" | "drop_newest"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Keep the most recent history (default).
    DropOldest,
    /// Keep the start of the outage; new readings are dropped until the buffer drains.
    DropNewest,
}

/// `replay = "all" | "latest"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Every stored reading, oldest first (default).
    All,
    /// Only the newest stored reading per topic, for expensive links.
    Latest,
}

impl Buffer {
    pub const DEFAULT_DIR: &'static str = "/var/lib/fieldlink";
    pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_secs(1);
    pub const DEFAULT_MAX_SIZE: u64 = 64 * 1024 * 1024;
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
    pub const DEFAULT_SPILL_THRESHOLD: usize = 1000;

    /// systemd's `StateDirectory=` (first entry of `$STATE_DIRECTORY`), else
    /// `/var/lib/fieldlink`.
    pub fn default_dir() -> PathBuf {
        std::env::var_os("STATE_DIRECTORY")
            .and_then(|v| {
                v.to_str()
                    .and_then(|s| s.split(':').find(|p| !p.is_empty()).map(PathBuf::from))
            })
            .unwrap_or_else(|| PathBuf::from(Self::DEFAULT_DIR))
    }
}

impl Default for Buffer {
    fn default() -> Self {
        Buffer {
            path: Buffer::default_dir(),
            durability: Durability::Outage,
            commit_interval: Buffer::DEFAULT_COMMIT_INTERVAL,
            max_size: Buffer::DEFAULT_MAX_SIZE,
            max_age: Buffer::DEFAULT_MAX_AGE,
            when_full: WhenFull::DropOldest,
            replay: Replay::All,
            replay_rate: None,
            spill_threshold: Buffer::DEFAULT_SPILL_THRESHOLD,
            spill_threshold_follows_map: true,
        }
    }
}
