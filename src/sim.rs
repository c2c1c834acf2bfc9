//! Simulated Modbus devices (tokio-modbus servers) for `fieldlink demo`, tests and benches.
//!
//! Owns the in-process peers only: register banks, per-unit misbehaviour switches, and the
//! TCP and RTU servers around them. It is part of the library (not test-only) because the
//! demo ships it, but only with the `sim` feature (which `demo` enables, and tests and benches
//! get from the crate's dev-dependency on itself): the packaged build leaves it and
//! tokio-modbus' server code out. It never touches the agent's state; the agent talks to it
//! over a real socket or pseudo-terminal like to any device.
//!
//! Behaviour per unit ([`Behaviour`]): answer normally, refuse with an exception, stay
//! silent, answer late (always, or every n-th request), and on RTU emit garbage or a frame
//! with a bad CRC. Unmapped addresses answer `IllegalDataAddress`, as real devices do.
//! Requests for units the server does not know get no answer (as on a shared RS-485 line).
//!
//! A pseudo-terminal moves bytes at once; [`serve_rtu_timed`] answers as late as a real line
//! at a given baud rate would deliver the answer's last byte ([`WireTiming`]), for the bus
//! time benches.

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::io::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_serial::SerialStream;

use crate::config::WordOrder;

/// How a simulated unit reacts to requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Normal,
    /// Refuse every request with this exception.
    Exception(ExceptionCode),
    /// Never answer.
    Silent,
    /// Answer every request after `delay`.
    Late(Duration),
    /// Answer every `every`-th request (counted per unit, from 1) after `delay`, the others
    /// at once.
    LateEvery {
        every: u64,
        delay: Duration,
    },
    /// RTU only: send bytes that are no frame at all (TCP: stay silent).
    Garbage,
    /// RTU only: send a well-formed answer with a wrong CRC (TCP: stay silent).
    BadCrc,
}

/// The four Modbus tables of one unit. Absent addresses are unmapped.
#[derive(Debug, Default, Clone)]
pub struct Banks {
    pub coils: HashMap<u16, bool>,
    pub discrete: HashMap<u16, bool>,
    pub input: HashMap<u16, u16>,
    pub holding: HashMap<u16, u16>,
}

impl Banks {
    pub fn set_holding(&mut self, address: u16, words: &[u16]) {
        put(&mut self.holding, address, words);
    }
    pub fn set_input(&mut self, address: u16, words: &[u16]) {
        put(&mut self.input, address, words);
    }
    pub fn set_coil(&mut self, address: u16, bit: bool) {
        self.coils.insert(address, bit);
    }
    pub fn set_discrete(&mut self, address: u16, bit: bool) {
        self.discrete.insert(address, bit);
    }
}

fn put<T: Copy>(bank: &mut HashMap<u16, T>, address: u16, values: &[T]) {
    for (i, v) in values.iter().enumerate() {
        bank.insert(address.wrapping_add(i as u16), *v);
    }
}

type Dynamics = Box<dyn FnMut(&mut Banks, Duration) + Send>;

struct SimState {
    banks: Banks,
    behaviour: Behaviour,
    /// Called before each answer with the time since the device was created.
    dynamics: Option<Dynamics>,
}

/// One simulated unit. Share it (`Arc`) between a server and the test that drives it.
pub struct SimDevice {
    unit: u8,
    created: std::time::Instant,
    state: Mutex<SimState>,
    requests: AtomicU64,
}

impl std::fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDevice")
            .field("unit", &self.unit)
            .field("requests", &self.requests())
            .finish()
    }
}

impl SimDevice {
    pub fn new(unit: u8) -> Arc<Self> {
        Arc::new(SimDevice {
            unit,
            created: std::time::Instant::now(),
            state: Mutex::new(SimState {
                banks: Banks::default(),
                behaviour: Behaviour::Normal,
                dynamics: None,
            }),
            requests: AtomicU64::new(0),
        })
    }

    pub fn unit(&self) -> u8 {
        self.unit
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.state().behaviour = behaviour;
    }

    pub fn behaviour(&self) -> Behaviour {
        self.state().behaviour
    }

    /// Reads or changes the banks, e.g. `dev.with_banks(|b| b.set_holding(0, &[1, 2]))`.
    pub fn with_banks<R>(&self, f: impl FnOnce(&mut Banks) -> R) -> R {
        f(&mut self.state().banks)
    }

