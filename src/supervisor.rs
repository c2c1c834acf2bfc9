//! The running tasks of the agent and their restarts: one bus task per bus, owned by bus
//! name with its own cancellation token, and the uplink. Carries out a reload's plan
//! (`reload::Plan`) by stopping and starting only what the plan names, and stops everything
//! in order on shutdown. Owns no protocol code and never opens the buffer: the outbox it is
//! given lives for the whole run.
//!
//! Readings reach the outbox through [`Publishers`], one handle the bus tasks keep across
//! reloads, so a new topic prefix or payload mode never restarts a bus. Commands go through
//! one [`Router`] for the whole run while any point is writable; a reload updates its map in
//! place and a restarted bus registers its new inbox over its old routes (see
//! `writes::router`).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::buffer::Outbox;
use crate::config::Config;
use crate::health::Health;
use crate::model::{CommandSink, Sample, SampleSink};
use crate::reload::{self, Plan, ReloadStatus};
use crate::systemd::Notifier;
use crate::uplink::{self, Publisher};
use crate::writes::router::Router;

/// How long a bus task gets to finish the request it is in once it is told to stop.
const BUS_STOP_GRACE: Duration = Duration::from_millis(500);
/// How long the uplink gets to drain and say `offline` (under systemd's and our 5 s promise).
const UPLINK_STOP_GRACE: Duration = Duration::from_millis(4000);

/// The publisher of the running config, swapped whole when a reload changes how readings
/// are shaped (prefix, payload mode, report by exception).
#[derive(Debug)]
pub struct Publishers(RwLock<Arc<Publisher>>);

impl Publishers {
    fn new(publisher: Publisher) -> Publishers {
        Publishers(RwLock::new(Arc::new(publisher)))
    }

    fn replace(&self, publisher: Publisher) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(publisher);
    }
}

impl SampleSink for Publishers {
    fn send(&self, sample: Sample) {
        let publisher = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        publisher.send(sample);
    }
}

