//! In-process Modbus peers for the end-to-end suites, written against tokio-modbus' server
//! directly (not the agent's own `fieldlink::sim`, so the agent is never checked against
//! code that shares its mistakes), plus a launcher for the pymodbus server script.
//!
//! A [`SimDevice`] is a unit id with four register banks and a behaviour (normal, silent,
//! late, exception), all changeable while it is being polled. Reads of an address that is
//! not in a bank are refused with IllegalDataAddress, as a real device refuses unmapped
//! registers. Per register block, a unit can also be late or silent; it can stay silent for
//! its next n requests, and (on RTU) garble its next n replies. Every read it receives is
//! logged ([`SimDevice::reads`]), so a test can see how the agent planned its requests.
//! Servers: [`serve_tcp`] on 127.0.0.1 (a port the kernel picks, or a given one to come back
//! on after a stop), optionally with a field device's connection habit ([`serve_tcp_with`]:
//! closing after every reply, or when idle), and [`serve_rtu`] on a serial path (one end of
//! a pty pair).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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

/// One read a unit received: the table, first address and quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    pub bank: Bank,
    pub start: u16,
    pub count: u16,
}

#[derive(Debug)]
struct DeviceState {
    banks: Banks,
    behaviour: Behaviour,
    /// Requests that start at (bank, address) are answered late, whatever the behaviour: a
    /// device that is slow on one register block only, possibly only now and then.
    late_at: HashMap<(Bank, u16), LateRule>,
    /// Requests that start at (bank, address) are never answered: a block the device's
    /// firmware hangs on.
    silent_at: HashSet<(Bank, u16)>,
    /// The next this many requests get no answer (a brown-out, a loose wire for a moment).
    silent_next: u64,
    /// RTU only: the next this many replies go out with a broken CRC (line noise).
    garble_next: u64,
    requests: u64,
    late_replies: u64,
    garbled_replies: u64,
    reads: Vec<Read>,
    /// Every write this unit applied, in order.
    writes: Vec<Write>,
    /// Writes are refused with this exception (a read-only or locked register).
    refuse_writes: Option<ExceptionCode>,
}

/// One write a unit applied: the table, first address and what it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Registers { start: u16, words: Vec<u16> },
    Coils { start: u16, bits: Vec<bool> },
}

/// What the unit does with one request.
enum Reply {
    /// Nothing at all.
    None,
    /// This answer, after the delay.
    Answer(Result<Response, ExceptionCode>, Duration),
    /// This answer's frame with its CRC broken (RTU only).
    Garbled(Result<Response, ExceptionCode>),
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
                silent_at: HashSet::new(),
                silent_next: 0,
                garble_next: 0,
                requests: 0,
                late_replies: 0,
                garbled_replies: 0,
                reads: Vec::new(),
                writes: Vec::new(),
                refuse_writes: None,
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

    /// Makes requests that start exactly at (`bank`, `address`) go unanswered.
    pub fn set_silent_at(&self, bank: Bank, address: u16) {
        self.state.lock().unwrap().silent_at.insert((bank, address));
    }

    /// Answers requests that start at (`bank`, `address`) again.
    pub fn clear_silent_at(&self, bank: Bank, address: u16) {
        self.state
            .lock()
            .unwrap()
            .silent_at
            .remove(&(bank, address));
    }

    /// Leaves the next `n` requests unanswered, whatever they ask; then answers as before.
    pub fn silent_for_next(&self, n: u64) {
        self.state.lock().unwrap().silent_next = n;
    }

    /// RTU only: sends the next `n` replies with a broken CRC, as line noise would.
    pub fn garble_next(&self, n: u64) {
        self.state.lock().unwrap().garble_next = n;
    }

