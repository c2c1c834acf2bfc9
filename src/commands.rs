//! What each subcommand does, in terms of the library: load the config, then run the agent,
//! print a check report, poll once, or start the demo. Printing for humans lives here.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::{
    self, BusKind, Config, Device, DeviceKind, Extract, LineValueKind, ModbusDevice,
    SerialLineDevice,
};
use crate::poll::{LineEvent, LineReadReport, ModbusReadReport, ReadReport};

/// Exit code for a config that does not validate (distinct from runtime failures).
const EXIT_BAD_CONFIG: u8 = 2;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // One thread: every task is I/O-bound, and on a Pi a single-threaded runtime keeps RSS
    // and wake-ups low. Blocking work (disk) goes through spawn_blocking.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    config::load(path).map_err(|errors| {
        eprint!("{errors}");
        eprintln!(
            "fieldlink: {} problem(s) in the configuration; nothing was started",
            errors.0.len()
        );
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    crate::footprint::one_arena();
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    crate::logging::init(&config.log.level)?;
    runtime()?.block_on(async {
        let signals = crate::signals::agent()?;
        crate::app::run(config, signals.stop, Some(signals.reload)).await
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    print!("{}", describe(&config));
    println!("{}: OK", path.display());
    Ok(ExitCode::SUCCESS)
}

/// The human summary `fieldlink check` prints: what will be polled, and how.
pub fn describe(config: &Config) -> String {
    let mut out = String::new();
    let m = &config.mqtt;
    let _ = writeln!(
        out,
        "gateway {}: {} {}{} as {:?}, prefix {:?}, keep-alive {:?}, qos {}, payload {}",
        config.gateway.id,
        if m.servers.len() > 1 {
            "brokers (failover, in order)"
        } else {
            "broker"
        },
        m.servers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        if m.tls.is_some() { " (TLS)" } else { "" },
        m.client_id,
        m.prefix,
        m.keep_alive,
        m.qos,
        m.payload.word()
    );
    let writable: Vec<String> = config
        .devices
        .iter()
        .filter_map(|d| d.modbus().map(|m| (d, m)))
        .flat_map(|(d, m)| {
            m.points
                .iter()
                .filter(|p| p.write.is_some())
                .map(move |p| format!("{}/{}", d.name, p.name))
        })
        .collect();
    if !writable.is_empty() {
        let _ = writeln!(
            out,
            "commands: {} writable point(s) ({}), on {}/<device>/<point>/set, command_max_age {:?}",
            writable.len(),
            writable.join(", "),
            m.prefix,
            m.command_max_age
        );
    }
    for bus in &config.buses {
        let what = match &bus.kind {
            BusKind::ModbusTcp(t) => {
                let devices = config.devices.iter().filter(|d| d.bus == bus.name).count();
                format!(
                    "Modbus TCP {} (timeout {:?}, {})",
                    t.address,
                    t.timeout,
                    match t.connection_for(devices) {
                        config::TcpConnection::Shared => "one shared connection",
                        config::TcpConnection::PerDevice => "one connection per device",
                    }
                )
            }
            BusKind::ModbusRtuTcp(t) => format!(
                "Modbus RTU over TCP {} (response timeout {:?}, inter-request delay {:?})",
                t.address, t.response_timeout, t.inter_request_delay
            ),
            BusKind::ModbusRtu(r) => format!(
                "Modbus RTU {} {} {}{}{} (response timeout {:?}, inter-request delay {:?})",
                r.serial.path.display(),
                r.serial.baud,
                r.serial.data_bits,
                match r.serial.parity {
                    config::Parity::None => 'N',
                    config::Parity::Even => 'E',
                    config::Parity::Odd => 'O',
                },
                r.serial.stop_bits,
                r.response_timeout,
                r.inter_request_delay
            ),
            BusKind::SerialLine(l) => format!(
                "serial line {} {} baud, lines end in {:?}, at most {} bytes",
                l.serial.path.display(),
                l.serial.baud,
                String::from_utf8_lossy(&l.terminator),
                l.max_line
            ),
        };
        let _ = writeln!(out, "bus {}: {what}", bus.name);
        for device in config.devices_on(&bus.name) {
            match &device.kind {
                DeviceKind::Modbus(modbus) => describe_modbus_device(&mut out, device, modbus),
                DeviceKind::SerialLine(line) => describe_line_device(&mut out, device, line),
            }
        }
    }
    describe_homeassistant(&mut out, config);
    out
}

/// With discovery on: the entities Home Assistant gets, one line per point, with the
/// classes and unit it is told (nothing when discovery is off).
fn describe_homeassistant(out: &mut String, config: &Config) {
    let ha = &config.homeassistant;
    if !ha.enabled {
        return;
    }
    let configs = crate::homeassistant::discovery_configs(config);
    let _ = writeln!(
        out,
        "home assistant discovery: {} configs under {}/<component>/{}/ (retained, QoS {}), birth on {}/status",
        configs.len(),
        ha.discovery_prefix,
        config.gateway.id,
        config.mqtt.qos,
        ha.discovery_prefix
    );
    for device in &config.devices {
        let profile = ha.devices.get(&device.name);
        let _ = writeln!(
            out,
            "  device {}{}",
            device.name,
            profile
                .and_then(|p| p.model.as_deref())
                .map(|m| format!(" (model {m:?})"))
                .unwrap_or_default()
        );
        let points: Vec<(&str, config::HaEntity, Option<&str>)> = match &device.kind {
            DeviceKind::Modbus(m) => m
                .points
                .iter()
                .map(|p| (p.name.as_str(), p.ha_entity(), p.unit.as_deref()))
                .collect(),
            DeviceKind::SerialLine(l) => l
                .points
                .iter()
                .map(|p| (p.name.as_str(), p.ha_entity(), p.unit.as_deref()))
                .collect(),
        };
        let none = config::HaPoint::default();
        for (point, entity, unit) in points {
            let hints = ha
                .points
                .get(&(device.name.clone(), point.to_owned()))
                .unwrap_or(&none);
            let (class, state) = config::ha_classes::classes(entity, hints, unit);
            let mut facts: Vec<String> = Vec::new();
            if let Some(u) = unit {
                facts.push(format!("unit {}", config::ha_classes::ha_unit(u)));
            }
            if let Some(c) = class {
                facts.push(format!("device_class {c}"));
            }
            if let Some(c) = state {
                facts.push(format!("state_class {c}"));
            }
            let _ = writeln!(
                out,
                "    {}.{}{}",
                entity.component(),
                crate::homeassistant::slug(&format!("{}_{point}", device.name)),
                if facts.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", facts.join(", "))
                }
            );
        }
    }
}

