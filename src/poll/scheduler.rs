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
//!   loop waits for the link's reopen time instead of backing devices off; they are polled
//!   as soon as the link is back. The link reports the outage itself (once), so devices log
//!   going offline and coming back for this cause at debug only.
//! - The loop wakes at least every [`IDLE_TICK`] (or the link's shorter watch period), lets
//!   the link look after its wire ([`ModbusLink::watch`]), and ticks its health beat each
//!   turn. A wire found gone while idle takes every device offline at once.

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
use super::modbus::ExceptionCode;

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
    /// Offline only because the link was down: its return is not news.
    offline_with_link: bool,
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
            offline_with_link: false,
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
    let tick = link.watch_period().map_or(IDLE_TICK, |p| p.min(IDLE_TICK));
    loop {
        beat.tick();
        if cancel.is_cancelled() {
            return;
        }
        if let Some(lost) = link.watch() {
            let retry_at = link.not_before().unwrap_or_else(Instant::now);
            for dev in devices.iter_mut() {
                // Polled as soon as the link is back, whatever their cadence.
                for group in dev.groups.iter_mut() {
                    group.next_due = retry_at;
                }
                mark_offline(bus, dev, &lost, retry_at, true, sink);
            }
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
                _ = sleep_until(now + tick) => continue,
            }
        };
        let wake = link.not_before().map_or(due, |t| t.max(due));
        if wake > now {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = sleep_until(wake.min(now + tick)) => continue,
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
    let mut r = 0;
    while r < dev.groups[g].requests.len() {
        let result = link.read(dev.unit, &dev.groups[g].requests[r]).await;
        let ts_ms = unix_ms_now();
        match result {
            Err(e) => return Cycle::Failed(e),
            Ok(Err(ExceptionCode::IllegalDataAddress))
                if dev.groups[g].requests[r].points.len() > 1 =>
            {
                // Many devices refuse a read that spans registers they do not map, which
                // the planner merged across (max_gap). Read these points one by one from now
                // on rather than losing all of them; a bad point then only costs itself.
                let merged = dev.groups[g].requests.remove(r);
                tracing::info!(
                    bus,
                    device = %dev.name,
                    table = ?merged.table,
                    start = merged.start,
                    count = merged.count,
                    "device refuses reads across unmapped addresses: reading these points \
                     one by one (set max_gap = 0 on this device to plan it that way)"
                );
                let singles = merged.points.iter().map(|&p| ReadRequest {
                    table: merged.table,
                    start: dev.points[p].address,
                    count: dev.points[p].data_type.width(),
                    points: vec![p],
                });
                dev.groups[g].requests.splice(r..r, singles);
                continue;
            }
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
        r += 1;
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
                if dev.offline_with_link {
                    tracing::debug!(bus, device = %dev.name, unit = dev.unit, "device answering again");
                } else {
                    tracing::info!(bus, device = %dev.name, unit = dev.unit, "device answering");
                }
                dev.availability = Availability::Online;
                dev.offline_with_link = false;
                sink.send(Sample::DeviceAvailability {
                    device: dev.name.clone(),
                    online: true,
                });
            }
        }
        Cycle::Failed(error) => {
            // While the link cannot even try (the serial port is gone), the failure is the
            // wire's, not this device's: wait for the wire instead of backing off.
            let (retry_at, link_down) = match link_not_before {
                Some(at) => (at, true),
                None => {
                    dev.failures = dev.failures.saturating_add(1);
                    (
                        now + backoff::delay(dev.failures, BACKOFF_MIN, BACKOFF_MAX),
                        false,
                    )
                }
            };
            dev.groups[g].next_due = retry_at;
            for group in dev.groups.iter_mut() {
                group.next_due = group.next_due.max(retry_at);
            }
            mark_offline(bus, dev, &error, retry_at, link_down, sink);
        }
    }
}

/// Reports `dev` offline once per outage. When the link itself is down it has said so
/// (once, for the whole bus), so the device only notes it at debug.
fn mark_offline(
    bus: &str,
    dev: &mut PolledDevice,
    error: &LinkError,
    retry_at: Instant,
    link_down: bool,
    sink: &dyn SampleSink,
) {
    if dev.availability == Availability::Offline {
        tracing::debug!(bus, device = %dev.name, error_kind = error.kind(), error = %error, "device still not answering");
        return;
    }
    let retry_in_ms = retry_at
        .saturating_duration_since(Instant::now())
        .as_millis() as u64;
    if link_down {
        tracing::debug!(bus, device = %dev.name, unit = dev.unit, error_kind = error.kind(), error = %error, "device offline: the line is down");
    } else {
        tracing::warn!(
            bus,
            device = %dev.name,
            unit = dev.unit,
            error_kind = error.kind(),
            error = %error,
            retry_in_ms,
            "device not answering; retrying with backoff"
        );
    }
    dev.availability = Availability::Offline;
    dev.offline_with_link = link_down;
    sink.send(Sample::DeviceAvailability {
        device: dev.name.clone(),
        online: false,
    });
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
