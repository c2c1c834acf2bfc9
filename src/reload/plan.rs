//! What a reload must restart: the difference between two checked configs, as a plan. Pure:
//! no tasks, no I/O. The supervisor carries the plan out.
//!
//! The unit of restart is a bus: a bus task owns its connection and every device on it, so a
//! bus restarts when its own settings or any of its devices (added, removed, changed, moved
//! to or from it, or reordered) changed, and a bus whose devices and settings are equal keeps
//! polling untouched. The uplink restarts only when what it was started with changed: the
//! `[mqtt]` settings it uses, the Home Assistant discovery map, or whether commands exist at
//! all (which decides its subscription). Settings that only take effect at the next start
//! (the buffer's, which a reload never reopens, and the log level) are named, not applied.

use std::collections::BTreeSet;

use crate::config::{Config, Mqtt, PayloadMode};
use crate::homeassistant::discovery_configs;

/// Why the uplink restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UplinkChange {
    /// Broker, credentials, TLS, client id, prefix, keep-alive, QoS, payload, timing…
    Mqtt,
    /// A discovery config would change: a new run sends the new map and clears what left it.
    HomeAssistant,
    /// The first writable point appeared or the last one went: the uplink subscribes to
    /// commands only when there is one.
    CommandsOnOff,
}

impl std::fmt::Display for UplinkChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UplinkChange::Mqtt => "[mqtt] changed",
            UplinkChange::HomeAssistant => "the Home Assistant discovery map changed",
            UplinkChange::CommandsOnOff => "commands were turned on or off",
        })
    }
}

/// A setting a reload does not apply; it takes effect at the next start.
pub const NEEDS_RESTART_BUFFER: &str = "[buffer]";
pub const NEEDS_RESTART_QUEUE: &str = "[mqtt] queue_capacity";
pub const NEEDS_RESTART_LOG: &str = "[log] level";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Buses whose running task ends (removed or changed), by name, sorted.
    pub stop: Vec<String>,
    /// Buses whose task starts under the new config (added or changed), by name, sorted.
    pub start: Vec<String>,
    /// Devices in the new config only.
    pub added_devices: Vec<String>,
    /// Devices in the old config only: their status goes `offline`.
    pub removed_devices: Vec<String>,
    /// Devices in both, with any setting changed (their bus restarts).
    pub changed_devices: Vec<String>,
    /// Empty: the uplink and its link stay up.
    pub uplink: Vec<UplinkChange>,
    /// The topic prefix, payload mode or report-by-exception changed: readings are shaped
    /// by a new publisher from now on.
    pub publisher: bool,
    /// The writable points or `command_max_age` changed: the command router takes the new map.
    pub commands: bool,
    /// Changed settings kept at their running values until the next start.
    pub needs_restart: Vec<&'static str>,
}

