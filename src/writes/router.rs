//! The command router: from a command the uplink received to the queue of the bus task that
//! owns the device, or straight to a `rejected` / `expired` result. Runs on the uplink's
//! task, so it never waits: a command is checked (`gate`), then offered to its bus's bounded
//! queue, and the uplink goes on at once.
//!
//! The router holds, per writable point, what a bus needs to write it (unit, point, rules),
//! and per device the sender of the bus loop that serves it, registered by the bus when it
//! starts ([`Router::inbox`]). A command for a device no loop serves (its bus is not opened)
//! is refused in words, not dropped.
//!
//! A configuration reload ([`Router::update`]) swaps the map of writable points in place, so
//! the uplink's handle and the routes of bus loops that keep running stay valid; a bus loop
//! that is restarted registers its new inbox over its old routes, and the routes of devices
//! that left the map are dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::Config;
use crate::model::{unix_ms_now, CommandSink, Sample, SampleSink, Value};

use super::command::{answer, Queued, Target};
use super::gate::{self, Clocks, Refusal};
use super::inbox::{Inbox, WriteLog};
use super::payload::{self, Outcome, Status};

/// Commands one bus loop may hold in its channel before the router refuses more: far above
/// what operators send, and the loop takes them between two requests.
const CHANNEL: usize = 32;

pub struct Router {
    /// Replaced whole by a reload; a command works on the map it started with.
    map: Mutex<Arc<Map>>,
    routes: Mutex<HashMap<Arc<str>, mpsc::Sender<Queued>>>,
    writes: Arc<WriteLog>,
    sink: Arc<dyn SampleSink>,
}

/// What the config says about commands.
#[derive(Debug)]
struct Map {
    /// Device name, then point name.
    points: HashMap<String, HashMap<String, Arc<Target>>>,
    max_age: Duration,
}

impl Map {
    fn of(config: &Config) -> Map {
        let mut points: HashMap<String, HashMap<String, Arc<Target>>> = HashMap::new();
        for device in &config.devices {
            let Some(modbus) = device.modbus() else {
                continue;
            };
            for point in modbus.points.iter().filter(|p| p.write.is_some()) {
                points.entry(device.name.clone()).or_default().insert(
                    point.name.clone(),
                    Arc::new(Target {
                        device: device.name.as_str().into(),
                        point_name: point.name.as_str().into(),
                        unit: modbus.unit,
                        point: point.clone(),
                    }),
                );
            }
        }
        Map {
            points,
            max_age: config.mqtt.command_max_age,
        }
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("devices", &self.map().points.len())
            .finish_non_exhaustive()
    }
}

impl Router {
    /// The router of `config`'s writable points; `None` when no point is writable (the agent
    /// then does not even subscribe to commands).
    pub fn new(config: &Config, sink: Arc<dyn SampleSink>) -> Option<Router> {
        let map = Map::of(config);
        if map.points.is_empty() {
            return None;
        }
        Some(Router {
            map: Mutex::new(Arc::new(map)),
            routes: Mutex::new(HashMap::new()),
            writes: Arc::new(WriteLog::default()),
            sink,
        })
    }

    /// Whether `config` has a writable point at all (else the agent needs no router).
    pub fn wanted(config: &Config) -> bool {
        !Map::of(config).points.is_empty()
    }

    /// Takes the writable points and `command_max_age` of a reloaded `config`. Routes of
    /// devices that no longer have a writable point are dropped (their commands are refused
    /// as unknown); the others stay until their bus loop registers a new inbox. The write log
    /// stays: `min_write_interval` still counts from a write made before the reload.
    pub fn update(&self, config: &Config) {
        let map = Arc::new(Map::of(config));
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|device, _| map.points.contains_key(device.as_ref()));
        *self.map.lock().unwrap_or_else(|e| e.into_inner()) = map;
    }

    fn map(&self) -> Arc<Map> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The queue of the bus loop that serves `devices`: commands for them go there from now on.
    pub fn inbox<'d>(&self, devices: impl IntoIterator<Item = &'d str>) -> Inbox {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let map = self.map();
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        for device in devices {
            if map.points.contains_key(device) {
                routes.insert(device.into(), tx.clone());
            }
        }
        Inbox::new(rx, self.writes.clone(), self.sink.clone())
    }

    fn refuse(&self, target: &Target, id: Option<String>, requested: Option<Value>, why: Refusal) {
        tracing::info!(
            device = %target.device,
            point = %target.point_name,
            "command refused: {why}"
        );
        let outcome = Outcome {
            id,
            status: why.status(),
            requested,
            value: None,
            error: Some(why.to_string()),
            ts_ms: unix_ms_now(),
        };
        answer(self.sink.as_ref(), target, &outcome);
    }

    /// A command for a point that is not in the map, or not writable: answered on the topic
    /// it came on, so the sender learns why nothing happens.
    fn unknown(&self, device: &str, point: &str, payload: &[u8]) {
        let command = payload::parse(payload).ok();
        let id = command
            .as_ref()
            .map_or_else(|| payload::id_of(payload), |c| c.id.clone());
        let why = if self.map().points.contains_key(device) {
            format!(
                "{point:?} is not a writable point of device {device:?}: set writable = true on \
                 the point to allow writes"
            )
        } else {
            format!("this gateway has no device {device:?} with writable points")
        };
        tracing::info!(device, point, "command refused: {why}");
        let requested = command.map(|c| c.value);
        let outcome = Outcome {
            id,
            status: Status::Rejected,
            requested,
            value: None,
            error: Some(why),
            ts_ms: unix_ms_now(),
        };
        self.sink.send(Sample::CommandResult {
            device: device.into(),
            point: point.into(),
            result: outcome.to_json().into_bytes(),
        });
    }
}

