//! In-process Modbus peers for the end-to-end suites, written against tokio-modbus' server
//! directly (not the agent's own `fieldlink::sim`, so the agent is never checked against
//! code that shares its mistakes), plus a launcher for the pymodbus server script.
//!
//! A [`SimDevice`] is a unit id with four register banks and a behaviour (normal, silent,
//! late, exception), all changeable while it is being polled. Reads of an address that is
//! not in a bank are refused with IllegalDataAddress, as a real device refuses unmapped
//! registers. Servers: [`serve_tcp`] on 127.0.0.1 (a port the kernel picks, or a given one
//! to come back on after a stop) and [`serve_rtu`] on a serial path (one end of a pty pair).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_modbus::server::Service;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bank {
    Coil,
    Discrete,
    Input,
    Holding,
}

/// How a device answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behaviour {
    Normal,
    /// Never answers (a dead or unplugged device).
    Silent,
    /// Answers every request correctly, but only after the delay.
    Late(Duration),
    /// Refuses every request with this exception.
    Exception(ExceptionCode),
}

#[derive(Debug, Default)]
struct Banks {
    coils: BTreeMap<u16, bool>,
    discrete: BTreeMap<u16, bool>,
    input: BTreeMap<u16, u16>,
    holding: BTreeMap<u16, u16>,
}

#[derive(Debug, Clone, Copy)]
struct LateRule {
    delay: Duration,
    /// Late on the 1st, (1+every)th, (1+2*every)th… request of the block; 1 = always.
    every: u64,
    seen: u64,
}

#[derive(Debug)]
struct DeviceState {
    banks: Banks,
    behaviour: Behaviour,
    /// Requests that start at (bank, address) are answered late, whatever the behaviour: a
    /// device that is slow on one register block only, possibly only now and then.
    late_at: HashMap<(Bank, u16), LateRule>,
    requests: u64,
    late_replies: u64,
}

/// One simulated Modbus unit; clones share state, so a test keeps a handle and changes the
/// registers or the behaviour while the server serves it.
#[derive(Debug, Clone)]
pub struct SimDevice {
    pub unit: u8,
    state: Arc<Mutex<DeviceState>>,
}

impl SimDevice {
    pub fn new(unit: u8) -> SimDevice {
        SimDevice {
            unit,
            state: Arc::new(Mutex::new(DeviceState {
                banks: Banks::default(),
                behaviour: Behaviour::Normal,
                late_at: HashMap::new(),
                requests: 0,
                late_replies: 0,
            })),
        }
    }

    /// Sets consecutive registers of `bank` (Input or Holding) from `address` on.
    pub fn set_registers(&self, bank: Bank, address: u16, words: &[u16]) -> &SimDevice {
        let mut s = self.state.lock().unwrap();
        let map = match bank {
            Bank::Input => &mut s.banks.input,
            Bank::Holding => &mut s.banks.holding,
            _ => panic!("set_registers on a bit bank {bank:?}"),
        };
        for (i, w) in words.iter().enumerate() {
            map.insert(address + i as u16, *w);
        }
        self
    }

    /// Sets consecutive bits of `bank` (Coil or Discrete) from `address` on.
    pub fn set_bits(&self, bank: Bank, address: u16, bits: &[bool]) -> &SimDevice {
        let mut s = self.state.lock().unwrap();
        let map = match bank {
            Bank::Coil => &mut s.banks.coils,
            Bank::Discrete => &mut s.banks.discrete,
            _ => panic!("set_bits on a register bank {bank:?}"),
        };
        for (i, b) in bits.iter().enumerate() {
            map.insert(address + i as u16, *b);
        }
        self
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.state.lock().unwrap().behaviour = behaviour;
    }

    /// Makes requests that start exactly at (`bank`, `address`) answer after `delay`.
    pub fn set_late_at(&self, bank: Bank, address: u16, delay: Duration) {
        self.set_late_at_every(bank, address, delay, 1);
    }

    /// Like [`set_late_at`](Self::set_late_at), but only one request in `every` is late (the
    /// first, then every `every`th): the others are answered at once, so the point is
    /// sometimes read and a late reply can be followed by a prompt one.
    pub fn set_late_at_every(&self, bank: Bank, address: u16, delay: Duration, every: u64) {
        self.state.lock().unwrap().late_at.insert(
            (bank, address),
            LateRule {
                delay,
                every: every.max(1),
                seen: 0,
            },
        );
    }

