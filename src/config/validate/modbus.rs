//! Modbus: `modbus_tcp`, `modbus_rtu` and `modbus_rtu_tcp` buses, and the devices on them (unit id, interval,
//! `max_gap`, `offline_after`, and a register map from the device's own points and its
//! profile, checked in `register_map`).

use std::ops::Range;
use std::time::Duration;

use toml_edit::Item;

use super::engine::{item_child, span_of, Checker, FileId};
use super::explanations::quoted_list;
use super::register_map::{LocatedPoint, Profiles};
use super::shared::{join_host_port, split_host_port, BusFamily, RtuUnitUser, Seen, SerialKeys};
use crate::config::limits;
use crate::config::raw::{RawDevice, RawRtuBus, RawRtuTcpBus, RawTcpBus};
use crate::config::types::{
    Bus, BusKind, Device, DeviceKind, ModbusDevice, ModbusRtu, ModbusRtuTcp, ModbusTcp, Parity,
    TcpConnection,
};
use crate::config::units::{format_duration, rtu_min_silence};

/// The planner never needs to bridge more than one full bit request.
const MAX_GAP_LIMIT: i64 = 2000;

impl Checker {
    pub(super) fn tcp_bus(
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
                Ok((host, port)) => Some(join_host_port(&host, port.unwrap_or(ModbusTcp::DEFAULT_PORT))),
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
            ModbusTcp::DEFAULT_TIMEOUT,
        );
        let connection = match &raw.connection {
            None => Some(None),
            Some(c) => self
                .choice(
                    file,
                    c,
                    "connection",
                    &[
                        ("per_device", TcpConnection::PerDevice),
                        ("shared", TcpConnection::Shared),
                    ],
                )
                .map(Some),
        };
        let (name_span, name) = name?;
        Some((
            name_span,
            Bus {
                name,
                kind: BusKind::ModbusTcp(ModbusTcp {
                    address: address?,
                    timeout: timeout?,
                    connection: connection?,
                }),
            },
        ))
    }

    pub(super) fn rtu_tcp_bus(
        &mut self,
        file: FileId,
        item: &Item,
        what: &str,
    ) -> Option<(Option<Range<usize>>, Bus)> {
        let d = self.decode::<RawRtuTcpBus>(file, item, what, &[])?;
        let raw = &d.value;
        let name = self.require(&d, &raw.name, "name", "name = \"rs485-gw\"");
        let name = name.and_then(|n| self.name(file, n, "bus").map(|s| (span_of(n), s)));
        // Device servers listen on vendor-specific ports (4001, 8234, 502...): no default.
        let address = self
            .require(&d, &raw.address, "address", "address = \"10.0.0.9:4001\"")
            .and_then(|a| match split_host_port(a.get_ref()) {
                Ok((host, Some(port))) => Some(join_host_port(&host, port)),
                Ok((_, None)) => {
                    self.fail(file, span_of(a), format!("bus address \"{}\" has no port: a serial device server listens on the port set in its web page (often 4001, 8234 or 502): write \"host:port\"", a.get_ref()));
                    None
                }
                Err(why) => {
                    self.fail(file, span_of(a), format!("bus address \"{}\" {why}: write \"host:port\", e.g. \"10.0.0.9:4001\"", a.get_ref()));
                    None
                }
            });
        let response_timeout = self.duration_or(
            file,
            &raw.response_timeout,
            "response_timeout",
            &limits::REQUEST_TIMEOUT,
            ModbusRtuTcp::DEFAULT_RESPONSE_TIMEOUT,
        );
        let inter_request_delay = match &raw.inter_request_delay {
            None => Some(ModbusRtuTcp::DEFAULT_INTER_REQUEST_DELAY),
            Some(delay) if delay.get_ref().0 > limits::INTER_REQUEST_DELAY_MAX => {
                self.fail(file, span_of(delay), format!(
                    "`inter_request_delay` = \"{}\" is longer than {}: devices usually want 5 to 50 ms, e.g. \"20ms\"",
                    format_duration(delay.get_ref().0),
                    format_duration(limits::INTER_REQUEST_DELAY_MAX),
                ));
                None
            }
            Some(delay) => Some(delay.get_ref().0),
        };
        let (name_span, name) = name?;
        Some((
            name_span,
            Bus {
                name,
                kind: BusKind::ModbusRtuTcp(ModbusRtuTcp {
                    address: address?,
                    response_timeout: response_timeout?,
                    inter_request_delay: inter_request_delay?,
                }),
            },
        ))
    }

    pub(super) fn rtu_bus(
        &mut self,
        seen: &mut Seen,
        file: FileId,
        item: &Item,
        what: &str,
    ) -> Option<(Option<Range<usize>>, Bus)> {
        let d = self.decode::<RawRtuBus>(file, item, what, &[])?;
        let raw = &d.value;
        let name = self.require(&d, &raw.name, "name", "name = \"rs485-1\"");
        let name = name.and_then(|n| self.name(file, n, "bus").map(|s| (span_of(n), s)));
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
        let response_timeout = self.duration_or(
            file,
            &raw.response_timeout,
            "response_timeout",
            &limits::REQUEST_TIMEOUT,
            ModbusRtu::DEFAULT_RESPONSE_TIMEOUT,
        );
        let inter_request_delay = match (
            serial.baud,
            serial.data_bits,
            serial.parity,
            serial.stop_bits,
        ) {
            (Some(baud), Some(data_bits), Some(parity), Some(stop_bits)) => {
                let minimum = rtu_min_silence(baud, data_bits, parity != Parity::None, stop_bits);
                match &raw.inter_request_delay {
                    // The default must itself respect t3.5 at slow baud rates.
                    None => {
                        Some(ModbusRtu::DEFAULT_INTER_REQUEST_DELAY.max(round_up_to_ms(minimum)))
                    }
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
                    serial: serial.settings()?,
                    response_timeout: response_timeout?,
                    inter_request_delay: inter_request_delay?,
                }),
            },
        ))
    }

    /// A `[[device]]` on a Modbus bus (or on a bus that is not defined), named `what` in
    /// messages.
    pub(super) fn modbus_device(
        &mut self,
        seen: &mut Seen,
        profiles: &mut Profiles,
        file: FileId,
        item: &Item,
        what: &str,
        name_hint: Option<&str>,
    ) -> Option<Device> {
        let d = self.decode::<RawDevice>(file, item, what, &["point"]);
        // Points are checked even when the device table itself is broken.
        let problems_before_points = self.problem_count();
        let own_points: Vec<Option<LocatedPoint>> = match item_child(item, "point") {
            Some(points) => self
                .elements(file, &points, "[[device.point]]", "point")
                .iter()
                .map(|p| self.point(file, p, what, None))
                .collect(),
            None => Vec::new(),
        };
        let d = d?;
        let raw = &d.value;
        // Any problem with the points (a malformed list included) fails the device, and
        // keeps the "no points" error below from repeating it.
        let mut ok = self.problem_count() == problems_before_points;

        let name = self
            .require(&d, &raw.name, "name", "name = \"boiler\"")
            .and_then(|n| self.device_name(file, n, seen));

        let bus = self
            .require(&d, &raw.bus, "bus", "bus = \"<name of a [[bus]]>\"")
            .and_then(|b| match seen.buses.get(b.get_ref()) {
                Some(known) => Some((b.get_ref().clone(), known.kind)),
                None if seen.bus_list_unreadable => None,
                None => {
                    let mut names: Vec<&str> = seen.buses.keys().map(String::as_str).collect();
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

        // A device server's line is a serial line like any other: one unit per id.
        if let (Some((bus_name, Some(BusFamily::Rtu | BusFamily::RtuTcp))), Some(unit), Some(u)) =
            (&bus, unit, &raw.unit)
        {
            let here = self.files[file].position(u.span().start).0;
            let device = name_hint.unwrap_or("?").to_owned();
            match seen.rtu_units.get(&(bus_name.clone(), unit)) {
                Some(first) => {
                    let message = format!("unit {unit} is already the id of device \"{}\" (line {}) on RTU bus \"{bus_name}\": two devices on one serial line cannot share a unit id (both would answer, garbling the line); set the id each device is configured with", first.device, first.line);
                    self.fail(file, span_of(u), message);
                    ok = false;
                }
                None => {
                    seen.rtu_units
                        .insert((bus_name.clone(), unit), RtuUnitUser { device, line: here });
                }
            }
        }

        let max_gap = match &raw.max_gap {
            None => Some(ModbusDevice::DEFAULT_MAX_GAP),
            Some(g) => self
                .int_in(file, g, "max_gap", 0..=MAX_GAP_LIMIT, "the largest run of unwanted registers or bits read to merge two requests must be {range}")
                .map(|g| g as u16),
        };

        let offline_after = match &raw.offline_after {
            None => Some(ModbusDevice::DEFAULT_OFFLINE_AFTER),
            Some(n) => self
                .int_in(file, n, "offline_after", 1..=i64::from(ModbusDevice::MAX_OFFLINE_AFTER), "the polls in a row without an answer before the device is reported offline must be {range}")
                .map(|n| n as u32),
        };

        let profile = match &raw.profile {
            None => Some(None),
            Some(p) => self.profile(profiles, file, p).map(Some),
        };

        let default_interval = profile
            .as_ref()
            .and_then(|p| p.as_ref().and_then(|p| p.interval))
            .unwrap_or(Device::DEFAULT_INTERVAL);
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
        let profile = profile?;

        if !ok {
            return None;
        }
        let name = name?;
        if let Some(device) = &profile {
            seen.homeassistant
                .devices
                .insert(name.clone(), device.device.clone());
        }
        for p in points.iter().filter(|p| !p.ha.is_empty()) {
            seen.homeassistant
                .points
                .insert((name.clone(), p.point.name.clone()), p.ha.clone());
        }
        Some(Device {
            name,
            bus: bus?.0,
            interval: interval?,
            kind: DeviceKind::Modbus(ModbusDevice {
                unit: unit?,
                max_gap: max_gap?,
                offline_after: offline_after?,
                points: points.into_iter().map(|p| p.point).collect(),
            }),
        })
    }
}

fn round_up_to_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_micros().div_ceil(1000) as u64)
}
