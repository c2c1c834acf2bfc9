//! The config loader against files: every shipped config and profile loads, every good
//! fixture loads, and every bad fixture fails with exactly the errors it announces.
//!
//! A bad fixture (tests/fixtures/config/err/*.toml) announces each expected error in a
//! comment of its own:
//!     # expect: LINE:COL: part of the message
//!     # expect: profiles/broken.toml:LINE:COL: part of the message
//! The second form locates an error in another file (a profile), relative to the fixture's
//! folder. The load must fail with exactly these errors: no more, no fewer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fieldlink::config::{
    self, BusKind, DataType, Device, ModbusDevice, Parity, PayloadMode, Table, WordOrder,
    WriteFunction, WriteSettings,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tomls_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .toml files in {}", dir.display());
    files
}

/// The Modbus settings of a device the test knows is a Modbus device.
fn modbus(device: &Device) -> &ModbusDevice {
    device
        .modbus()
        .unwrap_or_else(|| panic!("{} should be a Modbus device", device.name))
}

fn load_ok(path: &Path) -> config::Config {
    config::load(path).unwrap_or_else(|e| panic!("{} should load, but:\n{e}", path.display()))
}

#[derive(Debug)]
struct Expected {
    file: PathBuf,
    line: usize,
    column: usize,
    text: String,
}

fn expectations(fixture: &Path) -> Vec<Expected> {
    // Lossy: a fixture may be deliberately not UTF-8 (its `# expect:` lines are).
    let text = String::from_utf8_lossy(&std::fs::read(fixture).unwrap()).into_owned();
    let dir = fixture.parent().unwrap();
    text.lines()
        .filter_map(|line| line.trim_start().strip_prefix("# expect:"))
        .map(|spec| {
            let mut parts: Vec<&str> = spec.trim().splitn(4, ':').collect();
            let file = if parts[0].trim().parse::<usize>().is_ok() {
                fixture.to_path_buf()
            } else {
                dir.join(parts.remove(0).trim())
            };
            let bad = || format!("malformed expectation in {}: {spec}", fixture.display());
            let line = parts[0]
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{}", bad()));
            let column = parts
                .get(1)
                .and_then(|c| c.trim().parse().ok())
                .unwrap_or_else(|| panic!("{}", bad()));
            let text = parts
                .get(2..)
                .map(|rest| rest.join(":").trim().to_owned())
                .unwrap_or_else(|| panic!("{}", bad()));
            Expected {
                file,
                line,
                column,
                text,
            }
        })
        .collect()
}

