//! The poll loop of one wire: which device is due, its reads, availability and backoff.
//!
//! Owns per-device runtime state (due times, backoff, availability, the last problem of each
//! point) and turns link results into samples. Generic over [`ModbusLink`], so the same loop
//! serves one RTU line (all its devices, strictly one request at a time) or one TCP device.
//! Never opens sockets or ports itself.
//!
//! Rules:
//! - The next due (device, interval group) is served first; ties go to the one served least
//!   recently, so devices on a line take turns.
//! - The first outer error (timeout, transport) ends that device's cycle: a dead device costs
//!   the line one timeout, not one per request. The device is reported offline at once (one
//!   failed cycle) and backs off exponentially with jitter ([`BACKOFF_MIN`] ..
//!   [`BACKOFF_MAX`]); when the backoff expires it is probed with one cycle, whose first
//!   request fails fast if it is still dead. The other devices keep their rate meanwhile.
//! - An exception (the device answered and refused) keeps the device online; the points of
//!   that request are bad (no reading) and logged once per change, not per poll.
//! - When the link itself cannot try (serial port missing), devices go offline once and the
//!   loop waits for the link's reopen time instead of backing devices off.
//! - The loop wakes at least every [`IDLE_TICK`] and ticks its health beat each turn.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::config::{Device, Point};
use crate::health::Beat;
use crate::model::{unix_ms_now, Reading, Sample, SampleSink, Value};

use super::backoff;
use super::modbus::decode::{decode_bit, decode_registers};
use super::modbus::link::{LinkError, ModbusLink, RawData};
use super::modbus::plan::{plan_groups, ReadRequest};

pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
pub const IDLE_TICK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Availability {
    Unknown,
    Online,
    Offline,
}

struct Group {
    interval: Duration,
    requests: Vec<ReadRequest>,
    next_due: Instant,
    last_served: u64,
}

/// A device as the loop tracks it.
pub(crate) struct PolledDevice {
    name: Arc<str>,
    unit: u8,
    points: Vec<Point>,
    point_names: Vec<Arc<str>>,
    point_units: Vec<Option<Arc<str>>>,
    /// The last problem of each point (`None` = fine or never read), to log changes only.
    point_problem: Vec<Option<String>>,
    groups: Vec<Group>,
    availability: Availability,
    failures: u32,
}

impl PolledDevice {
    pub(crate) fn new(device: &Device, now: Instant) -> Self {
        PolledDevice {
            name: device.name.as_str().into(),
            unit: device.unit,
            point_names: device
                .points
                .iter()
                .map(|p| p.name.as_str().into())
                .collect(),
            point_units: device
                .points
                .iter()
                .map(|p| p.unit.as_deref().map(Arc::from))
                .collect(),
            point_problem: vec![None; device.points.len()],
            points: device.points.clone(),
            groups: plan_groups(device)
                .into_iter()
                .map(|g| Group {
                    interval: g.interval,
                    requests: g.requests,
                    next_due: now,
                    last_served: 0,
                })
                .collect(),
            availability: Availability::Unknown,
            failures: 0,
        }
    }

    /// Longest a single cycle of this device can keep the loop busy, given a per-request
    /// bound: used to size the health allowance.
    pub(crate) fn worst_cycle(&self, per_request: Duration) -> Duration {
        let most = self
            .groups
            .iter()
            .map(|g| g.requests.len())
            .max()
            .unwrap_or(0);
        per_request.saturating_mul(most as u32)
    }
}

enum Cycle {
    Answered,
    Failed(LinkError),
}

/// Serves `devices` over `link` until `cancel` fires.
pub(crate) async fn run_loop<L: ModbusLink>(
    bus: &str,
    mut link: L,
    mut devices: Vec<PolledDevice>,
    sink: &dyn SampleSink,
    beat: &Beat,
    cancel: &CancellationToken,
) {
    let mut served: u64 = 0;
    loop {
        beat.tick();
        if cancel.is_cancelled() {
            return;
        }
        let now = Instant::now();
        let next = devices
            .iter()
            .enumerate()
            .flat_map(|(d, dev)| dev.groups.iter().enumerate().map(move |(g, gr)| (d, g, gr)))
            .min_by_key(|(_, _, gr)| (gr.next_due, gr.last_served))
            .map(|(d, g, gr)| (d, g, gr.next_due));
        let Some((d, g, due)) = next else {
            // No points at all: stay alive (and healthy) doing nothing.
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = sleep_until(now + IDLE_TICK) => continue,
            }
        };
        let wake = link.not_before().map_or(due, |t| t.max(due));
        if wake > now {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = sleep_until(wake.min(now + IDLE_TICK)) => continue,
            }
        }
        served += 1;
        devices[d].groups[g].last_served = served;
        let cycle = tokio::select! {
            _ = cancel.cancelled() => return,
            c = poll_group(bus, &mut link, &mut devices[d], g, sink) => c,
        };
        let not_before = link.not_before();
        after_cycle(bus, &mut devices[d], g, cycle, not_before, sink);
        sink.send(Sample::PollDone {
            device: devices[d].name.clone(),
        });
    }
}