    /// Requests this unit has received (answered or not).
    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }

    /// Replies sent after a delay (by `Late` or `set_late_at`).
    pub fn late_replies(&self) -> u64 {
        self.state.lock().unwrap().late_replies
    }

    /// Replies sent with a broken CRC (by `garble_next`).
    pub fn garbled_replies(&self) -> u64 {
        self.state.lock().unwrap().garbled_replies
    }

    /// Every read this unit received, in order.
    pub fn reads(&self) -> Vec<Read> {
        self.state.lock().unwrap().reads.clone()
    }

    /// Every write this unit applied, in order.
    pub fn writes(&self) -> Vec<Write> {
        self.state.lock().unwrap().writes.clone()
    }

    /// Refuses every write with `code` from now on (`None`: accepts them again).
    pub fn refuse_writes(&self, code: Option<ExceptionCode>) {
        self.state.lock().unwrap().refuse_writes = code;
    }

    /// The holding registers from `address`, as they are now.
    pub fn holding(&self, address: u16, count: u16) -> Vec<u16> {
        let s = self.state.lock().unwrap();
        (address..address + count)
            .map(|a| s.banks.holding.get(&a).copied().unwrap_or(0))
            .collect()
    }

    /// What this unit does with `request`.
    fn reply(&self, request: &Request<'_>) -> Reply {
        let mut s = self.state.lock().unwrap();
        s.requests += 1;
        if let Some(reply) = s.write(request) {
            return reply;
        }
        let (bank, start, count) = match request {
            Request::ReadCoils(a, n) => (Bank::Coil, *a, *n),
            Request::ReadDiscreteInputs(a, n) => (Bank::Discrete, *a, *n),
            Request::ReadInputRegisters(a, n) => (Bank::Input, *a, *n),
            Request::ReadHoldingRegisters(a, n) => (Bank::Holding, *a, *n),
            _ => return Reply::Answer(Err(ExceptionCode::IllegalFunction), Duration::ZERO),
        };
        s.reads.push(Read { bank, start, count });
        if s.silent_next > 0 {
            s.silent_next -= 1;
            return Reply::None;
        }
        if s.silent_at.contains(&(bank, start)) {
            return Reply::None;
        }
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
        let answer = match s.behaviour {
            Behaviour::Silent => return Reply::None,
            Behaviour::Exception(code) => Err(code),
            Behaviour::Late(d) => {
                delay = delay.max(d);
                s.banks.read(request)
            }
            Behaviour::Normal => s.banks.read(request),
        };
        if s.garble_next > 0 {
            s.garble_next -= 1;
            s.garbled_replies += 1;
            return Reply::Garbled(answer);
        }
        if !delay.is_zero() {
            s.late_replies += 1;
        }
        Reply::Answer(answer, delay)
    }
}

impl DeviceState {
    /// `Some(reply)` when `request` is a write: applied to existing registers or coils only
    /// (a write to an address the map lacks is refused, as a device would), and echoed.
    fn write(&mut self, request: &Request<'_>) -> Option<Reply> {
        let (write, echo) = match request {
            Request::WriteSingleRegister(a, w) => (
                Write::Registers {
                    start: *a,
                    words: vec![*w],
                },
                Response::WriteSingleRegister(*a, *w),
            ),
            Request::WriteMultipleRegisters(a, words) => (
                Write::Registers {
                    start: *a,
                    words: words.to_vec(),
                },
                Response::WriteMultipleRegisters(*a, words.len() as u16),
            ),
            Request::WriteSingleCoil(a, b) => (
                Write::Coils {
                    start: *a,
                    bits: vec![*b],
                },
                Response::WriteSingleCoil(*a, *b),
            ),
            Request::WriteMultipleCoils(a, bits) => (
                Write::Coils {
                    start: *a,
                    bits: bits.to_vec(),
                },
                Response::WriteMultipleCoils(*a, bits.len() as u16),
            ),
            _ => return None,
        };
        match self.behaviour {
            Behaviour::Silent => return Some(Reply::None),
            Behaviour::Exception(code) => return Some(Reply::Answer(Err(code), Duration::ZERO)),
            _ => {}
        }
        if let Some(code) = self.refuse_writes {
            return Some(Reply::Answer(Err(code), Duration::ZERO));
        }
        // All or nothing, as a device checks the whole range before it writes.
        let applied = match &write {
            Write::Registers { start, words } => {
                let all =
                    (0..words.len()).all(|i| self.banks.holding.contains_key(&(start + i as u16)));
                if all {
                    for (i, w) in words.iter().enumerate() {
                        self.banks.holding.insert(start + i as u16, *w);
                    }
                }
                all
            }
            Write::Coils { start, bits } => {
                let all =
                    (0..bits.len()).all(|i| self.banks.coils.contains_key(&(start + i as u16)));
                if all {
                    for (i, b) in bits.iter().enumerate() {
                        self.banks.coils.insert(start + i as u16, *b);
                    }
                }
                all
            }
        };
        if !applied {
            return Some(Reply::Answer(
                Err(ExceptionCode::IllegalDataAddress),
                Duration::ZERO,
            ));
        }
        self.writes.push(write);
        Some(Reply::Answer(Ok(echo), Duration::ZERO))
    }
}