#[test]
fn every_bad_fixture_fails_with_exactly_the_errors_it_announces() {
    let mut failures = Vec::new();
    let fixtures = tomls_in(&repo().join("tests/fixtures/config/err"));
    assert!(fixtures.len() >= 15, "only {} bad fixtures", fixtures.len());
    for fixture in fixtures {
        let expected = expectations(&fixture);
        assert!(
            !expected.is_empty(),
            "{} announces no `# expect:` error",
            fixture.display()
        );
        let errors = match config::load(&fixture) {
            Ok(_) => {
                failures.push(format!("{}: loaded, but should fail", fixture.display()));
                continue;
            }
            Err(errors) => errors,
        };
        let shown = errors.to_string();
        if shown.lines().count() != errors.0.len() {
            failures.push(format!(
                "{}: {} errors shown on {} lines (one each expected):\n{shown}",
                fixture.display(),
                errors.0.len(),
                shown.lines().count()
            ));
        }
        let mut unmatched: Vec<_> = errors.0.iter().collect();
        for want in &expected {
            let found = unmatched.iter().position(|e| {
                e.file == want.file
                    && e.line == want.line
                    && e.column == want.column
                    && e.message.contains(&want.text)
            });
            match found {
                Some(i) => {
                    unmatched.remove(i);
                }
                None => failures.push(format!(
                    "{}: expected {}:{}:{}: {:?}, not among:\n{errors}",
                    fixture.display(),
                    want.file.display(),
                    want.line,
                    want.column,
                    want.text
                )),
            }
        }
        for extra in unmatched {
            failures.push(format!(
                "{}: unexpected error {}:{}:{}: {}",
                fixture.display(),
                extra.file.display(),
                extra.line,
                extra.column,
                extra.message
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_good_fixture_loads() {
    for fixture in tomls_in(&repo().join("tests/fixtures/config/ok")) {
        load_ok(&fixture);
    }
}

#[test]
fn every_shipped_config_loads() {
    let mut files = tomls_in(&repo().join("config"));
    files.extend(tomls_in(&repo().join("config/examples")));
    for file in files {
        let config = load_ok(&file);
        assert!(
            !config.devices.is_empty(),
            "{} has no device",
            file.display()
        );
    }
}

#[test]
fn every_shipped_profile_loads_in_a_device() {
    let profiles = repo().join("config/profiles");
    let dir = tempfile::tempdir().unwrap();
    for profile in tomls_in(&profiles) {
        let name = profile.file_stem().unwrap().to_str().unwrap();
        let path = dir.path().join(format!("uses-{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "profile_dirs = [{dirs:?}]\n\
                 [gateway]\nid = \"t\"\n[mqtt]\nurl = \"mqtt://localhost\"\n\
                 [[bus]]\nname = \"line\"\ntype = \"modbus_rtu\"\npath = \"/dev/ttyUSB0\"\n\
                 [[device]]\nname = \"d\"\nbus = \"line\"\nunit = 1\nprofile = \"{name}\"\n",
                dirs = profiles.display().to_string()
            ),
        )
        .unwrap();
        let config = load_ok(&path);
        assert!(
            !modbus(&config.devices[0]).points.is_empty(),
            "profile {name} brought no points"
        );
    }
}

#[test]
fn the_demo_config_has_the_points_the_demo_serves() {
    let config = load_ok(&repo().join("config/demo.toml"));
    assert_eq!(config.gateway.id, "demo");
    assert_eq!(config.mqtt.prefix, "fieldlink/demo");
    assert_eq!(config.mqtt.client_id, "fieldlink-demo");
    let BusKind::ModbusTcp(tcp) = &config.buses[0].kind else {
        panic!("the demo bus should be Modbus TCP");
    };
    assert_eq!(tcp.address, "127.0.0.1:1502");
    let boiler = config.device("boiler").unwrap();
    let point = |name: &str| {
        modbus(boiler)
            .points
            .iter()
            .find(|p| p.name == name)
            .unwrap()
    };
    assert_eq!(point("pressure").order, WordOrder::Cdab);
    assert_eq!(point("pressure").data_type, DataType::F32);
    assert_eq!(point("temperature").scale, 0.1);
    assert_eq!(point("running").table, Table::Coil);
    assert_eq!(point("serial").data_type, DataType::String { registers: 8 });
}

#[test]
fn the_default_spill_threshold_holds_two_rounds_of_a_large_map_in_memory() {
    let map = |devices: usize, points: usize, extra: &str| {
        let mut text = format!(
            "[gateway]\nid = \"gw\"\n[mqtt]\nhost = \"b\"\n{extra}\
             [[bus]]\nname = \"t\"\ntype = \"modbus_tcp\"\naddress = \"10.0.0.2:502\"\n"
        );
        for d in 0..devices {
            text.push_str(&format!(
                "[[device]]\nname = \"m{d}\"\nbus = \"t\"\nunit = 1\n"
            ));
            for p in 0..points {
                text.push_str(&format!(
                    "[[device.point]]\nname = \"p{p}\"\naddress = \"{}\"\ntype = \"u16\"\n",
                    40001 + p
                ));
            }
        }
        config::load_str(Path::new("/nowhere/map.toml"), &text).unwrap()
    };
    assert_eq!(map(5, 24, "").buffer.spill_threshold, 1000);
    // 50 x 40 polled in one second: 2 000 readings queued at once must not go to disk.
    assert_eq!(map(50, 40, "").buffer.spill_threshold, 4000);
    let set = map(50, 40, "[buffer]\nspill_threshold = 500\n");
    assert_eq!(set.buffer.spill_threshold, 500, "the file wins");
}

#[test]
fn defaults_fill_every_optional_key() {
    let config = config::load_str(
        Path::new("/nowhere/min.toml"),
        "[gateway]\nid = \"gw-7\"\n[mqtt]\nhost = \"broker\"\n\
         [[bus]]\nname = \"rtu\"\ntype = \"modbus_rtu\"\npath = \"/dev/ttyS0\"\n\
         [[device]]\nname = \"m\"\nbus = \"rtu\"\nunit = 3\n\
         [[device.point]]\nname = \"v\"\naddress = \"40001\"\ntype = \"u16\"\n",
    )
    .unwrap();
    let mqtt = &config.mqtt;
    assert_eq!((mqtt.host.as_str(), mqtt.port), ("broker", 1883));
    assert_eq!(mqtt.client_id, "fieldlink-gw-7");
    assert_eq!(mqtt.keep_alive, Duration::from_secs(15));
    assert_eq!(mqtt.qos, 1);
    assert_eq!(mqtt.prefix, "fieldlink/gw-7");
    assert!(mqtt.tls.is_none());
    assert_eq!(mqtt.connect_timeout, Duration::from_secs(20));
    assert_eq!(mqtt.backoff_initial, Duration::from_secs(1));
    assert_eq!(mqtt.backoff_max, Duration::from_secs(60));
    assert_eq!(mqtt.payload, PayloadMode::Json);
    assert_eq!(mqtt.queue_capacity, 100_000);
    assert_eq!(config.log.level, "info");
    let BusKind::ModbusRtu(rtu) = &config.buses[0].kind else {
        panic!("expected an RTU bus");
    };
    assert_eq!(rtu.serial.baud, 9600);
    assert_eq!(rtu.serial.data_bits, 8);
    assert_eq!(rtu.serial.parity, Parity::None);
    assert_eq!(rtu.serial.stop_bits, 1);
    assert_eq!(rtu.response_timeout, Duration::from_millis(500));
    assert_eq!(rtu.inter_request_delay, Duration::from_millis(20));
    let device = &config.devices[0];
    assert_eq!(device.interval, Duration::from_secs(5));
    assert_eq!(modbus(device).max_gap, 8);
    assert_eq!(modbus(device).offline_after, 3);
    let point = &modbus(device).points[0];
    assert_eq!((point.table, point.address), (Table::Holding, 0));
    assert_eq!(point.order, WordOrder::Abcd);
    assert_eq!((point.scale, point.offset), (1.0, 0.0));
    assert_eq!((point.unit.as_ref(), point.interval), (None, None));
    assert_eq!(
        point.write, None,
        "points are read-only unless they say writable = true"
    );
}

#[test]
fn a_writable_point_gets_its_rules_and_the_function_its_width_needs() {
    let config = config::load_str(
        Path::new("/nowhere/writes.toml"),
        "[gateway]\nid = \"gw\"\n[mqtt]\nhost = \"broker\"\n\
         [[bus]]\nname = \"lan\"\ntype = \"modbus_tcp\"\naddress = \"10.0.0.5\"\n\
         [[device]]\nname = \"hvac\"\nbus = \"lan\"\nunit = 1\n\
         [[device.point]]\nname = \"setpoint\"\naddress = \"40001\"\ntype = \"i16\"\n\
         scale = 0.1\nwritable = true\nmin = 5.0\nmax = 30.0\n\
         [[device.point]]\nname = \"limit\"\naddress = \"40003\"\ntype = \"f32\"\n\
         writable = true\nmin_write_interval = \"10s\"\n\
         [[device.point]]\nname = \"relay\"\ntable = \"coil\"\naddress = 4\n\
         writable = true\nwrite_function = \"multiple\"\n",
    )
    .unwrap();
    let points = &modbus(&config.devices[0]).points;
    let rules = |name: &str| {
        points
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.write.clone())
            .unwrap()
    };
    assert_eq!(
        rules("setpoint"),
        WriteSettings {
            min: Some(5.0),
            max: Some(30.0),
            function: WriteFunction::Single,
            min_write_interval: WriteSettings::DEFAULT_MIN_WRITE_INTERVAL,
        }
    );
    let limit = rules("limit");
    assert_eq!(
        limit.function,
        WriteFunction::Multiple,
        "two registers need function 16"
    );
    assert_eq!(limit.min_write_interval, Duration::from_secs(10));
    assert_eq!(rules("relay").function, WriteFunction::Multiple);
}

#[test]
fn the_default_rtu_delay_stretches_to_t3_5_at_slow_baud_rates() {
    let config = config::load_str(
        Path::new("/nowhere/slow.toml"),
        "[gateway]\nid = \"g\"\n[mqtt]\nhost = \"b\"\n\
         [[bus]]\nname = \"slow\"\ntype = \"modbus_rtu\"\npath = \"/dev/ttyS0\"\nbaud = 1200\nparity = \"even\"\n",
    )
    .unwrap();
    let BusKind::ModbusRtu(rtu) = &config.buses[0].kind else {
        panic!("expected an RTU bus");
    };
    // 1200 baud 8E1: 11 bits per character, 3.5 characters = 32.08 ms.
    assert_eq!(rtu.inter_request_delay, Duration::from_millis(33));
}

#[test]
fn mqtts_urls_turn_tls_on_with_the_tls_port() {
    let config = config::load_str(
        Path::new("/nowhere/tls.toml"),
        "[gateway]\nid = \"g\"\n[mqtt]\nurl = \"mqtts://broker.example.com\"\n",
    )
    .unwrap();
    assert_eq!(config.mqtt.port, 8883);
    let tls = config.mqtt.tls.expect("TLS should be on");
    assert!(tls.ca_file.is_none() && tls.client_cert.is_none());
}

#[test]
fn the_sdm120_profile_maps_the_manufacturers_registers() {
    let config = load_ok(&repo().join("config/examples/rs485-meters.toml"));
    let meter = config.device("main-meter").unwrap();
    let point = |name: &str| {
        modbus(meter)
            .points
            .iter()
            .find(|p| p.name == name)
            .unwrap()
    };
    assert_eq!(
        (point("voltage").table, point("voltage").address),
        (Table::Input, 0)
    );
    assert_eq!(point("frequency").address, 70);
    assert_eq!(point("total_active_energy").address, 342);
    assert!(modbus(meter)
        .points
        .iter()
        .all(|p| p.data_type == DataType::F32));
    assert_eq!(
        meter.interval,
        Duration::from_secs(10),
        "the profile's interval"
    );
    let climate = config.device("cabinet-climate").unwrap();
    assert_eq!(
        climate.interval,
        Duration::from_secs(30),
        "the device's own interval wins"
    );
    assert_eq!(modbus(climate).points[0].address, 1);
    assert_eq!(modbus(climate).points[0].data_type, DataType::I16);
}

#[test]
fn device_points_are_added_after_the_profile_points() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("extra.toml");
    std::fs::write(
        &path,
        format!(
            "profile_dirs = [{:?}]\n[gateway]\nid = \"g\"\n[mqtt]\nhost = \"b\"\n\
             [[bus]]\nname = \"l\"\ntype = \"modbus_rtu\"\npath = \"/dev/ttyS0\"\n\
             [[device]]\nname = \"th\"\nbus = \"l\"\nunit = 1\nprofile = \"xy-md02\"\n\
             [[device.point]]\nname = \"address_setting\"\naddress = \"400258\"\ntype = \"u16\"\n",
            repo().join("config/profiles").display().to_string()
        ),
    )
    .unwrap();
    let config = load_ok(&path);
    let names: Vec<&str> = modbus(&config.devices[0])
        .points
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["temperature", "humidity", "address_setting"]);
    assert_eq!(modbus(&config.devices[0]).points[2].address, 0x0101);
}

#[test]
fn errors_display_one_file_line_column_sentence_per_line() {
    let errors = config::load_str(
        Path::new("site.toml"),
        "[gateway]\nid = \"g\"\n[mqtt]\nhost = \"b\"\nqos = 2\nkeep_alive = 15\n",
    )
    .unwrap_err();
    let shown = errors.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2, "{shown}");
    assert!(lines[0].starts_with("site.toml:5:7: `qos` = 2"), "{shown}");
    assert!(lines[1].starts_with("site.toml:6:14: "), "{shown}");
    assert!(lines[1].contains("\"15s\""), "{shown}");
}

#[test]
fn an_unreadable_file_is_reported_without_a_position() {
    let errors = config::load(Path::new("/nonexistent/fieldlink.toml")).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    assert_eq!(errors.0[0].line, 0);
    assert!(errors
        .to_string()
        .starts_with("/nonexistent/fieldlink.toml: cannot read"));
}

/// A config with two Modbus RTU buses on `first` and `second`.
fn two_rtu_buses(first: &Path, second: &Path) -> String {
    format!(
        "[gateway]\nid = \"g\"\n[mqtt]\nhost = \"b\"\n\
         [[bus]]\nname = \"by-id\"\ntype = \"modbus_rtu\"\npath = {:?}\n\
         [[bus]]\nname = \"by-number\"\ntype = \"modbus_rtu\"\npath = {:?}\n",
        first.display().to_string(),
        second.display().to_string()
    )
}

#[test]
fn two_buses_on_one_port_through_a_by_id_symlink_are_refused_naming_the_port() {
    let dev = tempfile::tempdir().unwrap();
    let port = dev.path().join("ttyUSB0");
    std::fs::write(&port, "").unwrap();
    let by_id = dev
        .path()
        .join("usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0");
    std::os::unix::fs::symlink(&port, &by_id).unwrap();

    let errors = config::load_str(
        Path::new("/nowhere/site.toml"),
        &two_rtu_buses(&by_id, &port),
    )
    .unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    let e = &errors.0[0];
    assert_eq!((e.line, e.column), (12, 8), "{errors}");
    let resolved = std::fs::canonicalize(&port).unwrap();
    assert!(
        e.message.contains("is already the port of bus \"by-id\"")
            && e.message
                .contains(&format!("both lead to {}", resolved.display())),
        "{errors}"
    );

    // Two different ports behind two links are fine.
    let other = dev.path().join("ttyUSB1");
    std::fs::write(&other, "").unwrap();
    config::load_str(
        Path::new("/nowhere/site.toml"),
        &two_rtu_buses(&by_id, &other),
    )
    .unwrap_or_else(|e| panic!("two ports should load:\n{e}"));
}

#[test]
fn a_profile_that_is_not_utf8_is_reported_in_the_profile_at_the_bad_byte() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("profiles")).unwrap();
    let mut profile = b"description = \"Chaudi".to_vec();
    profile.push(0xE8); // "è" in ISO-8859-1
    profile
        .extend_from_slice(b"re\"\n[[point]]\nname = \"t\"\naddress = \"40001\"\ntype = \"u16\"\n");
    std::fs::write(dir.path().join("profiles/boiler.toml"), profile).unwrap();
    let path = dir.path().join("site.toml");
    std::fs::write(
        &path,
        "[gateway]\nid = \"g\"\n[mqtt]\nhost = \"b\"\n\
         [[bus]]\nname = \"lan\"\ntype = \"modbus_tcp\"\naddress = \"10.0.0.5\"\n\
         [[device]]\nname = \"boiler\"\nbus = \"lan\"\nunit = 1\nprofile = \"boiler\"\n",
    )
    .unwrap();
    let errors = config::load(&path).unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    let e = &errors.0[0];
    assert_eq!(e.file, dir.path().join("profiles/boiler.toml"), "{errors}");
    assert_eq!((e.line, e.column), (1, 22), "{errors}");
    assert!(
        e.message
            .starts_with("byte 0xE8 (\"è\" in ISO-8859-1) is not UTF-8"),
        "{errors}"
    );
}