/// A Modbus device as `check` shows it: its settings, its points, and the reads `run` makes.
fn describe_modbus_device(out: &mut String, device: &Device, modbus: &ModbusDevice) {
    let _ = writeln!(
        out,
        "  device {} (unit {}, every {:?}, {} points, offline after {} polls without an answer)",
        device.name,
        modbus.unit,
        device.interval,
        modbus.points.len(),
        modbus.offline_after
    );
    for p in &modbus.points {
        let _ = writeln!(
            out,
            "    point {:<24} {:?} {:>5} {:?} {:?}{}{}",
            p.name,
            p.table,
            p.address,
            p.data_type,
            p.order,
            describe_scaling(p.scale, p.offset, p.unit.as_deref()),
            p.interval
                .map(|i| format!(" every {i:?}"))
                .unwrap_or_default()
        );
    }
    // The groups `run` polls: each interval on its own, never merged across.
    for group in crate::poll::describe_plan(device) {
        let _ = writeln!(out, "    every {:?}:", group.interval);
        for r in &group.requests {
            let names: Vec<&str> = r
                .points
                .iter()
                .map(|&p| modbus.points[p].name.as_str())
                .collect();
            let _ = writeln!(out, "      {}: {}", describe_read(r), names.join(", "));
        }
    }
}

