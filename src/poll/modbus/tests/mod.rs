//! The Modbus poller against real peers: the in-process tokio-modbus servers of `sim`, over
//! TCP on a kernel-picked port and over RTU on a real pseudo-terminal pair. Every wait has a
//! deadline. This file holds what the suites share; `tcp`, `rtu` and `replug` hold the tests.

mod replug;
mod rtu;
mod tcp;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_serial::{SerialPort, SerialStream};
use tokio_util::sync::CancellationToken;

use super::commission::{read_once, RequestFailure};
use super::link::RawData;
use super::ExceptionCode;
use crate::config::{
    Bus, BusKind, DataType, Device, DeviceKind, ModbusDevice, ModbusRtu, ModbusTcp, Parity, Point,
    SerialSettings, Table, WordOrder,
};
use crate::model::{Quality, Sample, SampleSink, Value};
use crate::poll::{run_bus, ReadOnceError};
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
    Point::new(name, table, address, data_type)
}

fn device(name: &str, bus: &str, unit: u8, interval_ms: u64, points: Vec<Point>) -> Device {
    Device {
        name: name.into(),
        bus: bus.into(),
        interval: Duration::from_millis(interval_ms),
        kind: DeviceKind::Modbus(ModbusDevice {
            unit,
            max_gap: 0,
            points,
            offline_after: 3,
        }),
    }
}

/// The Modbus settings of a test device, to change one.
fn modbus_mut(device: &mut Device) -> &mut ModbusDevice {
    match &mut device.kind {
        DeviceKind::Modbus(m) => m,
        DeviceKind::SerialLine(_) => unreachable!("test devices are Modbus devices"),
    }
}

fn tcp_bus(address: std::net::SocketAddr) -> Bus {
    Bus {
        name: "tcp0".into(),
        kind: BusKind::ModbusTcp(ModbusTcp {
            address: address.to_string(),
            timeout: Duration::from_millis(200),
            connection: None,
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
            None,
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