#[test]
fn a_binary_file_is_refused_in_a_few_lines_not_one_per_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fieldlink.toml");
    std::fs::write(&path, vec![0xFFu8; 5000]).unwrap();
    let errors = config::load(&path).unwrap_err();
    assert_eq!(errors.0.len(), 11, "{errors}");
    assert!(
        errors.0[10].message.contains("more byte sequences"),
        "{errors}"
    );
}

/// The reserved names are exactly the topic levels the uplink publishes under `<prefix>/` and
/// `<prefix>/<device>/`: a new topic there must be added to the list, or devices and points
/// could be named like it.
#[test]
fn the_reserved_names_cover_every_topic_level_the_gateway_publishes() {
    use fieldlink::uplink::topic;
    let reserved_devices: Vec<&str> = config::RESERVED_DEVICE_NAMES
        .iter()
        .map(|(n, _)| *n)
        .collect();
    let reserved_points: Vec<&str> = config::RESERVED_POINT_NAMES
        .iter()
        .map(|(n, _)| *n)
        .collect();
    for gateway_topic in [topic::gateway_status_topic("P"), topic::health_topic("P")] {
        let level = gateway_topic.strip_prefix("P/").unwrap();
        assert!(
            reserved_devices.contains(&level),
            "{gateway_topic}: {level} is not reserved for devices"
        );
    }
    for device_topic in [
        topic::device_status_topic("P", "D"),
        topic::device_meta_topic("P", "D"),
    ] {
        let level = device_topic.strip_prefix("P/D/").unwrap();
        assert!(
            reserved_points.contains(&level),
            "{device_topic}: {level} is not reserved for points"
        );
    }
    // The command topics to come.
    assert!(reserved_devices.contains(&"set") && reserved_points.contains(&"set"));
}

