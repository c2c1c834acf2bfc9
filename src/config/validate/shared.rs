//! What both bus families share: the names of devices and points, a serial port's settings
//! and the rule that one port belongs to one bus, a point's scaling (`scale`, `offset`,
//! `unit`), `host:port` addresses, and [`Seen`], what the file declared so far for the
//! cross-references later tables are checked against.
//!
//! Builds on the engine only; the section files (`modbus`, `serial_line`) build on it.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::engine::{span_of, Checker, Decoded, FileId};
use super::explanations::reserved_list;
use crate::config::types::{
    HomeAssistant, Parity, SerialSettings, RESERVED_DEVICE_NAMES, RESERVED_POINT_NAMES,
};

/// What the file declared so far: later tables are checked against it, and a second use of
/// a name, a port or a unit id is found with it.
#[derive(Default)]
pub(super) struct Seen {
    /// Every `[[bus]]` by name, also the broken ones (their devices get no "missing bus").
    pub(super) buses: HashMap<String, KnownBus>,
    /// `bus` was not a list (already reported): "missing bus" would only repeat that.
    pub(super) bus_list_unreadable: bool,
    /// Device names so far, with where each was written.
    pub(super) device_names: HashMap<String, Range<usize>>,
    /// Serial_line buses that already have a device, by bus name.
    pub(super) line_bus_users: HashMap<String, LineBusUser>,
    /// The serial ports of the serial buses so far, in file order.
    pub(super) serial_ports: Vec<SerialPortUser>,
    /// The devices on each Modbus RTU bus so far, by (bus, unit id).
    pub(super) rtu_units: HashMap<(String, u8), RtuUnitUser>,
    /// What Home Assistant discovery needs beside the devices (see `HomeAssistant`).
    pub(super) homeassistant: HomeAssistant,
}

pub(super) struct KnownBus {
    /// `None` when the bus was reported broken: devices on it are not checked against it.
    pub(super) kind: Option<BusFamily>,
    /// The `type` as written, even when the rest of the bus is broken: it decides which
    /// keys its devices may have, so a broken serial_line bus does not make its devices
    /// look like Modbus devices missing a `unit`.
    pub(super) declared: Option<BusFamily>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum BusFamily {
    Tcp,
    Rtu,
    /// RTU frames over TCP: an RS-485 line behind a device server.
    RtuTcp,
    Line,
}

/// The first device seen on a serial_line bus, to judge whether a second may share it.
pub(super) struct LineBusUser {
    pub(super) device: String,
    pub(super) line: usize,
    pub(super) has_query: bool,
    pub(super) has_filter: bool,
}

/// A serial bus's port, to find a second bus on the same one.
pub(super) struct SerialPortUser {
    /// The port as resolved through symlinks, or as written when it does not exist.
    pub(super) port: PathBuf,
    pub(super) written: String,
    pub(super) bus: String,
    pub(super) line: usize,
}

/// The first device with a unit id on an RTU bus.
pub(super) struct RtuUnitUser {
    pub(super) device: String,
    pub(super) line: usize,
}

/// The serial keys as a bus table holds them (`modbus_rtu` and `serial_line` buses write
/// them alike).
pub(super) struct SerialKeys<'a> {
    pub(super) path: &'a Option<Spanned<String>>,
    pub(super) baud: &'a Option<Spanned<i64>>,
    pub(super) data_bits: &'a Option<Spanned<i64>>,
    pub(super) parity: &'a Option<Spanned<String>>,
    pub(super) stop_bits: &'a Option<Spanned<i64>>,
}

/// A serial port's settings, each `None` when it was reported wrong.
pub(super) struct SerialParts {
    pub(super) path: Option<PathBuf>,
    pub(super) baud: Option<u32>,
    pub(super) data_bits: Option<u8>,
    pub(super) parity: Option<Parity>,
    pub(super) stop_bits: Option<u8>,
}

impl SerialParts {
    pub(super) fn settings(self) -> Option<SerialSettings> {
        Some(SerialSettings {
            path: self.path?,
            baud: self.baud?,
            data_bits: self.data_bits?,
            parity: self.parity?,
            stop_bits: self.stop_bits?,
        })
    }
}

/// A point's `scale`, `offset` and `unit`, written the same way for a Modbus register and a
/// value extracted from a text line.
pub(super) struct ScalingKeys<'a> {
    pub(super) scale: &'a Option<Spanned<f64>>,
    pub(super) offset: &'a Option<Spanned<f64>>,
    pub(super) unit: &'a Option<Spanned<String>>,
}

/// A checked [`ScalingKeys`]: the defaults where a key is absent.
pub(super) struct Scaling {
    pub(super) scale: f64,
    pub(super) offset: f64,
    pub(super) unit: Option<String>,
}

