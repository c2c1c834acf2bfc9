//! Validation: from the TOML text to the checked `Config`, reporting every problem at once.
//!
//! Owns reading the config file and its profile files, the defaults, every range and
//! cross-reference check, and the error sentences. It must not touch anything at run time
//! (no sockets, no serial ports, no certificate files): a config is judged on its text, with
//! one exception: serial paths are resolved through their symlinks (never opened), so that
//! two buses on one port are found even when one names it by /dev/serial/by-id/.
//!
//! Layout, lowest first (each file imports only the ones above it):
//! - `explanations`: the words: serde's complaints rewritten, suggestions, escaping, lists.
//! - `engine`: source files, positions, the problem list and the error-collecting decoder
//!   (how every error is found in one pass is told there); the generic checks.
//! - `shared`: what both bus families share: names, serial port settings, scaling,
//!   `host:port`, and what the file declared so far (`shared::Seen`).
//! - one file per section: `agent` (`[gateway]`, `[log]`, `[buffer]`), `mqtt`,
//!   `register_map` (Modbus points and profiles) with `writes` (a point's write rules),
//!   `modbus` (buses and devices),
//!   `serial_line` (buses, devices, extraction), `homeassistant` (`[homeassistant]`, the
//!   points' `ha_*` keys, distinct discovery topics).
//! - this file: the whole document, in file order, and which section reads each table.

mod agent;
mod engine;
mod explanations;
mod homeassistant;
mod modbus;
mod mqtt;
mod register_map;
mod serial_line;
mod shared;
mod writes;

use std::collections::HashMap;
use std::path::Path;

use toml_edit::{ImDocument, Item, Value};

use engine::{item_child, table_title, Checker, FileId};
use register_map::Profiles;
use shared::{BusFamily, KnownBus, Seen};

use super::raw::RawRootScalars;
use super::types::{Buffer, Bus, Config, Device, DeviceKind, HomeAssistant, Log};

pub use engine::{ConfigError, ConfigErrors};
pub use register_map::SYSTEM_PROFILE_DIRS;

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

impl Checker {
    fn config(&mut self, file: FileId) -> Option<Config> {
        let doc = self.parse(file)?;
        let root = Item::Table(doc.as_table().clone());
        let sections = [
            "gateway",
            "mqtt",
            "log",
            "buffer",
            "bus",
            "device",
            "homeassistant",
        ];
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
            None => Some(Log::default()),
        };
        let buffer = match doc.as_table().get("buffer") {
            Some(item) => self.buffer(file, item),
            None => Some(Buffer::default()),
        };

        let mut seen = Seen {
            bus_list_unreadable: doc.as_table().get("bus").is_some_and(|b| {
                !matches!(b, Item::ArrayOfTables(_) | Item::Value(Value::Array(_)))
            }),
            ..Seen::default()
        };
        let mut buses = Some(Vec::new());
        for item in self.list_of_tables(file, &doc, "bus") {
            match self.bus(&mut seen, file, &item) {
                Some(bus) => {
                    if let Some(list) = buses.as_mut() {
                        list.push(bus)
                    }
                }
                None => buses = None,
            }
        }

        let mut profiles = Profiles::new(&self.files[file].path, profile_dirs.unwrap_or_default());
        let mut devices = Some(Vec::new());
        for item in self.list_of_tables(file, &doc, "device") {
            match self.device(&mut seen, &mut profiles, file, &item) {
                Some(device) => {
                    if let Some(list) = devices.as_mut() {
                        list.push(device)
                    }
                }
                None => devices = None,
            }
        }

        let discovery = match doc.as_table().get("homeassistant") {
            Some(item) => self.homeassistant(file, item, mqtt.as_ref().map(|m| m.prefix.as_str())),
            None => Some((false, HomeAssistant::DEFAULT_DISCOVERY_PREFIX.to_owned())),
        };
        let mut homeassistant = std::mem::take(&mut seen.homeassistant);
        if let (Some((enabled, prefix)), Some(list)) = (discovery.clone(), devices.as_ref()) {
            if enabled && !self.ha_object_ids_distinct(file, &seen, list) {
                devices = None;
            }
            homeassistant.enabled = enabled;
            homeassistant.discovery_prefix = prefix;
        }
        discovery?;

