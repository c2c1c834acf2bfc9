//! A Modbus device's register map: its points (`[[device.point]]`, a profile's `[[point]]`)
//! and the profiles that bring them (`profile = "NAME"`, `profile_dirs`), checked as one set
//! per device: unique names, no two points on one address.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml_edit::Item;

use super::engine::{span_of, table_title, Checker, FileId};
use super::explanations::plural;
use super::shared::ScalingKeys;
use crate::config::limits;
use crate::config::raw::{RawPoint, RawProfile, RawRootScalars};
use crate::config::types::{DataType, HaDevice, HaEntity, HaPoint, Point, Table, WordOrder};
use crate::config::units::{notation_of, parse_notation, table_name, AddressText};

/// Folders searched for `profile = "NAME"` after the config file's own `profiles/` folder.
pub const SYSTEM_PROFILE_DIRS: &[&str] =
    &["/etc/fieldlink/profiles", "/usr/share/fieldlink/profiles"];

/// A string point must fit one read request (Modbus caps a register read at 125).
const MAX_STRING_REGISTERS: i64 = 125;

/// A point with where it was written, for duplicate and overlap messages.
#[derive(Clone)]
pub(super) struct LocatedPoint {
    pub(super) point: Point,
    file: FileId,
    name_span: Option<Range<usize>>,
    address_span: Option<Range<usize>>,
    /// `Some(profile name)` when it came from a profile.
    from_profile: Option<String>,
    /// `ha_device_class` / `ha_state_class`.
    pub(super) ha: HaPoint,
}

#[derive(Clone)]
pub(super) struct LoadedProfile {
    pub(super) interval: Option<Duration>,
    /// `manufacturer` and `model`, for Home Assistant's device registry.
    pub(super) device: HaDevice,
    pub(super) points: Vec<LocatedPoint>,
}

/// Where profiles are looked for, and the ones loaded so far by name (`None`: missing or
/// broken, already reported once).
pub(super) struct Profiles {
    search: Vec<PathBuf>,
    loaded: HashMap<String, Option<LoadedProfile>>,
}

impl Profiles {
    /// The search path of the config file at `config`: `extra` folders (`profile_dirs`,
    /// relative to the file), its own `profiles/` folder, then [`SYSTEM_PROFILE_DIRS`].
    pub(super) fn new(config: &Path, extra: Vec<PathBuf>) -> Self {
        let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut search: Vec<PathBuf> = extra.into_iter().map(|d| dir.join(d)).collect();
        search.push(dir.join("profiles"));
        search.extend(SYSTEM_PROFILE_DIRS.iter().map(PathBuf::from));
        Profiles {
            search,
            loaded: HashMap::new(),
        }
    }
}

impl Checker {
    pub(super) fn profile_dirs(
        &mut self,
        file: FileId,
        raw: &RawRootScalars,
    ) -> Option<Vec<PathBuf>> {
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

    /// `profile = "NAME"`: the profile's points and interval, loaded once per name (a
    /// missing or broken profile is reported at every device that names it, its own
    /// problems once).
    pub(super) fn profile(
        &mut self,
        profiles: &mut Profiles,
        file: FileId,
        name: &Spanned<String>,
    ) -> Option<LoadedProfile> {
        let search = &profiles.search;
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
        if let Some(cached) = profiles.loaded.get(text).cloned() {
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
            profiles.loaded.insert(text.clone(), None);
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
        profiles.loaded.insert(text.clone(), loaded.clone());
        loaded
    }

    fn profile_file(&mut self, file: FileId, name: &str) -> Option<LoadedProfile> {
        let doc = self.parse(file)?;
        let root = Item::Table(doc.as_table().clone());
        let what = format!("profile \"{name}\"");
        let d = self.decode::<RawProfile>(file, &root, &what, &["point"]);
        let problems_before_points = self.problem_count();
        let points: Vec<Option<LocatedPoint>> = match doc.as_table().get("point") {
            Some(points) => self
                .elements(file, points, "[[point]]", "point")
                .iter()
                .map(|p| self.point(file, p, &what, Some(name)))
                .collect(),
            None => Vec::new(),
        };
        let d = d?;
        let mut ok = self.problem_count() == problems_before_points;
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
        let device = HaDevice {
            manufacturer: d.value.manufacturer.as_ref().map(|m| m.get_ref().clone()),
            model: d.value.model.as_ref().map(|m| m.get_ref().clone()),
        };
        ok.then_some(LoadedProfile {
            interval,
            device,
            points,
        })
    }

    /// Duplicate names and overlapping addresses within one device. Reported on whichever
    /// of the two points was written later.
    pub(super) fn points_are_distinct(&mut self, points: &[LocatedPoint]) -> bool {
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

    pub(super) fn point(
        &mut self,
        file: FileId,
        item: &Item,
        owner: &str,
        profile: Option<&str>,
    ) -> Option<LocatedPoint> {
        let (_, what) = table_title(
            item,
            "point",
            &format!(" of {owner}"),
            &format!("a point of {owner}"),
        );
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
        let ignored_by = match data_type {
            Some(DataType::Bool) => Some("bool"),
            Some(DataType::String { .. }) => Some("string"),
            _ => None,
        };
        let scaling = self.scaling(
            file,
            ScalingKeys {
                scale: &raw.scale,
                offset: &raw.offset,
                unit: &raw.unit,
            },
            "V",
            ignored_by,
        );
        if let (Some(DataType::Bool), Some(order)) = (data_type, &raw.order) {
            self.fail(
                file,
                Some(order.span()),
                "`order` has no effect on a bool point: remove it",
            );
            ok = false;
        }
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

        let write = self.write_settings(file, raw, location.map(|(table, _)| table), data_type);
        if write.is_none() {
            ok = false;
        }
        let entity = match (data_type, &write) {
            (Some(dt), Some(w)) => Some(HaEntity::of_register(dt, w.is_some())),
            _ => None,
        };
        let unit = raw.unit.as_ref().map(|u| u.get_ref().as_str());
        let ha = self.ha_hints(
            file,
            &raw.ha_device_class,
            &raw.ha_state_class,
            entity,
            unit,
        );
        if ha.is_none() {
            ok = false;
        }

        if !ok {
            return None;
        }
        let (table, address) = location?;
        let scaling = scaling?;
        Some(LocatedPoint {
            point: Point {
                name: name?,
                table,
                address,
                data_type: data_type?,
                order: order?,
                scale: scaling.scale,
                offset: scaling.offset,
                unit: scaling.unit,
                interval: interval?,
                write: write?,
            },
            file,
            name_span: raw.name.as_ref().map(|n| n.span()),
            address_span: raw.address.as_ref().map(|a| a.span()),
            from_profile: profile.map(str::to_owned),
            ha: ha?,
        })
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