impl Plan {
    pub fn between(old: &Config, new: &Config) -> Plan {
        let mut plan = Plan::default();

        let bus_names: BTreeSet<&str> = old
            .buses
            .iter()
            .chain(&new.buses)
            .map(|b| b.name.as_str())
            .collect();
        for name in bus_names {
            let before = old.bus(name);
            let after = new.bus(name);
            let changed = before != after || !same_devices(old, new, name);
            if !changed {
                continue;
            }
            if before.is_some() {
                plan.stop.push(name.to_string());
            }
            if after.is_some() {
                plan.start.push(name.to_string());
            }
        }

        for device in &new.devices {
            match old.device(&device.name) {
                None => plan.added_devices.push(device.name.clone()),
                Some(was) if was != device => plan.changed_devices.push(device.name.clone()),
                Some(_) => {}
            }
        }
        plan.removed_devices = old
            .devices
            .iter()
            .filter(|d| new.device(&d.name).is_none())
            .map(|d| d.name.clone())
            .collect();

        if uplink_settings(&old.mqtt) != uplink_settings(&new.mqtt) {
            plan.uplink.push(UplinkChange::Mqtt);
        }
        if discovery_changed(old, new) {
            plan.uplink.push(UplinkChange::HomeAssistant);
        }
        if has_writable_point(old) != has_writable_point(new) {
            plan.uplink.push(UplinkChange::CommandsOnOff);
        }
        plan.publisher = old.mqtt.prefix != new.mqtt.prefix
            || old.mqtt.payload != new.mqtt.payload
            || old.mqtt.report != new.mqtt.report
            // Compact messages follow the configured point order: a new order is a new meta.
            || (new.mqtt.payload == PayloadMode::Compact
                && crate::uplink::compact::layouts(&old.devices)
                    != crate::uplink::compact::layouts(&new.devices));
        plan.commands = old.mqtt.command_max_age != new.mqtt.command_max_age
            || writable_points(old) != writable_points(new);

        if !same_buffer(&old.buffer, &new.buffer) {
            plan.needs_restart.push(NEEDS_RESTART_BUFFER);
        }
        if old.mqtt.queue_capacity != new.mqtt.queue_capacity {
            plan.needs_restart.push(NEEDS_RESTART_QUEUE);
        }
        if old.log != new.log {
            plan.needs_restart.push(NEEDS_RESTART_LOG);
        }
        plan
    }

    /// Nothing to do (settings that need a restart may still have changed).
    pub fn is_empty(&self) -> bool {
        self.stop.is_empty()
            && self.start.is_empty()
            && self.removed_devices.is_empty()
            && self.uplink.is_empty()
            && !self.publisher
            && !self.commands
    }
}

fn same_devices(old: &Config, new: &Config, bus: &str) -> bool {
    old.devices_on(bus).eq(new.devices_on(bus))
}

/// Whether a restart would open the buffer as it runs: a `spill_threshold` that follows the
/// map on both sides is not the user's change.
fn same_buffer(old: &crate::config::Buffer, new: &crate::config::Buffer) -> bool {
    if old.spill_threshold_follows_map && new.spill_threshold_follows_map {
        let mut new = new.clone();
        new.spill_threshold = old.spill_threshold;
        return *old == new;
    }
    old == new
}

/// `[mqtt]` as the uplink uses it: `queue_capacity` sizes the buffer (restart only) and
/// `command_max_age` is the router's, so neither restarts the link.
fn uplink_settings(mqtt: &Mqtt) -> Mqtt {
    Mqtt {
        queue_capacity: 0,
        command_max_age: std::time::Duration::ZERO,
        ..mqtt.clone()
    }
}

/// Whether a Home Assistant run of `new` would differ from the running one of `old`.
fn discovery_changed(old: &Config, new: &Config) -> bool {
    let (a, b) = (&old.homeassistant, &new.homeassistant);
    if !a.enabled && !b.enabled {
        return false;
    }
    a.enabled != b.enabled
        || a.discovery_prefix != b.discovery_prefix
        || old.gateway.id != new.gateway.id
        || discovery_configs(old) != discovery_configs(new)
}

fn has_writable_point(config: &Config) -> bool {
    !writable_points(config).is_empty()
}

