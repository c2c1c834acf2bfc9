//! Validation: from the TOML text to the checked `Config`, reporting every problem at once.
//!
//! Owns reading the config file and its profile files, the defaults, every range and
//! cross-reference check, and the error sentences. It must not touch anything at run time
//! (no sockets, no serial ports, no certificate files): a config is judged on its text, with
//! one exception: serial paths are resolved through their symlinks (never opened), so that
//! two buses on one port are found even when one names it by /dev/serial/by-id/.
//!
//! Every message goes through one place (`Checker::fail`), which escapes control characters
//! echoed from the file so that each error is one line; a file that is not UTF-8 is reported
//! byte by byte with line and column, as TOML syntax errors are.
//!
//! How all errors are found in one pass although serde stops at the first one: the file is
//! parsed with toml_edit (every key and value keeps its byte span), then each table (the
//! `[gateway]`, `[mqtt]`, `[mqtt.tls]`, `[log]` tables, each `[[bus]]`, each `[[device]]`,
//! each point) is decoded on its own into its `raw` type. When serde rejects a key, the key is
//! reported, removed, and the table decoded again, until it decodes; so one table reports all
//! of its bad keys, and a bad table never hides its siblings. Range and reference checks then
//! run on whatever decoded, skipping keys already reported so no error is reported twice.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml::Spanned;
use toml_edit::{ImDocument, InlineTable, Item, Value};

use super::limits::{self, DurationRange};
use super::raw::{
    RawBuffer, RawDevice, RawGateway, RawLineBus, RawLineDevice, RawLinePoint, RawLog, RawMqtt,
    RawPoint, RawProfile, RawRootScalars, RawRtuBus, RawTcpBus, RawTls, ROOT_KEYS,
};
use super::units::{format_duration, notation_of, parse_notation, rtu_min_silence, table_name};
use super::units::{AddressText, DeadbandText, HumanDuration};
use super::{
    Buffer, Bus, BusKind, ChecksumKind, Config, DataType, Deadband, Device, Durability, Extract,
    Gateway, LineQuery, LineValueKind, Log, ModbusRtu, ModbusTcp, Mqtt, Parity, PayloadMode, Point,
    Replay, ReportByException, SerialLine, SerialLineDevice, SerialLinePoint, SerialSettings,
    Table, Tls, WhenFull, WordOrder,
};
use super::{MAX_NAME_CHARS, RESERVED_DEVICE_NAMES, RESERVED_POINT_NAMES};

/// Folders searched for `profile = "NAME"` after the config file's own `profiles/` folder.
pub const SYSTEM_PROFILE_DIRS: &[&str] =
    &["/etc/fieldlink/profiles", "/usr/share/fieldlink/profiles"];

const DEFAULT_MQTT_PORT: u16 = 1883;
const DEFAULT_MQTTS_PORT: u16 = 8883;
const DEFAULT_MODBUS_TCP_PORT: u16 = 502;
/// A string point must fit one read request (Modbus caps a register read at 125).
const MAX_STRING_REGISTERS: i64 = 125;
/// The planner never needs to bridge more than one full bit request.
const MAX_GAP_LIMIT: i64 = 2000;
/// Serial-line framing limits: a line must fit the codec's buffer, a terminator stays short.
const MAX_LINE_LIMIT: i64 = 65_536;
const MAX_TERMINATOR_BYTES: usize = 8;
const MAX_QUERY_BYTES: usize = 1024;
/// A field index beyond this is a typo (NMEA sentences have about 20 fields).
const MAX_FIELD_INDEX: i64 = 1023;
/// Bad bytes reported one by one in a file that is not UTF-8; a binary file would otherwise
/// produce thousands of lines.
const MAX_ENCODING_ERRORS: usize = 10;
/// Regexes are compiled with this size limit so a pathological pattern fails validation
/// instead of eating a gateway's memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// One problem in a config file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: std::path::PathBuf,
    /// 1-based; 0 when the problem has no place in the file (it could not be read).
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

/// Every problem found in a config, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.0 {
            // A file name can hold a newline too; the message is already one line.
            let file = one_line(&e.file.display().to_string());
            if e.line == 0 {
                writeln!(f, "{file}: {}", one_line(&e.message))?;
            } else {
                writeln!(f, "{file}:{}:{}: {}", e.line, e.column, e.message)?;
            }
        }
        Ok(())
    }
}
impl std::error::Error for ConfigErrors {}

/// Reads and validates the config file at `path`, with the profiles it names.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.into(),
            line: 0,
            column: 0,
            message: format!(
                "cannot read the config file ({e}): check the path, or pass another with --config"
            ),
        }])
    })?;
    match String::from_utf8(bytes) {
        Ok(text) => load_str(path, &text),
        Err(e) => {
            let mut checker = Checker::default();
            checker.add_not_utf8(path.to_path_buf(), e.as_bytes());
            checker.finish(None)
        }
    }
}

/// Validates `text` as if it were the file at `path` (which locates messages and the
/// `profiles/` folder next to it; the file itself is not read).
pub fn load_str(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let mut checker = Checker::default();
    let main = checker.add_file(path.to_path_buf(), text.to_owned());
    let config = checker.config(main);
    checker.finish(config)
}

type FileId = usize;

struct SourceFile {
    path: PathBuf,
    text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    fn new(path: PathBuf, text: String) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            path,
            text,
            line_starts,
        }
    }

    /// 1-based line and character column of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let line_start = self.line_starts[line - 1];
        let column = self
            .text
            .get(line_start..offset)
            .map_or(offset - line_start, |s| s.chars().count())
            + 1;
        (line, column)
    }
}

struct Problem {
    file: FileId,
    offset: Option<usize>,
    message: String,
}

/// A table decoded into its raw type, with what is needed to report on it afterwards.
struct Decoded<T> {
    value: T,
    file: FileId,
    /// Where the table starts (its `[header]` or `{`): where missing keys are reported.
    start: usize,
    /// How the table is named in messages, e.g. "[[device]] \"boiler\"".
    what: String,
    /// Keys already reported as wrong: later checks stay silent about them.
    reported: BTreeSet<String>,
}

/// A point with where it was written, for duplicate and overlap messages.
#[derive(Clone)]
struct LocatedPoint {
    point: Point,
    file: FileId,
    name_span: Option<Range<usize>>,
    address_span: Option<Range<usize>>,
    /// `Some(profile name)` when it came from a profile.
    from_profile: Option<String>,
}

#[derive(Clone)]
struct LoadedProfile {
    interval: Option<Duration>,
    points: Vec<LocatedPoint>,
}

struct KnownBus {
    /// `None` when the bus was reported broken: devices on it are not checked against it.
    kind: Option<BusFamily>,
    /// The `type` as written, even when the rest of the bus is broken: it decides which
    /// keys its devices may have, so a broken serial_line bus does not make its devices
    /// look like Modbus devices missing a `unit`.
    declared: Option<BusFamily>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BusFamily {
    Tcp,
    Rtu,
    Line,
}

/// The first device seen on a serial_line bus, to judge whether a second may share it.
struct LineBusUser {
    device: String,
    line: usize,
    has_query: bool,
    has_filter: bool,
}

#[derive(Default)]
struct Checker {
    files: Vec<SourceFile>,
    problems: Vec<Problem>,
    /// Profiles by name; `None` when missing or broken (already reported once).
    profiles: HashMap<String, Option<LoadedProfile>>,
    /// `bus` was not a list (already reported): "missing bus" would only repeat that.
    bus_list_unreadable: bool,
    /// Serial_line buses that already have a device, by bus name.
    line_bus_users: HashMap<String, LineBusUser>,
    /// The serial ports of the serial buses so far, in file order.
    serial_ports: Vec<SerialPortUser>,
    /// The devices on each Modbus RTU bus so far, by (bus, unit id).
    rtu_units: HashMap<(String, u8), RtuUnitUser>,
}

/// A serial bus's port, to find a second bus on the same one.
struct SerialPortUser {
    /// The port as resolved through symlinks, or as written when it does not exist.
    port: PathBuf,
    written: String,
    bus: String,
    line: usize,
}

/// The first device with a unit id on an RTU bus.
struct RtuUnitUser {
    device: String,
    line: usize,
}

fn span_of<T>(v: &Spanned<T>) -> Option<Range<usize>> {
    Some(v.span())
}

impl Checker {
    fn add_file(&mut self, path: PathBuf, text: String) -> FileId {
        self.files.push(SourceFile::new(path, text));
        self.files.len() - 1
    }

    /// Records a problem. Messages echo values from the file, which TOML escapes may fill
    /// with control characters: they are escaped here, once for all, so that every error
    /// stays on its one line.
    fn fail(&mut self, file: FileId, span: Option<Range<usize>>, message: impl Into<String>) {
        self.problems.push(Problem {
            file,
            offset: span.map(|s| s.start),
            message: one_line(&message.into()),
        });
    }

    /// A file that is not UTF-8 (TOML must be): each bad byte sequence is reported where it
    /// is (up to [`MAX_ENCODING_ERRORS`] of them), and the file is not parsed.
    fn add_not_utf8(&mut self, path: PathBuf, bytes: &[u8]) {
        // The invalid sequences become U+FFFD, one character each, so the line and column
        // of every byte up to and including each bad one stay those of the file.
        let mut text = String::with_capacity(bytes.len());
        let mut bad: Vec<(usize, &[u8])> = Vec::new();
        for chunk in bytes.utf8_chunks() {
            text.push_str(chunk.valid());
            if !chunk.invalid().is_empty() {
                bad.push((text.len(), chunk.invalid()));
                text.push(char::REPLACEMENT_CHARACTER);
            }
        }
        let file = self.add_file(path, text);
        for (offset, sequence) in bad.iter().take(MAX_ENCODING_ERRORS) {
            let hex: Vec<String> = sequence.iter().map(|b| format!("0x{b:02X}")).collect();
            let latin1 = match sequence {
                [b] if *b >= 0xA0 => format!(" (\"{}\" in ISO-8859-1)", char::from(*b)),
                _ => String::new(),
            };
            self.fail(
                file,
                Some(*offset..*offset),
                format!(
                    "byte {}{latin1} is not UTF-8, which a TOML file must be: save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 old.toml > new.toml)",
                    hex.join(" ")
                ),
            );
        }
        if let Some((offset, _)) = bad.get(MAX_ENCODING_ERRORS) {
            let more = bad.len() - MAX_ENCODING_ERRORS;
            self.fail(
                file,
                Some(*offset..*offset),
                format!("{more} more byte sequences from here on are not UTF-8 either: is this a text file?"),
            );
        }
    }

    fn finish(mut self, config: Option<Config>) -> Result<Config, ConfigErrors> {
        match config {
            Some(config) if self.problems.is_empty() => Ok(config),
            _ => {
                if self.problems.is_empty() {
                    // Unreachable by construction; keep the promise that an Err lists something.
                    self.fail(0, Some(0..0), "the config is invalid");
                }
                self.problems
                    .sort_by_key(|p| (p.file, p.offset.unwrap_or(0)));
                let errors = self
                    .problems
                    .iter()
                    .map(|p| {
                        let source = &self.files[p.file];
                        let (line, column) = source.position(p.offset.unwrap_or(0));
                        ConfigError {
                            file: source.path.clone(),
                            line,
                            column,
                            message: p.message.clone(),
                        }
                    })
                    .collect();
                Err(ConfigErrors(errors))
            }
        }
    }

    fn parse(&mut self, file: FileId) -> Option<ImDocument<String>> {
        let text = self.files[file].text.clone();
        match ImDocument::parse(text) {
            Ok(doc) => Some(doc),
            Err(e) => {
                let message = e.message().trim().replace('\n', "; ");
                self.fail(file, e.span(), format!("this is not valid TOML: {message}"));
                None
            }
        }
    }