    /// Requests this unit has received (answered or not).
    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }

    /// Replies sent after a delay (by `Late` or `set_late_at`).
    pub fn late_replies(&self) -> u64 {
        self.state.lock().unwrap().late_replies
    }

    /// What this unit does with `request`: the reply (or none) and how long to wait first.
    fn answer(&self, request: &Request<'_>) -> (Option<Result<Response, ExceptionCode>>, Duration) {
        let mut s = self.state.lock().unwrap();
        s.requests += 1;
        let (bank, start) = match request {
            Request::ReadCoils(a, _) => (Bank::Coil, *a),
            Request::ReadDiscreteInputs(a, _) => (Bank::Discrete, *a),
            Request::ReadInputRegisters(a, _) => (Bank::Input, *a),
            Request::ReadHoldingRegisters(a, _) => (Bank::Holding, *a),
            _ => return (Some(Err(ExceptionCode::IllegalFunction)), Duration::ZERO),
        };
        let mut delay = match s.late_at.get_mut(&(bank, start)) {
            Some(rule) => {
                rule.seen += 1;
                if (rule.seen - 1) % rule.every == 0 {
                    rule.delay
                } else {
                    Duration::ZERO
                }
            }
            None => Duration::ZERO,
        };
        match s.behaviour {
            Behaviour::Silent => return (None, Duration::ZERO),
            Behaviour::Exception(code) => return (Some(Err(code)), delay),
            Behaviour::Late(d) => delay = delay.max(d),
            Behaviour::Normal => {}
        }
        if !delay.is_zero() {
            s.late_replies += 1;
        }
        (Some(s.banks.read(request)), delay)
    }
}