    /// Installs a function that updates the banks before every answer (slowly changing
    /// values for the demo), given the time since the device was created.
    pub fn set_dynamics(&self, f: impl FnMut(&mut Banks, Duration) + Send + 'static) {
        self.state().dynamics = Some(Box::new(f));
    }

    /// Requests addressed to this unit so far (answered or not).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// What a healthy device would answer.
    pub fn answer(&self, request: &Request<'_>) -> Result<Response, ExceptionCode> {
        let mut state = self.state();
        let elapsed = self.created.elapsed();
        let SimState {
            banks, dynamics, ..
        } = &mut *state;
        if let Some(f) = dynamics.as_mut() {
            f(banks, elapsed);
        }
        answer(banks, request)
    }
}

fn read_range<T: Copy>(
    bank: &HashMap<u16, T>,
    start: u16,
    count: u16,
    limit: u16,
) -> Result<Vec<T>, ExceptionCode> {
    if count == 0 || count > limit {
        return Err(ExceptionCode::IllegalDataValue);
    }
    (0..count)
        .map(|i| {
            start
                .checked_add(i)
                .and_then(|a| bank.get(&a).copied())
                .ok_or(ExceptionCode::IllegalDataAddress)
        })
        .collect()
}

fn write_range<T: Copy>(
    bank: &mut HashMap<u16, T>,
    start: u16,
    values: &[T],
) -> Result<(), ExceptionCode> {
    let all_mapped = (0..values.len()).all(|i| {
        u16::try_from(i)
            .ok()
            .and_then(|i| start.checked_add(i))
            .is_some_and(|a| bank.contains_key(&a))
    });
    if !all_mapped {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    put(bank, start, values);
    Ok(())
}

fn answer(banks: &mut Banks, request: &Request<'_>) -> Result<Response, ExceptionCode> {
    Ok(match request {
        Request::ReadCoils(a, n) => Response::ReadCoils(read_range(&banks.coils, *a, *n, 2000)?),
        Request::ReadDiscreteInputs(a, n) => {
            Response::ReadDiscreteInputs(read_range(&banks.discrete, *a, *n, 2000)?)
        }
        Request::ReadInputRegisters(a, n) => {
            Response::ReadInputRegisters(read_range(&banks.input, *a, *n, 125)?)
        }
        Request::ReadHoldingRegisters(a, n) => {
            Response::ReadHoldingRegisters(read_range(&banks.holding, *a, *n, 125)?)
        }
        Request::WriteSingleCoil(a, v) => {
            write_range(&mut banks.coils, *a, &[*v])?;
            Response::WriteSingleCoil(*a, *v)
        }
        Request::WriteSingleRegister(a, v) => {
            write_range(&mut banks.holding, *a, &[*v])?;
            Response::WriteSingleRegister(*a, *v)
        }
        Request::WriteMultipleCoils(a, v) => {
            write_range(&mut banks.coils, *a, v)?;
            Response::WriteMultipleCoils(*a, v.len() as u16)
        }
        Request::WriteMultipleRegisters(a, v) => {
            write_range(&mut banks.holding, *a, v)?;
            Response::WriteMultipleRegisters(*a, v.len() as u16)
        }
        _ => return Err(ExceptionCode::IllegalFunction),
    })
}

type Answer = Result<Option<Response>, ExceptionCode>;

/// The timing of a real RS-485 line that a simulated RTU unit keeps over a pty: a request
/// takes its bytes' time to arrive, the unit waits for 3.5 characters of silence to know the
/// frame ended, thinks for `turnaround`, and its answer takes its bytes' time to leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireTiming {
    pub baud: u32,
    /// Start + data + parity + stop bits: 11 for Modbus' 8E1 (or 8N2).
    pub bits_per_char: u32,
    pub turnaround: Duration,
}

impl WireTiming {
    pub fn chars(&self, n: usize) -> Duration {
        Duration::from_nanos(
            n as u64 * u64::from(self.bits_per_char) * 1_000_000_000 / u64::from(self.baud.max(1)),
        )
    }

    /// The silence that ends a frame (3.5 characters).
    pub fn frame_gap(&self) -> Duration {
        self.chars(7) / 2
    }