    /// Decodes one table into `T`, reporting every key serde rejects. `children` are
    /// sub-tables decoded separately by the caller.
    fn decode<T: DeserializeOwned>(
        &mut self,
        file: FileId,
        item: &Item,
        what: &str,
        children: &[&str],
    ) -> Option<Decoded<T>> {
        let (mut table, start) = match item {
            Item::Table(t) => (t.clone().into_inline_table(), t.span()),
            Item::Value(Value::InlineTable(t)) => (t.clone(), t.span()),
            other => {
                self.fail(
                    file,
                    other.span(),
                    format!(
                        "{what} must be a table, but it is {}: write it as a [table] section",
                        item_kind(other)
                    ),
                );
                return None;
            }
        };
        let start = start.map_or(0, |s| s.start);
        for child in children {
            table.remove(child);
        }
        let mut reported = BTreeSet::new();
        loop {
            match T::deserialize(Value::InlineTable(table.clone()).into_deserializer()) {
                Ok(value) => {
                    return Some(Decoded {
                        value,
                        file,
                        start,
                        what: what.to_owned(),
                        reported,
                    })
                }
                Err(e) => {
                    let offender = e.span().and_then(|span| key_at(&table, span.start));
                    match offender {
                        Some((key, key_span)) if !reported.contains(&key) => {
                            let message = explain(e.message(), &key, what, children);
                            let at = if e.message().starts_with("unknown field") {
                                key_span
                            } else {
                                e.span().or(key_span)
                            };
                            self.fail(file, at, message);
                            table.remove(&key);
                            reported.insert(key);
                        }
                        _ => {
                            self.fail(
                                file,
                                e.span().or(Some(start..start)),
                                format!("{what}: {}", e.message()),
                            );
                            return None;
                        }
                    }
                }
            }
        }
    }

