//! The poll loop of one wire: which device is due, its reads, availability, backoff and the
//! quality of every point.
//!
//! Owns per-device runtime state (due times, the health of every read, availability, the
//! last published quality of each point) and turns link results into samples. Generic over
//! [`ModbusLink`], so the same loop serves one RTU line (all its devices, strictly one
//! request at a time) or one TCP device. Never opens sockets or ports itself.
//!
//! Rules:
//! - The next due (device, interval group) is served first; ties go to the one served least
//!   recently, so devices on a line take turns.
//! - A poll of a group makes its reads in three passes: healthy reads in plan order, then
//!   suspect ones, then the blamed ones whose backoff expired. A read that fails now and
//!   then, or a block the device never answers, so never costs the good reads their turn.
//! - The first outer error (timeout, garbled reply, closed connection) ends the poll: a dead
//!   device costs the line one timeout per poll, not one per request.
//! - Availability means "the device answers". A poll in which the device answered anything
//!   (data or an exception) keeps or brings it online. A poll in which it answered nothing
//!   is a failed poll; the device goes offline after `offline_after` failed polls in a row
//!   (default 3), so one burst of noise does not take it offline. Until then it is polled
//!   again at its interval or after a short backoff (1 s, 2 s, ...), whichever comes first,
//!   so a slow-polled device is not reported offline hours late. Offline, it is probed with
//!   exponential backoff and jitter ([`BACKOFF_MIN`] .. [`BACKOFF_MAX`]), one request per
//!   probe, as a dead unit must not cost the line more.
//! - Blame: a read that failed is suspect until the device answers some other read; then the
//!   failure is the read's own (a block the device never or always late answers): the read
//!   is blamed, its points are published bad once (`timeout`, `garbled`, `disconnected`) and
//!   it is tried again with its own exponential backoff, last in its group's polls, while the
//!   group keeps its interval. A failed try of a blamed read is not a failed poll of the
//!   device. When the device goes offline, the failures were the device's: every read starts
//!   afresh. A failed connect is always the device's, never a read's.
//! - An exception (the device answered and refused) keeps the device online; the points of
//!   that request are published bad (`exception:<code>`) once per change. A decode failure
//!   publishes the point bad (`decode`). A bad point's next good value is published as usual.
//!   While a device is offline its points keep their last message; its status says why.
//! - A merged read refused with exception 2 falls back to single reads and comes back per
//!   [`reads`](super::reads) (the same code `fieldlink read` uses).
//! - When the link itself cannot try (serial port missing), devices go offline at once and
//!   the loop waits for the link's reopen time instead of backing devices off; they are
//!   polled as soon as the link is back. The link reports the outage itself (once), so
//!   devices log going offline and coming back for this cause at debug only.
//! - The loop wakes at least every [`IDLE_TICK`] (or the link's shorter watch period), lets
//!   the link look after its wire ([`ModbusLink::watch`]), and ticks its health beat each
//!   turn. A wire found gone while idle takes every device offline at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::config::{Device, Point};
use crate::health::Beat;
use crate::model::{unix_ms_now, Quality, Reading, Sample, SampleSink, Value};
use crate::poll::backoff;

use super::link::{ExceptionCode, LinkError, ModbusLink, RawData};
use super::plan::{plan_groups, ReadRequest};
use super::reads::{decode_point, Slot, SlotChange};
use super::write::run_command;
use crate::writes::inbox::Inbox;

pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
pub const IDLE_TICK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Availability {
    Unknown,
    Online,
    Offline,
}

/// What the loop keeps about one read (one wire request).
#[derive(Debug, Default)]
pub(crate) struct ReadHealth {
    standing: Standing,
    /// Consecutive polls in which this read failed.
    failures: u32,
    /// The poll that made this read last, so one poll makes each read once.
    polled_in: u64,
}