impl Banks {
    fn read(&self, request: &Request<'_>) -> Result<Response, ExceptionCode> {
        fn words(map: &BTreeMap<u16, u16>, a: u16, n: u16) -> Result<Vec<u16>, ExceptionCode> {
            (0..n)
                .map(|i| {
                    let addr = a.checked_add(i).ok_or(ExceptionCode::IllegalDataAddress)?;
                    map.get(&addr)
                        .copied()
                        .ok_or(ExceptionCode::IllegalDataAddress)
                })
                .collect()
        }
        fn bits(map: &BTreeMap<u16, bool>, a: u16, n: u16) -> Result<Vec<bool>, ExceptionCode> {
            (0..n)
                .map(|i| {
                    let addr = a.checked_add(i).ok_or(ExceptionCode::IllegalDataAddress)?;
                    map.get(&addr)
                        .copied()
                        .ok_or(ExceptionCode::IllegalDataAddress)
                })
                .collect()
        }
        match *request {
            Request::ReadCoils(a, n) => bits(&self.coils, a, n).map(Response::ReadCoils),
            Request::ReadDiscreteInputs(a, n) => {
                bits(&self.discrete, a, n).map(Response::ReadDiscreteInputs)
            }
            Request::ReadInputRegisters(a, n) => {
                words(&self.input, a, n).map(Response::ReadInputRegisters)
            }
            Request::ReadHoldingRegisters(a, n) => {
                words(&self.holding, a, n).map(Response::ReadHoldingRegisters)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

/// The units behind one server (one TCP endpoint or one serial line).
#[derive(Clone)]
struct SimService {
    units: Arc<HashMap<u8, SimDevice>>,
}

type ReplyFuture = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

impl Service for SimService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = ReplyFuture;

    fn call(&self, req: Self::Request) -> Self::Future {
        // An unknown unit stays quiet, as on a real RS-485 line.
        let Some(device) = self.units.get(&req.slave) else {
            return Box::pin(async { Ok(None) });
        };
        let (reply, delay) = device.answer(&req.request);
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            match reply {
                None => Ok(None),
                Some(Ok(r)) => Ok(Some(r)),
                Some(Err(e)) => Err(e),
            }
        })
    }
}

fn service(devices: &[&SimDevice]) -> SimService {
    SimService {
        units: Arc::new(devices.iter().map(|d| (d.unit, (*d).clone())).collect()),
    }
}

/// A Modbus TCP server; dropping or stopping it closes the listener and every connection.
pub struct TcpSim {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TcpSim {
    /// `host:port`, as the config's `address` wants it.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Kills the server like a crashed process: listener and connections close at once.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for TcpSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `devices` on 127.0.0.1 at a port the kernel picks.
pub async fn serve_tcp(devices: &[&SimDevice]) -> TcpSim {
    serve_tcp_at("127.0.0.1:0".parse().unwrap(), devices).await
}

/// Serves `devices` at `addr` (to come back on the same port after [`TcpSim::stop`]).
pub async fn serve_tcp_at(addr: SocketAddr, devices: &[&SimDevice]) -> TcpSim {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind Modbus TCP sim on {addr}: {e}"));
    let addr = listener.local_addr().unwrap();
    let svc = service(devices);
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let task = tokio::spawn(async move {
        let on_connected = move |stream, _peer| {
            let svc = svc.clone();
            async move { Ok(Some((svc, stream))) }
        };
        let _ = server.serve(&on_connected, |_err| {}).await;
    });
    TcpSim { addr, task }
}

/// A Modbus RTU server on a serial path.
pub struct RtuSim {
    task: tokio::task::JoinHandle<()>,
}

impl RtuSim {
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for RtuSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `devices` on the serial port at `path` (the sim's end of a pty pair).
pub fn serve_rtu(path: &Path, baud: u32, devices: &[&SimDevice]) -> RtuSim {
    use tokio_serial::SerialPortBuilderExt;
    let serial = tokio_serial::new(path.to_string_lossy(), baud)
        .open_native_async()
        .unwrap_or_else(|e| panic!("open {} for the RTU sim: {e}", path.display()));
    let svc = service(devices);
    let task = tokio::spawn(async move {
        let server = tokio_modbus::server::rtu::Server::new(serial);
        let _ = server.serve_forever(svc).await;
    });
    RtuSim { task }
}

/// Register encodings, computed from the standard library's byte conversions so the test's
/// expectations do not share code with the agent's decoder. All big-endian (ABCD).
pub mod words {
    pub fn u16s(bytes: &[u8]) -> Vec<u16> {
        bytes
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect()
    }
    pub fn i16(v: i16) -> Vec<u16> {
        u16s(&v.to_be_bytes())
    }
    pub fn u32(v: u32) -> Vec<u16> {
        u16s(&v.to_be_bytes())
    }
    pub fn i32(v: i32) -> Vec<u16> {
        u16s(&v.to_be_bytes())
    }
    pub fn f32(v: f32) -> Vec<u16> {
        u16s(&v.to_be_bytes())
    }
    pub fn f64(v: f64) -> Vec<u16> {
        u16s(&v.to_be_bytes())
    }
    /// 32-bit value with its two words swapped (CDAB, "word-swapped" meters).
    pub fn f32_cdab(v: f32) -> Vec<u16> {
        let w = f32(v);
        vec![w[1], w[0]]
    }
    /// ASCII, two characters per register, NUL-padded to `registers`.
    pub fn ascii(s: &str, registers: usize) -> Vec<u16> {
        let mut b = s.as_bytes().to_vec();
        b.resize(registers * 2, 0);
        u16s(&b)
    }
}

/// The pymodbus server script (tests/support/pymodbus_server.py) as a child process.
pub struct PyModbus {
    child: Child,
    /// The TCP port it listens on (0 for a serial server).
    pub port: u16,
    _map_dir: tempfile::TempDir,
}

/// Fails (never skips) when pymodbus is missing, naming the command that installs it.
pub fn require_pymodbus() {
    let ok = Command::new("python3")
        .args(["-c", "import pymodbus"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "python3 with pymodbus is needed for the interop tests: run the README's test command \
         (`.ci/run`), which installs python3 + pymodbus, socat and mosquitto"
    );
}

impl PyModbus {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/pymodbus_server.py")
    }

    /// Starts a pymodbus TCP server on a port it picks, with `map` (see the script for the
    /// JSON shape), and waits for its READY line.
    pub fn tcp(map: &serde_json::Value) -> PyModbus {
        PyModbus::start(map, &["tcp"])
    }

    /// Starts a pymodbus RTU server on the serial `path`.
    pub fn rtu(map: &serde_json::Value, path: &Path, baud: u32) -> PyModbus {
        PyModbus::start(map, &["rtu", path.to_str().unwrap(), &baud.to_string()])
    }

    fn start(map: &serde_json::Value, mode: &[&str]) -> PyModbus {
        require_pymodbus();
        let dir = tempfile::tempdir().unwrap();
        let map_path = dir.path().join("map.json");
        std::fs::write(&map_path, map.to_string()).unwrap();
        let mut child = Command::new("python3")
            .arg(PyModbus::script())
            .arg("--map")
            .arg(&map_path)
            .args(mode)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python3 pymodbus_server.py");
        let stdout = child.stdout.take().unwrap();
        let stderr = super::agent::Lines::capture(child.stderr.take().unwrap(), "pymodbus stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("READY") {
                    let _ = tx.send(rest.trim().parse::<u16>().unwrap_or(0));
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "pymodbus server did not print READY within 20 s; stderr:\n{}",
                    stderr.text()
                );
            }
        };
        PyModbus {
            child,
            port,
            _map_dir: dir,
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for PyModbus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