    /// A required key: reports it missing (unless already reported as wrong).
    fn require<'v, V, T>(
        &mut self,
        d: &Decoded<T>,
        value: &'v Option<Spanned<V>>,
        key: &str,
        example: &str,
    ) -> Option<&'v Spanned<V>> {
        if value.is_none() && !d.reported.contains(key) {
            self.fail(
                d.file,
                Some(d.start..d.start),
                format!("{} has no `{key}`: add {example}", d.what),
            );
        }
        value.as_ref()
    }

    fn name(&mut self, file: FileId, v: &Spanned<String>, what: &str) -> Option<String> {
        let name = v.get_ref();
        if name.is_empty() {
            self.fail(
                file,
                span_of(v),
                format!(
                    "the {what} name is empty: give it a name of letters, digits, `_`, `-` or `.`"
                ),
            );
            return None;
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            self.fail(
                file,
                span_of(v),
                format!(
                    "the {what} name \"{name}\" contains {bad:?}: use only letters, digits, `_`, `-` and `.` (names become MQTT topic levels)"
                ),
            );
            return None;
        }
        let length = name.chars().count();
        if length > MAX_NAME_CHARS {
            self.fail(
                file,
                span_of(v),
                format!(
                    "the {what} name \"{name}\" is {length} characters long: shorten it to at most {MAX_NAME_CHARS} (names become MQTT topic levels and log fields)"
                ),
            );
            return None;
        }
        Some(name.clone())
    }

    /// A point name: a valid name that is not one of its device's own topic levels.
    fn point_name(&mut self, file: FileId, v: &Spanned<String>) -> Option<String> {
        let name = self.name(file, v, "point")?;
        if let Some((_, why)) = RESERVED_POINT_NAMES.iter().find(|(n, _)| *n == name) {
            self.fail(
                file,
                span_of(v),
                format!(
                    "a point may not be named \"{name}\": {why}; rename the point ({} are reserved)",
                    reserved_list(RESERVED_POINT_NAMES)
                ),
            );
            return None;
        }
        Some(name)
    }

    fn int_in(
        &mut self,
        file: FileId,
        v: &Spanned<i64>,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
        advice: &str,
    ) -> Option<i64> {
        let n = *v.get_ref();
        if range.contains(&n) {
            Some(n)
        } else {
            self.fail(
                file,
                span_of(v),
                format!(
                    "`{key}` = {n} is out of range: {}",
                    advice.replace("{range}", &format!("{} to {}", range.start(), range.end()))
                ),
            );
            None
        }
    }

    /// A duration within `range` (see `limits`), or an error that states the range.
    fn duration_in(
        &mut self,
        file: FileId,
        v: &Spanned<HumanDuration>,
        key: &str,
        range: &DurationRange,
    ) -> Option<Duration> {
        let d = v.get_ref().0;
        if range.contains(d) {
            return Some(d);
        }
        let (relation, bound) = if d < range.min {
            ("shorter than", range.min)
        } else {
            ("longer than", range.max)
        };
        self.fail(
            file,
            span_of(v),
            format!(
                "`{key}` = \"{}\" is {relation} {}: {} must be between {} and {}, e.g. \"{}\"",
                format_duration(d),
                format_duration(bound),
                range.what,
                format_duration(range.min),
                format_duration(range.max),
                range.example
            ),
        );
        None
    }

    /// [`Checker::duration_in`] for an optional key, `default` when it is absent.
    fn duration_or(
        &mut self,
        file: FileId,
        v: &Option<Spanned<HumanDuration>>,
        key: &str,
        range: &DurationRange,
        default: Duration,
    ) -> Option<Duration> {
        match v {
            Some(v) => self.duration_in(file, v, key, range),
            None => Some(default),
        }
    }

    fn choice<T: Copy>(
        &mut self,
        file: FileId,
        v: &Spanned<String>,
        key: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let text = v.get_ref();
        if let Some((_, value)) = options.iter().find(|(name, _)| *name == text.as_str()) {
            return Some(*value);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let hint = options
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text))
            .map(|(name, _)| format!(" (write it as \"{name}\")"))
            .unwrap_or_default();
        self.fail(
            file,
            span_of(v),
            format!(
                "`{key}` = \"{text}\" is not one of {}{hint}",
                quoted_list(&names)
            ),
        );
        None
    }

    // ---------------------------------------------------------------- the main file

    fn config(&mut self, file: FileId) -> Option<Config> {
        let doc = self.parse(file)?;
        let root = Item::Table(doc.as_table().clone());
        let sections = ["gateway", "mqtt", "log", "buffer", "bus", "device"];
        let scalars = self.decode::<RawRootScalars>(file, &root, "the top of the file", &sections);
        let profile_dirs = scalars.and_then(|s| self.profile_dirs(file, &s.value));

        let gateway = match doc.as_table().get("gateway") {
            Some(item) => self.gateway(file, item),
            None => {
                self.fail(file, Some(0..0), "there is no [gateway] table: add [gateway] with id = \"gw-0001\" (letters, digits, `_`, `-`)");
                None
            }
        };
        let mqtt = match doc.as_table().get("mqtt") {
            Some(item) => self.mqtt(file, item, gateway.as_ref()),
            None => {
                self.fail(file, Some(0..0), "there is no [mqtt] table: add [mqtt] with url = \"mqtt://localhost:1883\" (or host = and port =)");
                None
            }
        };
        let log = match doc.as_table().get("log") {
            Some(item) => self.log(file, item),
            None => Some(Log {
                level: "info".into(),
            }),
        };
        let buffer = match doc.as_table().get("buffer") {
            Some(item) => self.buffer(file, item),
            None => Some(Buffer::default()),
        };

        let mut known_buses = HashMap::new();
        let mut buses = Some(Vec::new());
        for item in self.list_of_tables(file, &doc, "bus") {
            match self.bus(file, &item, &mut known_buses) {
                Some(bus) => {
                    if let Some(list) = buses.as_mut() {
                        list.push(bus)
                    }
                }
                None => buses = None,
            }
        }

        let search = self.profile_search_path(file, profile_dirs.unwrap_or_default());
        let mut device_names: HashMap<String, Range<usize>> = HashMap::new();
        let mut devices = Some(Vec::new());
        for item in self.list_of_tables(file, &doc, "device") {
            match self.device(file, &item, &known_buses, &mut device_names, &search) {
                Some(device) => {
                    if let Some(list) = devices.as_mut() {
                        list.push(device)
                    }
                }
                None => devices = None,
            }
        }

        Some(Config {
            source: self.files[file].path.clone(),
            gateway: gateway?,
            mqtt: mqtt?,
            log: log?,
            buffer: buffer?,
            buses: buses?,
            devices: devices?,
        })
    }

    /// The elements of a `[[key]]` array (also accepted: `key = [{...}, ...]`).
    fn list_of_tables(&mut self, file: FileId, doc: &ImDocument<String>, key: &str) -> Vec<Item> {
        match doc.as_table().get(key) {
            None => Vec::new(),
            Some(item) => self.elements(file, item, &format!("[[{key}]]"), key),
        }
    }

    fn elements(&mut self, file: FileId, item: &Item, header: &str, key: &str) -> Vec<Item> {
        match item {
            Item::ArrayOfTables(list) => list.iter().map(|t| Item::Table(t.clone())).collect(),
            Item::Value(Value::Array(list)) => {
                let mut out = Vec::new();
                for value in list.iter() {
                    match value {
                        Value::InlineTable(_) => out.push(Item::Value(value.clone())),
                        other => self.fail(
                            file,
                            other.span(),
                            format!(
                                "each entry of `{key}` must be a table {{ ... }}, but this is {}",
                                value_kind(other)
                            ),
                        ),
                    }
                }
                out
            }
            other => {
                self.fail(
                    file,
                    other.span(),
                    format!("`{key}` must be a list of tables: write each entry under its own {header} header (double brackets)"),
                );
                if key == "bus" && header == "[[bus]]" {
                    self.bus_list_unreadable = true;
                }
                Vec::new()
            }
        }
    }

    fn profile_dirs(&mut self, file: FileId, raw: &RawRootScalars) -> Option<Vec<PathBuf>> {
        let dirs = raw.profile_dirs.as_ref()?;
        let mut out = Vec::new();
        for dir in dirs.get_ref() {
            if dir.get_ref().trim().is_empty() {
                self.fail(
                    file,
                    span_of(dir),
                    "an entry of `profile_dirs` is empty: give a folder path or remove the entry",
                );
            } else {
                out.push(PathBuf::from(dir.get_ref()));
            }
        }
        Some(out)
    }

    fn profile_search_path(&self, file: FileId, extra: Vec<PathBuf>) -> Vec<PathBuf> {
        let dir = self.files[file]
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut search: Vec<PathBuf> = extra.into_iter().map(|d| dir.join(d)).collect();
        search.push(dir.join("profiles"));
        search.extend(SYSTEM_PROFILE_DIRS.iter().map(PathBuf::from));
        search
    }

    fn gateway(&mut self, file: FileId, item: &Item) -> Option<Gateway> {
        let d = self.decode::<RawGateway>(file, item, "[gateway]", &[])?;
        let id = self.require(&d, &d.value.id, "id", "id = \"gw-0001\"")?;
        let text = id.get_ref();
        if text.is_empty()
            || !text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            self.fail(
                file,
                span_of(id),
                format!("gateway id \"{text}\" must be letters, digits, `_` or `-` only (it becomes part of MQTT topics and the client id), e.g. \"gw-0001\""),
            );
            return None;
        }
        let length = text.chars().count();
        if length > MAX_NAME_CHARS {
            self.fail(
                file,
                span_of(id),
                format!("gateway id \"{text}\" is {length} characters long: shorten it to at most {MAX_NAME_CHARS} (it becomes a topic level and part of the MQTT client id)"),
            );
            return None;
        }
        Some(Gateway { id: text.clone() })
    }

    fn log(&mut self, file: FileId, item: &Item) -> Option<Log> {
        let d = self.decode::<RawLog>(file, item, "[log]", &[])?;
        let Some(level) = &d.value.level else {
            return Some(Log {
                level: "info".into(),
            });
        };
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(level.get_ref()) {
            self.fail(
                file,
                span_of(level),
                format!("log level \"{}\" is not understood ({e}): use error, warn, info, debug or trace, or a directive such as \"fieldlink=debug,info\"", level.get_ref()),
            );
            return None;
        }
        Some(Log {
            level: level.get_ref().clone(),
        })
    }

    fn buffer(&mut self, file: FileId, item: &Item) -> Option<Buffer> {
        let d = self.decode::<RawBuffer>(file, item, "[buffer]", &[])?;
        let raw = &d.value;
        let mut ok = true;
        let mut buffer = Buffer::default();
        if let Some(path) = &raw.path {
            let p = PathBuf::from(path.get_ref());
            // A relative state directory follows the config file, not the service's cwd.
            buffer.path = if p.is_relative() && !p.as_os_str().is_empty() {
                self.files[file]
                    .path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(p)
            } else {
                p
            };
        }
        if let Some(v) = &raw.durability {
            match self.choice(
                file,
                v,
                "durability",
                &[
                    ("outage", Durability::Outage),
                    ("always", Durability::Always),
                ],
            ) {
                Some(x) => buffer.durability = x,
                None => ok = false,
            }
        }
        if let Some(v) = &raw.when_full {
            match self.choice(
                file,
                v,
                "when_full",
                &[
                    ("drop_oldest", WhenFull::DropOldest),
                    ("drop_newest", WhenFull::DropNewest),
                ],
            ) {
                Some(x) => buffer.when_full = x,
                None => ok = false,
            }
        }
        if let Some(v) = &raw.replay {
            match self.choice(
                file,
                v,
                "replay",
                &[("all", Replay::All), ("latest", Replay::Latest)],
            ) {
                Some(x) => buffer.replay = x,
                None => ok = false,
            }
        }
        if let Some(v) = &raw.commit_interval {
            buffer.commit_interval = v.get_ref().0;
        }
        if let Some(v) = &raw.max_age {
            buffer.max_age = v.get_ref().0;
        }
        if let Some(v) = &raw.max_size {
            buffer.max_size = v.get_ref().0;
        }
        if let Some(v) = &raw.replay_rate {
            match self.int_in(
                file,
                v,
                "replay_rate",
                1..=1_000_000,
                "give readings per second, {range}, or leave it out for no limit",
            ) {
                Some(n) => buffer.replay_rate = Some(n as u32),
                None => ok = false,
            }
        }
        if let Some(v) = &raw.spill_threshold {
            match self.int_in(
                file,
                v,
                "spill_threshold",
                1..=10_000_000,
                "give a number of readings, {range}",
            ) {
                Some(n) => buffer.spill_threshold = n as usize,
                None => ok = false,
            }
        }
        for (key, message) in buffer.check() {
            let span = match key {
                "path" => raw.path.as_ref().and_then(span_of),
                "commit_interval" => raw.commit_interval.as_ref().and_then(span_of),
                "max_size" => raw.max_size.as_ref().and_then(span_of),
                "max_age" => raw.max_age.as_ref().and_then(span_of),
                "replay_rate" => raw.replay_rate.as_ref().and_then(span_of),
                "spill_threshold" => raw.spill_threshold.as_ref().and_then(span_of),
                _ => None,
            };
            self.fail(file, span, format!("[buffer] `{key}` {message}"));
            ok = false;
        }
        ok.then_some(buffer)
    }

    fn mqtt(&mut self, file: FileId, item: &Item, gateway: Option<&Gateway>) -> Option<Mqtt> {
        let d = self.decode::<RawMqtt>(file, item, "[mqtt]", &["tls"])?;
        let raw = &d.value;
        let mut ok = true;

        let tls_item = item_child(item, "tls");
        let tls = match &tls_item {
            Some(child) => match self.tls(file, child) {
                Some(tls) => Some(tls),
                None => {
                    ok = false;
                    None
                }
            },
            None => None,
        };

        let (host, url_tls, url_port) = match (&raw.url, &raw.host) {
            (Some(_), Some(host)) => {
                self.fail(file, span_of(host), "[mqtt] has both `url` and `host`: keep one (url = \"mqtts://broker:8883\", or host = with port =)");
                return None;
            }
            (Some(url), None) => {
                if let Some(port) = &raw.port {
                    self.fail(file, span_of(port), "[mqtt] has both `url` and `port`: put the port in the url (\"mqtt://broker:1884\") and remove `port`");
                    ok = false;
                }
                match parse_broker_url(url.get_ref()) {
                    Ok((secure, host, port)) => {
                        if !secure && tls_item.is_some() {
                            self.fail(file, span_of(url), "the url says mqtt:// (no TLS) but [mqtt.tls] is present: write mqtts:// or remove [mqtt.tls]");
                            ok = false;
                        }
                        (host, secure, port)
                    }
                    Err(message) => {
                        self.fail(file, span_of(url), message);
                        return None;
                    }
                }
            }
            (None, Some(host)) => {
                let h = host.get_ref().trim();
                if h.is_empty() || h.contains(['/', ' ', '@']) || h.contains("://") {
                    self.fail(file, span_of(host), format!("`host` = \"{}\" is not a host name or IP address: write e.g. host = \"broker.example.com\" (or use url = \"mqtts://...\")", host.get_ref()));
                    return None;
                }
                (
                    h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                    false,
                    None,
                )
            }
            (None, None) => {
                if !d.reported.contains("url") && !d.reported.contains("host") {
                    self.fail(file, Some(d.start..d.start), "[mqtt] names no broker: add url = \"mqtt://localhost:1883\" (or host = \"...\" and port = ...)");
                }
                return None;
            }
        };
        let secure = url_tls || tls_item.is_some();
        let tls = if secure {
            Some(tls.unwrap_or_default())
        } else {
            None
        };
        let default_port = if secure {
            DEFAULT_MQTTS_PORT
        } else {
            DEFAULT_MQTT_PORT
        };
        let port = match (url_port, &raw.port) {
            (Some(p), _) => p,
            (None, Some(p)) if raw.url.is_none() => {
                match self.int_in(file, p, "port", 1..=65535, "a TCP port is {range}") {
                    Some(p) => p as u16,
                    None => {
                        ok = false;
                        default_port
                    }
                }
            }
            _ => default_port,
        };

        let gateway_id = gateway.map(|g| g.id.as_str());
        let client_id = match &raw.client_id {
            Some(c) if c.get_ref().is_empty() => {
                self.fail(file, span_of(c), "`client_id` is empty: remove it to use \"fieldlink-<gateway id>\", or give a unique id");
                ok = false;
                String::new()
            }
            Some(c) => c.get_ref().clone(),
            None => format!("fieldlink-{}", gateway_id.unwrap_or("")),
        };

        let keep_alive = match &raw.keep_alive {
            None => Some(Duration::from_secs(15)),
            Some(ka) => {
                let value = ka.get_ref().0;
                if !limits::KEEP_ALIVE.contains(value) {
                    self.fail(file, span_of(ka), format!("`keep_alive` = \"{}\" is out of range: MQTT allows 1s to 65535s (18h 12m 15s); 15s to 60s suits cellular links", format_duration(value)));
                    None
                } else if value.subsec_nanos() != 0 {
                    self.fail(file, span_of(ka), format!("`keep_alive` = \"{}\" is not a whole number of seconds: MQTT counts keep-alive in seconds, e.g. \"15s\"", format_duration(value)));
                    None
                } else {
                    Some(value)
                }
            }
        };

        let qos = match &raw.qos {
            None => Some(1),
            Some(q) => match *q.get_ref() {
                0 | 1 => Some(*q.get_ref() as u8),
                2 => {
                    self.fail(file, span_of(q), "`qos` = 2 is not supported: use 1 (at least once; readings carry a sequence number) or 0");
                    None
                }
                n => {
                    self.fail(file, span_of(q), format!("`qos` = {n} is not an MQTT QoS level: use 1 (at least once) or 0 (at most once)"));
                    None
                }
            },
        };

        let prefix = match &raw.prefix {
            None => Some(format!("fieldlink/{}", gateway_id.unwrap_or(""))),
            Some(p) => {
                let text = p.get_ref();
                let problem = if text.is_empty() {
                    Some("is empty")
                } else if text.contains(['+', '#']) {
                    Some("contains a wildcard (`+` or `#`), which is not allowed in a topic you publish to")
                } else if text.ends_with('/') {
                    Some("ends with `/`, which would make empty topic levels")
                } else if text.contains("//") {
                    Some("contains `//`, an empty topic level that subscribers rarely expect")
                } else if text.starts_with('$') {
                    Some("starts with `$`, which brokers reserve for their own topics")
                } else if text.contains('\0') {
                    Some("contains a NUL character")
                } else {
                    None
                };
                match problem {
                    Some(why) => {
                        self.fail(file, span_of(p), format!("`prefix` = \"{text}\" {why}: write something like \"fieldlink/site-7/gw-0001\" (no trailing slash)"));
                        None
                    }
                    None => Some(text.clone()),
                }
            }
        };

        let username = raw.username.as_ref().map(|u| u.get_ref().clone());
        if let Some(u) = &raw.username {
            if u.get_ref().is_empty() {
                self.fail(
                    file,
                    span_of(u),
                    "`username` is empty: remove it, or give the user name the broker expects",
                );
                ok = false;
            }
        }
        let password_file = raw
            .password_file
            .as_ref()
            .map(|p| PathBuf::from(p.get_ref()));
        if let Some(p) = &raw.password_file {
            if p.get_ref().is_empty() {
                self.fail(file, span_of(p), "`password_file` is empty: give the path of a file holding the password, or remove it");
                ok = false;
            } else if raw.username.is_none() && !d.reported.contains("username") {
                self.fail(file, span_of(p), "`password_file` is set without `username`: MQTT 3.1.1 sends a password only with a user name, so add username = \"...\"");
                ok = false;
            }
        }

        let connect_timeout = self.duration_or(
            file,
            &raw.connect_timeout,
            "connect_timeout",
            &limits::CONNECT_TIMEOUT,
            Duration::from_secs(20),
        );
        let backoff_initial = self.duration_or(
            file,
            &raw.backoff_initial,
            "backoff_initial",
            &limits::BACKOFF_INITIAL,
            Duration::from_secs(1),
        );
        let backoff_max = self.duration_or(
            file,
            &raw.backoff_max,
            "backoff_max",
            &limits::BACKOFF_MAX,
            Duration::from_secs(60),
        );
        if let (Some(initial), Some(max), Some(raw_max)) =
            (backoff_initial, backoff_max, &raw.backoff_max)
        {
            if max < initial {
                self.fail(file, span_of(raw_max), format!("`backoff_max` (\"{}\") is shorter than `backoff_initial` (\"{}\"): make backoff_max at least as long", format_duration(max), format_duration(initial)));
                ok = false;
            }
        }
        let payload = match &raw.payload {
            None => Some(PayloadMode::Json),
            Some(p) => self.choice(
                file,
                p,
                "payload",
                &[
                    ("json", PayloadMode::Json),
                    ("plain", PayloadMode::Plain),
                    ("device", PayloadMode::Device),
                ],
            ),
        };
        let report = self.report_by_exception(file, raw);
        let queue_capacity = match &raw.queue_capacity {
            None => Some(100_000),
            Some(q) => self
                .int_in(
                    file,
                    q,
                    "queue_capacity",
                    1..=100_000_000,
                    "the number of readings held while the link is down must be {range}",
                )
                .map(|n| n as usize),
        };

        if !ok {
            return None;
        }
        Some(Mqtt {
            host,
            port,
            client_id,
            keep_alive: keep_alive?,
            qos: qos?,
            prefix: prefix?,
            username,
            password_file,
            tls,
            connect_timeout: connect_timeout?,
            backoff_initial: backoff_initial?,
            backoff_max: backoff_max?,
            payload: payload?,
            queue_capacity: queue_capacity?,
            report: report?,
        })
    }

    /// `deadband` and `max_interval` of `[mqtt]`: `Some(None)` when report by exception is off.
    fn report_by_exception(
        &mut self,
        file: FileId,
        raw: &RawMqtt,
    ) -> Option<Option<ReportByException>> {
        let mut ok = true;
        let deadband = raw.deadband.as_ref().and_then(|d| {
            let (value, deadband) = match *d.get_ref() {
                DeadbandText::Absolute(v) => (v, Deadband::Absolute(v)),
                DeadbandText::Percent(v) => (v, Deadband::Percent(v)),
            };
            if value.is_finite() && value >= 0.0 {
                return Some(deadband);
            }
            self.fail(file, span_of(d), format!("`deadband` = {value} must be a finite number >= 0: e.g. deadband = 0.5 (absolute) or deadband = \"2%\"; 0 publishes on any change"));
            ok = false;
            None
        });
        let max_interval = match &raw.max_interval {
            None => ReportByException::DEFAULT_MAX_INTERVAL,
            Some(m) => {
                let value = m.get_ref().0;
                if raw.deadband.is_none() {
                    self.fail(file, span_of(m), "`max_interval` only applies with a `deadband`: add deadband = 0.5 (or \"2%\"), or remove max_interval (every reading is published then)");
                    ok = false;
                } else if self
                    .duration_in(file, m, "max_interval", &limits::MAX_INTERVAL)
                    .is_none()
                {
                    ok = false;
                }
                value
            }
        };
        ok.then(|| {
            deadband.map(|deadband| ReportByException {
                deadband,
                max_interval,
            })
        })
    }

    fn tls(&mut self, file: FileId, item: &Item) -> Option<Tls> {
        let d = self.decode::<RawTls>(file, item, "[mqtt.tls]", &[])?;
        let raw = &d.value;
        let mut ok = true;
        let mut path =
            |checker: &mut Self, v: &Option<Spanned<String>>, key: &str| -> Option<PathBuf> {
                let v = v.as_ref()?;
                if v.get_ref().trim().is_empty() {
                    checker.fail(
                        file,
                        span_of(v),
                        format!("`{key}` is empty: give a PEM file path, or remove the key"),
                    );
                    ok = false;
                    return None;
                }
                Some(PathBuf::from(v.get_ref()))
            };
        let ca_file = path(self, &raw.ca_file, "ca_file");
        let client_cert = path(self, &raw.client_cert, "client_cert");
        let client_key = path(self, &raw.client_key, "client_key");
        match (&raw.client_cert, &raw.client_key) {
            (Some(cert), None) if !d.reported.contains("client_key") => {
                self.fail(file, span_of(cert), "`client_cert` is set without `client_key`: mutual TLS needs both, so add client_key = \"/path/key.pem\" or remove client_cert");
                ok = false;
            }
            (None, Some(key)) if !d.reported.contains("client_cert") => {
                self.fail(file, span_of(key), "`client_key` is set without `client_cert`: mutual TLS needs both, so add client_cert = \"/path/cert.pem\" or remove client_key");
                ok = false;
            }
            _ => {}
        }
        if !ok {
            return None;
        }
        Some(Tls {
            ca_file,
            client_cert,
            client_key,
        })
    }

    // ---------------------------------------------------------------- buses

    fn bus(
        &mut self,
        file: FileId,
        item: &Item,
        known: &mut HashMap<String, KnownBus>,
    ) -> Option<Bus> {
        let start = item.span().map(|s| s.start..s.start);
        // Read `name` and `type` before decoding, so a broken bus still counts as existing
        // (its devices then get no "missing bus" error on top).
        let name_hint = item_child(item, "name").and_then(|n| n.as_str().map(str::to_owned));
        let what = match &name_hint {
            Some(n) => format!("[[bus]] \"{n}\""),
            None => "[[bus]]".to_owned(),
        };
        let kind = match item_child(item, "type") {
            None => {
                self.fail(
                    file,
                    start,
                    format!(
                        "{what} has no `type`: add type = \"modbus_tcp\", \"modbus_rtu\" or \"serial_line\""
                    ),
                );
                None
            }
            Some(t) => match t.as_str() {
                Some("modbus_tcp") => Some(BusFamily::Tcp),
                Some("modbus_rtu") => Some(BusFamily::Rtu),
                Some("serial_line") => Some(BusFamily::Line),
                _ => {
                    let shown = t.as_value().map(|v| v.to_string()).unwrap_or_default();
                    self.fail(file, t.span(), format!("bus `type` = {} is not known: use \"modbus_tcp\" (Modbus over TCP), \"modbus_rtu\" (Modbus over a serial line) or \"serial_line\" (a sensor sending text lines)", shown.trim()));
                    None
                }
            },
        };
        let register = |known: &mut HashMap<String, KnownBus>, kind| {
            if let Some(n) = &name_hint {
                known.entry(n.clone()).or_insert(KnownBus {
                    kind,
                    declared: kind,
                });
            }
        };
        let Some(family) = kind else {
            register(known, None);
            return None;
        };
        let bus = match family {
            BusFamily::Tcp => self.tcp_bus(file, item, &what),
            BusFamily::Rtu => self.rtu_bus(file, item, &what),
            BusFamily::Line => self.line_bus(file, item, &what),
        };
        let Some((name_span, bus)) = bus else {
            if let Some(n) = &name_hint {
                known.entry(n.clone()).or_insert(KnownBus {
                    kind: None,
                    declared: Some(family),
                });
            }
            return None;
        };
        if known.contains_key(&bus.name) {
            self.fail(
                file,
                name_span,
                format!(
                    "a bus named \"{}\" is already defined: give each [[bus]] its own name",
                    bus.name
                ),
            );
            return None;
        }
        known.insert(
            bus.name.clone(),
            KnownBus {
                kind: Some(family),
                declared: Some(family),
            },
        );
        Some(bus)
    }

    fn tcp_bus(
        &mut self,
        file: FileId,
        item: &Item,
        what: &str,
    ) -> Option<(Option<Range<usize>>, Bus)> {
        let d = self.decode::<RawTcpBus>(file, item, what, &[])?;
        let raw = &d.value;
        let name = self.require(&d, &raw.name, "name", "name = \"plant-lan\"");
        let name = name.and_then(|n| self.name(file, n, "bus").map(|s| (span_of(n), s)));
        let address = self
            .require(&d, &raw.address, "address", "address = \"10.0.0.5:502\"")
            .and_then(|a| match split_host_port(a.get_ref()) {
                Ok((host, port)) => Some(join_host_port(&host, port.unwrap_or(DEFAULT_MODBUS_TCP_PORT))),
                Err(why) => {
                    self.fail(file, span_of(a), format!("bus address \"{}\" {why}: write \"host:port\", e.g. \"10.0.0.5:502\" (the port defaults to 502)", a.get_ref()));
                    None
                }
            });
        let timeout = self.duration_or(
            file,
            &raw.timeout,
            "timeout",
            &limits::REQUEST_TIMEOUT,
            Duration::from_secs(1),
        );
        let (name_span, name) = name?;
        Some((
            name_span,
            Bus {
                name,
                kind: BusKind::ModbusTcp(ModbusTcp {
                    address: address?,
                    timeout: timeout?,
                }),
            },
        ))
    }

    /// A serial bus's `path`: not empty, and not a port another serial bus already opens,
    /// written the same or reached through a symlink (/dev/serial/by-id/... and the
    /// /dev/ttyUSB0 it points to). Paths are resolved, never opened; a path that does not
    /// exist (yet) is compared as written.
    fn serial_path(
        &mut self,
        file: FileId,
        p: &Spanned<String>,
        bus: Option<&str>,
    ) -> Option<PathBuf> {
        let written = p.get_ref();
        if written.trim().is_empty() {
            self.fail(file, span_of(p), "the serial `path` is empty: give the device, preferably a stable /dev/serial/by-id/... path");
            return None;
        }
        let resolved = std::fs::canonicalize(written).ok();
        let port: PathBuf = resolved
            .clone()
            .unwrap_or_else(|| Path::new(written).components().collect());
        let line = self.files[file].position(p.span().start).0;
        if let Some(first) = self.serial_ports.iter().find(|u| u.port == port) {
            let same_text = Path::new(&first.written)
                .components()
                .eq(Path::new(written).components());
            let how = if same_text {
                String::new()
            } else {
                format!(
                    " (\"{}\" on line {}; both lead to {})",
                    first.written,
                    first.line,
                    port.display()
                )
            };
            let message = format!(
                "serial port \"{written}\" is already the port of bus \"{}\"{}{how}: a port can be opened by one bus only; put all the devices on that line under one [[bus]]",
                first.bus,
                if same_text { format!(" (line {})", first.line) } else { String::new() },
            );
            self.fail(file, span_of(p), message);
            return None;
        }
        self.serial_ports.push(SerialPortUser {
            port,
            written: written.clone(),
            bus: bus.unwrap_or("?").to_owned(),
            line,
        });
        Some(PathBuf::from(written))
    }

    fn rtu_bus(
        &mut self,
        file: FileId,
        item: &Item,
        what: &str,
    ) -> Option<(Option<Range<usize>>, Bus)> {
        let d = self.decode::<RawRtuBus>(file, item, what, &[])?;
        let raw = &d.value;
        let name = self.require(&d, &raw.name, "name", "name = \"rs485-1\"");
        let name = name.and_then(|n| self.name(file, n, "bus").map(|s| (span_of(n), s)));
        let path = self
            .require(
                &d,
                &raw.path,
                "path",
                "path = \"/dev/serial/by-id/...\" (or /dev/ttyUSB0)",
            )
            .and_then(|p| self.serial_path(file, p, name.as_ref().map(|(_, n)| n.as_str())));
        let baud = match &raw.baud {
            None => Some(9600),
            Some(b) => self
                .int_in(
                    file,
                    b,
                    "baud",
                    50..=4_000_000,
                    "the baud rate must be {range}",
                )
                .map(|b| b as u32),
        };
        let data_bits = match &raw.data_bits {
            None => Some(8),
            Some(b) => self
                .int_in(
                    file,
                    b,
                    "data_bits",
                    5..=8,
                    "a serial character has {range} data bits",
                )
                .map(|b| b as u8),
        };
        let parity = match &raw.parity {
            None => Some(Parity::None),
            Some(p) => self.choice(
                file,
                p,
                "parity",
                &[
                    ("none", Parity::None),
                    ("even", Parity::Even),
                    ("odd", Parity::Odd),
                ],
            ),
        };
        let stop_bits = match &raw.stop_bits {
            None => Some(1),
            Some(b) => self
                .int_in(file, b, "stop_bits", 1..=2, "use {range} stop bits")
                .map(|b| b as u8),
        };
        let response_timeout = self.duration_or(
            file,
            &raw.response_timeout,
            "response_timeout",
            &limits::REQUEST_TIMEOUT,
            Duration::from_millis(500),
        );
        let inter_request_delay = match (baud, data_bits, parity, stop_bits) {
            (Some(baud), Some(data_bits), Some(parity), Some(stop_bits)) => {
                let minimum = rtu_min_silence(baud, data_bits, parity != Parity::None, stop_bits);
                match &raw.inter_request_delay {
                    // The default must itself respect t3.5 at slow baud rates.
                    None => Some(Duration::from_millis(20).max(round_up_to_ms(minimum))),
                    Some(delay) if delay.get_ref().0 < minimum => {
                        self.fail(file, span_of(delay), format!(
                            "`inter_request_delay` = \"{}\" is shorter than 3.5 character times at {baud} baud ({:.2} ms), which Modbus RTU needs between frames: use at least \"{}\"",
                            format_duration(delay.get_ref().0),
                            minimum.as_secs_f64() * 1000.0,
                            format_duration(round_up_to_ms(minimum)),
                        ));
                        None
                    }
                    Some(delay) if delay.get_ref().0 > limits::INTER_REQUEST_DELAY_MAX => {
                        self.fail(file, span_of(delay), format!(
                            "`inter_request_delay` = \"{}\" is longer than {}: the silence between two requests must be between 3.5 character times ({}) and {}; devices usually want 5 to 50 ms, e.g. \"20ms\"",
                            format_duration(delay.get_ref().0),
                            format_duration(limits::INTER_REQUEST_DELAY_MAX),
                            format_duration(round_up_to_ms(minimum)),
                            format_duration(limits::INTER_REQUEST_DELAY_MAX),
                        ));
                        None
                    }
                    Some(delay) => Some(delay.get_ref().0),
                }
            }
            _ => None,
        };
        let (name_span, name) = name?;
        Some((
            name_span,
            Bus {
                name,
                kind: BusKind::ModbusRtu(ModbusRtu {
                    serial: SerialSettings {
                        path: path?,
                        baud: baud?,
                        data_bits: data_bits?,
                        parity: parity?,
                        stop_bits: stop_bits?,
                    },
                    response_timeout: response_timeout?,
                    inter_request_delay: inter_request_delay?,
                }),
            },
        ))
    }

    /// `path`, `baud`, `data_bits`, `parity`, `stop_bits` as a serial_line bus writes them
    /// (the same keys and defaults as a modbus_rtu bus).
    fn line_serial_settings(
        &mut self,
        d: &Decoded<RawLineBus>,
        bus: Option<&str>,
    ) -> (Option<SerialSettings>, Option<u32>) {
        let file = d.file;
        let raw = &d.value;
        let path = self
            .require(
                d,
                &raw.path,
                "path",
                "path = \"/dev/serial/by-id/...\" (or /dev/ttyUSB0)",
            )
            .and_then(|p| self.serial_path(file, p, bus));
        let baud = match &raw.baud {
            None => Some(9600),
            Some(b) => self
                .int_in(
                    file,
                    b,
                    "baud",
                    50..=4_000_000,
                    "the baud rate must be {range}",
                )
                .map(|b| b as u32),
        };
        let data_bits = match &raw.data_bits {
            None => Some(8),
            Some(b) => self
                .int_in(
                    file,
                    b,
                    "data_bits",
                    5..=8,
                    "a serial character has {range} data bits",
                )
                .map(|b| b as u8),
        };
        let parity = match &raw.parity {
            None => Some(Parity::None),
            Some(p) => self.choice(
                file,
                p,
                "parity",
                &[
                    ("none", Parity::None),
                    ("even", Parity::Even),
                    ("odd", Parity::Odd),
                ],
            ),
        };
        let stop_bits = match &raw.stop_bits {
            None => Some(1),
            Some(b) => self
                .int_in(file, b, "stop_bits", 1..=2, "use {range} stop bits")
                .map(|b| b as u8),
        };
        let settings = (|| {
            Some(SerialSettings {
                path: path?,
                baud: baud?,
                data_bits: data_bits?,
                parity: parity?,
                stop_bits: stop_bits?,
            })
        })();
        (settings, baud)
    }

    fn line_bus(
        &mut self,
        file: FileId,
        item: &Item,
        what: &str,
    ) -> Option<(Option<Range<usize>>, Bus)> {
        let d = self.decode::<RawLineBus>(file, item, what, &[])?;
        let name = self.require(&d, &d.value.name, "name", "name = \"gps\"");
        let name = name.and_then(|n| self.name(file, n, "bus").map(|s| (span_of(n), s)));
        let (serial, _) = self.line_serial_settings(&d, name.as_ref().map(|(_, n)| n.as_str()));
        let raw = &d.value;
        let terminator = match &raw.terminator {
            None => Some(b"\n".to_vec()),
            Some(t) => match unescape(t.get_ref()) {
                Err(why) => {
                    self.fail(file, span_of(t), format!("`terminator` {why}"));
                    None
                }
                Ok(bytes) if bytes.is_empty() || bytes.len() > MAX_TERMINATOR_BYTES => {
                    self.fail(file, span_of(t), format!("`terminator` must be 1 to {MAX_TERMINATOR_BYTES} bytes, but it is {}: write e.g. terminator = \"\\n\" (lines ending in \\r\\n are accepted too)", bytes.len()));
                    None
                }
                Ok(bytes) => Some(bytes),
            },
        };
        let max_line = match &raw.max_line {
            None => Some(256),
            Some(m) => self
                .int_in(
                    file,
                    m,
                    "max_line",
                    8..=MAX_LINE_LIMIT,
                    "the longest line accepted must be {range} bytes",
                )
                .map(|m| m as usize),
        };
        let (name_span, name) = name?;
        Some((
            name_span,
            Bus {
                name,
                kind: BusKind::SerialLine(SerialLine {
                    serial: serial?,
                    terminator: terminator?,
                    max_line: max_line?,
                }),
            },
        ))
    }

    // ---------------------------------------------------------------- devices

    fn device(
        &mut self,
        file: FileId,
        item: &Item,
        buses: &HashMap<String, KnownBus>,
        names: &mut HashMap<String, Range<usize>>,
        search: &[PathBuf],
    ) -> Option<Device> {
        let name_hint = item_child(item, "name").and_then(|n| n.as_str().map(str::to_owned));
        let what = match &name_hint {
            Some(n) => format!("[[device]] \"{n}\""),
            None => "[[device]]".to_owned(),
        };
        let bus_hint = item_child(item, "bus").and_then(|b| b.as_str().map(str::to_owned));
        if let Some(bus_name) = bus_hint {
            if buses.get(&bus_name).and_then(|b| b.declared) == Some(BusFamily::Line) {
                let what = format!("{what} (on serial_line bus \"{bus_name}\")");
                let usable = buses.get(&bus_name).is_some_and(|b| b.kind.is_some());
                return self.line_device(file, item, &what, usable, names);
            }
        }
        let d = self.decode::<RawDevice>(file, item, &what, &["point"]);
        // Points are checked even when the device table itself is broken.
        let problems_before_points = self.problems.len();
        let own_points: Vec<Option<LocatedPoint>> = match item_child(item, "point") {
            Some(points) => self
                .elements(file, &points, "[[device.point]]", "point")
                .iter()
                .map(|p| self.point(file, p, &what, None))
                .collect(),
            None => Vec::new(),
        };
        let d = d?;
        let raw = &d.value;
        // Any problem with the points (a malformed list included) fails the device, and
        // keeps the "no points" error below from repeating it.
        let mut ok = self.problems.len() == problems_before_points;

        let name = self
            .require(&d, &raw.name, "name", "name = \"boiler\"")
            .and_then(|n| self.device_name(file, n, names));

        let bus = self
            .require(&d, &raw.bus, "bus", "bus = \"<name of a [[bus]]>\"")
            .and_then(|b| match buses.get(b.get_ref()) {
                Some(known) => Some((b.get_ref().clone(), known.kind)),
                None if self.bus_list_unreadable => None,
                None => {
                    let mut names: Vec<&str> = buses.keys().map(String::as_str).collect();
                    names.sort_unstable();
                    let choices = if names.is_empty() {
                        "there is no [[bus]] at all: add one".to_owned()
                    } else {
                        format!("use one of {}", quoted_list(&names))
                    };
                    self.fail(
                        file,
                        span_of(b),
                        format!(
                            "device is on bus \"{}\", which is not defined: {choices}",
                            b.get_ref()
                        ),
                    );
                    None
                }
            });

        let unit = self
            .require(&d, &raw.unit, "unit", "unit = 1 (the Modbus slave id, 1 to 247)")
            .and_then(|u| {
                let n = *u.get_ref();
                let tcp = matches!(bus, Some((_, Some(BusFamily::Tcp))));
                match n {
                    1..=247 => Some(n as u8),
                    255 if tcp => Some(255),
                    0 => {
                        self.fail(file, span_of(u), "`unit` = 0 is the Modbus broadcast address, which never answers a read: use the device's own id (1 to 247)");
                        None
                    }
                    _ => {
                        let tcp_note = if tcp { " (or 255 for a Modbus TCP device that ignores the unit id)" } else { "" };
                        self.fail(file, span_of(u), format!("`unit` = {n} is out of range: a Modbus unit id is 1 to 247{tcp_note}"));
                        None
                    }
                }
            });

        if let (Some((bus_name, Some(BusFamily::Rtu))), Some(unit), Some(u)) =
            (&bus, unit, &raw.unit)
        {
            let here = self.files[file].position(u.span().start).0;
            let device = name_hint.clone().unwrap_or_else(|| "?".to_owned());
            match self.rtu_units.get(&(bus_name.clone(), unit)) {
                Some(first) => {
                    let message = format!("unit {unit} is already the id of device \"{}\" (line {}) on RTU bus \"{bus_name}\": two devices on one serial line cannot share a unit id (both would answer, garbling the line); set the id each device is configured with", first.device, first.line);
                    self.fail(file, span_of(u), message);
                    ok = false;
                }
                None => {
                    self.rtu_units
                        .insert((bus_name.clone(), unit), RtuUnitUser { device, line: here });
                }
            }
        }

        let max_gap = match &raw.max_gap {
            None => Some(8),
            Some(g) => self
                .int_in(file, g, "max_gap", 0..=MAX_GAP_LIMIT, "the largest run of unwanted registers or bits read to merge two requests must be {range}")
                .map(|g| g as u16),
        };

        let offline_after = match &raw.offline_after {
            None => Some(Device::DEFAULT_OFFLINE_AFTER),
            Some(n) => self
                .int_in(file, n, "offline_after", 1..=i64::from(Device::MAX_OFFLINE_AFTER), "the polls in a row without an answer before the device is reported offline must be {range}")
                .map(|n| n as u32),
        };

        let profile = match &raw.profile {
            None => Some(None),
            Some(p) => self.profile(file, p, search).map(Some),
        };

        let default_interval = profile
            .as_ref()
            .and_then(|p| p.as_ref().and_then(|p| p.interval))
            .unwrap_or(Duration::from_secs(5));
        let interval = self.duration_or(
            file,
            &raw.interval,
            "interval",
            &limits::POLL_INTERVAL,
            default_interval,
        );

        // Merge the profile's points with the device's own, then check them as one set.
        let mut points: Vec<LocatedPoint> = profile
            .as_ref()
            .and_then(|p| p.as_ref())
            .map(|p| p.points.clone())
            .unwrap_or_default();
        points.extend(own_points.into_iter().flatten());
        if profile.is_some() && points.is_empty() && ok && !d.reported.contains("profile") {
            self.fail(file, Some(d.start..d.start), format!("{what} has no points: add [[device.point]] entries, or a profile = \"...\" that brings them"));
            ok = false;
        }
        ok &= self.points_are_distinct(&points);
        profile?;

        if !ok {
            return None;
        }
        Some(Device {
            name: name?,
            bus: bus?.0,
            unit: unit?,
            interval: interval?,
            max_gap: max_gap?,
            offline_after: offline_after?,
            points: points.into_iter().map(|p| p.point).collect(),
            serial_line: None,
        })
    }

    /// A device name, unique across the file, and not one of the gateway's own topic levels.
    fn device_name(
        &mut self,
        file: FileId,
        n: &Spanned<String>,
        names: &mut HashMap<String, Range<usize>>,
    ) -> Option<String> {
        let name = self.name(file, n, "device")?;
        if let Some((_, why)) = RESERVED_DEVICE_NAMES.iter().find(|(r, _)| *r == name) {
            self.fail(
                file,
                span_of(n),
                format!(
                    "a device may not be named \"{name}\": {why}, and a device's topics must not clash with it in any payload mode; rename the device ({} are reserved)",
                    reserved_list(RESERVED_DEVICE_NAMES)
                ),
            );
            return None;
        }
        if let Some(first) = names.get(&name) {
            let (line, _) = self.files[file].position(first.start);
            self.fail(file, span_of(n), format!("a device named \"{name}\" is already defined on line {line}: device names must be unique (they are MQTT topic levels)"));
            return None;
        }
        names.insert(name.clone(), n.span());
        Some(name)
    }

    /// A device on a serial_line bus: query or stream, filter, checksum, extraction points.
    /// `bus_usable` is false when the bus itself was reported broken.
    fn line_device(
        &mut self,
        file: FileId,
        item: &Item,
        what: &str,
        bus_usable: bool,
        names: &mut HashMap<String, Range<usize>>,
    ) -> Option<Device> {
        let d = self.decode::<RawLineDevice>(file, item, what, &["point"]);
        let problems_before_points = self.problems.len();
        let points: Vec<Option<(SerialLinePoint, Option<Range<usize>>)>> =
            match item_child(item, "point") {
                Some(points) => self
                    .elements(file, &points, "[[device.point]]", "point")
                    .iter()
                    .map(|p| self.line_point(file, p, what))
                    .collect(),
                None => Vec::new(),
            };
        let d = d?;
        let raw = &d.value;
        let mut ok = self.problems.len() == problems_before_points;

        let name = self
            .require(&d, &raw.name, "name", "name = \"gps\"")
            .and_then(|n| self.device_name(file, n, names));
        let bus = self
            .require(&d, &raw.bus, "bus", "bus = \"<name of a [[bus]]>\"")
            .map(|b| b.get_ref().clone());

        let interval = self.duration_or(
            file,
            &raw.interval,
            "interval",
            &limits::POLL_INTERVAL,
            Duration::from_secs(5),
        );
        let response_timeout = self.duration_or(
            file,
            &raw.response_timeout,
            "response_timeout",
            &limits::REQUEST_TIMEOUT,
            Duration::from_secs(1),
        );
        let query = match &raw.query {
            None => {
                if let Some(rt) = &raw.response_timeout {
                    self.fail(file, span_of(rt), "`response_timeout` applies only to a device with a `query`: remove it, or add query = \"R\\r\" for a sensor that answers requests");
                    ok = false;
                }
                Some(None)
            }
            Some(q) => match unescape(q.get_ref()) {
                Err(why) => {
                    self.fail(file, span_of(q), format!("`query` {why}"));
                    None
                }
                Ok(bytes) if bytes.is_empty() || bytes.len() > MAX_QUERY_BYTES => {
                    self.fail(file, span_of(q), format!("`query` must be 1 to {MAX_QUERY_BYTES} bytes, but it is {}: write the request the sensor expects, e.g. query = \"R\\r\"", bytes.len()));
                    None
                }
                Ok(bytes) => Some(Some(bytes)),
            },
        };
        if let (Some(i), Some(rt), Some(Some(_)), Some(rt_raw)) =
            (interval, response_timeout, &query, &raw.response_timeout)
        {
            if rt >= i {
                self.fail(file, span_of(rt_raw), format!("`response_timeout` (\"{}\") is not shorter than `interval` (\"{}\"): an answer must be awaited before the next query is sent; shorten it or poll less often", format_duration(rt), format_duration(i)));
                ok = false;
            }
        }
        let filter = match &raw.filter {
            None => Some(None),
            Some(f) => self.regex(file, f, "filter").map(Some),
        };
        let checksum = match &raw.checksum {
            None => Some(None),
            Some(c) => self
                .choice(file, c, "checksum", &[("nmea", ChecksumKind::Nmea)])
                .map(Some),
        };
        let stale_after = match (&raw.stale_after, interval) {
            (Some(s), _) => self.duration_in(file, s, "stale_after", &limits::STALE_AFTER),
            (None, Some(i)) => Some(i.saturating_mul(3)),
            (None, None) => None,
        };
        if let (Some(s), Some(i), Some(s_raw)) = (stale_after, interval, &raw.stale_after) {
            if s < i && raw.query.is_some() {
                self.fail(file, span_of(s_raw), format!("`stale_after` (\"{}\") is shorter than `interval` (\"{}\"): the device would go offline between two queries; make it at least the interval (the default is 3 x interval)", format_duration(s), format_duration(i)));
                ok = false;
            }
        }

        let points: Vec<(SerialLinePoint, Option<Range<usize>>)> =
            points.into_iter().flatten().collect();
        if ok && points.is_empty() && !d.reported.contains("point") {
            self.fail(file, Some(d.start..d.start), format!("{what} has no points: add [[device.point]] entries with a `regex` or a `delimiter` and `field`"));
            ok = false;
        }
        let mut seen: HashMap<&str, Option<Range<usize>>> = HashMap::new();
        for (p, span) in &points {
            if let Some(first) = seen.get(p.name.as_str()) {
                let line = self.files[file]
                    .position(first.clone().map_or(0, |s| s.start))
                    .0;
                self.fail(file, span.clone(), format!("a point named \"{}\" is already defined on line {line}: point names must be unique within a device; rename one", p.name));
                ok = false;
            } else {
                seen.insert(&p.name, span.clone());
            }
        }

        // One sensor per port, unless several streaming sensors share it and a filter says
        // which line is whose: a query would interleave with another device's answers.
        if let (Some(bus), Some(name)) = (&bus, &name) {
            let has_query = matches!(query, Some(Some(_)));
            let has_filter = raw.filter.is_some();
            let at = raw.name.as_ref().map(|n| n.span());
            match self.line_bus_users.get(bus) {
                Some(first) if first.has_query || has_query || !first.has_filter || !has_filter => {
                    let message = format!("device \"{name}\" shares serial_line bus \"{bus}\" with device \"{}\" (line {}): a port carries one sensor, or several streaming sensors (no `query`) that each have a `filter` telling their lines apart; give this sensor its own [[bus]]", first.device, first.line);
                    self.fail(file, at, message);
                    ok = false;
                }
                Some(_) => {}
                None => {
                    let line = self.files[file].position(at.map_or(d.start, |s| s.start)).0;
                    self.line_bus_users.insert(
                        bus.clone(),
                        LineBusUser {
                            device: name.clone(),
                            line,
                            has_query,
                            has_filter,
                        },
                    );
                }
            }
        }

        if !ok || !bus_usable {
            return None;
        }
        let query = query?.map(|bytes| {
            response_timeout.map(|response_timeout| LineQuery {
                bytes,
                response_timeout,
            })
        });
        let query = match query {
            Some(q) => Some(q?),
            None => None,
        };
        Some(Device {
            name: name?,
            bus: bus?,
            unit: 0,
            interval: interval?,
            max_gap: 0,
            offline_after: Device::DEFAULT_OFFLINE_AFTER,
            points: Vec::new(),
            serial_line: Some(SerialLineDevice {
                query,
                filter: filter?,
                checksum: checksum?,
                stale_after: stale_after?,
                points: points.into_iter().map(|(p, _)| p).collect(),
            }),
        })
    }

    /// Compiles a regex, reporting its error at the key.
    fn regex(&mut self, file: FileId, v: &Spanned<String>, key: &str) -> Option<regex::Regex> {
        match regex::RegexBuilder::new(v.get_ref())
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
        {
            Ok(r) => Some(r),
            Err(e) => {
                // A syntax error comes as the pattern, a caret line and "error: ...": the
                // caret means nothing once folded into one line, the last line says it all.
                let text = e.to_string();
                let detail = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("error: "))
                    .unwrap_or(text.trim())
                    .to_owned();
                self.fail(file, span_of(v), format!("`{key}` is not a valid regex ({detail}): fix the pattern; write it as a 'literal string' so backslashes such as \\$ and \\d reach the regex unchanged"));
                None
            }
        }
    }

    fn line_point(
        &mut self,
        file: FileId,
        item: &Item,
        owner: &str,
    ) -> Option<(SerialLinePoint, Option<Range<usize>>)> {
        let name_hint = item_child(item, "name").and_then(|n| n.as_str().map(str::to_owned));
        let what = match &name_hint {
            Some(n) => format!("point \"{n}\" of {owner}"),
            None => format!("a point of {owner}"),
        };
        let d = self.decode::<RawLinePoint>(file, item, &what, &[])?;
        let raw = &d.value;
        let mut ok = true;

        let name = self
            .require(&d, &raw.name, "name", "name = \"altitude\"")
            .and_then(|n| self.point_name(file, n));

        let extract = match (&raw.regex, &raw.delimiter) {
            (Some(_), Some(delim)) => {
                self.fail(file, span_of(delim), "a point has both `regex` and `delimiter`: keep one (a regex with a named capture, or a delimiter with a `field` index)");
                None
            }
            (Some(r), None) => {
                if let Some(f) = &raw.field {
                    self.fail(file, span_of(f), "`field` applies only with a `delimiter`: remove it, or use delimiter = \",\" instead of the regex");
                    ok = false;
                }
                self.regex(file, r, "regex").and_then(|regex| {
                    let names: Vec<&str> = regex.capture_names().flatten().collect();
                    let capture = match &raw.capture {
                        Some(c) if names.contains(&c.get_ref().as_str()) => c.get_ref().clone(),
                        Some(c) => {
                            let known = if names.is_empty() {
                                "it has no named capture at all".to_owned()
                            } else {
                                format!("its named captures are {}", quoted_list(&names))
                            };
                            self.fail(file, span_of(c), format!("`capture` = \"{}\" is not a named capture of the regex ({known}): write (?P<{}>...) around the value in the regex, or name an existing capture", c.get_ref(), c.get_ref()));
                            return None;
                        }
                        None => match names.first() {
                            Some(first) => (*first).to_owned(),
                            None => {
                                self.fail(file, span_of(r), "the `regex` has no named capture, so nothing says which part is the value: wrap it as (?P<value>...), e.g. 'T=(?P<value>[-0-9.]+)'");
                                return None;
                            }
                        },
                    };
                    Some(Extract::Regex { regex, capture })
                })
            }
            (None, Some(delim)) => {
                if let Some(c) = &raw.capture {
                    self.fail(file, span_of(c), "`capture` applies only with a `regex`: remove it (a delimited point is chosen by `field`)");
                    ok = false;
                }
                let delimiter = if delim.get_ref().is_empty() {
                    self.fail(file, span_of(delim), "`delimiter` is empty: give the text between fields, e.g. delimiter = \",\"");
                    None
                } else {
                    Some(delim.get_ref().clone())
                };
                let index = self
                    .require(&d, &raw.field, "field", "field = 0 (the 0-based index of the field after splitting at the delimiter)")
                    .and_then(|f| {
                        self.int_in(file, f, "field", 0..=MAX_FIELD_INDEX, "a field index is 0-based and must be {range}")
                    });
                match (delimiter, index) {
                    (Some(delimiter), Some(index)) => Some(Extract::Field {
                        delimiter,
                        index: index as usize,
                    }),
                    _ => None,
                }
            }
            (None, None) => {
                if !d.reported.contains("regex") && !d.reported.contains("delimiter") {
                    self.fail(file, Some(d.start..d.start), format!("{what} says nowhere where its value is: add regex = '...(?P<value>...)...', or delimiter = \",\" with field = N"));
                }
                None
            }
        };

        let kind = match &raw.kind {
            None => Some(LineValueKind::Number),
            Some(t) => self.choice(
                file,
                t,
                "type",
                &[
                    ("number", LineValueKind::Number),
                    ("integer", LineValueKind::Integer),
                    ("string", LineValueKind::String),
                ],
            ),
        };
        let scale = match &raw.scale {
            None => Some(1.0),
            Some(s) if !s.get_ref().is_finite() || *s.get_ref() == 0.0 => {
                self.fail(file, span_of(s), format!("`scale` = {} would make every reading meaningless: give a finite, non-zero factor such as 0.1", s.get_ref()));
                None
            }
            Some(s) => Some(*s.get_ref()),
        };
        let offset = match &raw.offset {
            None => Some(0.0),
            Some(o) if !o.get_ref().is_finite() => {
                self.fail(
                    file,
                    span_of(o),
                    format!(
                        "`offset` = {} is not a finite number: give a number such as -40.0",
                        o.get_ref()
                    ),
                );
                None
            }
            Some(o) => Some(*o.get_ref()),
        };
        if kind == Some(LineValueKind::String) {
            for (key, span) in [
                ("scale", raw.scale.as_ref().map(|s| s.span())),
                ("offset", raw.offset.as_ref().map(|s| s.span())),
            ] {
                if let Some(span) = span {
                    self.fail(
                        file,
                        Some(span),
                        format!("`{key}` has no effect on a string point: remove it"),
                    );
                    ok = false;
                }
            }
        }
        let unit = match &raw.unit {
            Some(u) if u.get_ref().trim().is_empty() => {
                self.fail(
                    file,
                    span_of(u),
                    "`unit` is empty: give the unit of measure (e.g. \"m\") or remove the key",
                );
                ok = false;
                None
            }
            other => other.as_ref().map(|u| u.get_ref().clone()),
        };
        if !ok {
            return None;
        }
        Some((
            SerialLinePoint {
                name: name?,
                extract: extract?,
                kind: kind?,
                scale: scale?,
                offset: offset?,
                unit,
            },
            raw.name.as_ref().map(|n| n.span()),
        ))
    }

    /// Duplicate names and overlapping addresses within one device. Reported on whichever
    /// of the two points was written later.
    fn points_are_distinct(&mut self, points: &[LocatedPoint]) -> bool {
        let mut ok = true;
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (index, p) in points.iter().enumerate() {
            if let Some(&first) = seen.get(p.point.name.as_str()) {
                let earlier = &points[first];
                let origin = match &earlier.from_profile {
                    Some(profile) => format!("by profile \"{profile}\""),
                    None => format!(
                        "on line {}",
                        self.files[earlier.file]
                            .position(earlier.name_span.clone().map_or(0, |s| s.start))
                            .0
                    ),
                };
                self.fail(p.file, p.name_span.clone(), format!("a point named \"{}\" is already defined {origin}: point names must be unique within a device; rename one", p.point.name));
                ok = false;
            } else {
                seen.insert(&p.point.name, index);
            }
        }

        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_by_key(|&i| (points[i].point.table, points[i].point.address, i));
        // The point reaching furthest so far in the current table: (end exclusive, index).
        let mut reach: Option<(Table, u32, usize)> = None;
        for &i in &order {
            let p = &points[i].point;
            let start = u32::from(p.address);
            let end = start + u32::from(p.data_type.width());
            if let Some((table, far_end, j)) = reach {
                if table == p.table && start < far_end {
                    let (later, earlier) = if i > j { (i, j) } else { (j, i) };
                    let (a, b) = (&points[later], &points[earlier]);
                    let where_b = match &b.from_profile {
                        Some(profile) => format!("from profile \"{profile}\""),
                        None => format!(
                            "on line {}",
                            self.files[b.file]
                                .position(b.name_span.clone().map_or(0, |s| s.start))
                                .0
                        ),
                    };
                    self.fail(a.file, a.address_span.clone().or(a.name_span.clone()), format!(
                        "point \"{}\" ({}) overlaps point \"{}\" ({}) {where_b}: two points may not share {} addresses; fix the address or the type",
                        a.point.name, describe_range(&a.point), b.point.name, describe_range(&b.point),
                        if p.table.is_bits() { "bit" } else { "register" },
                    ));
                    ok = false;
                }
            }
            match reach {
                Some((table, far_end, _)) if table == p.table && far_end >= end => {}
                _ => reach = Some((p.table, end, i)),
            }
        }
        ok
    }

    fn profile(
        &mut self,
        file: FileId,
        name: &Spanned<String>,
        search: &[PathBuf],
    ) -> Option<LoadedProfile> {
        let text = name.get_ref();
        let valid = !text.is_empty()
            && !text.starts_with('.')
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid {
            self.fail(file, span_of(name), format!("profile name \"{text}\" must be letters, digits, `_`, `-` or `.` (the file NAME.toml in a profiles folder), e.g. \"eastron-sdm120\""));
            return None;
        }
        if let Some(cached) = self.profiles.get(text).cloned() {
            if cached.is_none()
                && !search
                    .iter()
                    .any(|dir| dir.join(format!("{text}.toml")).is_file())
            {
                self.fail(file, span_of(name), missing_profile(text, search));
            }
            return cached;
        }
        let Some(path) = search
            .iter()
            .map(|dir| dir.join(format!("{text}.toml")))
            .find(|p| p.is_file())
        else {
            self.fail(file, span_of(name), missing_profile(text, search));
            self.profiles.insert(text.clone(), None);
            return None;
        };
        let loaded = match std::fs::read(&path).map(String::from_utf8) {
            Ok(Ok(content)) => {
                let profile_file = self.add_file(path.clone(), content);
                self.profile_file(profile_file, text)
            }
            Ok(Err(e)) => {
                self.add_not_utf8(path.clone(), e.as_bytes());
                None
            }
            Err(e) => {
                self.fail(file, span_of(name), format!("profile \"{text}\" was found at {} but cannot be read ({e}): check its permissions", path.display()));
                None
            }
        };
        self.profiles.insert(text.clone(), loaded.clone());
        loaded
    }

    fn profile_file(&mut self, file: FileId, name: &str) -> Option<LoadedProfile> {
        let doc = self.parse(file)?;
        let root = Item::Table(doc.as_table().clone());
        let what = format!("profile \"{name}\"");
        let d = self.decode::<RawProfile>(file, &root, &what, &["point"]);
        let problems_before_points = self.problems.len();
        let points: Vec<Option<LocatedPoint>> = match doc.as_table().get("point") {
            Some(points) => self
                .elements(file, points, "[[point]]", "point")
                .iter()
                .map(|p| self.point(file, p, &what, Some(name)))
                .collect(),
            None => Vec::new(),
        };
        let d = d?;
        let mut ok = self.problems.len() == problems_before_points;
        let points: Vec<LocatedPoint> = points.into_iter().flatten().collect();
        if let Some(desc) = self.require(
            &d,
            &d.value.description,
            "description",
            "description = \"what device this maps\"",
        ) {
            if desc.get_ref().trim().is_empty() {
                self.fail(
                    file,
                    span_of(desc),
                    "the profile `description` is empty: say which device this register map is for",
                );
                ok = false;
            }
        } else {
            ok = false;
        }
        if ok && points.is_empty() {
            self.fail(
                file,
                Some(0..0),
                format!("{what} has no [[point]] entries: add the registers the device exposes"),
            );
            ok = false;
        }
        let interval = match &d.value.interval {
            Some(i) => {
                let interval = self.duration_in(file, i, "interval", &limits::POLL_INTERVAL);
                ok &= interval.is_some();
                interval
            }
            None => None,
        };
        ok &= self.points_are_distinct(&points);
        ok.then_some(LoadedProfile { interval, points })
    }

    // ---------------------------------------------------------------- points

    fn point(
        &mut self,
        file: FileId,
        item: &Item,
        owner: &str,
        profile: Option<&str>,
    ) -> Option<LocatedPoint> {
        let name_hint = item_child(item, "name").and_then(|n| n.as_str().map(str::to_owned));
        let what = match &name_hint {
            Some(n) => format!("point \"{n}\" of {owner}"),
            None => format!("a point of {owner}"),
        };
        let d = self.decode::<RawPoint>(file, item, &what, &[])?;
        let raw = &d.value;
        let mut ok = true;

        let name = self
            .require(&d, &raw.name, "name", "name = \"voltage\"")
            .and_then(|n| self.point_name(file, n));

        let declared_table = match &raw.table {
            None => Some(None),
            Some(t) => self
                .choice(
                    file,
                    t,
                    "table",
                    &[
                        ("holding", Table::Holding),
                        ("input", Table::Input),
                        ("coil", Table::Coil),
                        ("discrete", Table::Discrete),
                    ],
                )
                .map(Some),
        };

        let location = match (
            self.require(
                &d,
                &raw.address,
                "address",
                "address = 0 (0-based) or address = \"40001\" (classic notation)",
            ),
            declared_table,
        ) {
            (Some(address), Some(declared)) => match address.get_ref() {
                AddressText::Protocol(n) => {
                    let n = *n;
                    match declared {
                        None if !d.reported.contains("table") => {
                            self.fail(file, span_of(address), format!(
                                "address {n} is a 0-based protocol address, so the point needs a `table`: add table = \"holding\" (or input, coil, discrete), or write the classic notation as a string, e.g. address = \"{}\"",
                                u16::try_from(n).map(|a| notation_of(Table::Holding, a)).unwrap_or_else(|_| "40001".into())
                            ));
                            None
                        }
                        None => None,
                        Some(table) => match u16::try_from(n) {
                            Ok(a) => Some((table, a)),
                            Err(_) => {
                                self.fail(file, span_of(address), format!("address {n} is out of range: 0-based Modbus addresses go from 0 to 65535"));
                                None
                            }
                        },
                    }
                }
                AddressText::Notation(text) => match parse_notation(text, declared) {
                    Ok(found) => Some(found),
                    Err(message) => {
                        self.fail(file, span_of(address), message);
                        None
                    }
                },
            },
            _ => None,
        };

        let string_registers = match &raw.registers {
            None => None,
            Some(r) => self
                .int_in(
                    file,
                    r,
                    "registers",
                    1..=MAX_STRING_REGISTERS,
                    "a string point must fit one read request, so {range} registers",
                )
                .map(|r| r as u16)
                .or_else(|| {
                    ok = false;
                    None
                }),
        };
        let data_type = match &raw.data_type {
            None => match location {
                Some((table, _)) if table.is_bits() => Some(DataType::Bool),
                // A bad address already reported: whether `type` may be left out is unknown.
                None if raw.address.is_some() => None,
                _ if d.reported.contains("type") => None,
                _ => {
                    self.fail(file, Some(d.start..d.start), format!("{what} has no `type`: add type = \"u16\" (or bool, i16, u32, i32, u64, i64, f32, f64, string)"));
                    None
                }
            },
            Some(t) => {
                let parsed = self.choice(
                    file,
                    t,
                    "type",
                    &[
                        ("bool", DataType::Bool),
                        ("u16", DataType::U16),
                        ("i16", DataType::I16),
                        ("u32", DataType::U32),
                        ("i32", DataType::I32),
                        ("u64", DataType::U64),
                        ("i64", DataType::I64),
                        ("f32", DataType::F32),
                        ("f64", DataType::F64),
                        ("string", DataType::String { registers: 0 }),
                    ],
                );
                match parsed {
                    Some(DataType::String { .. }) => match (&raw.registers, string_registers) {
                        (_, Some(registers)) => Some(DataType::String { registers }),
                        (None, _) if !d.reported.contains("registers") => {
                            self.fail(file, span_of(t), "a string point needs `registers`: add registers = N (two characters per register)");
                            None
                        }
                        _ => None,
                    },
                    other => other,
                }
            }
        };
        if let (Some(r), Some(dt)) = (&raw.registers, data_type) {
            if !matches!(dt, DataType::String { .. }) {
                self.fail(file, span_of(r), "`registers` applies only to type = \"string\": remove it (the other types have a fixed width)");
                ok = false;
            }
        }
        if let (Some((table, _)), Some(dt)) = (location, data_type) {
            if table.is_bits() && dt != DataType::Bool {
                let at = raw.data_type.as_ref().and_then(span_of);
                self.fail(file, at, format!(
                    "a {} holds single bits, so the point must be type = \"bool\": for a numeric value use a holding or input register",
                    if table == Table::Coil { "coil" } else { "discrete input" }
                ));
                ok = false;
            }
        }

        let order = match &raw.order {
            None => Some(WordOrder::Abcd),
            Some(o) => self.choice(
                file,
                o,
                "order",
                &[
                    ("ABCD", WordOrder::Abcd),
                    ("CDAB", WordOrder::Cdab),
                    ("BADC", WordOrder::Badc),
                    ("DCBA", WordOrder::Dcba),
                ],
            ),
        };
        let scale = match &raw.scale {
            None => Some(1.0),
            Some(s) if !s.get_ref().is_finite() || *s.get_ref() == 0.0 => {
                self.fail(file, span_of(s), format!("`scale` = {} would make every reading meaningless: give a finite, non-zero factor such as 0.1", s.get_ref()));
                None
            }
            Some(s) => Some(*s.get_ref()),
        };
        let offset = match &raw.offset {
            None => Some(0.0),
            Some(o) if !o.get_ref().is_finite() => {
                self.fail(
                    file,
                    span_of(o),
                    format!(
                        "`offset` = {} is not a finite number: give a number such as -40.0",
                        o.get_ref()
                    ),
                );
                None
            }
            Some(o) => Some(*o.get_ref()),
        };
        if data_type == Some(DataType::Bool) {
            for (key, span) in [
                ("scale", raw.scale.as_ref().map(|s| s.span())),
                ("offset", raw.offset.as_ref().map(|s| s.span())),
                ("order", raw.order.as_ref().map(|s| s.span())),
            ] {
                if let Some(span) = span {
                    self.fail(
                        file,
                        Some(span),
                        format!("`{key}` has no effect on a bool point: remove it"),
                    );
                    ok = false;
                }
            }
        }
        if matches!(data_type, Some(DataType::String { .. })) {
            for (key, span) in [
                ("scale", raw.scale.as_ref().map(|s| s.span())),
                ("offset", raw.offset.as_ref().map(|s| s.span())),
            ] {
                if let Some(span) = span {
                    self.fail(
                        file,
                        Some(span),
                        format!("`{key}` has no effect on a string point: remove it"),
                    );
                    ok = false;
                }
            }
        }
        let unit = match &raw.unit {
            Some(u) if u.get_ref().trim().is_empty() => {
                self.fail(
                    file,
                    span_of(u),
                    "`unit` is empty: give the unit of measure (e.g. \"V\") or remove the key",
                );
                ok = false;
                None
            }
            other => other.as_ref().map(|u| u.get_ref().clone()),
        };
        let interval = match &raw.interval {
            None => Some(None),
            Some(i) => self
                .duration_in(file, i, "interval", &limits::POLL_INTERVAL)
                .map(Some),
        };

        if let (Some((_, address)), Some(dt)) = (location, data_type) {
            let last = u32::from(address) + u32::from(dt.width()) - 1;
            if last > u32::from(u16::MAX) {
                let at = raw.address.as_ref().and_then(span_of);
                self.fail(file, at, format!(
                    "the point starts at address {address} and is {} wide, so it runs past the last address 65535: move it down or use a narrower type",
                    plural(dt.width(), "register")
                ));
                ok = false;
            }
        }

        if !ok {
            return None;
        }
        let (table, address) = location?;
        Some(LocatedPoint {
            point: Point {
                name: name?,
                table,
                address,
                data_type: data_type?,
                order: order?,
                scale: scale?,
                offset: offset?,
                unit,
                interval: interval?,
            },
            file,
            name_span: raw.name.as_ref().map(|n| n.span()),
            address_span: raw.address.as_ref().map(|a| a.span()),
            from_profile: profile.map(str::to_owned),
        })
    }
}