#[derive(Debug, Default)]
enum Standing {
    #[default]
    Healthy,
    /// Failed before the device answered anything else: its fault or the device's.
    Suspect(LinkError),
    /// Failed while the device answered other reads: its own fault. Tried again from
    /// `retry_at`, last in its group's polls.
    Blamed { retry_at: Instant },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Pass {
    Healthy,
    Suspect,
    Probe,
}

impl Pass {
    /// Whether a read of this standing is made in this pass (a healthy read made by a split
    /// mid-poll is made in any pass).
    fn takes(self, standing: &Standing, now: Instant) -> bool {
        match standing {
            Standing::Healthy => true,
            Standing::Suspect(_) => self >= Pass::Suspect,
            Standing::Blamed { retry_at } => self == Pass::Probe && *retry_at <= now,
        }
    }
}

struct Group {
    interval: Duration,
    slots: Vec<Slot<ReadHealth>>,
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
    /// Why each point is bad, as last published (`None`: good, or never read).
    point_quality: Vec<Option<Quality>>,
    groups: Vec<Group>,
    availability: Availability,
    offline_after: u32,
    /// Consecutive polls in which the device answered nothing.
    failed_polls: u32,
    /// Offline: failed probes so far (for the backoff) and when the next probe is due.
    probe_failures: u32,
    probe_at: Option<Instant>,
    /// Offline only because the link was down: its return is not news.
    offline_with_link: bool,
    polls: u64,
}

impl PolledDevice {
    /// The loop's view of a Modbus device; `None` for a device of another kind.
    pub(crate) fn new(device: &Device, now: Instant) -> Option<Self> {
        let modbus = device.modbus()?;
        Some(PolledDevice {
            name: device.name.as_str().into(),
            unit: modbus.unit,
            point_names: modbus
                .points
                .iter()
                .map(|p| p.name.as_str().into())
                .collect(),
            point_units: modbus
                .points
                .iter()
                .map(|p| p.unit.as_deref().map(Arc::from))
                .collect(),
            point_quality: vec![None; modbus.points.len()],
            points: modbus.points.clone(),
            groups: plan_groups(device)
                .into_iter()
                .map(|g| Group {
                    interval: g.interval,
                    slots: g
                        .requests
                        .into_iter()
                        .map(|r| Slot::new(r, &modbus.points))
                        .collect(),
                    next_due: now,
                    last_served: 0,
                })
                .collect(),
            availability: Availability::Unknown,
            offline_after: modbus.offline_after.max(1),
            failed_polls: 0,
            probe_failures: 0,
            probe_at: None,
            offline_with_link: false,
            polls: 0,
        })
    }

    /// Longest a single poll of this device can keep the loop busy, given a per-request
    /// bound: used to size the health allowance. A split slot reads each point on its own.
    pub(crate) fn worst_cycle(&self, per_request: Duration) -> Duration {
        let most = self
            .groups
            .iter()
            .map(|g| {
                g.slots
                    .iter()
                    .map(|s| s.planned().points.len() + 1)
                    .sum::<usize>()
            })
            .max()
            .unwrap_or(0);
        per_request.saturating_mul(most as u32)
    }

    /// When group `g` may be polled: its cadence, or the next probe while offline.
    fn due(&self, g: usize) -> Instant {
        let due = self.groups[g].next_due;
        self.probe_at.map_or(due, |p| p.max(due))
    }

    /// A write read `point` back good: the next bad read of it is news again.
    fn forget_quality(&mut self, point: &str) {
        if let Some(p) = self.point_names.iter().position(|n| n.as_ref() == point) {
            self.point_quality[p] = None;
        }
    }

    fn reads_mut(&mut self) -> impl Iterator<Item = &mut ReadHealth> {
        self.groups
            .iter_mut()
            .flat_map(|g| g.slots.iter_mut())
            .flat_map(|s| s.reads_mut().iter_mut().map(|r| &mut r.state))
    }
}

/// How one poll of a group went.
#[derive(Debug, Default)]
struct PollEnd {
    /// The device answered at least one read (data or exception).
    answered: bool,
    /// The outer error that ended the poll, and whether it was the try of a blamed read.
    failure: Option<(LinkError, bool)>,
}

/// Serves `devices` over `link` until `cancel` fires, and the commands of `inbox` between two
/// requests, ahead of any poll still due.
pub(crate) async fn run_loop<L: ModbusLink>(
    bus: &str,
    mut link: L,
    mut devices: Vec<PolledDevice>,
    inbox: &mut Inbox,
    sink: &dyn SampleSink,
    beat: &Beat,
    cancel: &CancellationToken,
) {
    let mut served: u64 = 0;
    let mut written = Vec::new();
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
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = run_waiting(bus, &mut link, inbox, sink, &mut written) => {}
        }
        for (device, point) in written.drain(..) {
            if let Some(dev) = devices.iter_mut().find(|d| d.name == device) {
                dev.forget_quality(&point);
            }
        }
        let now = Instant::now();
        let next = devices
            .iter()
            .enumerate()
            .flat_map(|(d, dev)| {
                dev.groups
                    .iter()
                    .enumerate()
                    .map(move |(g, gr)| (d, g, dev.due(g), gr.last_served))
            })
            .min_by_key(|&(_, _, due, last_served)| (due, last_served))
            .map(|(d, g, due, _)| (d, g, due));
        let Some((d, g, due)) = next else {
            // No points at all: stay alive (and healthy) doing nothing.
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = sleep_until(now + tick) => continue,
                _ = inbox.arrival(sink) => continue,
            }
        };
        let wake = link.not_before().map_or(due, |t| t.max(due));
        if wake > now {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = sleep_until(wake.min(now + tick)) => continue,
                _ = inbox.arrival(sink) => continue,
            }
        }
        served += 1;
        devices[d].groups[g].last_served = served;
        let end = tokio::select! {
            _ = cancel.cancelled() => return,
            end = poll_group(bus, &mut link, &mut devices[d], g, inbox, sink, &mut written) => end,
        };
        let not_before = link.not_before();
        after_poll(bus, &mut devices[d], g, end, not_before, sink);
        sink.send(Sample::PollDone {
            device: devices[d].name.clone(),
        });
    }
}