async fn poll_group<L: ModbusLink>(
    bus: &str,
    link: &mut L,
    dev: &mut PolledDevice,
    g: usize,
    sink: &dyn SampleSink,
) -> Cycle {
    for r in 0..dev.groups[g].requests.len() {
        let result = link.read(dev.unit, &dev.groups[g].requests[r]).await;
        let ts_ms = unix_ms_now();
        match result {
            Err(e) => return Cycle::Failed(e),
            Ok(Err(exception)) => {
                let problem = format!("device refused the read: {exception:?}");
                let request = &dev.groups[g].requests[r];
                let points: Vec<usize> = request.points.clone();
                let changed: Vec<&str> = points
                    .iter()
                    .filter(|&&p| dev.point_problem[p].as_deref() != Some(problem.as_str()))
                    .map(|&p| dev.point_names[p].as_ref())
                    .collect();
                if !changed.is_empty() {
                    tracing::warn!(
                        bus,
                        device = %dev.name,
                        points = %changed.join(","),
                        table = ?request.table,
                        start = request.start,
                        count = request.count,
                        error_kind = "exception",
                        exception = ?exception,
                        "points bad: the device answered with an exception"
                    );
                }
                for p in points {
                    dev.point_problem[p] = Some(problem.clone());
                }
            }
            Ok(Ok(raw)) => {
                let request = dev.groups[g].requests[r].clone();
                for &p in &request.points {
                    match decode_point(&dev.points[p], &request, &raw) {
                        Ok(value) => {
                            if dev.point_problem[p].take().is_some() {
                                tracing::info!(bus, device = %dev.name, point = %dev.point_names[p], "point good again");
                            }
                            sink.send(Sample::Reading(Reading {
                                device: dev.name.clone(),
                                point: dev.point_names[p].clone(),
                                value,
                                unit: dev.point_units[p].clone(),
                                ts_ms,
                            }));
                        }
                        Err(problem) => {
                            if dev.point_problem[p].as_deref() != Some(problem.as_str()) {
                                tracing::warn!(bus, device = %dev.name, point = %dev.point_names[p], error_kind = "decode", "point bad: {problem}");
                                dev.point_problem[p] = Some(problem);
                            }
                        }
                    }
                }
            }
        }
    }
    Cycle::Answered
}

fn after_cycle(
    bus: &str,
    dev: &mut PolledDevice,
    g: usize,
    cycle: Cycle,
    link_not_before: Option<Instant>,
    sink: &dyn SampleSink,
) {
    let now = Instant::now();
    match cycle {
        Cycle::Answered => {
            let group = &mut dev.groups[g];
            // Keep the cadence; after a stall, resume from now rather than bursting.
            group.next_due = (group.next_due + group.interval).max(now);
            dev.failures = 0;
            if dev.availability != Availability::Online {
                tracing::info!(bus, device = %dev.name, unit = dev.unit, "device answering");
                dev.availability = Availability::Online;
                sink.send(Sample::DeviceAvailability {
                    device: dev.name.clone(),
                    online: true,
                });
            }
        }
        Cycle::Failed(error) => {
            let retry_at = match (&error, link_not_before) {
                // The wire itself is missing: not this device's fault, wait for the wire.
                (LinkError::Unreachable(_), Some(at)) => at,
                _ => {
                    dev.failures = dev.failures.saturating_add(1);
                    now + backoff::delay(dev.failures, BACKOFF_MIN, BACKOFF_MAX)
                }
            };
            dev.groups[g].next_due = retry_at;
            for group in dev.groups.iter_mut() {
                group.next_due = group.next_due.max(retry_at);
            }
            if dev.availability != Availability::Offline {
                tracing::warn!(
                    bus,
                    device = %dev.name,
                    unit = dev.unit,
                    error_kind = error.kind(),
                    error = %error,
                    retry_in_ms = retry_at.saturating_duration_since(now).as_millis() as u64,
                    "device not answering; retrying with backoff"
                );
                dev.availability = Availability::Offline;
                sink.send(Sample::DeviceAvailability {
                    device: dev.name.clone(),
                    online: false,
                });
            } else {
                tracing::debug!(bus, device = %dev.name, error_kind = error.kind(), error = %error, "device still not answering");
            }
        }
    }
}

/// Decodes one point from its request's data; the error is a sentence for logs and reports.
pub(crate) fn decode_point(
    point: &Point,
    request: &ReadRequest,
    raw: &RawData,
) -> Result<Value, String> {
    let offset = request.offset_of(point);
    match raw {
        RawData::Registers(words) => words
            .get(offset..)
            .ok_or_else(|| format!("register {} is outside the read", point.address))
            .and_then(|w| decode_registers(point, w).map_err(|e| e.to_string())),
        RawData::Bits(bits) => bits
            .get(offset)
            .ok_or_else(|| format!("bit {} is outside the read", point.address))
            .and_then(|&b| decode_bit(point, b).map_err(|e| e.to_string())),
    }
}
