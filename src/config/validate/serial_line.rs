//! Serial-line sensors: `serial_line` buses (framing: terminator, longest line) and the
//! devices on them (query or stream, line filter, checksum, `stale_after`, and points
//! extracted from a line by regex or by delimiter and field).

use std::collections::HashMap;
use std::ops::Range;

use toml::Spanned;
use toml_edit::Item;

use super::engine::{item_child, span_of, table_title, Checker, FileId};
use super::explanations::quoted_list;
use super::shared::{LineBusUser, ScalingKeys, Seen, SerialKeys};
use crate::config::limits;
use crate::config::raw::{RawLineBus, RawLineDevice, RawLinePoint};
use crate::config::types::{
    Bus, BusKind, ChecksumKind, Device, DeviceKind, Extract, HaEntity, HaPoint, LineQuery,
    LineValueKind, SerialLine, SerialLineDevice, SerialLinePoint,
};
use crate::config::units::format_duration;

/// Serial-line framing limits: a line must fit the codec's buffer, a terminator stays short.
const MAX_LINE_LIMIT: i64 = 65_536;
const MAX_TERMINATOR_BYTES: usize = 8;
const MAX_QUERY_BYTES: usize = 1024;
/// A field index beyond this is a typo (NMEA sentences have about 20 fields).
const MAX_FIELD_INDEX: i64 = 1023;
/// Regexes are compiled with this size limit so a pathological pattern fails validation
/// instead of eating a gateway's memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A checked point, where its name was written, and what it says for Home Assistant.
type LinePoint = (SerialLinePoint, Option<Range<usize>>, HaPoint);