struct BusTask {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

struct UplinkTask {
    stop: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

pub struct Supervisor {
    config: Config,
    outbox: Arc<Outbox>,
    health: Arc<Health>,
    publishers: Arc<Publishers>,
    commands: Option<Arc<Router>>,
    buses: BTreeMap<String, BusTask>,
    /// `None` only while a reload replaces it.
    uplink: Option<UplinkTask>,
    reload_status: ReloadStatus,
}

impl Supervisor {
    /// Starts a task for every bus that has devices, and the uplink.
    pub fn start(config: Config, outbox: Arc<Outbox>, health: Arc<Health>) -> Supervisor {
        let publishers = Arc::new(Publishers::new(
            Publisher::new(&config.mqtt, outbox.clone()).with_devices(&config.devices),
        ));
        let sink: Arc<dyn SampleSink> = publishers.clone();
        // Only with a writable point does the agent subscribe to commands at all.
        let commands = Router::new(&config, sink).map(Arc::new);
        let uplink = Some(spawn_uplink(&config, &outbox, &health, &commands));
        let reload_status = ReloadStatus::default();
        reload_status.report_to(&health);
        let mut supervisor = Supervisor {
            config,
            outbox,
            health,
            publishers,
            commands,
            buses: BTreeMap::new(),
            uplink,
            reload_status,
        };
        let names: Vec<String> = supervisor
            .config
            .buses
            .iter()
            .map(|b| b.name.clone())
            .collect();
        for name in names {
            supervisor.start_bus(&name);
        }
        supervisor
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Ends when the uplink task ends on its own (only after a fatal error, e.g. an
    /// unreadable TLS key). Cancel safe.
    pub async fn uplink_ended(&mut self) -> anyhow::Result<()> {
        match &mut self.uplink {
            Some(task) => (&mut task.handle)
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r),
            None => std::future::pending().await,
        }
    }

    /// Re-reads the config file and applies it, or keeps the running config when the file is
    /// refused; tells systemd (RELOADING=1, then READY=1 either way: the agent runs) and the
    /// health topic how it went.
    pub async fn reload(&mut self, notifier: &Notifier) {
        notifier.reloading();
        let asked_at = crate::model::unix_ms_now();
        tracing::info!(config = %self.config.source.display(), "SIGHUP: reloading the configuration");
        let attempt = match reload::read(self.config.source.clone()).await {
            Err(errors) => reload::refused(&errors, asked_at),
            Ok(new) => {
                let plan = Plan::between(&self.config, &new);
                self.apply(new, &plan).await;
                reload::log_plan(&plan);
                reload::applied(&plan, asked_at)
            }
        };
        self.reload_status.set(attempt);
        notifier.ready();
        // Parsing the file again peaked the heap as at start.
        crate::footprint::trim_after_startup();
    }

    async fn apply(&mut self, mut new: Config, plan: &Plan) {
        // What waits for a restart keeps its running value: `self.config` stays what runs,
        // and the next reload compares the file with it (and warns again).
        new.buffer = self.config.buffer.clone();
        new.mqtt.queue_capacity = self.config.mqtt.queue_capacity;
        new.log = self.config.log.clone();

        let stopping: Vec<BusTask> = plan
            .stop
            .iter()
            .filter_map(|name| self.buses.remove(name))
            .collect();
        stop_buses(stopping).await;

        let sink: Arc<dyn SampleSink> = self.publishers.clone();
        // A removed device's retained readings stay as they are; its status says it is gone
        // from this gateway's polling. Sent after its bus stopped, so no late `online` of its
        // own can follow.
        for device in &plan.removed_devices {
            sink.send(Sample::DeviceAvailability {
                device: device.as_str().into(),
                online: false,
            });
        }

        if plan.commands {
            self.commands = match self.commands.take() {
                Some(router) if Router::wanted(&new) => {
                    router.update(&new);
                    Some(router)
                }
                _ => Router::new(&new, sink).map(Arc::new),
            };
        }
        if !plan.uplink.is_empty() {
            // The old link drains what it can and says `offline` on its broker before the
            // new one connects (one client id, one connection): the outbox keeps whatever
            // the old broker did not acknowledge, for the new one.
            if let Some(old) = self.uplink.take() {
                if let Err(e) = stop_uplink(old, &self.outbox).await {
                    tracing::warn!(error = %e, "the previous uplink ended with an error");
                }
            }
        }
        if plan.publisher {
            self.publishers
                .replace(Publisher::new(&new.mqtt, self.outbox.clone()).with_devices(&new.devices));
        }
        self.config = new;
        if self.uplink.is_none() {
            self.uplink = Some(spawn_uplink(
                &self.config,
                &self.outbox,
                &self.health,
                &self.commands,
            ));
        }
        for name in &plan.start {
            self.start_bus(name);
        }
    }

    fn start_bus(&mut self, name: &str) {
        let Some(bus) = self.config.bus(name) else {
            return;
        };
        let devices: Vec<_> = self.config.devices_on(name).cloned().collect();
        if devices.is_empty() {
            tracing::warn!(bus = %name, "bus has no devices; it is not opened");
            return;
        }
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(crate::poll::run_bus(
            bus.clone(),
            devices,
            self.publishers.clone(),
            self.health.clone(),
            self.commands.clone(),
            cancel.clone(),
        ));
        self.buses
            .insert(name.to_string(), BusTask { cancel, handle });
    }

    /// Stops polling, then the uplink (which drains and publishes `offline`). Returns the
    /// uplink's outcome.
    pub async fn shutdown(self, uplink_ended: Option<anyhow::Result<()>>) -> anyhow::Result<()> {
        stop_buses(self.buses.into_values().collect()).await;
        match (uplink_ended, self.uplink) {
            (Some(outcome), _) => outcome,
            (None, Some(task)) => stop_uplink(task, &self.outbox).await,
            (None, None) => Ok(()),
        }
    }
}

fn spawn_uplink(
    config: &Config,
    outbox: &Arc<Outbox>,
    health: &Arc<Health>,
    commands: &Option<Arc<Router>>,
) -> UplinkTask {
    let stop = CancellationToken::new();
    let handle = tokio::spawn(uplink::run(
        config.mqtt.clone(),
        outbox.clone(),
        health.clone(),
        commands.clone().map(|c| c as Arc<dyn CommandSink>),
        crate::homeassistant::for_config(config),
        stop.clone(),
    ));
    UplinkTask { stop, handle }
}

/// Cancels every task, gives them [`BUS_STOP_GRACE`] together, then aborts the rest; returns
/// once every one has ended (its port or connection is closed), so a restarted bus never
/// finds its serial port still held.
async fn stop_buses(tasks: Vec<BusTask>) {
    for task in &tasks {
        task.cancel.cancel();
    }
    let mut handles: Vec<JoinHandle<()>> = tasks.into_iter().map(|t| t.handle).collect();
    // A handle leaves the list once awaited to its end (a JoinHandle must not be polled
    // after it completed), so what is left after the grace are the tasks still running.
    let all = async {
        while let Some(handle) = handles.last_mut() {
            let _ = handle.await;
            handles.pop();
        }
    };
    if tokio::time::timeout(BUS_STOP_GRACE, all).await.is_err() {
        for handle in &handles {
            handle.abort();
        }
        for handle in handles {
            let _ = handle.await;
        }
    }
}

async fn stop_uplink(mut task: UplinkTask, outbox: &Outbox) -> anyhow::Result<()> {
    task.stop.cancel();
    match tokio::time::timeout(UPLINK_STOP_GRACE, &mut task.handle).await {
        Ok(r) => r.map_err(anyhow::Error::from).and_then(|r| r),
        Err(_) => {
            task.handle.abort();
            let _ = task.handle.await;
            // Unacknowledged records go back to the head of the outbox for whoever sends next.
            outbox.requeue_inflight();
            tracing::warn!(
                queued = outbox.depth(),
                "the broker did not take the queued readings in time; stopped the link without them"
            );
            Ok(())
        }
    }
}