// -------------------------------------------------------------------- helpers

/// A child of a table item, whether written as a `[section]` or inline.
fn item_child(item: &Item, key: &str) -> Option<Item> {
    match item {
        Item::Table(t) => t.get(key).cloned(),
        Item::Value(Value::InlineTable(t)) => t.get(key).map(|v| Item::Value(v.clone())),
        _ => None,
    }
}

/// The key of `table` whose key or value covers byte `offset`, with the key's span.
fn key_at(table: &InlineTable, offset: usize) -> Option<(String, Option<Range<usize>>)> {
    let keys: Vec<String> = table.iter().map(|(k, _)| k.to_owned()).collect();
    keys.into_iter().find_map(|name| {
        let (key, value) = table.get_key_value(&name)?;
        let covers = |span: Option<Range<usize>>| {
            span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
        };
        (covers(key.span()) || covers(value.span())).then(|| (name.clone(), key.span()))
    })
}

fn item_kind(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(v) => value_kind(v),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "a list of tables ([[...]])",
    }
}

fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "a list",
        Value::InlineTable(_) => "a table",
    }
}

/// Rewrites serde's message for a rejected key into a sentence saying what to do.
fn explain(message: &str, key: &str, what: &str, children: &[&str]) -> String {
    if let Some(rest) = message.strip_prefix("unknown field") {
        let mut allowed: Vec<String> = backticked(rest).into_iter().skip(1).collect();
        allowed.extend(children.iter().map(|c| (*c).to_owned()));
        if what == "the top of the file" {
            allowed = ROOT_KEYS.iter().map(|k| (*k).to_owned()).collect();
        }
        let suggestion = allowed
            .iter()
            .filter(|k| edit_distance(k, key) <= 2)
            .min_by_key(|k| edit_distance(k, key))
            .map(|k| format!("did you mean `{k}`? "))
            .unwrap_or_default();
        let misplaced = if what != "the top of the file" && ROOT_KEYS.contains(&key) {
            " (a top-level key written after a [table] header belongs to that table: move it above the first header)"
        } else {
            ""
        };
        let names: Vec<&str> = allowed.iter().map(String::as_str).collect();
        return format!(
            "unknown key `{key}` in {what}{misplaced}: {suggestion}the keys allowed here are {}",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            let expected = match expected {
                "i64" | "u64" | "i32" | "u32" | "u16" | "u8" => "a whole number (no quotes)",
                "f64" | "f32" => "a number (no quotes)",
                "a string" => "a string in quotes",
                "a sequence" => "a list [ ... ]",
                "a boolean" => "true or false",
                other => other,
            };
            return format!("`{key}` must be {expected}, but it is {found}");
        }
    }
    format!("`{key}`: {message}")
}

