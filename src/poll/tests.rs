//! Poller against real peers: the in-process tokio-modbus servers of `sim`, over TCP on a
//! kernel-picked port and over RTU on a real pseudo-terminal pair. Every wait has a deadline.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_modbus::ExceptionCode;
use tokio_serial::{SerialPort, SerialStream};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::{
    DataType, ModbusRtu, ModbusTcp, Parity, Point, SerialSettings, Table, WordOrder,
};
use crate::model::{Sample, SampleSink, Value};
use crate::sim::{self, serve_rtu, serve_tcp, to_words, Behaviour, SimDevice};

#[derive(Default)]
struct Recorder {
    samples: Mutex<Vec<Sample>>,
}

impl SampleSink for Recorder {
    fn send(&self, sample: Sample) {
        self.samples.lock().unwrap().push(sample);
    }
}

impl Recorder {
    fn values(&self, device: &str, point: &str) -> Vec<Value> {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| match s {
                Sample::Reading(r) if &*r.device == device && &*r.point == point => {
                    Some(r.value.clone())
                }
                _ => None,
            })
            .collect()
    }

    fn count(&self, device: &str, point: &str) -> usize {
        self.values(device, point).len()
    }

    fn availability(&self, device: &str) -> Vec<bool> {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| match s {
                Sample::DeviceAvailability { device: d, online } if &**d == device => Some(*online),
                _ => None,
            })
            .collect()
    }
}

