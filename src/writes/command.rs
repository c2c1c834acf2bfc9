//! A command on its way from the router to a bus: the point it writes, what was admitted,
//! and how its result is sent upstream.

use std::sync::Arc;

use crate::config::Point;
use crate::model::{unix_ms_now, Sample, SampleSink, Value};

use super::gate::Admitted;
use super::payload::{Outcome, Status};

/// A writable point and where it lives.
#[derive(Debug)]
pub struct Target {
    pub device: Arc<str>,
    pub point_name: Arc<str>,
    pub unit: u8,
    pub point: Point,
}

/// An admitted command on its way to the bus.
#[derive(Debug)]
pub struct Queued {
    pub target: Arc<Target>,
    pub admitted: Admitted,
}

impl Queued {
    /// The result of this command, ended with `status`.
    pub fn outcome(&self, status: Status, value: Option<Value>, error: Option<String>) -> Outcome {
        Outcome {
            id: self.admitted.id.clone(),
            status,
            requested: Some(self.admitted.requested.clone()),
            value,
            error,
            ts_ms: unix_ms_now(),
        }
    }
}

/// Sends a command's result upstream.
pub fn answer(sink: &dyn SampleSink, target: &Target, outcome: &Outcome) {
    sink.send(Sample::CommandResult {
        device: target.device.clone(),
        point: target.point_name.clone(),
        result: outcome.to_json().into_bytes(),
    });
}
