//! Wiring of the daemon: spawns one task per bus, the uplink and the watchdog, and owns the
//! order of shutdown. No protocol code lives here.
//!
//! Shutdown order matters for "nothing accepted is lost": polling stops first (no new
//! readings), then the uplink drains what is queued, publishes the retained `offline` and
//! disconnects. The whole sequence is bounded so systemd never has to SIGKILL us.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::buffer;
use crate::buffer::Outbox;
use crate::config::Config;
use crate::health::Health;
use crate::model::{CommandSink, SampleSink};
use crate::systemd::Notifier;
use crate::uplink::{self, Publisher};
use crate::writes::router::Router;

/// How long bus tasks get to finish the request they are in after polling is stopped.
const BUS_STOP_GRACE: Duration = Duration::from_millis(500);
/// How long the uplink gets to drain and say `offline` (under systemd's and our 5 s promise).
const UPLINK_STOP_GRACE: Duration = Duration::from_millis(4000);

/// Runs the agent until `stop` fires (a signal, or the demo's timer).
pub async fn run(config: Config, stop: CancellationToken) -> anyhow::Result<()> {
    // Before anything opens the buffer: a second agent on this directory stops here.
    let _state_lock = match buffer::lock::StateLock::acquire(&config.buffer.path) {
        Ok(lock) => Some(lock),
        Err(held @ buffer::lock::LockError::Held { .. }) => return Err(held.into()),
        Err(unavailable) => {
            // The buffer will say what is wrong with the directory and run from memory;
            // refusing to start over a lock would turn a disk fault into an outage.
            tracing::warn!(
                "{unavailable}: running without the lock, so a second agent on it would not \
                 be refused"
            );
            None
        }
    };
    let health = Health::new();
    let outbox = Arc::new(Outbox::open(
        buffer::Settings::new(&config.buffer, config.mqtt.queue_capacity),
        1,
        buffer::IoDriver::Thread,
    ));
    report_to_health(&health, &outbox);
    let publisher: Arc<dyn SampleSink> = Arc::new(Publisher::new(&config.mqtt, outbox.clone()));
    // Only with a writable point does the agent subscribe to commands at all.
    let commands = Router::new(&config, publisher.clone()).map(Arc::new);

    let polling = CancellationToken::new();
    let mut buses = JoinSet::new();
    for bus in &config.buses {
        let devices: Vec<_> = config.devices_on(&bus.name).cloned().collect();
        if devices.is_empty() {
            tracing::warn!(bus = %bus.name, "bus has no devices; it is not opened");
            continue;
        }
        buses.spawn(crate::poll::run_bus(
            bus.clone(),
            devices,
            publisher.clone(),
            health.clone(),
            commands.clone(),
            polling.clone(),
        ));
    }

    let uplink_stop = CancellationToken::new();
    let mut uplink_task = tokio::spawn(uplink::run(
        config.mqtt.clone(),
        outbox.clone(),
        health.clone(),
        commands.map(|c| c as Arc<dyn CommandSink>),
        crate::homeassistant::for_config(&config),
        uplink_stop.clone(),
    ));

    let notifier = Notifier::from_env();
    let watchdog_stop = CancellationToken::new();
    let watchdog = {
        let status_health = health.clone();
        let outbox = outbox.clone();
        let status = move || status_line(&status_health, &outbox);
        tokio::spawn(crate::systemd::watchdog(
            health.clone(),
            status,
            notifier.clone(),
            watchdog_stop.clone(),
        ))
    };
    // Ready means configured and polling: the broker may be unreachable for hours and the
    // service is still doing its job (buffering), so readiness must not wait for it.
    notifier.ready();
    tracing::info!(
        gateway = %config.gateway.id,
        buses = config.buses.len(),
        devices = config.devices.len(),
        broker = %config
            .mqtt
            .servers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        "fieldlink started"
    );

    let uplink_result = tokio::select! {
        _ = stop.cancelled() => None,
        // The uplink only returns on its own after a fatal error (e.g. an unreadable TLS key).
        r = &mut uplink_task => Some(r),
    };

    notifier.stopping();
    polling.cancel();
    let _ = tokio::time::timeout(BUS_STOP_GRACE, async {
        while buses.join_next().await.is_some() {}
    })
    .await;
    buses.abort_all();

    let outcome = match uplink_result {
        Some(r) => r.map_err(anyhow::Error::from).and_then(|r| r),
        None => {
            uplink_stop.cancel();
            match tokio::time::timeout(UPLINK_STOP_GRACE, &mut uplink_task).await {
                Ok(r) => r.map_err(anyhow::Error::from).and_then(|r| r),
                Err(_) => {
                    uplink_task.abort();
                    tracing::warn!(
                        queued = outbox.depth(),
                        "the broker did not take the queued readings in time; exiting without them"
                    );
                    Ok(())
                }
            }
        }
    };
    // Whatever the broker did not acknowledge goes to disk before we exit.
    if let Err(e) = outbox.shutdown() {
        tracing::error!(
            error = %e,
            queued = outbox.depth(),
            "could not save the unacknowledged readings to the buffer on shutdown"
        );
    }
    watchdog_stop.cancel();
    let _ = watchdog.await;
    outcome
}

/// Registers the health topic's sections that come from other modules than the uplink: the
/// durable buffer's status and the serial_line buses' counters.
pub fn report_to_health(health: &Health, outbox: &Arc<Outbox>) {
    let buffered = outbox.clone();
    health.add_report_source("buffer", move || {
        buffered.status().map(|s| s.health_section())
    });
    health.add_report_source("serial_line", crate::poll::serial_line::health_section);
}

fn status_line(health: &Health, outbox: &Outbox) -> String {
    let link = health.link();
    let state = match link.state {
        crate::health::LinkState::Connecting => "connecting",
        crate::health::LinkState::Up => "up",
        crate::health::LinkState::Down => "down",
    };
    let disk = match outbox.status().and_then(|s| s.disk_error) {
        Some(_) => ", buffer in memory only (disk error)",
        None => "",
    };
    format!(
        "link {state}, {} queued, {} dropped, {} reconnects{disk}",
        outbox.depth(),
        outbox.dropped(),
        link.reconnects
    )
}

/// SIGTERM/SIGINT handling for the demo; the agent's own is `signals::agent`.
pub use crate::signals::stop_on_signals;