#[test]
fn a_config_file_name_with_a_newline_still_gives_one_line_per_error() {
    let errors = config::load_str(Path::new("site\n.toml"), "[gateway]\nid = \"\"\n").unwrap_err();
    let shown = errors.to_string();
    assert_eq!(shown.lines().count(), errors.0.len(), "{shown}");
    assert!(shown.starts_with("site\\n.toml:"), "{shown}");
}

// ------------------------------------------------------------------ golden plans

/// A config that puts the shipped profile `name` on one RTU device, as an integrator would.
fn profile_on_a_device(name: &str) -> String {
    format!(
        "[gateway]\nid = \"golden\"\n[mqtt]\nurl = \"mqtt://localhost\"\n\
         [[bus]]\nname = \"rs485\"\ntype = \"modbus_rtu\"\npath = \"/dev/ttyUSB0\"\n\
         [[device]]\nname = \"{name}\"\nbus = \"rs485\"\nunit = 1\nprofile = \"{name}\"\n"
    )
}

/// Every shipped config and profile, with the name of its golden plan.
fn shipped_plans() -> Vec<(String, config::Config)> {
    let mut plans = Vec::new();
    let mut files = tomls_in(&repo().join("config"));
    files.extend(tomls_in(&repo().join("config/examples")));
    for file in files {
        let folder = file
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy();
        let stem = file.file_stem().unwrap().to_string_lossy();
        let name = if folder == "config" {
            stem.into_owned()
        } else {
            format!("{folder}-{stem}")
        };
        plans.push((name, load_ok(&file)));
    }
    for profile in tomls_in(&repo().join("config/profiles")) {
        let stem = profile.file_stem().unwrap().to_string_lossy().into_owned();
        // Loaded as if it sat in config/, so the profile is found in config/profiles/.
        let config = config::load_str(
            &repo().join("config/golden.toml"),
            &profile_on_a_device(&stem),
        )
        .unwrap_or_else(|e| panic!("profile {stem} on a device should load, but:\n{e}"));
        plans.push((format!("profile-{stem}"), config));
    }
    plans
}