/// A serial_line device as `check` shows it: how it is read and where each point is found.
fn describe_line_device(out: &mut String, device: &Device, line: &SerialLineDevice) {
    let how = match &line.query {
        Some(q) => format!(
            "asked {:?} every {:?}, answer within {:?}",
            String::from_utf8_lossy(&q.bytes),
            device.interval,
            q.response_timeout
        ),
        None => "streaming".to_owned(),
    };
    let _ = writeln!(
        out,
        "  device {} ({how}{}{}, offline after {:?} without a good line)",
        device.name,
        line.filter
            .as_ref()
            .map(|f| format!(", lines matching {:?}", f.as_str()))
            .unwrap_or_default(),
        line.checksum
            .map(|c| format!(", checksum {c:?}"))
            .unwrap_or_default(),
        line.stale_after
    );
    for p in &line.points {
        let place = match &p.extract {
            Extract::Regex { regex, capture } => {
                format!("capture {capture:?} of {:?}", regex.as_str())
            }
            Extract::Field { delimiter, index } => format!("field {index} split at {delimiter:?}"),
        };
        let kind = match p.kind {
            LineValueKind::Number => "number",
            LineValueKind::Integer => "integer",
            LineValueKind::String => "string",
        };
        let _ = writeln!(
            out,
            "    point {:<24} {kind} from {place}{}",
            p.name,
            describe_scaling(p.scale, p.offset, p.unit.as_deref())
        );
    }
}

/// ` x0.1 +-40 [°C]`: a point's scaling (when it has one) and unit, as `check` shows both
/// kinds of point.
fn describe_scaling(scale: f64, offset: f64, unit: Option<&str>) -> String {
    let mut text = String::new();
    if scale != 1.0 || offset != 0.0 {
        let _ = write!(text, " x{scale} +{offset}");
    }
    if let Some(unit) = unit {
        let _ = write!(text, " [{unit}]");
    }
    text
}

/// `read Holding 0..9 (10 registers)`: one request as `check` and `read` show it.
fn describe_read(r: &crate::poll::ReadRequest) -> String {
    format!(
        "read {:?} {}..{} ({} {})",
        r.table,
        r.start,
        u32::from(r.start) + u32::from(r.count) - 1,
        r.count,
        if r.table.is_bits() {
            "bits"
        } else {
            "registers"
        }
    )
}

/// The device named on the command line, and its bus.
fn device_and_bus<'c>(
    config: &'c Config,
    path: &Path,
    device_name: &str,
) -> anyhow::Result<(&'c crate::config::Device, &'c crate::config::Bus)> {
    let Some(device) = config.device(device_name) else {
        let names: Vec<_> = config.devices.iter().map(|d| d.name.as_str()).collect();
        anyhow::bail!(
            "no device {device_name:?} in {}; devices: {}",
            path.display(),
            names.join(", ")
        );
    };
    let bus = config
        .bus(&device.bus)
        .context("validated config names a missing bus")?;
    Ok((device, bus))
}