/// The RTU frame of an answer (unit, function, data, CRC low byte first), with its CRC
/// broken: what a reply looks like after line noise flipped a bit.
fn garbled_rtu_frame(unit: u8, function: u8, answer: &Result<Response, ExceptionCode>) -> Vec<u8> {
    let mut frame = vec![unit];
    match answer {
        Err(code) => frame.extend([function | 0x80, u8::from(*code)]),
        Ok(Response::ReadHoldingRegisters(words)) | Ok(Response::ReadInputRegisters(words)) => {
            frame.extend([function, (words.len() * 2) as u8]);
            for w in words {
                frame.extend(w.to_be_bytes());
            }
        }
        Ok(Response::ReadCoils(bits)) | Ok(Response::ReadDiscreteInputs(bits)) => {
            let bytes: Vec<u8> = bits
                .chunks(8)
                .map(|c| {
                    c.iter()
                        .enumerate()
                        .fold(0u8, |b, (i, &on)| b | (u8::from(on) << i))
                })
                .collect();
            frame.extend([function, bytes.len() as u8]);
            frame.extend(bytes);
        }
        Ok(_) => frame.extend([function | 0x80, 1]),
    }
    let crc = crc16(&frame) ^ 0x5A5A;
    frame.extend(crc.to_le_bytes());
    frame
}

/// Modbus RTU CRC-16 (poly 0xA001, init 0xFFFF), written here rather than borrowed from the
/// agent so that a shared mistake cannot hide.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
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
    /// RTU only: the server's end of the line, to send frames tokio-modbus would not.
    raw_line: Option<RawFd>,
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
        match device.reply(&req.request) {
            Reply::None => Box::pin(async { Ok(None) }),
            Reply::Answer(answer, delay) => Box::pin(async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                answer.map(Some)
            }),
            Reply::Garbled(answer) => {
                let frame =
                    garbled_rtu_frame(req.slave, req.request.function_code().value(), &answer);
                if let Some(fd) = self.raw_line {
                    // SAFETY: `fd` is the serial port owned by the RTU server task that is
                    // calling us, open for this synchronous call; write(2) only reads `frame`.
                    unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
                }
                Box::pin(async { Ok(None) })
            }
        }
    }
}

fn service(devices: &[&SimDevice], raw_line: Option<RawFd>) -> SimService {
    SimService {
        units: Arc::new(devices.iter().map(|d| (d.unit, (*d).clone())).collect()),
        raw_line,
    }
}