/// Runs every command waiting in `inbox`; the points read back good go to `written`.
async fn run_waiting<L: ModbusLink>(
    bus: &str,
    link: &mut L,
    inbox: &mut Inbox,
    sink: &dyn SampleSink,
    written: &mut Vec<(Arc<str>, Arc<str>)>,
) {
    while let Some(command) = inbox.next_due(sink) {
        if let Some(point) = run_command(bus, link, command, inbox, sink).await {
            written.push(point);
        }
    }
}

async fn poll_group<L: ModbusLink>(
    bus: &str,
    link: &mut L,
    dev: &mut PolledDevice,
    g: usize,
    inbox: &mut Inbox,
    sink: &dyn SampleSink,
    written: &mut Vec<(Arc<str>, Arc<str>)>,
) -> PollEnd {
    dev.polls += 1;
    let poll = dev.polls;
    let now = Instant::now();
    for slot in dev.groups[g].slots.iter_mut() {
        slot.start_poll();
    }
    let mut end = PollEnd::default();
    for pass in [Pass::Healthy, Pass::Suspect, Pass::Probe] {
        for s in 0..dev.groups[g].slots.len() {
            let mut i = 0;
            while i < dev.groups[g].slots[s].reads().len() {
                let read = &mut dev.groups[g].slots[s].reads_mut()[i];
                if read.state.polled_in == poll || !pass.takes(&read.state.standing, now) {
                    i += 1;
                    continue;
                }
                read.state.polled_in = poll;
                let request = read.request.clone();
                // A command waits for one request at most, not for the whole poll.
                inbox.collect(sink);
                if inbox.has_waiting() {
                    run_waiting(bus, link, inbox, sink, written).await;
                    written.retain(|(device, point)| {
                        let ours = *device == dev.name;
                        if ours {
                            dev.forget_quality(point);
                        }
                        !ours
                    });
                }
                let result = link.read(dev.unit, &request).await;
                let ts_ms = unix_ms_now();
                let slot = &mut dev.groups[g].slots[s];
                let answer = match result {
                    Err(error) => {
                        let probe = record_failure(&mut slot.reads_mut()[i].state, &error, now);
                        slot.failed(i);
                        end.failure = Some((error, probe));
                        return end;
                    }
                    Ok(answer) => answer,
                };
                end.answered = true;
                let health = &mut slot.reads_mut()[i].state;
                health.failures = 0;
                health.standing = Standing::Healthy;
                match slot.answered(i, &answer) {
                    SlotChange::Split => {
                        tracing::info!(
                            bus,
                            device = %dev.name,
                            table = ?request.table,
                            start = request.start,
                            count = request.count,
                            "device refuses a read across registers (exception 2): reading \
                             these points one by one for now, and the whole read again later"
                        );
                        i = 0;
                        continue;
                    }
                    SlotChange::StillSplit { proven: true } => {
                        tracing::info!(
                            bus,
                            device = %dev.name,
                            table = ?request.table,
                            start = request.start,
                            count = request.count,
                            "device refuses this read as a whole while it answers each point: \
                             the registers between them are not mapped; reading the points one \
                             by one from now on (max_gap = 0 on this device plans it that way)"
                        );
                        i = 0;
                        continue;
                    }
                    SlotChange::StillSplit { proven: false } => {
                        tracing::debug!(bus, device = %dev.name, start = request.start, "device still refuses the whole read; trying again later");
                        i = 0;
                        continue;
                    }
                    SlotChange::Merged => {
                        tracing::info!(
                            bus,
                            device = %dev.name,
                            table = ?request.table,
                            start = request.start,
                            count = request.count,
                            "device answers the whole read again: reading these points in one \
                             request again"
                        );
                    }
                    SlotChange::None => {}
                }
                publish_answer(bus, dev, &request, &answer, ts_ms, sink);
                i += 1;
            }
        }
    }
    end
}