/// `(device, point, unit, the point's settings)` of every writable point.
fn writable_points(config: &Config) -> Vec<(&str, u8, &crate::config::Point)> {
    config
        .devices
        .iter()
        .filter_map(|d| d.modbus().map(|m| (d.name.as_str(), m)))
        .flat_map(|(name, m)| {
            m.points
                .iter()
                .filter(|p| p.write.is_some())
                .map(move |p| (name, m.unit, p))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    const HEAD: &str = r#"
[gateway]
id = "gw1"

[mqtt]
url = "mqtt://127.0.0.1:1883"
"#;

    const BUSES: &str = r#"
[[bus]]
name = "tcp0"
type = "modbus_tcp"
address = "127.0.0.1:5020"

[[bus]]
name = "tcp1"
type = "modbus_tcp"
address = "127.0.0.1:5021"

[[device]]
name = "m1"
bus = "tcp0"
unit = 1
interval = "1s"

[[device.point]]
name = "level"
table = "holding"
address = 0
type = "u16"

[[device]]
name = "m2"
bus = "tcp1"
unit = 1
interval = "1s"

[[device.point]]
name = "level"
table = "holding"
address = 0
type = "u16"
"#;

    fn config(toml: &str) -> Config {
        load_str(std::path::Path::new("/etc/fieldlink/fieldlink.toml"), toml)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn base() -> String {
        format!("{HEAD}{BUSES}")
    }

    #[test]
    fn the_same_file_plans_nothing() {
        let plan = Plan::between(&config(&base()), &config(&base()));
        assert!(plan.is_empty(), "{plan:?}");
        assert!(plan.needs_restart.is_empty());
    }

    #[test]
    fn an_added_device_restarts_its_bus_only() {
        let more = format!(
            "{}\n[[device]]\nname = \"m3\"\nbus = \"tcp1\"\nunit = 2\n\n[[device.point]]\n\
             name = \"level\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\n",
            base()
        );
        let plan = Plan::between(&config(&base()), &config(&more));
        assert_eq!(plan.stop, ["tcp1"]);
        assert_eq!(plan.start, ["tcp1"]);
        assert_eq!(plan.added_devices, ["m3"]);
        assert!(plan.removed_devices.is_empty() && plan.changed_devices.is_empty());
        assert!(plan.uplink.is_empty() && !plan.publisher && !plan.commands);
    }

    #[test]
    fn a_changed_interval_restarts_that_devices_bus_and_keeps_the_link() {
        let slower = base().replacen("interval = \"1s\"", "interval = \"250ms\"", 1);
        let plan = Plan::between(&config(&base()), &config(&slower));
        assert_eq!(plan.stop, ["tcp0"]);
        assert_eq!(plan.start, ["tcp0"]);
        assert_eq!(plan.changed_devices, ["m1"]);
        assert!(plan.uplink.is_empty());
    }

    #[test]
    fn a_removed_bus_and_its_devices_stop_and_nothing_else_moves() {
        let cut = base();
        let cut = &cut[..cut.rfind("[[device]]").unwrap()];
        let cut = cut.replace(
            "[[bus]]\nname = \"tcp1\"\ntype = \"modbus_tcp\"\naddress = \"127.0.0.1:5021\"\n",
            "",
        );
        let plan = Plan::between(&config(&base()), &config(&cut));
        assert_eq!(plan.stop, ["tcp1"]);
        assert!(plan.start.is_empty());
        assert_eq!(plan.removed_devices, ["m2"]);
        assert!(plan.uplink.is_empty());
    }

    #[test]
    fn a_device_moved_to_another_bus_restarts_both_and_is_not_removed() {
        let moved = base().replacen("bus = \"tcp1\"", "bus = \"tcp0\"", 1);
        let plan = Plan::between(&config(&base()), &config(&moved));
        assert_eq!(plan.stop, ["tcp0", "tcp1"]);
        // tcp1 stays in the file without devices: the supervisor does not open it.
        assert_eq!(plan.start, ["tcp0", "tcp1"]);
        assert!(plan.removed_devices.is_empty());
        assert_eq!(plan.changed_devices, ["m2"]);
    }

    #[test]
    fn a_changed_bus_address_restarts_that_bus() {
        let other = base().replace("127.0.0.1:5020", "127.0.0.1:6020");
        let plan = Plan::between(&config(&base()), &config(&other));
        assert_eq!(
            (plan.stop, plan.start),
            (vec!["tcp0".into()], vec!["tcp0".into()])
        );
        assert!(plan.changed_devices.is_empty());
    }

    #[test]
    fn a_new_broker_restarts_the_uplink_and_no_bus() {
        let other = base().replace("mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:1884");
        let plan = Plan::between(&config(&base()), &config(&other));
        assert_eq!(plan.uplink, [UplinkChange::Mqtt]);
        assert!(plan.stop.is_empty() && plan.start.is_empty() && !plan.publisher);
    }

    #[test]
    fn a_new_prefix_also_gives_readings_a_new_publisher() {
        let other = base().replace(
            "url = \"mqtt://127.0.0.1:1883\"",
            "url = \"mqtt://127.0.0.1:1883\"\nprefix = \"site/gw1\"",
        );
        let plan = Plan::between(&config(&base()), &config(&other));
        assert_eq!(plan.uplink, [UplinkChange::Mqtt]);
        assert!(plan.publisher);
    }

    #[test]
    fn a_spill_threshold_that_follows_the_map_calls_for_no_restart_when_the_map_grows() {
        let mut old = crate::config::Buffer::default();
        let mut new = old.clone();
        old.spill_threshold = 1000;
        new.spill_threshold = 4000;
        assert!(same_buffer(&old, &new), "both follow the map");
        new.spill_threshold_follows_map = false;
        assert!(
            !same_buffer(&old, &new),
            "set in the file: a restart applies it"
        );
    }

    #[test]
    fn queue_capacity_buffer_and_log_level_wait_for_a_restart_and_keep_the_link() {
        let other = base().replace(
            "url = \"mqtt://127.0.0.1:1883\"",
            "url = \"mqtt://127.0.0.1:1883\"\nqueue_capacity = 500\n\n[log]\nlevel = \"debug\"\n\n\
             [buffer]\nmax_size = \"1MiB\"",
        );
        let plan = Plan::between(&config(&base()), &config(&other));
        assert!(plan.is_empty(), "{plan:?}");
        assert_eq!(
            plan.needs_restart,
            [NEEDS_RESTART_BUFFER, NEEDS_RESTART_QUEUE, NEEDS_RESTART_LOG]
        );
    }

    #[test]
    fn a_first_writable_point_turns_commands_on_through_the_uplink() {
        let writable = base().replacen("type = \"u16\"", "type = \"u16\"\nwritable = true", 1);
        let plan = Plan::between(&config(&base()), &config(&writable));
        assert_eq!(plan.uplink, [UplinkChange::CommandsOnOff]);
        assert!(plan.commands);
        assert_eq!(plan.stop, ["tcp0"]);
        // A second one only updates the router: the subscription is there already.
        let last = writable.rfind("type = \"u16\"").unwrap();
        let both = format!(
            "{}type = \"u16\"\nwritable = true{}",
            &writable[..last],
            &writable[last + 12..]
        );
        let plan = Plan::between(&config(&writable), &config(&both));
        assert!(plan.uplink.is_empty(), "{plan:?}");
        assert!(plan.commands);
        assert_eq!(plan.stop, ["tcp1"]);
    }

    #[test]
    fn home_assistant_restarts_the_uplink_only_when_its_map_changes() {
        let on = format!("{HEAD}\n[homeassistant]\nenabled = true\n{BUSES}");
        let plan = Plan::between(&config(&base()), &config(&on));
        assert_eq!(plan.uplink, [UplinkChange::HomeAssistant]);
        let interval = on.replacen("interval = \"1s\"", "interval = \"2s\"", 1);
        let plan = Plan::between(&config(&on), &config(&interval));
        assert!(
            plan.uplink.is_empty(),
            "an interval is not in the map: {plan:?}"
        );
        let renamed = on.replacen("name = \"level\"", "name = \"depth\"", 1);
        let plan = Plan::between(&config(&on), &config(&renamed));
        assert_eq!(plan.uplink, [UplinkChange::HomeAssistant]);
        // Off before and after: whatever changes, discovery does not restart anything.
        let renamed_off = base().replacen("name = \"level\"", "name = \"depth\"", 1);
        let plan = Plan::between(&config(&base()), &config(&renamed_off));
        assert!(plan.uplink.is_empty());
    }
}