impl Checker {
    pub(super) fn line_bus(
        &mut self,
        seen: &mut Seen,
        file: FileId,
        item: &Item,
        what: &str,
    ) -> Option<(Option<Range<usize>>, Bus)> {
        let d = self.decode::<RawLineBus>(file, item, what, &[])?;
        let name = self.require(&d, &d.value.name, "name", "name = \"gps\"");
        let name = name.and_then(|n| self.name(file, n, "bus").map(|s| (span_of(n), s)));
        let raw = &d.value;
        let serial = self.serial_settings(
            seen,
            &d,
            SerialKeys {
                path: &raw.path,
                baud: &raw.baud,
                data_bits: &raw.data_bits,
                parity: &raw.parity,
                stop_bits: &raw.stop_bits,
            },
            name.as_ref().map(|(_, n)| n.as_str()),
        );
        let terminator = match &raw.terminator {
            None => Some(SerialLine::DEFAULT_TERMINATOR.to_vec()),
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
            None => Some(SerialLine::DEFAULT_MAX_LINE),
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
                    serial: serial.settings()?,
                    terminator: terminator?,
                    max_line: max_line?,
                }),
            },
        ))
    }

    /// A device on a serial_line bus: query or stream, filter, checksum, extraction points.
    /// `bus_usable` is false when the bus itself was reported broken.
    pub(super) fn line_device(
        &mut self,
        seen: &mut Seen,
        file: FileId,
        item: &Item,
        what: &str,
        bus_usable: bool,
    ) -> Option<Device> {
        let d = self.decode::<RawLineDevice>(file, item, what, &["point"]);
        let problems_before_points = self.problem_count();
        let points: Vec<Option<LinePoint>> = match item_child(item, "point") {
            Some(points) => self
                .elements(file, &points, "[[device.point]]", "point")
                .iter()
                .map(|p| self.line_point(file, p, what))
                .collect(),
            None => Vec::new(),
        };
        let d = d?;
        let raw = &d.value;
        let mut ok = self.problem_count() == problems_before_points;

        let name = self
            .require(&d, &raw.name, "name", "name = \"gps\"")
            .and_then(|n| self.device_name(file, n, seen));
        let bus = self
            .require(&d, &raw.bus, "bus", "bus = \"<name of a [[bus]]>\"")
            .map(|b| b.get_ref().clone());

        let interval = self.duration_or(
            file,
            &raw.interval,
            "interval",
            &limits::POLL_INTERVAL,
            Device::DEFAULT_INTERVAL,
        );
        let response_timeout = self.duration_or(
            file,
            &raw.response_timeout,
            "response_timeout",
            &limits::REQUEST_TIMEOUT,
            LineQuery::DEFAULT_RESPONSE_TIMEOUT,
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
            (None, Some(i)) => {
                Some(i.saturating_mul(SerialLineDevice::DEFAULT_STALE_AFTER_INTERVALS))
            }
            (None, None) => None,
        };
        if let (Some(s), Some(i), Some(s_raw)) = (stale_after, interval, &raw.stale_after) {
            if s < i && raw.query.is_some() {
                self.fail(file, span_of(s_raw), format!("`stale_after` (\"{}\") is shorter than `interval` (\"{}\"): the device would go offline between two queries; make it at least the interval (the default is 3 x interval)", format_duration(s), format_duration(i)));
                ok = false;
            }
        }

        let points: Vec<LinePoint> = points.into_iter().flatten().collect();
        if ok && points.is_empty() && !d.reported.contains("point") {
            self.fail(file, Some(d.start..d.start), format!("{what} has no points: add [[device.point]] entries with a `regex` or a `delimiter` and `field`"));
            ok = false;
        }
        let mut names: HashMap<&str, Option<Range<usize>>> = HashMap::new();
        for (p, span, _) in &points {
            if let Some(first) = names.get(p.name.as_str()) {
                let line = self.files[file]
                    .position(first.clone().map_or(0, |s| s.start))
                    .0;
                self.fail(file, span.clone(), format!("a point named \"{}\" is already defined on line {line}: point names must be unique within a device; rename one", p.name));
                ok = false;
            } else {
                names.insert(&p.name, span.clone());
            }
        }

        // One sensor per port, unless several streaming sensors share it and a filter says
        // which line is whose: a query would interleave with another device's answers.
        if let (Some(bus), Some(name)) = (&bus, &name) {
            let has_query = matches!(query, Some(Some(_)));
            let has_filter = raw.filter.is_some();
            let at = raw.name.as_ref().map(|n| n.span());
            match seen.line_bus_users.get(bus) {
                Some(first) if first.has_query || has_query || !first.has_filter || !has_filter => {
                    let message = format!("device \"{name}\" shares serial_line bus \"{bus}\" with device \"{}\" (line {}): a port carries one sensor, or several streaming sensors (no `query`) that each have a `filter` telling their lines apart; give this sensor its own [[bus]]", first.device, first.line);
                    self.fail(file, at, message);
                    ok = false;
                }
                Some(_) => {}
                None => {
                    let line = self.files[file].position(at.map_or(d.start, |s| s.start)).0;
                    seen.line_bus_users.insert(
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
        let name = name?;
        for (p, _, ha) in points.iter().filter(|(_, _, ha)| !ha.is_empty()) {
            seen.homeassistant
                .points
                .insert((name.clone(), p.name.clone()), ha.clone());
        }
        Some(Device {
            name,
            bus: bus?,
            interval: interval?,
            kind: DeviceKind::SerialLine(SerialLineDevice {
                query,
                filter: filter?,
                checksum: checksum?,
                stale_after: stale_after?,
                points: points.into_iter().map(|(p, _, _)| p).collect(),
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

    fn line_point(&mut self, file: FileId, item: &Item, owner: &str) -> Option<LinePoint> {
        let (_, what) = table_title(
            item,
            "point",
            &format!(" of {owner}"),
            &format!("a point of {owner}"),
        );
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
        let scaling = self.scaling(
            file,
            ScalingKeys {
                scale: &raw.scale,
                offset: &raw.offset,
                unit: &raw.unit,
            },
            "m",
            (kind == Some(LineValueKind::String)).then_some("string"),
        );
        let entity = kind.map(|kind| {
            if kind == LineValueKind::String {
                HaEntity::TextSensor
            } else {
                HaEntity::Sensor
            }
        });
        let unit = raw.unit.as_ref().map(|u| u.get_ref().as_str());
        let ha = self.ha_hints(
            file,
            &raw.ha_device_class,
            &raw.ha_state_class,
            entity,
            unit,
        );
        if !ok {
            return None;
        }
        let scaling = scaling?;
        Some((
            SerialLinePoint {
                name: name?,
                extract: extract?,
                kind: kind?,
                scale: scaling.scale,
                offset: scaling.offset,
                unit: scaling.unit,
            },
            raw.name.as_ref().map(|n| n.span()),
            ha?,
        ))
    }
}

/// Decodes `\\r`, `\\n`, `\\t`, `\\\\` and `\\xNN` in a query or terminator. TOML basic
/// strings decode `\\r` and `\\n` themselves but reject `\\x`, so these escapes are meant for
/// 'literal strings'; characters already decoded by TOML pass through as their UTF-8 bytes.
fn unescape(text: &str) -> Result<Vec<u8>, String> {
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
