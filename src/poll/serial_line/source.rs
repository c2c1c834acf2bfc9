//! The serial_line bus task: open the port, read lines (streamed, or asked for with a
//! query), turn them into samples, and survive the port going away.
//!
//! Owns the port's lifecycle and every timer of a serial_line bus: the query period and
//! response timeout, the staleness of streaming sensors, the watch on the device node, and
//! the reopen backoff. Framing, selection and extraction are delegated to the pure modules
//! beside it; samples go to the sink, counters to the registry. Touches nothing else.
//!
//! Port lifecycle (issue 6 item 2): the policy shared with Modbus RTU lives in
//! [`serial_port`](crate::poll::serial_port): a read error, end of file, or the path no
//! longer naming the node that was opened ends the session, the port is dropped at once and
//! every device goes offline; the path is looked at every
//! [`WATCH_PERIOD`](crate::poll::serial_port::WATCH_PERIOD) and the port reopened as soon as
//! it is back. A reopened session counts as working after a good line, or [`SETTLED_AFTER`]
//! without trouble.
//!
//! Point quality: a point that finds no value in a line that was its device's (no match, not
//! a number) is published bad once as `decode`; when its device goes offline (no good line
//! for `stale_after`, or the port lost) every point is published bad once as `stale`. Each
//! is published again with its next value.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep_until, timeout_at, Instant, MissedTickBehavior};
use tokio_serial::{ClearBuffer, SerialPort, SerialStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::{Bus, BusKind, Device, DeviceKind, LineQuery, SerialLine, SerialLineDevice};
use crate::health::{Beat, Health};
use crate::model::{unix_ms_now, Quality, Reading, Sample, SampleSink};
use crate::poll::serial_port::{self, describe_open_error, PortWatch, WATCH_PERIOD};

use super::codec::{Frame, LineCodec};
use super::counters::{bump, counters, SerialLineCounters};
use super::extract::{extract, select, Selection};

/// A reopened session counts as working after a good line, or after this long.
const SETTLED_AFTER: Duration = Duration::from_secs(5);
/// The loop ticks at least every WATCH_PERIOD; this is what the watchdog allows.
const BEAT_ALLOWANCE: Duration = Duration::from_secs(10);
pub(super) const READ_CHUNK: usize = 512;

struct Sensor {
    name: Arc<str>,
    spec: SerialLineDevice,
    interval: Duration,
    /// Per point: name and unit, shared by every reading.
    labels: Vec<(Arc<str>, Option<Arc<str>>)>,
    /// Per point: why it is bad, as last published (`None`: good, or never read).
    quality: Vec<Option<Quality>>,
    /// A line of this sensor arrived since the start: its points have something to go stale.
    heard: bool,
    online: Option<bool>,
    last_good: Instant,
}

/// The query in flight, for the one query sensor a port may carry.
struct QueryClock {
    sensor: usize,
    next_send: Instant,
    /// Deadline of the unanswered query.
    awaiting: Option<Instant>,
}

enum SessionEnd {
    Cancelled,
    Lost(String),
}

struct BusTask {
    bus: String,
    line: SerialLine,
    sensors: Vec<Sensor>,
    sink: Arc<dyn SampleSink>,
    counters: Arc<SerialLineCounters>,
    beat: Beat,
    cancel: CancellationToken,
    /// When to look for the port and reopen it, and the down / back log lines.
    port: PortWatch,
}

/// Reads every device of a serial_line `bus` until `cancel` fires. Never returns early on
/// port, line or device errors. Devices without serial_line settings are ignored.
pub async fn run_serial_line_bus(
    bus: Bus,
    devices: Vec<Device>,
    sink: Arc<dyn SampleSink>,
    health: Arc<Health>,
    cancel: CancellationToken,
) {
    let BusKind::SerialLine(line) = bus.kind else {
        warn!(bus = %bus.name, "run_serial_line_bus was given a bus that is not serial_line; it polls nothing");
        cancel.cancelled().await;
        return;
    };
    let now = Instant::now();
    let sensors = devices
        .into_iter()
        .filter_map(|d| {
            let DeviceKind::SerialLine(spec) = d.kind else {
                return None;
            };
            let labels = spec
                .points
                .iter()
                .map(|p| (Arc::from(p.name.as_str()), p.unit.as_deref().map(Arc::from)))
                .collect();
            Some(Sensor {
                name: Arc::from(d.name.as_str()),
                quality: vec![None; spec.points.len()],
                heard: false,
                spec,
                interval: d.interval,
                labels,
                online: None,
                last_good: now,
            })
        })
        .collect();
    let mut task = BusTask {
        beat: health.register(format!("bus {}", bus.name), BEAT_ALLOWANCE),
        counters: counters(&bus.name),
        port: PortWatch::new(&bus.name, &line.serial.path),
        bus: bus.name,
        line,
        sensors,
        sink,
        cancel,
    };
    task.run().await;
}

impl BusTask {
    async fn run(&mut self) {
        loop {
            self.beat.tick();
            if self.cancel.is_cancelled() {
                return;
            }
            match serial_port::open(&self.line.serial) {
                Ok(port) => match self.session(port).await {
                    SessionEnd::Cancelled => return,
                    SessionEnd::Lost(why) => {
                        bump(&self.counters.port_lost);
                        self.port_down(&why);
                    }
                },
                Err(e) => {
                    let why = describe_open_error(&e, &self.line.serial.path);
                    self.port_down(&why);
                }
            }
            if !self.wait_before_reopen().await {
                return;
            }
        }
    }

    fn port_down(&mut self, why: &str) {
        self.port.lost(why);
        for i in 0..self.sensors.len() {
            self.set_online(i, false);
        }
    }

    /// Waits until the port is worth opening again; false when cancelled.
    async fn wait_before_reopen(&mut self) -> bool {
        loop {
            self.beat.tick();
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                _ = sleep_until(self.port.next_look()) => {}
            }
            if self.port.look() {
                return true;
            }
        }
    }

    fn settle(&mut self) {
        self.port.settled();
    }

    fn set_online(&mut self, index: usize, online: bool) {
        let sensor = &mut self.sensors[index];
        if sensor.online != Some(online) {
            sensor.online = Some(online);
            self.sink.send(Sample::DeviceAvailability {
                device: sensor.name.clone(),
                online,
            });
            if !online && sensor.heard {
                let ts_ms = unix_ms_now();
                for point in 0..sensor.labels.len() {
                    self.point_bad(index, point, Quality::Stale, ts_ms);
                }
                self.sink.send(Sample::PollDone {
                    device: self.sensors[index].name.clone(),
                });
            }
        }
    }

    /// Publishes a point bad, once per change of cause.
    fn point_bad(&mut self, index: usize, point: usize, quality: Quality, ts_ms: u64) {
        let sensor = &mut self.sensors[index];
        if sensor.quality[point] == Some(quality) {
            return;
        }
        sensor.quality[point] = Some(quality);
        let (name, unit) = &sensor.labels[point];
        self.sink.send(Sample::Reading(Reading {
            device: sensor.name.clone(),
            point: name.clone(),
            value: Err(quality),
            unit: unit.clone(),
            ts_ms,
        }));
    }

    async fn session(&mut self, mut port: SerialStream) -> SessionEnd {
        let path = self.line.serial.path.clone();
        self.port.opened();
        // Bytes queued before we opened belong to nobody: a half line, or noise from the
        // adapter powering up.
        if let Err(e) = port.clear(ClearBuffer::Input) {
            debug!(bus = %self.bus, "cannot flush the input of {}: {e}", path.display());
        }
        let mut codec = LineCodec::new(&self.line.terminator, self.line.max_line);
        let started = Instant::now();
        for sensor in &mut self.sensors {
            sensor.last_good = started;
        }
        let mut settled = false;
        let mut query = self
            .sensors
            .iter()
            .position(|s| s.spec.query.is_some())
            .map(|sensor| QueryClock {
                sensor,
                next_send: started,
                awaiting: None,
            });
        let mut watch = tokio::time::interval(WATCH_PERIOD);
        watch.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut buf = [0u8; READ_CHUNK];
        loop {
            let query_due = query.as_ref().map(|q| q.awaiting.unwrap_or(q.next_send));
            tokio::select! {
                _ = self.cancel.cancelled() => return SessionEnd::Cancelled,
                read = port.read(&mut buf) => match read {
                    Ok(0) => return SessionEnd::Lost("the port reads end of file (hung up: adapter unplugged?)".into()),
                    Ok(n) => {
                        codec.push(&buf[..n]);
                        while let Some(frame) = codec.next_frame() {
                            if self.frame(frame, query.as_mut()) && !settled {
                                settled = true;
                                self.settle();
                            }
                        }
                    }
                    Err(e) => return SessionEnd::Lost(format!("reading failed: {e}")),
                },
                _ = watch.tick() => {
                    self.beat.tick();
                    if let Err(why) = self.port.check_node() {
                        return SessionEnd::Lost(why);
                    }
                    self.check_silence();
                    if !settled && started.elapsed() >= SETTLED_AFTER {
                        settled = true;
                        self.settle();
                    }
                }
                _ = sleep_until(query_due.unwrap_or(started)), if query_due.is_some() => {
                    let Some(clock) = query.as_mut() else { continue };
                    if let Some(err) = self.query_turn(clock, &mut port, &mut codec).await {
                        return SessionEnd::Lost(err);
                    }
                }
            }
        }
    }

    /// A query deadline passed: count a missing answer, or send the next query.
    async fn query_turn(
        &mut self,
        clock: &mut QueryClock,
        port: &mut SerialStream,
        codec: &mut LineCodec,
    ) -> Option<String> {
        let now = Instant::now();
        if let Some(deadline) = clock.awaiting {
            if now >= deadline {
                clock.awaiting = None;
                bump(&self.counters.no_answer);
                debug!(bus = %self.bus, device = %self.sensors[clock.sensor].name, "no answer to the query");
            }
            return None;
        }
        if now < clock.next_send {
            return None;
        }
        let sensor = &self.sensors[clock.sensor];
        let q = sensor.spec.query.clone()?;
        clock.next_send = (clock.next_send + sensor.interval).max(now);
        if let Err(e) = send_query(port, codec, &q).await {
            return Some(e);
        }
        clock.awaiting = Some(Instant::now() + q.response_timeout);
        None
    }

    fn check_silence(&mut self) {
        for i in 0..self.sensors.len() {
            let sensor = &self.sensors[i];
            if sensor.online != Some(false) && sensor.last_good.elapsed() > sensor.spec.stale_after
            {
                debug!(bus = %self.bus, device = %sensor.name, "no good line for {:?}: offline", sensor.spec.stale_after);
                self.set_online(i, false);
            }
        }
    }

    /// Handles one frame; true when some device accepted it.
    fn frame(&mut self, frame: Frame, mut query: Option<&mut QueryClock>) -> bool {
        let text = match frame {
            Frame::Garbage => {
                bump(&self.counters.garbage);
                return false;
            }
            Frame::Overlong => {
                bump(&self.counters.overlong);
                return false;
            }
            Frame::Line(text) => text,
        };
        bump(&self.counters.lines);
        let ts_ms = unix_ms_now();
        let mut wanted = false;
        let mut accepted = false;
        for i in 0..self.sensors.len() {
            let asking = query.as_deref().is_some_and(|q| q.sensor == i);
            if asking && query.as_deref().is_some_and(|q| q.awaiting.is_none()) {
                // A late answer or unsolicited chatter: not an answer to any query.
                continue;
            }
            match select(&self.sensors[i].spec, &text) {
                Selection::NotForDevice => {}
                Selection::BadChecksum(e) => {
                    wanted = true;
                    bump(&self.counters.bad_checksum);
                    debug!(bus = %self.bus, device = %self.sensors[i].name, "line skipped, {e}: {text:?}");
                }
                Selection::Accepted(payload) => {
                    wanted = true;
                    accepted = true;
                    if asking {
                        if let Some(q) = query.as_deref_mut() {
                            q.awaiting = None;
                        }
                    }
                    self.sensors[i].last_good = Instant::now();
                    self.set_online(i, true);
                    self.publish(i, payload, ts_ms);
                }
            }
        }
        if !wanted {
            bump(&self.counters.ignored);
        }
        accepted
    }

    fn publish(&mut self, index: usize, payload: &str, ts_ms: u64) {
        self.sensors[index].heard = true;
        for point in 0..self.sensors[index].spec.points.len() {
            let sensor = &mut self.sensors[index];
            let (name, unit) = &sensor.labels[point];
            match extract(&sensor.spec.points[point], payload) {
                Ok(value) => {
                    sensor.quality[point] = None;
                    self.sink.send(Sample::Reading(Reading {
                        device: sensor.name.clone(),
                        point: name.clone(),
                        value: Ok(value),
                        unit: unit.clone(),
                        ts_ms,
                    }));
                }
                Err(e) => {
                    bump(&self.counters.unparsed);
                    debug!(bus = %self.bus, device = %sensor.name, point = %name, "no value: {e}");
                    self.point_bad(index, point, Quality::Decode, ts_ms);
                }
            }
        }
        self.sink.send(Sample::PollDone {
            device: self.sensors[index].name.clone(),
        });
    }
}

/// Flushes what is pending (a late answer to the previous query must not pass for the
/// answer to this one), then sends the query within its response timeout.
pub(super) async fn send_query(
    port: &mut SerialStream,
    codec: &mut LineCodec,
    query: &LineQuery,
) -> Result<(), String> {
    if let Err(e) = port.clear(ClearBuffer::Input) {
        debug!("cannot flush the serial input before a query: {e}");
    }
    codec.reset();
    let deadline = Instant::now() + query.response_timeout;
    match timeout_at(deadline, async {
        port.write_all(&query.bytes).await?;
        port.flush().await
    })
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("writing the query failed: {e}")),
        Err(_) => {
            Err("the query could not be written within the response timeout (output stuck)".into())
        }
    }
}