/// Notes a failed read; true when it was the try of a blamed read (a known bad block).
fn record_failure(health: &mut ReadHealth, error: &LinkError, now: Instant) -> bool {
    if matches!(error, LinkError::Unreachable(_)) {
        // Nothing was asked: the device (or the line) is unreachable, the read is not at fault.
        return false;
    }
    health.failures = health.failures.saturating_add(1);
    match &mut health.standing {
        Standing::Blamed { retry_at } => {
            *retry_at = now + backoff::delay(health.failures, BACKOFF_MIN, BACKOFF_MAX);
            true
        }
        standing => {
            *standing = Standing::Suspect(error.clone());
            false
        }
    }
}

/// Turns the device's answer to `request` into readings, or bad points.
fn publish_answer(
    bus: &str,
    dev: &mut PolledDevice,
    request: &ReadRequest,
    answer: &Result<RawData, ExceptionCode>,
    ts_ms: u64,
    sink: &dyn SampleSink,
) {
    match answer {
        Ok(raw) => {
            for &p in &request.points {
                match decode_point(&dev.points[p], request, raw) {
                    Ok(value) => {
                        if dev.point_quality[p].take().is_some() {
                            tracing::info!(bus, device = %dev.name, point = %dev.point_names[p], "point good again");
                        }
                        send_reading(dev, p, Ok(value), ts_ms, sink);
                    }
                    Err(problem) => {
                        if dev.point_quality[p] != Some(Quality::Decode) {
                            tracing::warn!(bus, device = %dev.name, point = %dev.point_names[p], error_kind = "decode", "point bad: {problem}");
                        }
                        mark_bad(dev, &[p], Quality::Decode, ts_ms, sink);
                    }
                }
            }
        }
        Err(exception) => {
            let quality = Quality::Exception(u8::from(*exception));
            let changed = changed_points(dev, &request.points, quality);
            if !changed.is_empty() {
                tracing::warn!(
                    bus,
                    device = %dev.name,
                    points = %changed.join(","),
                    table = ?request.table,
                    start = request.start,
                    count = request.count,
                    error_kind = "exception",
                    exception = u8::from(*exception),
                    "points bad: {quality}"
                );
            }
            mark_bad(dev, &request.points, quality, ts_ms, sink);
        }
    }
}

/// The names of `points` whose quality is not `quality` yet.
fn changed_points(dev: &PolledDevice, points: &[usize], quality: Quality) -> Vec<String> {
    points
        .iter()
        .filter(|&&p| dev.point_quality[p] != Some(quality))
        .map(|&p| dev.point_names[p].to_string())
        .collect()
}

/// Publishes each of `points` as bad once: only when its quality changes.
fn mark_bad(
    dev: &mut PolledDevice,
    points: &[usize],
    quality: Quality,
    ts_ms: u64,
    sink: &dyn SampleSink,
) {
    for &p in points {
        if dev.point_quality[p] != Some(quality) {
            dev.point_quality[p] = Some(quality);
            send_reading(dev, p, Err(quality), ts_ms, sink);
        }
    }
}

fn send_reading(
    dev: &PolledDevice,
    p: usize,
    value: Result<Value, Quality>,
    ts_ms: u64,
    sink: &dyn SampleSink,
) {
    sink.send(Sample::Reading(Reading {
        device: dev.name.clone(),
        point: dev.point_names[p].clone(),
        value,
        unit: dev.point_units[p].clone(),
        ts_ms,
    }));
}