async fn wait_until<T>(what: &str, deadline: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn point(name: &str, table: Table, address: u16, data_type: DataType) -> Point {
    Point {
        name: name.into(),
        table,
        address,
        data_type,
        order: WordOrder::Abcd,
        scale: 1.0,
        offset: 0.0,
        unit: None,
        interval: None,
    }
}

fn device(name: &str, bus: &str, unit: u8, interval_ms: u64, points: Vec<Point>) -> Device {
    Device {
        name: name.into(),
        bus: bus.into(),
        unit,
        interval: Duration::from_millis(interval_ms),
        max_gap: 0,
        points,
        serial_line: None,
    }
}

fn tcp_bus(address: std::net::SocketAddr) -> Bus {
    Bus {
        name: "tcp0".into(),
        kind: BusKind::ModbusTcp(ModbusTcp {
            address: address.to_string(),
            timeout: Duration::from_millis(200),
        }),
    }
}

fn rtu_bus(path: PathBuf) -> Bus {
    Bus {
        name: "rtu0".into(),
        kind: BusKind::ModbusRtu(ModbusRtu {
            serial: SerialSettings {
                path,
                baud: 19200,
                data_bits: 8,
                parity: Parity::Even,
                stop_bits: 1,
            },
            response_timeout: Duration::from_millis(100),
            inter_request_delay: Duration::from_millis(5),
        }),
    }
}

/// A pty pair: the sim serves the master; the agent opens the slave by path. The returned
/// slave stream only keeps the slave side alive (the agent opens its own fd).
fn pty_line() -> (SerialStream, SerialStream, PathBuf) {
    let (master, slave) = SerialStream::pair().expect("pty pair");
    let path = PathBuf::from(slave.name().expect("pty slave has a path"));
    (master, slave, path)
}

struct Running {
    sink: Arc<Recorder>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    fn start(bus: Bus, devices: Vec<Device>) -> Self {
        let sink = Arc::new(Recorder::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_bus(
            bus,
            devices,
            sink.clone(),
            crate::health::Health::new(),
            cancel.clone(),
        ));
        Running { sink, cancel, task }
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("run_bus returns promptly when cancelled")
            .unwrap();
    }
}

/// A unit with one point of every kind, values known exactly.
fn rich_device() -> (Arc<SimDevice>, Vec<Point>, Vec<(&'static str, Value)>) {
    let dev = SimDevice::new(1);
    dev.with_banks(|b| {
        b.set_holding(0, &to_words(&(-1.25f32).to_be_bytes(), WordOrder::Cdab));
        b.set_input(0, &to_words(&(-123i16).to_be_bytes(), WordOrder::Abcd));
        b.set_input(
            1,
            &to_words(&4_000_000_000u32.to_be_bytes(), WordOrder::Abcd),
        );
        b.set_holding(10, &to_words(&u64::MAX.to_be_bytes(), WordOrder::Dcba));
        b.set_holding(20, &sim::string_words("SN-42", 4));
        b.set_coil(0, true);
        b.set_discrete(3, false);
    });
    let mut pressure = point("pressure", Table::Holding, 0, DataType::F32);
    pressure.order = WordOrder::Cdab;
    let mut temperature = point("temperature", Table::Input, 0, DataType::I16);
    temperature.scale = 0.1;
    let mut big = point("big", Table::Holding, 10, DataType::U64);
    big.order = WordOrder::Dcba;
    let points = vec![
        pressure,
        temperature,
        point("energy", Table::Input, 1, DataType::U32),
        big,
        point(
            "serial",
            Table::Holding,
            20,
            DataType::String { registers: 4 },
        ),
        point("running", Table::Coil, 0, DataType::Bool),
        point("alarm", Table::Discrete, 3, DataType::Bool),
    ];
    let expected = vec![
        ("pressure", Value::Float(-1.25)),
        ("temperature", Value::Float(-123.0 * 0.1)),
        ("energy", Value::Int(4_000_000_000)),
        ("big", Value::UInt(u64::MAX)),
        ("serial", Value::Text("SN-42".into())),
        ("running", Value::Bool(true)),
        ("alarm", Value::Bool(false)),
    ];
    (dev, points, expected)
}

async fn assert_values_arrive(sink: &Recorder, device: &str, expected: &[(&str, Value)]) {
    for (name, want) in expected {
        let got = wait_until(
            &format!("a reading of {name}"),
            Duration::from_secs(5),
            || sink.values(device, name).first().cloned(),
        )
        .await;
        assert_eq!(&got, want, "{name}");
    }
}

#[tokio::test]
async fn tcp_readings_arrive_with_the_right_values_and_the_device_online() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bus = tcp_bus(listener.local_addr().unwrap());
    let (dev, points, expected) = rich_device();
    let server = serve_tcp(listener, vec![dev]);
    let run = Running::start(bus, vec![device("boiler", "tcp0", 1, 100, points)]);

    assert_values_arrive(&run.sink, "boiler", &expected).await;
    assert_eq!(run.sink.availability("boiler"), vec![true]);
    run.stop().await;
    server.abort();
}

#[tokio::test]
async fn the_demo_boiler_decodes_with_the_demo_point_map() {
    use sim::demo_map::*;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bus = tcp_bus(listener.local_addr().unwrap());
    let server = serve_tcp(listener, vec![sim::demo_boiler(1)]);
    let mut pressure = point("pressure", Table::Holding, PRESSURE, DataType::F32);
    pressure.order = WordOrder::Cdab;
    let mut temperature = point("temperature", Table::Input, TEMPERATURE, DataType::I16);
    temperature.scale = 0.1;
    let points = vec![
        pressure,
        temperature,
        point("energy", Table::Input, ENERGY, DataType::U32),
        point("runtime_s", Table::Holding, RUNTIME, DataType::U32),
        point("running", Table::Coil, RUNNING, DataType::Bool),
        point(
            "serial",
            Table::Holding,
            SERIAL,
            DataType::String {
                registers: SERIAL_REGISTERS,
            },
        ),
    ];
    let mut demo = device("boiler", "tcp0", 1, 100, points);
    demo.max_gap = 10;
    let report = read_once(&bus, &demo).await.unwrap();
    let value = |name: &str| {
        report
            .points
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.value.clone().ok())
            .unwrap_or_else(|| panic!("{name} read"))
    };
    assert!(matches!(value("pressure"), Value::Float(p) if (1.3..1.7).contains(&p)));
    assert!(matches!(value("temperature"), Value::Float(t) if (55.0..70.0).contains(&t)));
    assert!(matches!(value("energy"), Value::Int(e) if e >= 1_250_000));
    assert!(matches!(value("runtime_s"), Value::Int(r) if r >= 2_592_000));
    assert!(matches!(value("running"), Value::Bool(_)));
    assert_eq!(value("serial"), Value::Text(SERIAL_NUMBER.into()));
    // The boiler maps its gaps, so max_gap 10 reads coil 0, input 0-2 and holding 0-27.
    assert_eq!(report.requests.len(), 3);
    server.abort();
}