    /// From the first request byte on the wire to the last answer byte received.
    pub fn exchange(&self, request_bytes: usize, answer_bytes: usize) -> Duration {
        self.chars(request_bytes) + self.frame_gap() + self.turnaround + self.chars(answer_bytes)
    }
}

/// Bytes of an RTU request frame (unit, function, body, CRC).
pub fn rtu_request_len(request: &Request<'_>) -> usize {
    match request {
        Request::WriteMultipleCoils(_, bits) => 9 + bits.len().div_ceil(8),
        Request::WriteMultipleRegisters(_, words) => 9 + 2 * words.len(),
        _ => 8,
    }
}

/// Bytes of the RTU answer frame to a request (an exception answer is 5 bytes).
pub fn rtu_answer_len(answer: &Result<Response, ExceptionCode>) -> usize {
    match answer {
        Ok(Response::ReadCoils(bits)) | Ok(Response::ReadDiscreteInputs(bits)) => {
            5 + bits.len().div_ceil(8)
        }
        Ok(Response::ReadHoldingRegisters(words)) | Ok(Response::ReadInputRegisters(words)) => {
            5 + 2 * words.len()
        }
        Ok(_) => 8,
        Err(_) => 5,
    }
}

/// The tokio-modbus service dispatching requests to the simulated units by unit id.
#[derive(Clone)]
struct SimService {
    devices: Arc<HashMap<u8, Arc<SimDevice>>>,
    /// RTU only: the server's end of the line, to inject bytes that are no valid answer.
    raw_line: Option<RawFd>,
    /// RTU only: answer when a real line would have delivered the answer.
    timing: Option<WireTiming>,
}

impl SimService {
    fn new(devices: Vec<Arc<SimDevice>>, raw_line: Option<RawFd>) -> Self {
        SimService {
            devices: Arc::new(devices.into_iter().map(|d| (d.unit, d)).collect()),
            raw_line,
            timing: None,
        }
    }

    fn inject(&self, bytes: &[u8]) {
        let Some(fd) = self.raw_line else { return };
        // SAFETY: `fd` is the serial stream owned by the RTU server that is calling us, so it
        // is open for the duration of this synchronous call; write(2) reads `bytes` only.
        let written = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if written < 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "sim: injecting bytes failed");
        }
    }
}

impl Service for SimService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let Some(device) = self.devices.get(&req.slave).cloned() else {
            return Box::pin(std::future::ready(Ok(None)));
        };
        let n = device.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let late = |delay: Duration, answer: Result<Response, ExceptionCode>| -> Self::Future {
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                answer.map(Some)
            })
        };
        match device.behaviour() {
            Behaviour::Normal => match self.timing {
                Some(timing) => {
                    let answer = device.answer(&req.request);
                    let delay =
                        timing.exchange(rtu_request_len(&req.request), rtu_answer_len(&answer));
                    late(delay, answer)
                }
                None => Box::pin(std::future::ready(device.answer(&req.request).map(Some))),
            },
            Behaviour::Exception(code) => Box::pin(std::future::ready(Err(code))),
            Behaviour::Silent => Box::pin(std::future::ready(Ok(None))),
            Behaviour::Late(delay) => late(delay, device.answer(&req.request)),
            Behaviour::LateEvery { every, delay } if every > 0 && n % every == 0 => {
                late(delay, device.answer(&req.request))
            }
            Behaviour::LateEvery { .. } => {
                Box::pin(std::future::ready(device.answer(&req.request).map(Some)))
            }
            Behaviour::Garbage => {
                self.inject(&[0xFF, 0x00, 0x13, 0x37, 0xAA, 0x55, 0xC3, 0x00, 0x7E]);
                Box::pin(std::future::ready(Ok(None)))
            }
            Behaviour::BadCrc => {
                let fc = req.request.function_code().value();
                let mut frame = vec![req.slave, fc, 4, 0x12, 0x34, 0x56, 0x78];
                let crc = crc16(&frame) ^ 0xA5A5;
                frame.extend_from_slice(&crc.to_le_bytes());
                self.inject(&frame);
                Box::pin(std::future::ready(Ok(None)))
            }
        }
    }
}