pub fn read(path: &Path, device_name: &str) -> anyhow::Result<ExitCode> {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    crate::logging::init(&config.log.level)?;
    let (device, bus) = device_and_bus(&config, path, device_name)?;
    let report = runtime()?.block_on(crate::poll::read_once(bus, device))?;
    let text = format_read_report(&report);
    match &report {
        ReadReport::Modbus(modbus) => {
            print!("{text}");
            Ok(if modbus.points.iter().all(|p| p.value.is_ok()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        ReadReport::SerialLine(line) if line.lines() == 0 => anyhow::bail!(
            "{text}no line for device {:?} arrived on {}: check the baud rate and wiring{}",
            line.device,
            line.path.display(),
            if line.filtered {
                ", and that the filter matches what the sensor sends"
            } else {
                ""
            }
        ),
        ReadReport::SerialLine(_) => {
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What `fieldlink read` prints for either kind of device.
pub fn format_read_report(report: &ReadReport) -> String {
    match report {
        ReadReport::Modbus(r) => format_modbus_read(r),
        ReadReport::SerialLine(r) => format_line_read(r),
    }
}

/// The commissioning table of a Modbus device: raw words per request, then each point
/// decoded, so an integrator can compare against the device's manual (byte order, scale) at
/// a glance.
fn format_modbus_read(report: &ModbusReadReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "device {}:", report.device);
    for (i, r) in report.requests.iter().enumerate() {
        let _ = write!(
            out,
            "  request {i} (every {:?}): {} in {:.1} ms: ",
            r.interval,
            describe_read(&r.request),
            r.elapsed.as_secs_f64() * 1000.0
        );
        match &r.outcome {
            Ok(raw) => {
                let _ = writeln!(out, "{}", format_raw(raw));
            }
            Err(crate::poll::RequestFailure::Exception(e))
                if *e == crate::poll::ExceptionCode::IllegalDataAddress
                    && r.request.points.len() > 1 =>
            {
                let _ = writeln!(
                    out,
                    "refused as a whole (exception 2): read point by point below, as run does"
                );
            }
            Err(e) => {
                let _ = writeln!(out, "FAILED: {e}");
            }
        }
    }
    let _ = writeln!(
        out,
        "  {:<24} {:>24}  {:<8} request",
        "point", "value", "unit"
    );
    for p in &report.points {
        let value = match &p.value {
            Ok(v) => format_value(v),
            Err(e) => format!("BAD: {e}"),
        };
        let _ = writeln!(
            out,
            "  {:<24} {:>24}  {:<8} {}",
            p.name,
            value,
            p.unit.as_deref().unwrap_or(""),
            p.request
        );
    }
    out
}

/// A serial_line sensor's lines as they came, each with the points extracted from it.
fn format_line_read(report: &LineReadReport) -> String {
    let mut out = String::new();
    for event in &report.events {
        match event {
            LineEvent::NotText => {
                let _ = writeln!(
                    out,
                    "  (skipped a line that is not text: wrong baud rate or noise?)"
                );
            }
            LineEvent::Overlong { max_line } => {
                let _ = writeln!(
                    out,
                    "  (skipped a line longer than max_line = {max_line} bytes)"
                );
            }
            LineEvent::BadChecksum { error, text } => {
                let _ = writeln!(out, "  (skipped, {error}: {text})");
            }
            LineEvent::Silent { n, wait } => {
                let _ = writeln!(
                    out,
                    "line {n}: nothing for {} within {wait:?}",
                    report.device
                );
            }
            LineEvent::Line { n, text, points } => {
                let _ = writeln!(out, "line {n}: {text}");
                for point in points {
                    match &point.value {
                        Ok(value) => {
                            let unit = unit_suffix(point.unit.as_deref());
                            let _ = writeln!(
                                out,
                                "  {:<20} = {}{unit}",
                                point.name,
                                format_value(value)
                            );
                        }
                        Err(e) => {
                            let _ = writeln!(out, "  {:<20}   no value: {e}", point.name);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Registers as hex words, bits as 0/1: how the commissioning reports show raw data.
fn format_raw(raw: &crate::poll::RawData) -> String {
    match raw {
        crate::poll::RawData::Registers(words) => words
            .iter()
            .map(|w| format!("{w:04X}"))
            .collect::<Vec<_>>()
            .join(" "),
        crate::poll::RawData::Bits(bits) => {
            bits.iter().map(|&b| if b { '1' } else { '0' }).collect()
        }
    }
}

/// " V" for a point with a unit, "" without.
fn unit_suffix(unit: Option<&str>) -> String {
    unit.map(|u| format!(" {u}")).unwrap_or_default()
}

fn format_value(v: &crate::model::Value) -> String {
    use crate::model::Value;
    match v {
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => format!("{f}"),
        Value::Text(t) => format!("{t:?}"),
    }
}

pub fn buffer_stats(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let stats = crate::buffer::stats(&config.buffer.path)?;
    println!("buffer {}:", config.buffer.path.display());
    println!("{stats}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "demo")]
pub fn demo(seconds: Option<u64>) -> anyhow::Result<ExitCode> {
    // The demo prints messages itself; keep the agent's log to warnings so they stand out.
    crate::logging::init("warn,rumqttd=off")?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(crate::demo::run(seconds))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "demo"))]
pub fn demo(_seconds: Option<u64>) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "this build of fieldlink leaves the demo out (cargo feature `demo`); \
         run `cargo run --release -- demo` from the source tree"
    )
}

/// `fieldlink write`: checks `value` against the point's write rules (exactly as a command
/// from MQTT is checked), writes it once, reads the point back and prints both, raw and
/// decoded. Succeeds when the device confirmed the write and holds the value asked.
pub fn write(
    path: &Path,
    device_name: &str,
    point_name: &str,
    value: &str,
) -> anyhow::Result<ExitCode> {
    use crate::writes::{gate, payload};
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    crate::logging::init(&config.log.level)?;
    let (device, bus) = device_and_bus(&config, path, device_name)?;
    let Some(modbus) = device.modbus() else {
        anyhow::bail!(
            "device {device_name:?} is a serial_line sensor: only Modbus holding registers and \
             coils can be written"
        );
    };
    let Some(point) = modbus.points.iter().find(|p| p.name == point_name) else {
        let names: Vec<_> = modbus.points.iter().map(|p| p.name.as_str()).collect();
        anyhow::bail!(
            "device {device_name:?} has no point {point_name:?}; points: {}",
            names.join(", ")
        );
    };
    let command =
        payload::parse(value.as_bytes()).map_err(|e| anyhow::anyhow!("not written: {e}"))?;
    let clocks = gate::Clocks {
        wall_ms: crate::model::unix_ms_now(),
        now: std::time::Instant::now(),
    };
    let admitted = gate::admit(
        point,
        command,
        crate::config::Mqtt::DEFAULT_COMMAND_MAX_AGE,
        None,
        clocks,
    )
    .map_err(|refusal| anyhow::anyhow!("not written: {refusal}"))?;
    let report = runtime()?.block_on(crate::poll::modbus::write::write_once(
        bus,
        device,
        point,
        &admitted.encoded,
    ))?;
    let (text, holds_request) = format_write_report(
        device_name,
        modbus.unit,
        point,
        &admitted.requested,
        &report,
    );
    print!("{text}");
    Ok(if report.written.is_ok() && holds_request {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The write and its read-back, raw and decoded; and whether the device holds `requested`.
fn format_write_report(
    device: &str,
    unit: u8,
    point: &crate::config::Point,
    requested: &crate::model::Value,
    report: &crate::poll::modbus::write::WriteReport,
) -> (String, bool) {
    use crate::poll::modbus::write::{describe_write, read_back_request};
    let mut out = String::new();
    let unit_of = unit_suffix(point.unit.as_deref());
    let _ = writeln!(
        out,
        "device {device} (unit {unit}), point {}: writing {}{unit_of}",
        point.name,
        format_value(requested)
    );
    let _ = write!(
        out,
        "  {} in {:.1} ms: ",
        describe_write(&report.request),
        report.write_time.as_secs_f64() * 1000.0
    );
    match &report.written {
        Ok(()) => {
            let _ = writeln!(out, "confirmed");
        }
        Err(why) => {
            let _ = writeln!(out, "{why}");
        }
    }
    let Some(back) = &report.read_back else {
        let _ = writeln!(out, "  no read-back: the device is unreachable");
        return (out, false);
    };
    let _ = write!(out, "  {}: ", describe_read(&read_back_request(point)));
    match &back.raw {
        Ok(raw) => {
            let _ = write!(out, "{}", format_raw(raw));
        }
        Err(why) => {
            let _ = write!(out, "{why}");
        }
    }
    let holds = match &back.value {
        Ok(value) => {
            let _ = writeln!(out, " = {}{unit_of}", format_value(value));
            same_value(value, requested)
        }
        Err(why) => {
            let _ = writeln!(out, " ({why})");
            false
        }
    };
    if report.written.is_ok() && !holds && back.value.is_ok() {
        let _ = writeln!(
            out,
            "  the device confirmed the write but holds another value: it may clamp or round \
             it, or something else wrote it since"
        );
    }
    (out, holds)
}

/// Equal as published: numbers by value (a scaled write reads back as a float).
fn same_value(a: &crate::model::Value, b: &crate::model::Value) -> bool {
    use crate::model::Value;
    let number = |v: &Value| match v {
        Value::Int(i) => Some(*i as f64),
        Value::UInt(u) => Some(*u as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    };
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()),
        _ => a == b,
    }
}