#[tokio::test]
async fn a_merged_read_refused_across_unmapped_registers_falls_back_to_single_point_reads() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bus = tcp_bus(listener.local_addr().unwrap());
    let dev = SimDevice::new(3);
    // Registers 1..=4 are not mapped: a read of 0..=5 is refused as a whole.
    dev.with_banks(|b| {
        b.set_holding(0, &[11]);
        b.set_holding(5, &[55]);
    });
    let server = serve_tcp(listener, vec![dev.clone()]);
    let mut meter = device(
        "meter",
        "tcp0",
        3,
        50,
        vec![
            point("a", Table::Holding, 0, DataType::U16),
            point("b", Table::Holding, 5, DataType::U16),
        ],
    );
    meter.max_gap = 8;
    let run = Running::start(bus, vec![meter]);

    wait_until("readings of both points", Duration::from_secs(5), || {
        (run.sink.count("meter", "a") >= 3 && run.sink.count("meter", "b") >= 3).then_some(())
    })
    .await;
    assert!(run
        .sink
        .values("meter", "a")
        .iter()
        .all(|v| *v == Value::Int(11)));
    assert!(run
        .sink
        .values("meter", "b")
        .iter()
        .all(|v| *v == Value::Int(55)));
    assert_eq!(run.sink.availability("meter"), vec![true]);
    run.stop().await;
    server.abort();
}

#[tokio::test]
async fn an_exception_marks_only_its_points_bad_and_the_device_stays_online() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bus = tcp_bus(listener.local_addr().unwrap());
    let dev = SimDevice::new(7);
    dev.with_banks(|b| b.set_holding(0, &[42]));
    let server = serve_tcp(listener, vec![dev.clone()]);
    let points = vec![
        point("good", Table::Holding, 0, DataType::U16),
        // Unmapped: the sim answers IllegalDataAddress for this request only.
        point("missing", Table::Holding, 100, DataType::U16),
    ];
    let run = Running::start(
        bus.clone(),
        vec![device("meter", "tcp0", 7, 50, points.clone())],
    );

    wait_until(
        "10 readings of the good point",
        Duration::from_secs(5),
        || (run.sink.count("meter", "good") >= 10).then_some(()),
    )
    .await;
    assert!(run
        .sink
        .values("meter", "good")
        .iter()
        .all(|v| *v == Value::Int(42)));
    assert_eq!(run.sink.count("meter", "missing"), 0);
    assert_eq!(run.sink.availability("meter"), vec![true]);
    run.stop().await;

    let report = read_once(&bus, &device("meter", "tcp0", 7, 50, points))
        .await
        .unwrap();
    assert_eq!(report.requests.len(), 2);
    assert_eq!(report.requests[0].outcome, Ok(RawData::Registers(vec![42])));
    assert_eq!(
        report.requests[1].outcome,
        Err(RequestFailure::Exception(ExceptionCode::IllegalDataAddress))
    );
    assert_eq!(report.points[0].value, Ok(Value::Int(42)));
    assert!(report.points[1]
        .value
        .as_ref()
        .unwrap_err()
        .contains("IllegalDataAddress"));
    server.abort();
}