/// Modbus RTU CRC-16 (poly 0xA001, init 0xFFFF), sent low byte first.
pub fn crc16(bytes: &[u8]) -> u16 {
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

/// Serves `devices` (by unit id) on `listener` until the handle is aborted. Aborting also
/// closes every open connection, like a device that restarts.
pub fn serve_tcp(listener: TcpListener, devices: Vec<Arc<SimDevice>>) -> JoinHandle<()> {
    let service = SimService::new(devices, None);
    tokio::spawn(async move {
        let server = tokio_modbus::server::tcp::Server::new(listener);
        let on_connected = |stream, _addr| {
            let service = service.clone();
            async move { Ok(Some((service, stream))) }
        };
        if let Err(e) = server
            .serve(
                &on_connected,
                |e| tracing::debug!(error = %e, "sim: connection ended"),
            )
            .await
        {
            tracing::warn!(error = %e, "sim: TCP server stopped");
        }
    })
}

/// Serves `devices` (by unit id) over one end of a serial line (e.g. the master of
/// `SerialStream::pair()`) until the handle is aborted.
pub fn serve_rtu(port: SerialStream, devices: Vec<Arc<SimDevice>>) -> JoinHandle<()> {
    let service = SimService::new(devices, Some(port.as_raw_fd()));
    tokio::spawn(async move {
        let server = tokio_modbus::server::rtu::Server::new(port);
        if let Err(e) = server.serve_forever(service).await {
            tracing::warn!(error = %e, "sim: RTU server stopped");
        }
    })
}

/// [`serve_rtu`] keeping the wire timing of a real line (normal answers only; the other
/// behaviours answer as they do untimed).
pub fn serve_rtu_timed(
    port: SerialStream,
    devices: Vec<Arc<SimDevice>>,
    timing: WireTiming,
) -> JoinHandle<()> {
    let mut service = SimService::new(devices, Some(port.as_raw_fd()));
    service.timing = Some(timing);
    tokio::spawn(async move {
        let server = tokio_modbus::server::rtu::Server::new(port);
        if let Err(e) = server.serve_forever(service).await {
            tracing::warn!(error = %e, "sim: RTU server stopped");
        }
    })
}

/// Lays a value's big-endian bytes out as registers in `order` (the inverse of decoding).
pub fn to_words(be_bytes: &[u8], order: WordOrder) -> Vec<u16> {
    let words: Vec<[u8; 2]> = be_bytes
        .chunks(2)
        .map(|c| [c[0], *c.get(1).unwrap_or(&0)])
        .collect();
    let arranged: Vec<[u8; 2]> = match order {
        WordOrder::Abcd => words,
        WordOrder::Cdab if words.len() > 1 => words.into_iter().rev().collect(),
        WordOrder::Cdab => words,
        WordOrder::Badc => words.into_iter().map(|[a, b]| [b, a]).collect(),
        WordOrder::Dcba => words.into_iter().rev().map(|[a, b]| [b, a]).collect(),
    };
    arranged.into_iter().map(u16::from_be_bytes).collect()
}

/// ASCII text in `registers` registers, two characters each, high byte first, NUL padded.
pub fn string_words(text: &str, registers: u16) -> Vec<u16> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.resize(usize::from(registers) * 2, 0);
    bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

/// The register map of [`demo_boiler`], shared with config/demo.toml.
pub mod demo_map {
    /// holding 0-1, f32, CDAB, bar
    pub const PRESSURE: u16 = 0;
    /// input 0, i16, scale 0.1, °C
    pub const TEMPERATURE: u16 = 0;
    /// input 1-2, u32, ABCD, Wh
    pub const ENERGY: u16 = 1;
    /// holding 10-11, u32, ABCD, s
    pub const RUNTIME: u16 = 10;
    /// coil 0
    pub const RUNNING: u16 = 0;
    /// holding 20-27, string of 8 registers
    pub const SERIAL: u16 = 20;
    pub const SERIAL_REGISTERS: u16 = 8;
    pub const SERIAL_NUMBER: &str = "FLB-2024-000042";
}

/// A boiler with slowly changing, plausible values, for `fieldlink demo`:
/// pressure ~1.5 bar, temperature ~62 °C, an energy counter rising ~3 Wh/s, a runtime
/// counter in seconds, a running flag that drops for one minute in five, and a serial number.
pub fn demo_boiler(unit: u8) -> Arc<SimDevice> {
    use demo_map::*;
    let device = SimDevice::new(unit);
    let update = |b: &mut Banks, t: Duration| {
        let s = t.as_secs_f64();
        let pressure = 1.5 + 0.15 * (s / 90.0).sin();
        b.set_holding(
            PRESSURE,
            &to_words(&(pressure as f32).to_be_bytes(), WordOrder::Cdab),
        );
        let temperature = ((62.0 + 4.0 * (s / 240.0).sin()) * 10.0).round() as i16;
        b.set_input(
            TEMPERATURE,
            &to_words(&temperature.to_be_bytes(), WordOrder::Abcd),
        );
        let energy = 1_250_000u32 + (s * 3.0) as u32;
        b.set_input(ENERGY, &to_words(&energy.to_be_bytes(), WordOrder::Abcd));
        let runtime = 2_592_000u32 + s as u32;
        b.set_holding(RUNTIME, &to_words(&runtime.to_be_bytes(), WordOrder::Abcd));
        b.set_coil(RUNNING, (s as u64 / 60) % 5 != 4);
        b.set_holding(SERIAL, &string_words(SERIAL_NUMBER, SERIAL_REGISTERS));
    };
    device.with_banks(|b| {
        // Gaps read as zero, so any max_gap in the demo config works.
        b.set_holding(0, &[0; 28]);
        b.set_input(0, &[0; 3]);
        update(b, Duration::ZERO)
    });
    device.set_dynamics(update);
    device
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_timing_counts_eleven_bits_a_byte_and_a_gap_of_three_and_a_half() {
        let t = WireTiming {
            baud: 9600,
            bits_per_char: 11,
            turnaround: Duration::from_millis(2),
        };
        assert_eq!(t.chars(96).as_micros(), 110_000);
        assert_eq!(t.frame_gap().as_micros(), 4010);
        // Read 48 registers: 8-byte request, 101-byte answer.
        let answer = Ok(Response::ReadHoldingRegisters(vec![0; 48]));
        assert_eq!(rtu_answer_len(&answer), 101);
        assert_eq!(
            t.exchange(8, 101).as_micros(),
            (t.chars(109) + t.frame_gap()).as_micros() + 2000
        );
    }

    #[test]
    fn crc16_matches_the_reference_frame() {
        // Read holding registers, unit 1, address 0, count 10: CRC C5 CD on the wire.
        assert_eq!(
            crc16(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x0A]).to_le_bytes(),
            [0xC5, 0xCD]
        );
    }

    #[test]
    fn unmapped_addresses_answer_illegal_data_address() {
        let dev = SimDevice::new(1);
        dev.with_banks(|b| b.set_holding(0, &[1, 2]));
        assert_eq!(
            dev.answer(&Request::ReadHoldingRegisters(0, 2)),
            Ok(Response::ReadHoldingRegisters(vec![1, 2]))
        );
        assert_eq!(
            dev.answer(&Request::ReadHoldingRegisters(1, 2)),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            dev.answer(&Request::ReadInputRegisters(0, 1)),
            Err(ExceptionCode::IllegalDataAddress)
        );
    }

    #[test]
    fn to_words_lays_out_the_four_orders() {
        let be = 0x1122_3344u32.to_be_bytes();
        assert_eq!(to_words(&be, WordOrder::Abcd), vec![0x1122, 0x3344]);
        assert_eq!(to_words(&be, WordOrder::Cdab), vec![0x3344, 0x1122]);
        assert_eq!(to_words(&be, WordOrder::Badc), vec![0x2211, 0x4433]);
        assert_eq!(to_words(&be, WordOrder::Dcba), vec![0x4433, 0x2211]);
    }

    #[test]
    fn the_demo_boiler_maps_every_demo_point() {
        let dev = demo_boiler(1);
        for req in [
            Request::ReadHoldingRegisters(demo_map::PRESSURE, 2),
            Request::ReadInputRegisters(demo_map::TEMPERATURE, 3),
            Request::ReadHoldingRegisters(demo_map::RUNTIME, 2),
            Request::ReadCoils(demo_map::RUNNING, 1),
            Request::ReadHoldingRegisters(demo_map::SERIAL, demo_map::SERIAL_REGISTERS),
        ] {
            assert!(dev.answer(&req).is_ok(), "{req:?}");
        }
    }
}
