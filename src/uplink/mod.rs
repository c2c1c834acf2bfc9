//! Uplink: everything MQTT. `topic` builds topics and payloads, `state` is the link state
//! machine (no I/O, time passed in), `mqtt` is the only importer of rumqttc.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Mqtt;
use crate::health::Health;
use crate::model::{Sample, SampleSink};
use crate::queue::Outbox;

/// Turns samples from the bus tasks into outbox records (topic + payload with `seq`).
/// Never blocks and never fails: the outbox bounds memory.
#[derive(Debug)]
pub struct Publisher {
    pub outbox: Arc<Outbox>,
}

impl SampleSink for Publisher {
    fn send(&self, sample: Sample) {
        let _ = sample;
    }
}

/// Keeps the MQTT link up and drains the outbox until `shutdown` fires, then publishes what
/// is queued (bounded in time), the retained `offline` status, and disconnects.
pub async fn run(
    mqtt: Mqtt,
    outbox: Arc<Outbox>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let _ = (mqtt, outbox, health);
    shutdown.cancelled().await;
    Ok(())
}

impl Publisher {
    pub fn new(mqtt: &Mqtt, outbox: Arc<Outbox>) -> Self {
        let _ = mqtt;
        Publisher { outbox }
    }
}