#[tokio::test]
async fn a_silent_tcp_device_goes_offline_and_comes_back_while_its_neighbour_keeps_polling() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bus = tcp_bus(listener.local_addr().unwrap());
    let alive = SimDevice::new(1);
    alive.with_banks(|b| b.set_holding(0, &[1]));
    let mute = SimDevice::new(2);
    mute.with_banks(|b| b.set_holding(0, &[2]));
    mute.set_behaviour(Behaviour::Silent);
    let server = serve_tcp(listener, vec![alive, mute.clone()]);
    let p = || vec![point("v", Table::Holding, 0, DataType::U16)];
    let run = Running::start(
        bus,
        vec![
            device("alive", "tcp0", 1, 50, p()),
            device("mute", "tcp0", 2, 50, p()),
        ],
    );

    wait_until("mute reported offline", Duration::from_secs(5), || {
        (run.sink.availability("mute") == vec![false]).then_some(())
    })
    .await;
    let before = run.sink.count("alive", "v");
    wait_until("alive keeps polling", Duration::from_secs(5), || {
        (run.sink.count("alive", "v") >= before + 10).then_some(())
    })
    .await;
    mute.set_behaviour(Behaviour::Normal);
    wait_until("mute back online", Duration::from_secs(10), || {
        (run.sink.availability("mute") == vec![false, true]).then_some(())
    })
    .await;
    assert_eq!(run.sink.values("mute", "v").last(), Some(&Value::Int(2)));
    run.stop().await;
    server.abort();
}

#[tokio::test]
async fn a_point_with_a_longer_interval_is_polled_at_its_own_rate() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bus = tcp_bus(listener.local_addr().unwrap());
    let dev = SimDevice::new(1);
    dev.with_banks(|b| b.set_holding(0, &[1, 2]));
    let server = serve_tcp(listener, vec![dev]);
    let mut slow = point("slow", Table::Holding, 1, DataType::U16);
    slow.interval = Some(Duration::from_millis(500));
    let points = vec![point("fast", Table::Holding, 0, DataType::U16), slow];
    let run = Running::start(bus, vec![device("d", "tcp0", 1, 50, points)]);
    wait_until("40 fast readings", Duration::from_secs(10), || {
        (run.sink.count("d", "fast") >= 40).then_some(())
    })
    .await;
    let (fast, slow) = (run.sink.count("d", "fast"), run.sink.count("d", "slow"));
    assert!(slow >= 1 && slow * 4 <= fast, "fast {fast}, slow {slow}");
    assert_eq!(run.sink.values("d", "slow")[0], Value::Int(2));
    run.stop().await;
    server.abort();
}

#[tokio::test]
async fn tcp_reconnects_after_the_server_restarts() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dev = SimDevice::new(1);
    dev.with_banks(|b| b.set_holding(0, &[10]));
    let server = serve_tcp(listener, vec![dev.clone()]);
    let run = Running::start(
        tcp_bus(addr),
        vec![device(
            "plc",
            "tcp0",
            1,
            50,
            vec![point("v", Table::Holding, 0, DataType::U16)],
        )],
    );
    wait_until("first reading", Duration::from_secs(5), || {
        run.sink.values("plc", "v").first().cloned()
    })
    .await;

    server.abort();
    let _ = server.await;
    wait_until(
        "plc offline while the server is down",
        Duration::from_secs(5),
        || (run.sink.availability("plc") == vec![true, false]).then_some(()),
    )
    .await;
    dev.with_banks(|b| b.set_holding(0, &[11]));
    let listener = TcpListener::bind(addr).await.expect("rebind the same port");
    let server = serve_tcp(listener, vec![dev]);
    wait_until(
        "a reading from the restarted server",
        Duration::from_secs(10),
        || {
            run.sink
                .values("plc", "v")
                .contains(&Value::Int(11))
                .then_some(())
        },
    )
    .await;
    assert_eq!(run.sink.availability("plc"), vec![true, false, true]);
    run.stop().await;
    server.abort();
}

#[tokio::test]
async fn rtu_readings_over_a_pty_have_the_right_values() {
    let (master, _slave, path) = pty_line();
    let (dev, points, expected) = rich_device();
    let server = serve_rtu(master, vec![dev]);
    let run = Running::start(
        rtu_bus(path),
        vec![device("boiler", "rtu0", 1, 100, points)],
    );
    assert_values_arrive(&run.sink, "boiler", &expected).await;
    assert_eq!(run.sink.availability("boiler"), vec![true]);
    run.stop().await;
    server.abort();
}

