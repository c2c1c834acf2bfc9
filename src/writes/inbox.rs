//! A bus loop's side of the commands: the channel the router fills, the loop's queue of
//! waiting commands (one per point, see `pending`), and the last-write times that
//! `min_write_interval` is measured from. The loop takes commands from here between two
//! requests; the rules that depend on when a command finally runs (expiry, the write
//! interval) are checked again here, right before the write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::model::{unix_ms_now, SampleSink};

use super::command::{answer, Queued, Target};
use super::gate::{self, Refusal};
use super::payload::Status;
use super::pending::Pending;

/// When each point was last written, shared by the router (to refuse a command early) and
/// the bus loops (which write).
#[derive(Debug, Default)]
pub struct WriteLog {
    last: Mutex<HashMap<Arc<str>, LastWrites>>,
}

/// Per point of one device.
type LastWrites = HashMap<Arc<str>, Instant>;

impl WriteLog {
    pub fn last(&self, device: &str, point: &str) -> Option<Instant> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.get(device).and_then(|p| p.get(point)).copied()
    }

    pub fn wrote(&self, target: &Target, at: Instant) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.entry(target.device.clone())
            .or_default()
            .insert(target.point_name.clone(), at);
    }
}

type PointKey = (Arc<str>, Arc<str>);

/// The commands of one bus loop. Without writable points it holds nothing and never wakes
/// the loop.
#[derive(Debug)]
pub struct Inbox {
    arrivals: Option<mpsc::Receiver<Queued>>,
    waiting: Pending<PointKey, Queued>,
    writes: Arc<WriteLog>,
}

impl Inbox {
    pub(super) fn new(arrivals: mpsc::Receiver<Queued>, writes: Arc<WriteLog>) -> Inbox {
        Inbox {
            arrivals: Some(arrivals),
            waiting: Pending::default(),
            writes,
        }
    }

    /// The inbox of a loop whose devices take no writes.
    pub fn none() -> Inbox {
        Inbox {
            arrivals: None,
            waiting: Pending::default(),
            writes: Arc::default(),
        }
    }

    /// Waits for the next command to arrive (forever when none can) and queues it. Cancel
    /// safe: a command is either queued or still in the channel.
    pub async fn arrival(&mut self, sink: &dyn SampleSink) {
        let Some(arrivals) = &mut self.arrivals else {
            return std::future::pending().await;
        };
        match arrivals.recv().await {
            Some(command) => self.queue(command, sink),
            // The router is gone (shutdown): nothing will come.
            None => {
                self.arrivals = None;
                std::future::pending().await
            }
        }
    }

    /// Queues what has arrived without waiting.
    pub fn collect(&mut self, sink: &dyn SampleSink) {
        while let Some(command) = self.arrivals.as_mut().and_then(|a| a.try_recv().ok()) {
            self.queue(command, sink);
        }
    }

    fn queue(&mut self, command: Queued, sink: &dyn SampleSink) {
        let key = (
            command.target.device.clone(),
            command.target.point_name.clone(),
        );
        if let Some(older) = self.waiting.push(key, command) {
            tracing::info!(
                device = %older.target.device,
                point = %older.target.point_name,
                "command superseded by a newer one for the same point before it ran"
            );
            let outcome = older.outcome(
                Status::Superseded,
                None,
                Some("a newer command for this point replaced it before it ran".into()),
            );
            answer(sink, &older.target, &outcome);
        }
    }

    /// The next command to run now; a waiting command that expired, or that would write its
    /// point too soon after the last write, is answered on the way and not run.
    pub fn next_due(&mut self, sink: &dyn SampleSink) -> Option<Queued> {
        self.collect(sink);
        while let Some((_, command)) = self.waiting.pop() {
            let now_ms = unix_ms_now();
            let refusal = if command.admitted.expired(now_ms) {
                let deadline = command.admitted.deadline_ms.unwrap_or(now_ms);
                Err(Refusal::Expired {
                    late_ms: now_ms - deadline,
                    why: "it waited for the bus past its expires or command_max_age",
                })
            } else {
                let last = self
                    .writes
                    .last(&command.target.device, &command.target.point_name);
                gate::spaced(&command.target.point, last, Instant::now())
            };
            match refusal {
                Ok(()) => return Some(command),
                Err(why) => {
                    tracing::info!(
                        device = %command.target.device,
                        point = %command.target.point_name,
                        "command not run: {why}"
                    );
                    let outcome = command.outcome(why.status(), None, Some(why.to_string()));
                    answer(sink, &command.target, &outcome);
                }
            }
        }
        None
    }

    /// Whether a command waits (after [`collect`](Self::collect)).
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The point of `command` was written (or may have been: a write whose reply was lost)
    /// at `at`.
    pub fn wrote(&self, target: &Target, at: Instant) {
        self.writes.wrote(target, at);
    }
}