        let mut buffer = buffer?;
        if buffer.spill_threshold_follows_map {
            if let Some(list) = devices.as_ref() {
                buffer.spill_threshold = default_spill_threshold(list);
            }
        }

        Some(Config {
            source: self.files[file].path.clone(),
            gateway: gateway?,
            mqtt: mqtt?,
            log: log?,
            buffer,
            buses: buses?,
            devices: devices?,
            homeassistant,
        })
    }

    /// The elements of a `[[key]]` array (also accepted: `key = [{...}, ...]`).
    fn list_of_tables(&mut self, file: FileId, doc: &ImDocument<String>, key: &str) -> Vec<Item> {
        match doc.as_table().get(key) {
            None => Vec::new(),
            Some(item) => self.elements(file, item, &format!("[[{key}]]"), key),
        }
    }

    /// A `[[bus]]`, by its `type`.
    fn bus(&mut self, seen: &mut Seen, file: FileId, item: &Item) -> Option<Bus> {
        let known = &mut seen.buses;
        let start = item.span().map(|s| s.start..s.start);
        // Read `name` and `type` before decoding, so a broken bus still counts as existing
        // (its devices then get no "missing bus" error on top).
        let (name_hint, what) = table_title(item, "[[bus]]", "", "[[bus]]");
        let kind = match item_child(item, "type") {
            None => {
                self.fail(
                    file,
                    start,
                    format!(
                        "{what} has no `type`: add type = \"modbus_tcp\", \"modbus_rtu\", \"modbus_rtu_tcp\" or \"serial_line\""
                    ),
                );
                None
            }
            Some(t) => match t.as_str() {
                Some("modbus_tcp") => Some(BusFamily::Tcp),
                Some("modbus_rtu") => Some(BusFamily::Rtu),
                Some("modbus_rtu_tcp") => Some(BusFamily::RtuTcp),
                Some("serial_line") => Some(BusFamily::Line),
                _ => {
                    let shown = t.as_value().map(|v| v.to_string()).unwrap_or_default();
                    self.fail(file, t.span(), format!("bus `type` = {} is not known: use \"modbus_tcp\" (Modbus over TCP), \"modbus_rtu\" (Modbus over a serial line), \"modbus_rtu_tcp\" (Modbus RTU frames over TCP, through a serial device server) or \"serial_line\" (a sensor sending text lines)", shown.trim()));
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
            BusFamily::Rtu => self.rtu_bus(seen, file, item, &what),
            BusFamily::RtuTcp => self.rtu_tcp_bus(file, item, &what),
            BusFamily::Line => self.line_bus(seen, file, item, &what),
        };
        let known = &mut seen.buses;
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

    /// A `[[device]]`: a serial_line device when its bus is declared `serial_line`, else a
    /// Modbus device (also when its bus is missing, which that check reports).
    fn device(
        &mut self,
        seen: &mut Seen,
        profiles: &mut Profiles,
        file: FileId,
        item: &Item,
    ) -> Option<Device> {
        let (name_hint, what) = table_title(item, "[[device]]", "", "[[device]]");
        let bus_hint = item_child(item, "bus").and_then(|b| b.as_str().map(str::to_owned));
        if let Some(bus_name) = bus_hint {
            if seen.buses.get(&bus_name).and_then(|b| b.declared) == Some(BusFamily::Line) {
                let what = format!("{what} (on serial_line bus \"{bus_name}\")");
                let usable = seen.buses.get(&bus_name).is_some_and(|b| b.kind.is_some());
                return self.line_device(seen, file, item, &what, usable);
            }
        }
        self.modbus_device(seen, profiles, file, item, &what, name_hint.as_deref())
    }
}

/// `spill_threshold` when the file leaves it out: 1000 readings, or two rounds of every
/// device's points when the map is larger. With all devices polled in the same second, one
/// round of 50 devices x 40 points is 2 000 readings queued at once: over a fixed 1000 the
/// burst went to disk and back (335 bytes written per reading with the link up, in outage
/// mode, which promises none) although the link took it in milliseconds.
fn default_spill_threshold(devices: &[Device]) -> usize {
    let round: usize = devices
        .iter()
        .map(|d| match &d.kind {
            DeviceKind::Modbus(m) => m.points.len(),
            DeviceKind::SerialLine(s) => s.points.len(),
        })
        .sum();
    Buffer::DEFAULT_SPILL_THRESHOLD.max(2 * round)
}
