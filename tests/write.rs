//! `fieldlink write`, the commissioning write: a value in engineering units goes through the
//! point's write rules and the read codec run backwards, onto a real Modbus peer (the
//! in-process sim, pymodbus for interop, RTU over a pty), and is read back. A value the rules
//! or the register refuse never reaches the device.
mod support;

use std::process::Output;
use std::time::Duration;

use serde_json::json;
use support::agent;
use support::modbus::{self, words, Bank, PyModbus, SimDevice, Write};
use support::pty::PtyPair;
use tokio_modbus::prelude::{ExceptionCode, Reader};

const HEAD: &str = "[gateway]\nid = \"gw-write\"\n[mqtt]\nhost = \"127.0.0.1\"\n";

fn tcp_config(address: &str, unit: u8, points: &str) -> String {
    format!(
        "{HEAD}[[bus]]\nname = \"lan\"\ntype = \"modbus_tcp\"\naddress = \"{address}\"\n\
         timeout = \"500ms\"\n[[device]]\nname = \"hvac\"\nbus = \"lan\"\nunit = {unit}\n{points}"
    )
}

/// Runs `fieldlink write` on `config` (written to a temp file) in a blocking thread, so the
/// in-process sims keep serving meanwhile.
async fn write(config: &str, point: &str, value: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fieldlink.toml");
    std::fs::write(&path, config).unwrap();
    let args: Vec<String> = [
        "write",
        "--config",
        path.to_str().unwrap(),
        "--device",
        "hvac",
        "--point",
        point,
        value,
    ]
    .map(str::to_owned)
    .to_vec();
    let output = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = agent::command(&args);
        cmd.env("RUST_LOG", "warn");
        let child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_with_deadline(child, Duration::from_secs(30))
    })
    .await
    .unwrap();
    drop(dir);
    output
}

fn wait_with_deadline(mut child: std::process::Child, deadline: Duration) -> Output {
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            panic!("fieldlink write did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn a_scaled_setpoint_goes_through_its_scale_and_reads_back_as_asked() {
    let dev = SimDevice::new(1);
    dev.set_registers(Bank::Holding, 10, &[200]);
    let sim = modbus::serve_tcp(&[&dev]).await;
    let config = tcp_config(
        &sim.address(),
        1,
        "[[device.point]]\nname = \"setpoint\"\naddress = \"40011\"\ntype = \"i16\"\n\
         scale = 0.1\nunit = \"°C\"\nwritable = true\nmin = 5.0\nmax = 30.0\n",
    );
    let out = write(&config, "setpoint", "21.5").await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("function 6 at holding 10: 00D7") && shown.contains("confirmed"),
        "{shown}"
    );
    assert!(shown.contains("= 21.5 °C"), "{shown}");
    assert_eq!(
        dev.writes(),
        [Write::Registers {
            start: 10,
            words: vec![215]
        }]
    );
}

#[tokio::test]
async fn a_value_the_rules_or_the_register_refuse_never_reaches_the_device() {
    let dev = SimDevice::new(1);
    dev.set_registers(Bank::Holding, 0, &[0, 0, 0, 0]);
    let sim = modbus::serve_tcp(&[&dev]).await;
    let config = tcp_config(
        &sim.address(),
        1,
        "[[device.point]]\nname = \"setpoint\"\naddress = \"40001\"\ntype = \"i16\"\n\
         scale = 0.1\nwritable = true\nmin = 5.0\nmax = 30.0\n\
         [[device.point]]\nname = \"gain\"\naddress = \"40002\"\ntype = \"f32\"\nwritable = true\n\
         [[device.point]]\nname = \"state_word\"\naddress = \"40004\"\ntype = \"u16\"\n",
    );
    for (point, value, why) in [
        ("state_word", "1", "not writable: set writable = true"),
        ("setpoint", "30.5", "above the point's max = 30"),
        ("setpoint", "4", "below the point's min = 5"),
        ("setpoint", "21.55", "not a whole number of steps of 0.1"),
        ("setpoint", "true", "takes a number, not true"),
        ("gain", "0.123456789", "would read back as 0.12345679"),
        (
            "gain",
            "{\"value\":1,\"expire\":5}",
            "does not know: \"expire\"",
        ),
    ] {
        let out = write(&config, point, value).await;
        let shown = text(&out);
        assert!(!out.status.success(), "{point} = {value}: {shown}");
        assert!(
            shown.contains("not written") && shown.contains(why),
            "{point} = {value}: expected {why:?} in {shown}"
        );
    }
    assert_eq!(sim.connections(), 0, "no refused value opened a connection");
    assert!(dev.writes().is_empty());
}