/// The `quoted` words of a serde message, in order.
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_owned())
        .collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// `text` with every control character (and the Unicode line and paragraph separators and
/// the bidirectional overrides, which reorder a terminal line) written as an escape: `\n`,
/// `\r`, `\t`, or `\u{7f}`.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out
}

/// "status, health, meta and set".
fn reserved_list(reserved: &[(&str, &str)]) -> String {
    let names: Vec<&str> = reserved.iter().map(|(n, _)| *n).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => names.concat(),
    }
}

fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn plural(n: u16, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn describe_range(p: &Point) -> String {
    let width = p.data_type.width();
    let table = table_name(p.table);
    if width == 1 {
        format!("{table} {}", p.address)
    } else {
        format!(
            "{table} {} to {}",
            p.address,
            u32::from(p.address) + u32::from(width) - 1
        )
    }
}

fn missing_profile(name: &str, search: &[PathBuf]) -> String {
    let places: Vec<String> = search.iter().map(|d| d.display().to_string()).collect();
    format!(
        "profile \"{name}\" not found: looked for {name}.toml in {}; check the name, or put the file in one of those folders",
        places.join(", ")
    )
}

/// Decodes `\\r`, `\\n`, `\\t`, `\\\\` and `\\xNN` in a query or terminator. TOML basic
/// strings decode `\\r` and `\\n` themselves but reject `\\x`, so these escapes are meant for
/// 'literal strings'; characters already decoded by TOML pass through as their UTF-8 bytes.
pub(crate) fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('r') => out.push(b'\r'),
            Some('n') => out.push(b'\n'),
            Some('t') => out.push(b'\t'),
            Some('\\') => out.push(b'\\'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                match u8::from_str_radix(&hex, 16) {
                    Ok(b) if hex.len() == 2 => out.push(b),
                    _ => return Err(format!("has \\x{hex} which is not two hex digits: write a byte as \\xNN, e.g. \\x02")),
                }
            }
            Some(other) => {
                return Err(format!(
                    "has the unknown escape \\{other}: use \\r, \\n, \\t, \\\\ or \\xNN"
                ))
            }
            None => return Err("ends with a lone backslash: write \\\\ for a backslash".to_owned()),
        }
    }
    Ok(out)
}

