//! `[homeassistant]` (MQTT discovery) and what points and profiles say for it
//! (`ha_device_class`, `ha_state_class`): checked against the entity each point becomes,
//! and, with discovery on, that no two points would share one discovery topic.

use std::collections::HashMap;

use toml::Spanned;
use toml_edit::Item;

use super::engine::{span_of, Checker, FileId};
use super::shared::Seen;
use crate::config::ha_classes;
use crate::config::raw::RawHomeAssistant;
use crate::config::types::{Device, DeviceKind, HaEntity, HaPoint, HomeAssistant};

impl Checker {
    /// `[homeassistant]` itself: `(enabled, discovery_prefix)`.
    /// `mqtt_prefix`: the gateway's own topic prefix, when `[mqtt]` is valid.
    pub(super) fn homeassistant(
        &mut self,
        file: FileId,
        item: &Item,
        mqtt_prefix: Option<&str>,
    ) -> Option<(bool, String)> {
        let d = self.decode::<RawHomeAssistant>(file, item, "[homeassistant]", &[])?;
        let enabled = d.value.enabled.as_ref().is_some_and(|e| *e.get_ref());
        let Some(prefix) = &d.value.discovery_prefix else {
            return Some((enabled, HomeAssistant::DEFAULT_DISCOVERY_PREFIX.to_owned()));
        };
        let text = prefix.get_ref();
        let problem = if text.is_empty() {
            Some("is empty")
        } else if text.contains(['+', '#']) {
            Some("contains a wildcard (`+` or `#`)")
        } else if text.starts_with('/') || text.ends_with('/') || text.contains("//") {
            Some("has an empty topic level (a leading or trailing `/`, or `//`)")
        } else if text.starts_with('$') {
            Some("starts with `$`, which brokers reserve for their own topics")
        } else if text.contains('\0') {
            Some("contains a NUL character")
        } else if mqtt_prefix.is_some_and(|p| p == text || p.starts_with(&format!("{text}/"))) {
            // `<prefix>/status` would be Home Assistant's status topic, and readings would
            // sit among the discovery configs this gateway clears.
            Some("holds the gateway's own topics (`[mqtt] prefix`)")
        } else {
            None
        };
        if let Some(why) = problem {
            self.fail(file, span_of(prefix), format!("`discovery_prefix` = \"{text}\" {why}: use the prefix set in Home Assistant's MQTT integration (\"homeassistant\" unless you changed it)"));
            return None;
        }
        Some((enabled, text.clone()))
    }

    /// A point's `ha_device_class` / `ha_state_class`, for the entity it becomes. `None`: a
    /// problem was reported.
    pub(super) fn ha_hints(
        &mut self,
        file: FileId,
        device_class: &Option<Spanned<String>>,
        state_class: &Option<Spanned<String>>,
        entity: Option<HaEntity>,
        unit: Option<&str>,
    ) -> Option<HaPoint> {
        let hints = HaPoint {
            device_class: device_class.as_ref().map(|c| c.get_ref().clone()),
            state_class: state_class.as_ref().map(|c| c.get_ref().clone()),
        };
        // The kind of entity is unknown when the type or table failed its own check.
        let Some(entity) = entity else {
            return Some(hints);
        };
        let Some(problem) = ha_classes::problem(entity, &hints, unit) else {
            return Some(hints);
        };
        let at = if problem.starts_with("`ha_state_class`") {
            state_class.as_ref().and_then(span_of)
        } else {
            device_class.as_ref().and_then(span_of)
        };
        self.fail(file, at, problem);
        None
    }

    /// With discovery on: every point has a discovery topic of its own. `<device>_<point>`
    /// can be one string for two points ("a_b" + "c", "a" + "b_c"), and `.` becomes `_`.
    pub(super) fn ha_object_ids_distinct(
        &mut self,
        file: FileId,
        seen: &Seen,
        devices: &[Device],
    ) -> bool {
        let mut ids: HashMap<String, (&str, &str)> = HashMap::new();
        let mut ok = true;
        for device in devices {
            let points: Vec<&str> = match &device.kind {
                DeviceKind::Modbus(m) => m.points.iter().map(|p| p.name.as_str()).collect(),
                DeviceKind::SerialLine(l) => l.points.iter().map(|p| p.name.as_str()).collect(),
            };
            for point in points {
                let id = HomeAssistant::object_id(&device.name, point);
                match ids.get(&id) {
                    Some((d, p)) => {
                        let at = seen.device_names.get(&device.name).cloned();
                        self.fail(file, at, format!(
                            "point \"{point}\" of device \"{}\" and point \"{p}\" of device \"{d}\" would both be the Home Assistant entity \"{id}\" (discovery topics use <device>_<point>, with `.` as `_`): rename one",
                            device.name
                        ));
                        ok = false;
                    }
                    None => {
                        ids.insert(id, (device.name.as_str(), point));
                    }
                }
            }
        }
        ok
    }
}