#[tokio::test]
async fn a_device_that_refuses_the_write_is_named_with_its_exception_and_still_read_back() {
    let dev = SimDevice::new(4);
    dev.set_registers(Bank::Holding, 7, &[100]);
    dev.refuse_writes(Some(ExceptionCode::IllegalDataValue));
    let sim = modbus::serve_tcp(&[&dev]).await;
    let config = tcp_config(
        &sim.address(),
        4,
        "[[device.point]]\nname = \"limit\"\naddress = \"40008\"\ntype = \"u16\"\nwritable = true\n",
    );
    let out = write(&config, "limit", "250").await;
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains("exception 3"), "{shown}");
    assert!(
        shown.contains("= 100"),
        "the read-back shows what the device holds: {shown}"
    );
}

#[tokio::test]
async fn a_coil_is_switched_on_an_rtu_line_over_a_pty() {
    let pty = PtyPair::start();
    let relay = SimDevice::new(2);
    relay.set_bits(Bank::Coil, 4, &[false]);
    let other = SimDevice::new(3);
    let _sim = modbus::serve_rtu(&pty.sim, 19200, &[&relay, &other]);
    let config = format!(
        "{HEAD}[[bus]]\nname = \"rs485\"\ntype = \"modbus_rtu\"\npath = \"{}\"\nbaud = 19200\n\
         [[device]]\nname = \"hvac\"\nbus = \"rs485\"\nunit = 2\n\
         [[device.point]]\nname = \"fan\"\ntable = \"coil\"\naddress = 4\nwritable = true\n",
        pty.agent.display()
    );
    let out = write(&config, "fan", "ON").await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("function 5 at coil 4: 1"), "{shown}");
    assert_eq!(
        relay.writes(),
        [Write::Coils {
            start: 4,
            bits: vec![true]
        }]
    );
    assert!(other.writes().is_empty());
}

#[tokio::test]
async fn a_register_behind_a_serial_device_server_is_written_with_rtu_frames_over_tcp() {
    let dev = SimDevice::new(7);
    dev.set_registers(Bank::Holding, 3, &[0, 0]);
    let sim = modbus::serve_rtu_tcp(&[&dev]).await;
    let config = format!(
        "{HEAD}[[bus]]\nname = \"gw\"\ntype = \"modbus_rtu_tcp\"\naddress = \"{}\"\n\
         [[device]]\nname = \"hvac\"\nbus = \"gw\"\nunit = 7\n\
         [[device.point]]\nname = \"flow\"\naddress = \"40004\"\ntype = \"u32\"\n\
         order = \"CDAB\"\nwritable = true\n",
        sim.address()
    );
    let out = write(&config, "flow", "305419896").await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("function 16 at holding 3: 5678 1234"),
        "{shown}"
    );
    assert_eq!(dev.holding(3, 2), [0x5678, 0x1234]);
}

/// One point of the interop write: its config, the value written, and the raw value's
/// big-endian bytes.
struct Case {
    name: &'static str,
    ty: &'static str,
    order: &'static str,
    scale: f64,
    offset: f64,
    address: u16,
    value: &'static str,
    be: Vec<u8>,
}

/// The words a value occupies, laid out per word order from its big-endian bytes by index
/// tables (independent of the agent's codec).
fn laid_out(be: &[u8], order: &str) -> Vec<u16> {
    let index: Vec<usize> = match (be.len(), order) {
        (_, "ABCD") => (0..be.len()).collect(),
        (4, "CDAB") => vec![2, 3, 0, 1],
        (4, "BADC") => vec![1, 0, 3, 2],
        (4, "DCBA") => vec![3, 2, 1, 0],
        (8, "CDAB") => vec![6, 7, 4, 5, 2, 3, 0, 1],
        (8, "BADC") => vec![1, 0, 3, 2, 5, 4, 7, 6],
        (8, "DCBA") => vec![7, 6, 5, 4, 3, 2, 1, 0],
        other => panic!("{other:?}"),
    };
    let bytes: Vec<u8> = index.iter().map(|&i| be[i]).collect();
    words::u16s(&bytes)
}