fn after_poll(
    bus: &str,
    dev: &mut PolledDevice,
    g: usize,
    end: PollEnd,
    link_not_before: Option<Instant>,
    sink: &dyn SampleSink,
) {
    let now = Instant::now();
    let group = &mut dev.groups[g];
    // Keep the cadence, on whole multiples of the interval on the wall clock (after the
    // first poll, or a retry, the next one snaps to that grid): every device of a gateway
    // polled at one interval then shares its timer with the others and with the agent's
    // one-second housekeeping, one wake-up for all (`crate::ticks`). After a stall, resume
    // from now rather than bursting.
    let next = group.next_due + group.interval;
    group.next_due = if next > now {
        crate::ticks::next_on_grid(next, group.interval, now)
    } else {
        now
    };
    if end.answered {
        dev.failed_polls = 0;
        dev.probe_failures = 0;
        dev.probe_at = None;
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
        blame_suspects(bus, dev, now, sink);
        return;
    }
    let Some((error, blamed_try)) = end.failure else {
        // Nothing was due in this group (its reads are all backing off).
        return;
    };
    if let Some(retry_at) = link_not_before {
        // The link cannot even try (the serial port is gone): the failure is the wire's,
        // not this device's. Wait for the wire instead of backing off.
        dev.groups[g].next_due = retry_at;
        mark_offline(bus, dev, &error, retry_at, true, sink);
        return;
    }
    if blamed_try {
        tracing::debug!(bus, device = %dev.name, error_kind = error.kind(), error = %error, "a read known to fail failed again; retrying it with backoff");
        return;
    }
    dev.failed_polls = dev.failed_polls.saturating_add(1);
    if dev.availability == Availability::Offline {
        dev.probe_failures = dev.probe_failures.saturating_add(1);
        dev.probe_at = Some(now + backoff::delay(dev.probe_failures, BACKOFF_MIN, BACKOFF_MAX));
        tracing::debug!(bus, device = %dev.name, error_kind = error.kind(), error = %error, "device still not answering");
    } else if dev.failed_polls >= dev.offline_after {
        // The failures were the device's, not its reads': every read starts afresh.
        for health in dev.reads_mut() {
            health.standing = Standing::Healthy;
            health.failures = 0;
        }
        dev.probe_failures = 1;
        let retry_at = now + backoff::delay(1, BACKOFF_MIN, BACKOFF_MAX);
        dev.probe_at = Some(retry_at);
        mark_offline(bus, dev, &error, retry_at, false, sink);
    } else {
        // Confirm the outage on a short backoff rather than a whole interval later: a meter
        // polled every hour must not take three hours to be reported offline.
        let confirm_at = now + backoff::delay(dev.failed_polls, BACKOFF_MIN, BACKOFF_MAX);
        let group = &mut dev.groups[g];
        group.next_due = group.next_due.min(confirm_at);
        tracing::debug!(
            bus,
            device = %dev.name,
            error_kind = error.kind(),
            error = %error,
            failed_polls = dev.failed_polls,
            offline_after = dev.offline_after,
            "device answered nothing in this poll"
        );
    }
}

/// The device answered: reads that failed since are at fault themselves. Each is tried again
/// with its own backoff, and its points are published bad.
fn blame_suspects(bus: &str, dev: &mut PolledDevice, now: Instant, sink: &dyn SampleSink) {
    let mut blamed: Vec<(ReadRequest, LinkError)> = Vec::new();
    for group in dev.groups.iter_mut() {
        for slot in group.slots.iter_mut() {
            for read in slot.reads_mut() {
                let health = &mut read.state;
                if let Standing::Suspect(error) = &health.standing {
                    blamed.push((read.request.clone(), error.clone()));
                    health.standing = Standing::Blamed {
                        retry_at: now + backoff::delay(health.failures, BACKOFF_MIN, BACKOFF_MAX),
                    };
                }
            }
        }
    }
    let ts_ms = unix_ms_now();
    for (request, error) in blamed {
        let quality = error.quality();
        let changed = changed_points(dev, &request.points, quality);
        if !changed.is_empty() {
            tracing::warn!(
                bus,
                device = %dev.name,
                points = %changed.join(","),
                table = ?request.table,
                start = request.start,
                count = request.count,
                error_kind = error.kind(),
                error = %error,
                "points bad: the device answers other reads but not this one; trying it again \
                 with backoff"
            );
        }
        mark_bad(dev, &request.points, quality, ts_ms, sink);
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
    if link_down {
        dev.probe_at = Some(retry_at);
    }
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
            failed_polls = dev.failed_polls,
            retry_in_ms,
            "device not answering: offline; retrying with backoff"
        );
    }
    dev.availability = Availability::Offline;
    dev.offline_with_link = link_down;
    sink.send(Sample::DeviceAvailability {
        device: dev.name.clone(),
        online: false,
    });
}