/// Two same-shaped reads of the same unit (holding 0-1 and 10-11) with different values:
/// if a late answer to one were taken as the answer to the next, `a` would read `b`'s value.
#[tokio::test]
async fn rtu_never_takes_a_late_reply_as_the_answer_to_the_next_request() {
    let (master, _slave, path) = pty_line();
    let slow = SimDevice::new(3);
    slow.with_banks(|b| {
        b.set_holding(0, &to_words(&111_111u32.to_be_bytes(), WordOrder::Abcd));
        b.set_holding(10, &to_words(&222_222u32.to_be_bytes(), WordOrder::Abcd));
    });
    // Late by 1.5 response timeouts. Every 6th request is the third `b`: the cycle fails
    // there and the next request is an `a`, which must not get `b`'s late answer.
    slow.set_behaviour(Behaviour::LateEvery {
        every: 6,
        delay: Duration::from_millis(150),
    });
    let server = serve_rtu(master, vec![slow.clone()]);
    let points = vec![
        point("a", Table::Holding, 0, DataType::U32),
        point("b", Table::Holding, 10, DataType::U32),
    ];
    let run = Running::start(rtu_bus(path), vec![device("slow", "rtu0", 3, 20, points)]);

    wait_until("10 readings of each point", Duration::from_secs(30), || {
        (run.sink.count("slow", "a") >= 10 && run.sink.count("slow", "b") >= 10).then_some(())
    })
    .await;
    // At least four late answers went by.
    assert!(slow.requests() >= 24, "{} requests", slow.requests());
    let a = run.sink.values("slow", "a");
    let b = run.sink.values("slow", "b");
    assert!(a.iter().all(|v| *v == Value::Int(111_111)), "a: {a:?}");
    assert!(b.iter().all(|v| *v == Value::Int(222_222)), "b: {b:?}");
    run.stop().await;
    server.abort();
}

/// Time for `point` of `device` to gain `n` more readings.
async fn time_for_readings(sink: &Recorder, device: &str, point: &str, n: usize) -> Duration {
    let start = Instant::now();
    let from = sink.count(device, point);
    wait_until(
        &format!("{n} readings of {device}"),
        Duration::from_secs(30),
        || (sink.count(device, point) >= from + n).then_some(()),
    )
    .await;
    start.elapsed()
}

#[tokio::test]
async fn a_silent_rtu_device_does_not_slow_its_neighbour_on_the_line() {
    let (master, _slave, path) = pty_line();
    let healthy = SimDevice::new(1);
    healthy.with_banks(|b| b.set_holding(0, &[5]));
    let dead = SimDevice::new(2);
    dead.with_banks(|b| b.set_holding(0, &[6]));
    let server = serve_rtu(master, vec![healthy, dead.clone()]);
    let p = || vec![point("v", Table::Holding, 0, DataType::U16)];
    let run = Running::start(
        rtu_bus(path),
        vec![
            device("healthy", "rtu0", 1, 50, p()),
            device("dead", "rtu0", 2, 50, p()),
        ],
    );
    wait_until("both online", Duration::from_secs(5), || {
        (run.sink.availability("dead") == vec![true]).then_some(())
    })
    .await;
    let baseline = time_for_readings(&run.sink, "healthy", "v", 30).await;

    dead.set_behaviour(Behaviour::Silent);
    wait_until("dead reported offline", Duration::from_secs(5), || {
        (run.sink.availability("dead") == vec![true, false]).then_some(())
    })
    .await;
    let probes_before = dead.requests();
    let degraded = time_for_readings(&run.sink, "healthy", "v", 30).await;
    let probes = dead.requests() - probes_before;

    // Without backoff every 50 ms cycle of `dead` would cost a 100 ms timeout plus the
    // settle time, cutting `healthy` to well under half its rate.
    assert!(
        degraded.as_secs_f64() < baseline.as_secs_f64() * 1.5,
        "healthy slowed from {baseline:?} to {degraded:?} for 30 readings"
    );
    // Probed a handful of times (backoff 1 s, 2 s, ...), not every cycle.
    assert!(probes <= 4, "dead probed {probes} times in {degraded:?}");
    assert_eq!(run.sink.values("healthy", "v").last(), Some(&Value::Int(5)));
    run.stop().await;
    server.abort();
}

