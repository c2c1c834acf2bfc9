//! Wiring of the daemon: opens the buffer, hands the buses and the uplink to the
//! `supervisor`, runs the watchdog, turns SIGHUP into reloads, and owns the order of
//! shutdown. No protocol code lives here.
//!
//! Shutdown order matters for "nothing accepted is lost": polling stops first (no new
//! readings), then the uplink drains what is queued, publishes the retained `offline` and
//! disconnects. The whole sequence is bounded so systemd never has to SIGKILL us.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::buffer::{self, Outbox};
use crate::config::Config;
use crate::health::Health;
use crate::supervisor::Supervisor;
use crate::systemd::Notifier;

/// Runs the agent until `stop` fires (a signal, or the demo's timer); each message on
/// `reload` re-reads the config file and applies what changed (see `supervisor`).
pub async fn run(
    config: Config,
    stop: CancellationToken,
    mut reload: Option<mpsc::Receiver<()>>,
) -> anyhow::Result<()> {
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
    // Before any timer starts: polls and housekeeping go on this gateway's own phase.
    crate::ticks::set_gateway(&config.gateway.id);
    let health = Health::new();
    // Opened once per run: a reload never reopens it (see README, "Reload").
    let outbox = Arc::new(Outbox::open(
        buffer::Settings::new(&config.buffer, config.mqtt.queue_capacity),
        1,
        buffer::IoDriver::Thread,
    ));
    report_to_health(&health, &outbox);
    let (gateway, buses, devices) = (
        config.gateway.id.clone(),
        config.buses.len(),
        config.devices.len(),
    );
    let broker = config
        .mqtt
        .servers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let mut supervisor = Supervisor::start(config, outbox.clone(), health.clone());

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
    tracing::info!(gateway = %gateway, buses, devices, broker = %broker, "fieldlink started");
    // After the first log line, so a start that never gets this far is told apart from
    // anything the release could do (it logs its own line at debug).
    crate::footprint::trim_after_startup();

    let uplink_ended = loop {
        let asked = async {
            match reload.as_mut() {
                Some(r) => r.recv().await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            _ = stop.cancelled() => Event::Stop,
            // The uplink only returns on its own after a fatal error (e.g. an unreadable TLS key).
            r = supervisor.uplink_ended() => Event::UplinkEnded(r),
            Some(()) = asked => Event::Reload,
        };
        match event {
            Event::Stop => break None,
            Event::UplinkEnded(r) => break Some(r),
            Event::Reload => supervisor.reload(&notifier).await,
        }
    };

    notifier.stopping();
    let outcome = supervisor.shutdown(uplink_ended).await;
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

enum Event {
    Stop,
    UplinkEnded(anyhow::Result<()>),
    Reload,
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
