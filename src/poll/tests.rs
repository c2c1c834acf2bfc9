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
use crate::model::{Quality, Sample, SampleSink, Value};
use crate::sim::{self, serve_rtu, serve_tcp, to_words, Behaviour, SimDevice};

#[derive(Default)]
struct Recorder {
    samples: Mutex<Vec<Sample>>,
    /// When each sample arrived, index for index.
    arrivals: Mutex<Vec<Instant>>,
}

impl SampleSink for Recorder {
    fn send(&self, sample: Sample) {
        // End-of-poll markers carry no data; the assertions here are about data and
        // availability (a waiting bus still ends failed attempts with a marker).
        if matches!(sample, Sample::PollDone { .. }) {
            return;
        }
        let mut samples = self.samples.lock().unwrap();
        samples.push(sample);
        self.arrivals.lock().unwrap().push(Instant::now());
    }
}

impl Recorder {
    /// When the first reading of `point` with `value` arrived.
    fn first_reading_at(&self, device: &str, point: &str, value: &Value) -> Option<Instant> {
        let samples = self.samples.lock().unwrap();
        let i = samples.iter().position(|s| {
            matches!(s, Sample::Reading(r)
                if &*r.device == device && &*r.point == point && r.value.as_ref() == Ok(value))
        })?;
        self.arrivals.lock().unwrap().get(i).copied()
    }

    fn len(&self) -> usize {
        self.samples.lock().unwrap().len()
    }

    /// When `device` was reported offline, each time.
    fn offline_at(&self, device: &str) -> Vec<Instant> {
        let samples = self.samples.lock().unwrap();
        let arrivals = self.arrivals.lock().unwrap();
        samples
            .iter()
            .zip(arrivals.iter())
            .filter_map(|(s, at)| match s {
                Sample::DeviceAvailability {
                    device: d,
                    online: false,
                } if &**d == device => Some(*at),
                _ => None,
            })
            .collect()
    }

    /// The values read for `point`, leaving out its bad-quality readings.
    fn values(&self, device: &str, point: &str) -> Vec<Value> {
        self.readings(device, point)
            .into_iter()
            .filter_map(Result::ok)
            .collect()
    }