impl CommandSink for Router {
    fn command(&self, device: &str, point: &str, payload: &[u8], retained: bool) {
        let map = self.map();
        let Some(target) = map.points.get(device).and_then(|p| p.get(point)) else {
            self.unknown(device, point, payload);
            return;
        };
        let command = match payload::parse(payload) {
            Ok(c) => c,
            Err(e) => {
                let id = payload::id_of(payload);
                return self.refuse(target, id, None, Refusal::Malformed(e));
            }
        };
        if retained {
            return self.refuse(target, command.id, Some(command.value), Refusal::Retained);
        }
        let (id, value) = (command.id.clone(), command.value.clone());
        let clocks = Clocks {
            wall_ms: unix_ms_now(),
            now: Instant::now(),
        };
        let last = self.writes.last(&target.device, &target.point_name);
        let admitted = match gate::admit(&target.point, command, map.max_age, last, clocks) {
            Ok(a) => a,
            Err(why) => return self.refuse(target, id, Some(value), why),
        };
        let route = self
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(device)
            .cloned();
        let Some(route) = route else {
            return self.refuse(target, id, Some(value), Refusal::NotServed);
        };
        let queued = Queued {
            target: target.clone(),
            admitted,
        };
        if let Err(e) = route.try_send(queued) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => Refusal::Busy,
                mpsc::error::TrySendError::Closed(_) => Refusal::NotServed,
            };
            self.refuse(target, id, Some(value), why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    #[derive(Default)]
    struct Results(Mutex<Vec<(String, serde_json::Value)>>);

    impl SampleSink for Results {
        fn send(&self, sample: Sample) {
            if let Sample::CommandResult { device, result, .. } = sample {
                let json = serde_json::from_slice(&result).unwrap();
                self.0.lock().unwrap().push((device.to_string(), json));
            }
        }
    }

    fn config(devices: &[&str]) -> Config {
        let mut toml = String::from(
            "[gateway]\nid = \"gw\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n[[bus]]\n\
             name = \"lan\"\ntype = \"modbus_tcp\"\naddress = \"127.0.0.1:502\"\n",
        );
        for (unit, name) in devices.iter().enumerate() {
            toml += &format!(
                "[[device]]\nname = \"{name}\"\nbus = \"lan\"\nunit = {}\n[[device.point]]\n\
                 name = \"sp\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\n\
                 writable = true\nmin_write_interval = \"0s\"\n",
                unit + 1
            );
        }
        load_str(std::path::Path::new("/t/fieldlink.toml"), &toml).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_update_keeps_the_routes_of_devices_still_writable_and_forgets_removed_ones() {
        let results = Arc::new(Results::default());
        let router = Router::new(&config(&["a", "b"]), results.clone()).unwrap();
        let mut inbox = router.inbox(["a", "b"]);

        router.update(&config(&["a"]));
        router.command("a", "sp", b"5", false);
        router.command("b", "sp", b"6", false);
        // a's command reached the running loop's inbox; b is no longer in the map.
        assert!(inbox.next_due(results.as_ref()).is_some());
        let got = results.0.lock().unwrap().clone();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "b");
        assert_eq!(got[0].1["status"], "rejected");
        assert!(got[0].1["error"].as_str().unwrap().contains("no device"));

        // b comes back: refused as not served until a bus loop registers it again.
        router.update(&config(&["a", "b"]));
        router.command("b", "sp", b"7", false);
        let last = results.0.lock().unwrap().last().cloned().unwrap();
        assert!(
            last.1["error"].as_str().unwrap().contains("no bus task"),
            "{last:?}"
        );
        let mut restarted = router.inbox(["b"]);
        router.command("b", "sp", b"8", false);
        assert!(restarted.next_due(results.as_ref()).is_some());
    }
}
