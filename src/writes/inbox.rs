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
///
/// When the loop ends (a reload restarts or removes its bus, or the agent stops), the
/// commands still waiting here or in the channel are answered `rejected` as they go, so every
/// command still gets its one result.
pub struct Inbox {
    arrivals: Option<mpsc::Receiver<Queued>>,
    waiting: Pending<PointKey, Queued>,
    writes: Arc<WriteLog>,
    /// Where the commands left when the loop ends are answered.
    leftovers: Option<Arc<dyn SampleSink>>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("waiting", &self.waiting)
            .finish_non_exhaustive()
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let Some(sink) = self.leftovers.take() else {
            return;
        };
        let mut left = Vec::new();
        if let Some(arrivals) = &mut self.arrivals {
            arrivals.close();
            while let Ok(command) = arrivals.try_recv() {
                left.push(command);
            }
        }
        while let Some((_, command)) = self.waiting.pop() {
            left.push(command);
        }
        for command in left {
            tracing::info!(
                device = %command.target.device,
                point = %command.target.point_name,
                "command not run: its bus loop stopped before it ran"
            );
            let why = Refusal::NotServed;
            let outcome = command.outcome(why.status(), None, Some(why.to_string()));
            answer(sink.as_ref(), &command.target, &outcome);
        }
    }
}

impl Inbox {
    pub(super) fn new(
        arrivals: mpsc::Receiver<Queued>,
        writes: Arc<WriteLog>,
        leftovers: Arc<dyn SampleSink>,
    ) -> Inbox {
        Inbox {
            arrivals: Some(arrivals),
            waiting: Pending::default(),
            writes,
            leftovers: Some(leftovers),
        }
    }

    /// The inbox of a loop whose devices take no writes.
    pub fn none() -> Inbox {
        Inbox {
            arrivals: None,
            waiting: Pending::default(),
            writes: Arc::default(),
            leftovers: None,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{DataType, Point, Table, WriteFunction, WriteSettings};
    use crate::model::{Sample, Value};
    use crate::poll::modbus::codec::Encoded;
    use crate::writes::gate::Admitted;

    #[derive(Default)]
    struct Answers(Mutex<Vec<serde_json::Value>>);

    impl SampleSink for Answers {
        fn send(&self, sample: Sample) {
            if let Sample::CommandResult { result, .. } = sample {
                let json = serde_json::from_slice(&result).unwrap();
                self.0.lock().unwrap().push(json);
            }
        }
    }

    fn target() -> Arc<Target> {
        let point = Point {
            write: Some(WriteSettings {
                min: None,
                max: None,
                function: WriteFunction::Single,
                min_write_interval: Duration::from_secs(1),
            }),
            ..Point::new("setpoint", Table::Holding, 0, DataType::U16)
        };
        Arc::new(Target {
            device: "hvac".into(),
            point_name: "setpoint".into(),
            unit: 1,
            point,
        })
    }

    fn queued(target: &Arc<Target>, id: &str, deadline_ms: Option<u64>) -> Queued {
        Queued {
            target: target.clone(),
            admitted: Admitted {
                id: Some(id.into()),
                requested: Value::Int(7),
                encoded: Encoded::Registers(vec![7]),
                deadline_ms,
            },
        }
    }

    fn inbox() -> (mpsc::Sender<Queued>, Inbox) {
        inbox_answering(Arc::new(Answers::default()))
    }

    fn inbox_answering(leftovers: Arc<Answers>) -> (mpsc::Sender<Queued>, Inbox) {
        let (tx, rx) = mpsc::channel(8);
        (tx, Inbox::new(rx, Arc::default(), leftovers))
    }

    #[test]
    fn commands_left_when_the_bus_loop_ends_are_each_answered_rejected() {
        let answers = Arc::new(Answers::default());
        let (tx, mut inbox) = inbox_answering(answers.clone());
        let target = target();
        tx.try_send(queued(&target, "waiting", None)).unwrap();
        inbox.collect(answers.as_ref());
        tx.try_send(queued(&target, "in-channel", None)).unwrap();
        drop(inbox);
        let got = answers.0.lock().unwrap().clone();
        let ids: Vec<&str> = got.iter().map(|a| a["id"].as_str().unwrap()).collect();
        // The one still in the channel supersedes nothing: the bus never took it.
        assert_eq!(ids, ["in-channel", "waiting"], "{got:?}");
        assert!(got.iter().all(|a| a["status"] == "rejected"), "{got:?}");
        assert!(
            tx.try_send(queued(&target, "late", None)).is_err(),
            "closed"
        );
    }

    #[test]
    fn a_command_that_expired_while_it_waited_for_the_bus_is_answered_expired_not_run() {
        let (tx, mut inbox) = inbox();
        let answers = Answers::default();
        let target = target();
        tx.try_send(queued(&target, "late", Some(unix_ms_now() - 1)))
            .unwrap();
        assert!(inbox.next_due(&answers).is_none());
        let got = answers.0.lock().unwrap().clone();
        assert_eq!(got[0]["status"], "expired", "{got:?}");
        assert_eq!(got[0]["id"], "late");
    }

    #[test]
    fn a_command_behind_a_write_of_the_same_point_waits_out_min_write_interval_or_is_refused() {
        let (tx, mut inbox) = inbox();
        let answers = Answers::default();
        let target = target();
        tx.try_send(queued(&target, "first", None)).unwrap();
        let first = inbox.next_due(&answers).expect("runs");
        inbox.wrote(&first.target, Instant::now());
        tx.try_send(queued(&target, "second", None)).unwrap();
        assert!(inbox.next_due(&answers).is_none());
        let got = answers.0.lock().unwrap().clone();
        assert_eq!(got[0]["status"], "rejected", "{got:?}");
        assert!(got[0]["error"]
            .as_str()
            .unwrap()
            .contains("min_write_interval"));
    }

    #[test]
    fn a_newer_command_supersedes_the_waiting_one_which_is_answered() {
        let (tx, mut inbox) = inbox();
        let answers = Answers::default();
        let target = target();
        tx.try_send(queued(&target, "a", None)).unwrap();
        tx.try_send(queued(&target, "b", None)).unwrap();
        let next = inbox.next_due(&answers).expect("the newer one runs");
        assert_eq!(next.admitted.id.as_deref(), Some("b"));
        let got = answers.0.lock().unwrap().clone();
        assert_eq!(
            (&got[0]["id"], &got[0]["status"]),
            (&"a".into(), &"superseded".into())
        );
        assert!(inbox.next_due(&answers).is_none());
    }
}