    /// Every reading of `point`: a value, or the quality it was published bad with.
    fn readings(&self, device: &str, point: &str) -> Vec<Result<Value, Quality>> {
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

    /// The qualities `point` was published bad with, in order.
    fn qualities(&self, device: &str, point: &str) -> Vec<Quality> {
        self.readings(device, point)
            .into_iter()
            .filter_map(Result::err)
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
        offline_after: 3,
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
    assert_eq!(
        run.sink.qualities("meter", "missing"),
        [Quality::Exception(2)],
        "published bad once, not at every poll"
    );
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
        .contains("exception 2 (illegal data address"));
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
async fn a_device_with_offline_after_1_goes_offline_at_its_first_failed_poll() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bus = tcp_bus(listener.local_addr().unwrap());
    let dev = SimDevice::new(1);
    dev.with_banks(|b| b.set_holding(0, &[1]));
    let server = serve_tcp(listener, vec![dev.clone()]);
    let mut impatient = device(
        "impatient",
        "tcp0",
        1,
        50,
        vec![point("v", Table::Holding, 0, DataType::U16)],
    );
    impatient.offline_after = 1;
    let run = Running::start(bus, vec![impatient]);
    wait_until("online", Duration::from_secs(5), || {
        (run.sink.availability("impatient") == vec![true]).then_some(())
    })
    .await;
    dev.set_behaviour(Behaviour::Silent);
    // Every request counted from here on goes unanswered (one may have come just before).
    let before = dev.requests();
    wait_until("offline", Duration::from_secs(5), || {
        (run.sink.availability("impatient") == vec![true, false]).then_some(())
    })
    .await;
    let unanswered = dev.requests() - before;
    assert!(
        unanswered <= 1,
        "offline after {unanswered} more unanswered requests"
    );
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

/// A USB RS-485 adapter on a pty: the sim serves the master, the agent opens the slave
/// through `link` as through a udev /dev/serial/by-id link.
struct Adapter {
    server: JoinHandle<()>,
    /// Held so the master never reads EIO before the agent opens the slave.
    slave: SerialStream,
    slave_name: String,
    link: PathBuf,
}

impl Adapter {
    fn plug(link: &std::path::Path, devices: Vec<Arc<SimDevice>>) -> Adapter {
        let (master, slave, name) = pty_line();
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(&name, link).expect("symlink to the pty");
        Adapter {
            server: serve_rtu(master, devices),
            slave,
            slave_name: name.to_string_lossy().into_owned(),
            link: link.to_path_buf(),
        }
    }

    /// Pulls the adapter: the link goes and the master closes, so the slave hangs up. The
    /// test's own slave fd stays open (returned) until the caller drops it: it keeps the
    /// pty's number from being reused, so fds on it can be counted.
    async fn pull(self) -> (SerialStream, String) {
        let _ = std::fs::remove_file(&self.link);
        self.server.abort();
        let _ = self.server.await;
        (self.slave, self.slave_name)
    }
}

/// Open fds of this process on the pty slave `name` (a hung-up one reads "(deleted)").
fn fds_on(name: &str) -> usize {
    let deleted = format!("{name} (deleted)");
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| {
            let t = target.to_string_lossy();
            t == name || t == deleted
        })
        .count()
}

/// Pulls and re-plugs the adapter of a bus whose one device is polled every `interval_ms`;
/// returns how long after the pull the device was offline and the agent's fd closed, and
/// how long after the path reappeared the first new reading arrived.
async fn replug_scenario(interval_ms: u64) -> (Duration, Duration, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let link = dir
        .path()
        .join("usb-FTDI_USB-RS485_Cable_FT0001-if00-port0");
    let meter = SimDevice::new(1);
    meter.with_banks(|b| b.set_holding(0, &[1]));
    let adapter = Adapter::plug(&link, vec![meter.clone()]);
    let run = Running::start(
        rtu_bus(link.clone()),
        vec![device(
            "meter",
            "rtu0",
            1,
            interval_ms,
            vec![point("v", Table::Holding, 0, DataType::U16)],
        )],
    );
    wait_until("a reading before the pull", Duration::from_secs(10), || {
        run.sink.first_reading_at("meter", "v", &Value::Int(1))
    })
    .await;

    let pulled = Instant::now();
    let (old_slave, old_name) = adapter.pull().await;
    wait_until(
        "meter offline after the pull",
        Duration::from_secs(10),
        || (run.sink.availability("meter") == vec![true, false]).then_some(()),
    )
    .await;
    let offline_after = pulled.elapsed();
    // Only the test's own fd is left on the old pty: the agent dropped its port, so a real
    // adapter plugged back would get its old /dev/ttyUSBn name again.
    wait_until(
        "the agent's fd on the old pty closed",
        Duration::from_secs(10),
        || (fds_on(&old_name) == 1).then_some(()),
    )
    .await;
    let fd_closed_after = pulled.elapsed();
    drop(old_slave);

    // Stay unplugged a while: the bus must wait quietly. The random part puts the re-plug
    // anywhere within the 250 ms look at the path, so the pickup is not always one phase.
    let samples_while_down = run.sink.len();
    tokio::time::sleep(Duration::from_millis(1000 + fastrand::u64(0..250))).await;
    assert_eq!(
        run.sink.len(),
        samples_while_down,
        "samples while unplugged"
    );

    meter.with_banks(|b| b.set_holding(0, &[2]));
    let _adapter = Adapter::plug(&link, vec![meter.clone()]);
    let replugged = Instant::now();
    let first = wait_until(
        "a reading after the re-plug",
        Duration::from_secs(10),
        || run.sink.first_reading_at("meter", "v", &Value::Int(2)),
    )
    .await;
    let pickup = first.duration_since(replugged);
    println!(
        "RTU re-plug (device interval {interval_ms} ms): offline {offline_after:?} and fd \
         closed {fd_closed_after:?} after the pull; first reading {pickup:?} after the path \
         reappeared"
    );
    assert_eq!(run.sink.availability("meter"), vec![true, false, true]);
    run.stop().await;
    (offline_after, fd_closed_after, pickup)
}

#[tokio::test]
async fn rtu_bus_replugged_at_the_same_path_goes_offline_then_resumes_within_two_seconds() {
    let (_, _, pickup) = replug_scenario(100).await;
    assert!(
        pickup <= Duration::from_secs(2),
        "readings resumed {pickup:?} after the path reappeared; the spec is 2 s"
    );
}

/// A device polled every 30 s: nothing is due when the adapter goes, yet the bus notices the
/// hang-up within its watch period, drops the fd, takes the device offline, and polls it as
/// soon as the port is back rather than at its next turn.
#[tokio::test]
async fn rtu_bus_idle_between_polls_drops_a_hung_up_port_and_polls_at_once_when_it_is_back() {
    let (offline_after, fd_closed_after, pickup) = replug_scenario(30_000).await;
    // Generous against a loaded machine; the watch looks every 250 ms, the next poll would
    // be 30 s away.
    assert!(offline_after < Duration::from_secs(5), "{offline_after:?}");
    assert!(
        fd_closed_after < Duration::from_secs(5),
        "{fd_closed_after:?}"
    );
    assert!(
        pickup <= Duration::from_secs(2),
        "readings resumed {pickup:?} after the path reappeared; the spec is 2 s"
    );
}

/// Every device on the line goes offline together when the port goes, not one by one as
/// each gets its turn to fail (which would take a watch period per device).
#[tokio::test]
async fn rtu_bus_takes_every_device_offline_together_when_its_port_goes() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir
        .path()
        .join("usb-FTDI_USB-RS485_Cable_FT0003-if00-port0");
    let units: Vec<Arc<SimDevice>> = (1..=6)
        .map(|unit| {
            let d = SimDevice::new(unit);
            d.with_banks(|b| b.set_holding(0, &[u16::from(unit)]));
            d
        })
        .collect();
    let adapter = Adapter::plug(&link, units);
    let names: Vec<String> = (1..=6).map(|u| format!("m{u}")).collect();
    let run = Running::start(
        rtu_bus(link.clone()),
        names
            .iter()
            .zip(1u8..)
            .map(|(name, unit)| {
                device(
                    name,
                    "rtu0",
                    unit,
                    100,
                    vec![point("v", Table::Holding, 0, DataType::U16)],
                )
            })
            .collect(),
    );
    wait_until("every device online", Duration::from_secs(10), || {
        names
            .iter()
            .all(|n| run.sink.availability(n) == vec![true])
            .then_some(())
    })
    .await;
    let (_old_slave, _) = adapter.pull().await;
    let offline = wait_until("every device offline", Duration::from_secs(10), || {
        names
            .iter()
            .map(|n| run.sink.offline_at(n).first().copied())
            .collect::<Option<Vec<Instant>>>()
    })
    .await;
    let first = *offline.iter().min().unwrap();
    let spread = offline
        .iter()
        .map(|t| t.duration_since(first))
        .max()
        .unwrap();
    println!("6 devices offline within {spread:?} of each other");
    assert!(
        spread < crate::poll::serial_port::WATCH_PERIOD,
        "devices went offline one by one over {spread:?}"
    );
    run.stop().await;
}