fn round_up_to_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_micros().div_ceil(1000) as u64)
}

/// Splits "host", "host:port", "[v6]" or "[v6]:port".
fn split_host_port(text: &str) -> Result<(String, Option<u16>), &'static str> {
    let text = text.trim();
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("has an unclosed `[`")?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or("has text after `]` that is not `:port`")?,
                ),
            ),
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err("looks like an IPv6 address without brackets (write \"[fd00::5]:502\")")
            }
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err("has no host");
    }
    if host.contains(['/', ' ', '@']) {
        return Err("is not a host name or IP address");
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => Some(p),
            _ => return Err("has a port that is not a number from 1 to 65535"),
        },
    };
    Ok((host.to_owned(), port))
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `mqtt://host[:port]` or `mqtts://host[:port]` -> (TLS?, host, port).
fn parse_broker_url(url: &str) -> Result<(bool, String, Option<u16>), String> {
    let advice = "write url = \"mqtt://host:1883\" or \"mqtts://host:8883\"";
    let (secure, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(format!(
            "broker url \"{url}\" must start with mqtt:// or mqtts://: {advice}"
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err(format!("broker url \"{url}\" carries credentials: put the user in `username` and the password in a file named by `password_file`"));
    }
    if rest.contains('/') {
        return Err(format!(
            "broker url \"{url}\" has a path, which MQTT does not use: {advice}"
        ));
    }
    let (host, port) =
        split_host_port(rest).map_err(|why| format!("broker url \"{url}\" {why}: {advice}"))?;
    Ok((secure, host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_lines_and_character_columns() {
        let file = SourceFile::new("x".into(), "ab\n\u{e9}cd\n".into());
        assert_eq!(file.position(0), (1, 1));
        assert_eq!(file.position(1), (1, 2));
        assert_eq!(file.position(3), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(file.position(5), (2, 2));
    }

    #[test]
    fn host_and_port_split_including_ipv6() {
        assert_eq!(
            split_host_port("10.0.0.5:502"),
            Ok(("10.0.0.5".into(), Some(502)))
        );
        assert_eq!(split_host_port("plc"), Ok(("plc".into(), None)));
        assert_eq!(
            split_host_port("[fd00::5]:1502"),
            Ok(("fd00::5".into(), Some(1502)))
        );
        assert!(split_host_port("fd00::5").is_err());
        assert!(split_host_port("plc:0").is_err());
        assert!(split_host_port(":502").is_err());
    }

    #[test]
    fn broker_urls_give_tls_host_and_port() {
        assert_eq!(
            parse_broker_url("mqtts://b.example:8883"),
            Ok((true, "b.example".into(), Some(8883)))
        );
        assert_eq!(
            parse_broker_url("mqtt://localhost"),
            Ok((false, "localhost".into(), None))
        );
        assert!(parse_broker_url("http://x").is_err());
        assert!(parse_broker_url("mqtt://u:p@x").is_err());
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("adress", "address"), 1);
        assert_eq!(edit_distance("qos", "qos"), 0);
        assert_eq!(edit_distance("baud", "bus"), 2);
    }
}