#[tokio::test]
async fn every_type_and_word_order_lands_in_pymodbus_as_an_independent_encoder_lays_it_out() {
    modbus::require_pymodbus();
    let mut holding = serde_json::Map::new();
    for a in 0..40 {
        holding.insert(a.to_string(), json!(0));
    }
    let py = PyModbus::tcp(&json!({ "5": { "holding": holding, "coil": { "0": 0 } } }));
    let case = |name, ty, order, scale, offset, address, value, be: &[u8]| Case {
        name,
        ty,
        order,
        scale,
        offset,
        address,
        value,
        be: be.to_vec(),
    };
    let cases = [
        case(
            "a",
            "u16",
            "ABCD",
            1.0,
            0.0,
            0,
            "65535",
            &65535u16.to_be_bytes(),
        ),
        case(
            "b",
            "i16",
            "ABCD",
            0.5,
            -40.0,
            1,
            "-41.5",
            &(-3i16).to_be_bytes(),
        ),
        case(
            "c",
            "u32",
            "CDAB",
            1.0,
            0.0,
            2,
            "4000000000",
            &4_000_000_000u32.to_be_bytes(),
        ),
        case(
            "d",
            "i32",
            "DCBA",
            0.01,
            0.0,
            4,
            "-1234.56",
            &(-123_456i32).to_be_bytes(),
        ),
        case(
            "e",
            "f32",
            "ABCD",
            1.0,
            0.0,
            6,
            "21.5",
            &21.5f32.to_be_bytes(),
        ),
        case(
            "f",
            "f32",
            "CDAB",
            1.0,
            0.0,
            8,
            "-273.15",
            &(-273.15f32).to_be_bytes(),
        ),
        case(
            "g",
            "f64",
            "BADC",
            1.0,
            0.0,
            10,
            "6.02214076e23",
            &6.02214076e23f64.to_be_bytes(),
        ),
        case(
            "h",
            "i64",
            "DCBA",
            1.0,
            0.0,
            14,
            "-9000000000000",
            &(-9_000_000_000_000i64).to_be_bytes(),
        ),
        case(
            "i",
            "u64",
            "CDAB",
            1.0,
            0.0,
            18,
            "18446744073709551615",
            &u64::MAX.to_be_bytes(),
        ),
    ];
    let mut points = String::new();
    for Case {
        name,
        ty,
        order,
        scale,
        offset,
        address,
        ..
    } in &cases
    {
        points.push_str(&format!(
            "[[device.point]]\nname = \"{name}\"\ntable = \"holding\"\naddress = {address}\n\
             type = \"{ty}\"\norder = \"{order}\"\nscale = {scale:?}\noffset = {offset:?}\n\
             writable = true\n"
        ));
    }
    points.push_str(
        "[[device.point]]\nname = \"relay\"\ntable = \"coil\"\naddress = 0\nwritable = true\n\
         write_function = \"multiple\"\n",
    );
    let config = tcp_config(&py.address(), 5, &points);
    for Case { name, value, .. } in &cases {
        let out = write(&config, name, value).await;
        assert!(out.status.success(), "{name} = {value}: {}", text(&out));
    }
    let out = write(&config, "relay", "true").await;
    assert!(out.status.success(), "relay: {}", text(&out));

    let mut ctx = tokio_modbus::client::tcp::connect_slave(
        py.address().parse().unwrap(),
        tokio_modbus::Slave(5),
    )
    .await
    .unwrap();
    let held = ctx.read_holding_registers(0, 22).await.unwrap().unwrap();
    for Case {
        name,
        order,
        address,
        value,
        be,
        ..
    } in &cases
    {
        let width = be.len() / 2;
        let at = usize::from(*address);
        assert_eq!(
            held[at..at + width],
            laid_out(be, order)[..],
            "{name} = {value} ({order})"
        );
    }
    assert!(ctx.read_coils(0, 1).await.unwrap().unwrap()[0]);
}