impl Checker {
    /// A point name: a valid name that is not one of its device's own topic levels.
    pub(super) fn point_name(&mut self, file: FileId, v: &Spanned<String>) -> Option<String> {
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

    /// A device name, unique across the file, and not one of the gateway's own topic levels.
    pub(super) fn device_name(
        &mut self,
        file: FileId,
        n: &Spanned<String>,
        seen: &mut Seen,
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
        if let Some(first) = seen.device_names.get(&name) {
            let (line, _) = self.files[file].position(first.start);
            self.fail(file, span_of(n), format!("a device named \"{name}\" is already defined on line {line}: device names must be unique (they are MQTT topic levels)"));
            return None;
        }
        seen.device_names.insert(name.clone(), n.span());
        Some(name)
    }

    /// A serial bus's `path`: not empty, and not a port another serial bus already opens,
    /// written the same or reached through a symlink (/dev/serial/by-id/... and the
    /// /dev/ttyUSB0 it points to). Paths are resolved, never opened; a path that does not
    /// exist (yet) is compared as written.
    pub(super) fn serial_path(
        &mut self,
        seen: &mut Seen,
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
        if let Some(first) = seen.serial_ports.iter().find(|u| u.port == port) {
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
        seen.serial_ports.push(SerialPortUser {
            port,
            written: written.clone(),
            bus: bus.unwrap_or("?").to_owned(),
            line,
        });
        Some(PathBuf::from(written))
    }

    /// `path`, `baud`, `data_bits`, `parity`, `stop_bits` of a serial bus of either type
    /// (`bus` is its name, when valid): the same keys and defaults for both.
    pub(super) fn serial_settings<T>(
        &mut self,
        seen: &mut Seen,
        d: &Decoded<T>,
        raw: SerialKeys<'_>,
        bus: Option<&str>,
    ) -> SerialParts {
        let file = d.file;
        let path = self
            .require(
                d,
                raw.path,
                "path",
                "path = \"/dev/serial/by-id/...\" (or /dev/ttyUSB0)",
            )
            .and_then(|p| self.serial_path(seen, file, p, bus));
        let baud = match raw.baud {
            None => Some(SerialSettings::DEFAULT_BAUD),
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
        let data_bits = match raw.data_bits {
            None => Some(SerialSettings::DEFAULT_DATA_BITS),
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
        let parity = match raw.parity {
            None => Some(SerialSettings::DEFAULT_PARITY),
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
        let stop_bits = match raw.stop_bits {
            None => Some(SerialSettings::DEFAULT_STOP_BITS),
            Some(b) => self
                .int_in(file, b, "stop_bits", 1..=2, "use {range} stop bits")
                .map(|b| b as u8),
        };
        SerialParts {
            path,
            baud,
            data_bits,
            parity,
            stop_bits,
        }
    }

    /// `scale`, `offset` and `unit` of a point of either bus type. `ignored_by` names the
    /// point's type when scaling means nothing to it ("bool", "string"): a `scale` or
    /// `offset` is then refused. `None` when any key is wrong (each reported).
    pub(super) fn scaling(
        &mut self,
        file: FileId,
        raw: ScalingKeys<'_>,
        unit_example: &str,
        ignored_by: Option<&str>,
    ) -> Option<Scaling> {
        let mut ok = true;
        let scale = match raw.scale {
            None => Some(1.0),
            Some(s) if !s.get_ref().is_finite() || *s.get_ref() == 0.0 => {
                self.fail(file, span_of(s), format!("`scale` = {} would make every reading meaningless: give a finite, non-zero factor such as 0.1", s.get_ref()));
                None
            }
            Some(s) => Some(*s.get_ref()),
        };
        let offset = match raw.offset {
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
        if let Some(kind) = ignored_by {
            for (key, span) in [
                ("scale", raw.scale.as_ref().map(|s| s.span())),
                ("offset", raw.offset.as_ref().map(|s| s.span())),
            ] {
                if let Some(span) = span {
                    self.fail(
                        file,
                        Some(span),
                        format!("`{key}` has no effect on a {kind} point: remove it"),
                    );
                    ok = false;
                }
            }
        }
        let unit = match raw.unit {
            Some(u) if u.get_ref().trim().is_empty() => {
                self.fail(
                    file,
                    span_of(u),
                    format!("`unit` is empty: give the unit of measure (e.g. \"{unit_example}\") or remove the key"),
                );
                ok = false;
                None
            }
            other => other.as_ref().map(|u| u.get_ref().clone()),
        };
        if !ok {
            return None;
        }
        Some(Scaling {
            scale: scale?,
            offset: offset?,
            unit,
        })
    }
}

/// Splits "host", "host:port", "[v6]" or "[v6]:port".
pub(super) fn split_host_port(text: &str) -> Result<(String, Option<u16>), &'static str> {
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

pub(super) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