/// udev re-points a by-id link when an adapter is swapped: the path now names another node,
/// so the bus drops the old port (even though it still works) and opens the new one.
#[tokio::test]
async fn rtu_bus_follows_a_by_id_link_that_is_re_pointed_to_another_port() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir
        .path()
        .join("usb-FTDI_USB-RS485_Cable_FT0002-if00-port0");
    let old = SimDevice::new(1);
    old.with_banks(|b| b.set_holding(0, &[10]));
    let _first = Adapter::plug(&link, vec![old]);
    let run = Running::start(
        rtu_bus(link.clone()),
        vec![device(
            "meter",
            "rtu0",
            1,
            50,
            vec![point("v", Table::Holding, 0, DataType::U16)],
        )],
    );
    wait_until(
        "a reading from the first port",
        Duration::from_secs(10),
        || run.sink.first_reading_at("meter", "v", &Value::Int(10)),
    )
    .await;
    let new = SimDevice::new(1);
    new.with_banks(|b| b.set_holding(0, &[20]));
    let _second = Adapter::plug(&link, vec![new]);
    wait_until(
        "a reading from the second port",
        Duration::from_secs(10),
        || run.sink.first_reading_at("meter", "v", &Value::Int(20)),
    )
    .await;
    let values = run.sink.values("meter", "v");
    let switched = values.iter().position(|v| *v == Value::Int(20)).unwrap();
    assert!(
        values[switched..].iter().all(|v| *v == Value::Int(20)),
        "no reading from the old port after the switch: {values:?}"
    );
    run.stop().await;
}