/// `fieldlink check` prints, for every shipped config and profile, exactly the plan checked
/// in under tests/fixtures/plans/ (devices, points and the reads `run` makes per interval
/// group). A change to planning, validation defaults or the printout shows up here as a
/// diff to review; `FIELDLINK_BLESS=1 cargo test --test config` rewrites the files.
#[test]
fn check_prints_the_golden_plan_of_every_shipped_config_and_profile() {
    let dir = repo().join("tests/fixtures/plans");
    let bless = std::env::var_os("FIELDLINK_BLESS").is_some();
    let mut differ = Vec::new();
    let mut expected_files = Vec::new();
    for (name, config) in shipped_plans() {
        let printed = fieldlink::commands::describe(&config);
        let path = dir.join(format!("{name}.txt"));
        expected_files.push(path.clone());
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &printed).unwrap();
            continue;
        }
        let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "no golden plan {} ({e}): run FIELDLINK_BLESS=1 cargo test --test config, review and commit it",
                path.display()
            )
        });
        if printed != golden {
            let first = printed
                .lines()
                .zip(golden.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(printed.lines().count().min(golden.lines().count()));
            differ.push(format!(
                "{}: first difference at line {}:\n  golden:  {:?}\n  printed: {:?}",
                path.display(),
                first + 1,
                golden.lines().nth(first).unwrap_or("<end>"),
                printed.lines().nth(first).unwrap_or("<end>"),
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "check prints another plan than the golden one (if the change is meant, rewrite them \
         with FIELDLINK_BLESS=1 cargo test --test config and review the diff):\n{}",
        differ.join("\n")
    );
    let mut stale: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !expected_files.contains(p))
        .collect();
    stale.sort();
    assert!(
        stale.is_empty(),
        "golden plans of configs or profiles that are no longer shipped: {stale:?}"
    );
}

// ------------------------------------------------------------------ one source for defaults

/// The value `config/fieldlink.toml` shows for `key`, commented out or not: on the first line
/// after `anchor` that sets it (without its trailing comment).
fn shown_in_annotated_config(anchor: &str, key: &str) -> String {
    let text = std::fs::read_to_string(repo().join("config/fieldlink.toml")).unwrap();
    let from = text
        .find(anchor)
        .unwrap_or_else(|| panic!("config/fieldlink.toml has no {anchor:?}"));
    text[from..]
        .lines()
        .find_map(|line| {
            let line = line.trim_start_matches('#').trim_start();
            let rest = line.strip_prefix(key)?.trim_start().strip_prefix('=')?;
            Some(rest.split(" #").next().unwrap().trim().to_owned())
        })
        .unwrap_or_else(|| panic!("config/fieldlink.toml shows no `{key}` after {anchor:?}"))
}

/// The defaults have one source: the constants on the config types, which the validator
/// fills in, are the values the annotated `config/fieldlink.toml` shows.
#[test]
fn the_annotated_config_shows_the_defaults_the_types_name() {
    use config::units::{parse_duration, parse_size};
    use config::{
        Buffer, LineQuery, Log, ModbusRtu, ModbusRtuTcp, ModbusTcp, Mqtt, ReportByException,
        SerialLine, SerialSettings, WriteSettings,
    };
    // Durations are compared as values: "60s" and "1m" are the same default.
    let duration = |d: Duration| format!("= {d:?}");
    let expected: Vec<(&str, &str, String)> = vec![
        ("[mqtt]", "port", Mqtt::DEFAULT_PORT.to_string()),
        ("[mqtt]", "keep_alive", duration(Mqtt::DEFAULT_KEEP_ALIVE)),
        ("[mqtt]", "qos", Mqtt::DEFAULT_QOS.to_string()),
        ("[mqtt]", "payload", "\"json\"".into()),
        (
            "[mqtt]",
            "max_interval",
            duration(ReportByException::DEFAULT_MAX_INTERVAL),
        ),
        (
            "[mqtt]",
            "connect_timeout",
            duration(Mqtt::DEFAULT_CONNECT_TIMEOUT),
        ),
        (
            "[mqtt]",
            "backoff_initial",
            duration(Mqtt::DEFAULT_BACKOFF_INITIAL),
        ),
        ("[mqtt]", "backoff_max", duration(Mqtt::DEFAULT_BACKOFF_MAX)),
        (
            "[mqtt]",
            "queue_capacity",
            Mqtt::DEFAULT_QUEUE_CAPACITY.to_string(),
        ),
        (
            "# [buffer]",
            "commit_interval",
            duration(Buffer::DEFAULT_COMMIT_INTERVAL),
        ),
        ("# [buffer]", "max_age", duration(Buffer::DEFAULT_MAX_AGE)),
        (
            "# [buffer]",
            "spill_threshold",
            Buffer::DEFAULT_SPILL_THRESHOLD.to_string(),
        ),
        ("[log]", "level", format!("{:?}", Log::DEFAULT_LEVEL)),
        (
            "# [homeassistant]",
            "discovery_prefix",
            format!("{:?}", config::HomeAssistant::DEFAULT_DISCOVERY_PREFIX),
        ),
        (
            "type = \"modbus_tcp\"",
            "timeout",
            duration(ModbusTcp::DEFAULT_TIMEOUT),
        ),
        (
            "type = \"modbus_rtu\"",
            "baud",
            SerialSettings::DEFAULT_BAUD.to_string(),
        ),
        (
            "type = \"modbus_rtu\"",
            "data_bits",
            SerialSettings::DEFAULT_DATA_BITS.to_string(),
        ),
        ("type = \"modbus_rtu\"", "parity", "\"none\"".into()),
        (
            "type = \"modbus_rtu\"",
            "stop_bits",
            SerialSettings::DEFAULT_STOP_BITS.to_string(),
        ),
        (
            "type = \"modbus_rtu\"",
            "response_timeout",
            duration(ModbusRtu::DEFAULT_RESPONSE_TIMEOUT),
        ),
        (
            "type = \"modbus_rtu\"",
            "inter_request_delay",
            duration(ModbusRtu::DEFAULT_INTER_REQUEST_DELAY),
        ),
        (
            "type = \"modbus_rtu_tcp\"",
            "response_timeout",
            duration(ModbusRtuTcp::DEFAULT_RESPONSE_TIMEOUT),
        ),
        (
            "type = \"modbus_rtu_tcp\"",
            "inter_request_delay",
            duration(ModbusRtuTcp::DEFAULT_INTER_REQUEST_DELAY),
        ),
        (
            "# writable = true",
            "min_write_interval",
            duration(WriteSettings::DEFAULT_MIN_WRITE_INTERVAL),
        ),
        (
            "type = \"serial_line\"",
            "max_line",
            SerialLine::DEFAULT_MAX_LINE.to_string(),
        ),
        (
            "name = \"example-plc\"",
            "interval",
            duration(config::Device::DEFAULT_INTERVAL),
        ),
        (
            "name = \"example-plc\"",
            "max_gap",
            ModbusDevice::DEFAULT_MAX_GAP.to_string(),
        ),
        (
            "name = \"example-plc\"",
            "offline_after",
            ModbusDevice::DEFAULT_OFFLINE_AFTER.to_string(),
        ),
        (
            "query = ",
            "response_timeout",
            duration(LineQuery::DEFAULT_RESPONSE_TIMEOUT),
        ),
    ];
    for (anchor, key, value) in expected {
        let shown = shown_in_annotated_config(anchor, key);
        let shown = match value.strip_prefix("= ") {
            Some(_) => match parse_duration(shown.trim_matches('"')) {
                Ok(d) => format!("= {d:?}"),
                Err(e) => panic!("`{key}` = {shown} in config/fieldlink.toml: {e}"),
            },
            None => shown,
        };
        assert_eq!(
            shown, value,
            "config/fieldlink.toml shows another default for `{key}` (after {anchor:?}) than the \
             constant the validator uses"
        );
    }
    // Written in the file's own units, so compared as values.
    assert_eq!(
        parse_size(shown_in_annotated_config("# [buffer]", "max_size").trim_matches('"')),
        Ok(Buffer::DEFAULT_MAX_SIZE)
    );
    assert_eq!(
        shown_in_annotated_config("type = \"serial_line\"", "terminator"),
        format!(
            "'{}'",
            String::from_utf8_lossy(SerialLine::DEFAULT_TERMINATOR).escape_default()
        )
    );
    let stale = shown_in_annotated_config("# bus = \"gps\"", "stale_after");
    let interval = shown_in_annotated_config("# bus = \"gps\"", "interval");
    let parse = |text: &str| parse_duration(text.trim_matches('"')).unwrap();
    assert_eq!(
        parse(&stale),
        parse(&interval) * config::SerialLineDevice::DEFAULT_STALE_AFTER_INTERVALS,
        "stale_after is shown at its default for the interval shown"
    );
}