#[tokio::test]
async fn rtu_garbage_and_bad_crc_fail_the_device_not_the_line() {
    for fault in [Behaviour::BadCrc, Behaviour::Garbage] {
        let (master, _slave, path) = pty_line();
        let good = SimDevice::new(1);
        good.with_banks(|b| b.set_holding(0, &[100, 101]));
        let noisy = SimDevice::new(2);
        noisy.with_banks(|b| b.set_holding(0, &[200, 201]));
        noisy.set_behaviour(fault);
        let server = serve_rtu(master, vec![good, noisy.clone()]);
        let p = || vec![point("v", Table::Holding, 0, DataType::U32)];
        let run = Running::start(
            rtu_bus(path),
            vec![
                device("good", "rtu0", 1, 30, p()),
                device("noisy", "rtu0", 2, 30, p()),
            ],
        );
        wait_until("noisy offline", Duration::from_secs(5), || {
            (run.sink.availability("noisy") == vec![false]).then_some(())
        })
        .await;
        let before = run.sink.count("good", "v");
        wait_until("good keeps reading", Duration::from_secs(5), || {
            (run.sink.count("good", "v") >= before + 10).then_some(())
        })
        .await;
        noisy.set_behaviour(Behaviour::Normal);
        wait_until("noisy back online", Duration::from_secs(10), || {
            (run.sink.availability("noisy") == vec![false, true]).then_some(())
        })
        .await;
        let good_values = run.sink.values("good", "v");
        assert!(
            good_values
                .iter()
                .all(|v| *v == Value::Int((100 << 16) | 101)),
            "{fault:?}: {good_values:?}"
        );
        assert!(run
            .sink
            .values("noisy", "v")
            .iter()
            .all(|v| *v == Value::Int((200 << 16) | 201)));
        run.stop().await;
        server.abort();
    }
}

#[tokio::test]
async fn a_serial_port_that_does_not_exist_is_retried_without_crashing() {
    let path = PathBuf::from("/dev/serial/by-id/usb-fieldlink-test-does-not-exist-if00");
    let bus = rtu_bus(path.clone());
    let dev = device(
        "meter",
        "rtu0",
        1,
        50,
        vec![point("v", Table::Holding, 0, DataType::U16)],
    );

    match read_once(&bus, &dev).await {
        Err(ReadOnceError::Unreachable(message)) => {
            assert!(message.contains(path.to_str().unwrap()), "{message}");
            assert!(message.contains("/dev/serial/by-id"), "{message}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }

    let run = Running::start(bus, vec![dev]);
    wait_until("meter offline", Duration::from_secs(5), || {
        (run.sink.availability("meter") == vec![false]).then_some(())
    })
    .await;
    assert!(!run.task.is_finished(), "run_bus must keep retrying");
    run.stop().await;
}

#[tokio::test]
async fn read_once_refuses_a_device_of_another_bus() {
    let bus = rtu_bus(PathBuf::from("/dev/null"));
    let dev = device("meter", "elsewhere", 1, 50, vec![]);
    assert!(matches!(
        read_once(&bus, &dev).await,
        Err(ReadOnceError::WrongBus { .. })
    ));
}

#[tokio::test]
async fn a_hung_up_serial_line_marks_devices_offline_and_the_bus_keeps_running() {
    let (master, slave, path) = pty_line();
    let dev = SimDevice::new(1);
    dev.with_banks(|b| b.set_holding(0, &[9]));
    let server = serve_rtu(master, vec![dev]);
    let run = Running::start(
        rtu_bus(path),
        vec![device(
            "meter",
            "rtu0",
            1,
            50,
            vec![point("v", Table::Holding, 0, DataType::U16)],
        )],
    );
    wait_until("a reading", Duration::from_secs(5), || {
        run.sink.values("meter", "v").first().cloned()
    })
    .await;
    // Closing the master end is what an unplugged adapter looks like from the slave side.
    server.abort();
    let _ = server.await;
    drop(slave);
    wait_until(
        "meter offline after the hang-up",
        Duration::from_secs(5),
        || (run.sink.availability("meter") == vec![true, false]).then_some(()),
    )
    .await;
    assert!(!run.task.is_finished(), "run_bus must keep retrying");
    run.stop().await;
}