/// How a Modbus TCP server treats its connections, as field devices and cheap TCP-to-RS-485
/// gateways do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Habit {
    /// Keeps a connection open until the client closes it.
    KeepOpen,
    /// Closes the connection right after each reply.
    CloseAfterReply,
    /// Closes a connection that carried no request for this long.
    CloseWhenIdle(Duration),
    /// Accepts a connection and closes it at once, without reading a request.
    CloseAtOnce,
    /// Serves one connection at a time and closes any other at once, as cheap TCP-to-RS-485
    /// gateways with a single connection slot do.
    OneAtATime,
}

/// A server-side connection that follows a [`Habit`]: when the habit says so, reads end the
/// stream (EOF), so tokio-modbus' server loop ends and drops (closes) the socket.
struct HabitStream {
    inner: tokio::net::TcpStream,
    habit: Habit,
    /// Connections open now, counted down when this one closes.
    open: Arc<AtomicU64>,
    /// A reply went out: with `CloseAfterReply`, the connection ends at the next read.
    replied: bool,
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl HabitStream {
    fn new(inner: tokio::net::TcpStream, habit: Habit, open: Arc<AtomicU64>) -> Self {
        let idle = match habit {
            Habit::CloseWhenIdle(after) => Some(Box::pin(tokio::time::sleep(after))),
            _ => None,
        };
        HabitStream {
            inner,
            habit,
            open,
            replied: false,
            idle,
        }
    }
}

impl Drop for HabitStream {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for HabitStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.habit == Habit::CloseAtOnce || this.replied {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    if let (Habit::CloseWhenIdle(after), Some(idle)) = (this.habit, &mut this.idle)
                    {
                        idle.as_mut().reset(tokio::time::Instant::now() + after);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let idle_over = match &mut this.idle {
                    Some(idle) => idle.as_mut().poll(cx).is_ready(),
                    None => false,
                };
                if idle_over {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncWrite for HabitStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let flushed = Pin::new(&mut this.inner).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) && this.habit == Habit::CloseAfterReply {
            this.replied = true;
        }
        if let (Poll::Ready(Ok(())), Habit::CloseWhenIdle(after), Some(idle)) =
            (&flushed, this.habit, &mut this.idle)
        {
            idle.as_mut().reset(tokio::time::Instant::now() + after);
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A Modbus TCP server; dropping or stopping it closes the listener and every connection.
pub struct TcpSim {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    connections: Arc<AtomicU64>,
    /// Connections closed at once because another was open (`Habit::OneAtATime`).
    turned_away: Arc<AtomicU64>,
}

impl TcpSim {
    /// Connections closed at once because another was open (`Habit::OneAtATime`).
    pub fn turned_away(&self) -> u64 {
        self.turned_away.load(Ordering::Relaxed)
    }

    /// `host:port`, as the config's `address` wants it.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
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

/// Serves `devices` on 127.0.0.1 at a free port below the kernel's ephemeral range, so the
/// sim can be stopped and brought back on the same port ([`serve_tcp_at`]) without an
/// outgoing connection of a test running in parallel being handed that port meanwhile (as
/// happens to a port from `bind(0)`).
/// What a sim does with a new connection: serve it through its habit, or turn it away at
/// once when the habit allows one connection at a time and one is open.
fn accept(
    svc: SimService,
    habit: Habit,
    connections: Arc<AtomicU64>,
    turned_away: Arc<AtomicU64>,
) -> impl Fn(
    tokio::net::TcpStream,
    SocketAddr,
) -> std::future::Ready<io::Result<Option<(SimService, HabitStream)>>> {
    let open = Arc::new(AtomicU64::new(0));
    move |stream, _peer| {
        connections.fetch_add(1, Ordering::Relaxed);
        if habit == Habit::OneAtATime && open.load(Ordering::Relaxed) > 0 {
            turned_away.fetch_add(1, Ordering::Relaxed);
            // Dropping the stream closes it, as a gateway with no free slot does.
            return std::future::ready(Ok(None));
        }
        open.fetch_add(1, Ordering::Relaxed);
        let stream = HabitStream::new(stream, habit, open.clone());
        std::future::ready(Ok(Some((svc.clone(), stream))))
    }
}

/// Serves `devices` with RTU frames over TCP on a free port, as a serial device server in
/// raw TCP mode carries them from its RS-485 line.
pub async fn serve_rtu_tcp(devices: &[&SimDevice]) -> TcpSim {
    serve_rtu_tcp_with(devices, Habit::KeepOpen).await
}

/// [`serve_rtu_tcp`] with a connection habit (device servers that drop idle connections).
pub async fn serve_rtu_tcp_with(devices: &[&SimDevice], habit: Habit) -> TcpSim {
    let listener = loop {
        let addr = SocketAddr::from(([127, 0, 0, 1], super::broker::listen_port()));
        // Another test may take the port between `listen_port` and this bind: pick again.
        if let Ok(listener) = tokio::net::TcpListener::bind(addr).await {
            break listener;
        }
    };
    let addr = listener.local_addr().unwrap();
    let svc = service(devices, None);
    let server = tokio_modbus::server::rtu_over_tcp::Server::new(listener);
    let (connections, turned_away) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let on_connected = accept(svc, habit, connections.clone(), turned_away.clone());
    let task = tokio::spawn(async move {
        let _ = server.serve(&on_connected, |_err| {}).await;
    });
    TcpSim {
        addr,
        task,
        connections,
        turned_away,
    }
}

pub async fn serve_tcp(devices: &[&SimDevice]) -> TcpSim {
    serve_tcp_with(devices, Habit::KeepOpen).await
}

/// Serves `devices` at `addr` (to come back on the same port after [`TcpSim::stop`]).
pub async fn serve_tcp_at(addr: SocketAddr, devices: &[&SimDevice]) -> TcpSim {
    serve_tcp_at_with(addr, devices, Habit::KeepOpen).await
}

/// Serves `devices` on 127.0.0.1 at a port the kernel picks, treating connections per `habit`.
pub async fn serve_tcp_with(devices: &[&SimDevice], habit: Habit) -> TcpSim {
    loop {
        let addr = SocketAddr::from(([127, 0, 0, 1], super::broker::listen_port()));
        // Another test may take the port between `listen_port` and this bind: pick again.
        if let Ok(listener) = tokio::net::TcpListener::bind(addr).await {
            return serve_listener(listener, devices, habit);
        }
    }
}

async fn serve_tcp_at_with(addr: SocketAddr, devices: &[&SimDevice], habit: Habit) -> TcpSim {
    // A stopped sim's listener can outlive `stop` by a moment: a child process that another
    // test forks at that instant holds a copy of every descriptor until it execs (they are
    // close-on-exec, not closed at fork). So wait, with a deadline, for the bind to succeed.
    let started = std::time::Instant::now();
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => break listener,
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && started.elapsed() < Duration::from_secs(5) =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("bind Modbus TCP sim on {addr}: {e}"),
        }
    };
    serve_listener(listener, devices, habit)
}

fn serve_listener(
    listener: tokio::net::TcpListener,
    devices: &[&SimDevice],
    habit: Habit,
) -> TcpSim {
    let addr = listener.local_addr().unwrap();
    let svc = service(devices, None);
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let (connections, turned_away) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let on_connected = accept(svc, habit, connections.clone(), turned_away.clone());
    let task = tokio::spawn(async move {
        let _ = server.serve(&on_connected, |_err| {}).await;
    });
    TcpSim {
        addr,
        task,
        connections,
        turned_away,
    }
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
    let svc = service(devices, Some(serial.as_raw_fd()));
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

    /// Starts a pymodbus server speaking RTU frames over TCP (pymodbus' RTU framer on a TCP
    /// listener), on a port it picks.
    pub fn rtu_tcp(map: &serde_json::Value) -> PyModbus {
        PyModbus::start(map, &["rtu-tcp"])
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
