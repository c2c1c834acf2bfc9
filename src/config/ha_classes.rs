//! Home Assistant's entity classes as fieldlink uses them: which `device_class` and
//! `state_class` each kind of entity accepts, the units a device class takes, and the rule
//! that gives a point its classes. Pure data and functions: validation checks
//! `ha_device_class` / `ha_state_class` against it, discovery (`crate::homeassistant`) and
//! `fieldlink check` apply the same rule, so what `check` shows is what Home Assistant gets.
//!
//! The rule (issue 13): a unit names a class only where it is unambiguous: Wh, kWh and MWh
//! are energy, counted up (`total_increasing`, what the energy dashboard wants; a net meter
//! that counts down says `ha_state_class = "total"`). W, V, A, Hz, °C or %RH are measured
//! by many things that are not what the class means (a W rating, a supply voltage read
//! once), so they get a class only from the profile or the point (`ha_device_class`). A
//! class that is a measurement gives `state_class = "measurement"` unless the point says
//! otherwise. Lists as of Home Assistant 2025.10.

use super::types::{HaEntity, HaPoint};

/// `device_class` of a sensor (and, without the three that are not numbers, of a number).
pub const SENSOR_DEVICE_CLASSES: &[&str] = &[
    "absolute_humidity",
    "apparent_power",
    "aqi",
    "area",
    "atmospheric_pressure",
    "battery",
    "blood_glucose_concentration",
    "carbon_dioxide",
    "carbon_monoxide",
    "conductivity",
    "current",
    "data_rate",
    "data_size",
    "date",
    "distance",
    "duration",
    "energy",
    "energy_distance",
    "energy_storage",
    "enum",
    "frequency",
    "gas",
    "humidity",
    "illuminance",
    "irradiance",
    "moisture",
    "monetary",
    "nitrogen_dioxide",
    "nitrogen_monoxide",
    "nitrous_oxide",
    "ozone",
    "ph",
    "pm1",
    "pm10",
    "pm25",
    "power",
    "power_factor",
    "precipitation",
    "precipitation_intensity",
    "pressure",
    "reactive_energy",
    "reactive_power",
    "signal_strength",
    "sound_pressure",
    "speed",
    "sulphur_dioxide",
    "temperature",
    "timestamp",
    "volatile_organic_compounds",
    "volatile_organic_compounds_parts",
    "voltage",
    "volume",
    "volume_flow_rate",
    "volume_storage",
    "water",
    "weight",
    "wind_direction",
    "wind_speed",
];

/// Sensor classes whose state is not a number: not for a number entity, nor for a point
/// fieldlink reads as a number.
const NOT_NUMBERS: &[&str] = &["date", "enum", "timestamp"];

pub const BINARY_SENSOR_DEVICE_CLASSES: &[&str] = &[
    "battery",
    "battery_charging",
    "carbon_monoxide",
    "cold",
    "connectivity",
    "door",
    "garage_door",
    "gas",
    "heat",
    "light",
    "lock",
    "moisture",
    "motion",
    "moving",
    "occupancy",
    "opening",
    "plug",
    "power",
    "presence",
    "problem",
    "running",
    "safety",
    "smoke",
    "sound",
    "tamper",
    "update",
    "vibration",
    "window",
];

pub const SWITCH_DEVICE_CLASSES: &[&str] = &["outlet", "switch"];

/// `state_class` of a sensor; other entities have none.
pub const STATE_CLASSES: &[&str] = &[
    "measurement",
    "measurement_angle",
    "total",
    "total_increasing",
];

/// Classes that measure a present value: `state_class = "measurement"` by default.
const MEASUREMENTS: &[&str] = &[
    "absolute_humidity",
    "apparent_power",
    "aqi",
    "atmospheric_pressure",
    "battery",
    "carbon_dioxide",
    "carbon_monoxide",
    "conductivity",
    "current",
    "frequency",
    "humidity",
    "illuminance",
    "irradiance",
    "moisture",
    "power",
    "power_factor",
    "pressure",
    "reactive_power",
    "signal_strength",
    "sound_pressure",
    "speed",
    "temperature",
    "voltage",
    "volume_flow_rate",
    "wind_speed",
];

/// Classes that count up: `state_class = "total_increasing"` by default, and never
/// `measurement` (Home Assistant refuses it; the energy dashboard needs a total).
const COUNTERS: &[&str] = &["energy", "gas", "reactive_energy", "water"];

/// The units Home Assistant accepts for the classes a meter or a sensor profile uses
/// (others are not checked here).
pub fn units_of(device_class: &str) -> Option<&'static [&'static str]> {
    Some(match device_class {
        "energy" => &[
            "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "J", "kJ", "MJ", "GJ", "cal", "kcal", "Mcal",
            "Gcal",
        ],
        "power" => &["mW", "W", "kW", "MW", "GW", "TW", "BTU/h"],
        "apparent_power" => &["mVA", "VA", "kVA"],
        "reactive_power" => &["mvar", "var", "kvar"],
        "reactive_energy" => &["varh", "kvarh"],
        "voltage" => &["µV", "mV", "V", "kV", "MV"],
        "current" => &["mA", "A"],
        "frequency" => &["Hz", "kHz", "MHz", "GHz"],
        "temperature" => &["°C", "°F", "K"],
        "humidity" | "moisture" | "battery" => &["%"],
        "power_factor" => &["%"],
        _ => return None,
    })
}

/// Classes that may go without a unit (power factor is a ratio).
const UNITLESS_OK: &[&str] = &["power_factor", "aqi", "ph", "enum", "date", "timestamp"];

/// The unit as Home Assistant spells it: relative humidity is `%` there.
pub fn ha_unit(unit: &str) -> &str {
    match unit {
        "%RH" | "%rh" | "% RH" => "%",
        other => other,
    }
}

/// The device classes an entity of this kind accepts.
pub fn device_classes(entity: HaEntity) -> Vec<&'static str> {
    match entity {
        HaEntity::Sensor | HaEntity::Number => SENSOR_DEVICE_CLASSES
            .iter()
            .copied()
            .filter(|c| !NOT_NUMBERS.contains(c))
            .collect(),
        HaEntity::TextSensor => vec!["enum", "date", "timestamp"],
        HaEntity::BinarySensor => BINARY_SENSOR_DEVICE_CLASSES.to_vec(),
        HaEntity::Switch => SWITCH_DEVICE_CLASSES.to_vec(),
    }
}

/// Why `hints` cannot go on a point of this kind with this unit, if they cannot.
pub fn problem(entity: HaEntity, hints: &HaPoint, unit: Option<&str>) -> Option<String> {
    if let Some(class) = hints.device_class.as_deref() {
        let allowed = device_classes(entity);
        if !allowed.contains(&class) {
            return Some(format!(
                "`ha_device_class` = \"{class}\" is not a device class of a Home Assistant {}: use one of {}",
                entity_words(entity),
                allowed.join(", ")
            ));
        }
        if matches!(entity, HaEntity::Sensor | HaEntity::Number) {
            match (unit.map(ha_unit), units_of(class)) {
                (Some(unit), Some(units)) if !units.contains(&unit) => {
                    return Some(format!(
                        "`ha_device_class` = \"{class}\" takes a unit of {} in Home Assistant, and this point's unit is \"{unit}\": fix the unit or the class",
                        units.join(", ")
                    ));
                }
                (None, _) if !UNITLESS_OK.contains(&class) => {
                    return Some(format!(
                        "`ha_device_class` = \"{class}\" needs a unit in Home Assistant, and this point has none: add unit = \"...\""
                    ));
                }
                _ => {}
            }
        }
    }
    if let Some(state) = hints.state_class.as_deref() {
        if entity != HaEntity::Sensor {
            return Some(format!(
                "`ha_state_class` applies to numeric sensors only, and this point becomes a Home Assistant {}: remove it",
                entity_words(entity)
            ));
        }
        if !STATE_CLASSES.contains(&state) {
            return Some(format!(
                "`ha_state_class` = \"{state}\" is not a Home Assistant state class: use one of {}",
                STATE_CLASSES.join(", ")
            ));
        }
        let unhinted = HaPoint::default();
        let (class, _) = classes(entity, &unhinted, unit);
        let class = hints.device_class.as_deref().or(class);
        if let Some(class) = class.filter(|c| COUNTERS.contains(c)) {
            if state.starts_with("measurement") {
                return Some(format!(
                    "`ha_state_class` = \"{state}\" cannot go with device class \"{class}\": Home Assistant (and its energy dashboard) wants a counter to be \"total_increasing\" (or \"total\" for one that also counts down)"
                ));
            }
        }
    }
    None
}

fn entity_words(entity: HaEntity) -> &'static str {
    match entity {
        HaEntity::Sensor => "sensor",
        HaEntity::TextSensor => "sensor showing text (a string point)",
        HaEntity::BinarySensor => "binary_sensor (a read-only bool)",
        HaEntity::Number => "number (a writable point)",
        HaEntity::Switch => "switch (a writable bool)",
    }
}

/// The `device_class` and `state_class` a point gets: its own (or its profile's) first,
/// then what its unit says where that is unambiguous (see the module doc).
pub fn classes<'a>(
    entity: HaEntity,
    hints: &'a HaPoint,
    unit: Option<&str>,
) -> (Option<&'a str>, Option<&'a str>) {
    let device_class: Option<&'a str> = hints.device_class.as_deref().or(match (entity, unit) {
        (HaEntity::Sensor | HaEntity::Number, Some("Wh" | "kWh" | "MWh")) => Some("energy"),
        _ => None,
    });
    if entity != HaEntity::Sensor {
        return (device_class, None);
    }
    let state_class = hints.state_class.as_deref().or(match device_class {
        Some(c) if COUNTERS.contains(&c) => Some("total_increasing"),
        Some(c) if MEASUREMENTS.contains(&c) => Some("measurement"),
        _ => None,
    });
    (device_class, state_class)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hints(d: Option<&str>, s: Option<&str>) -> HaPoint {
        HaPoint {
            device_class: d.map(str::to_owned),
            state_class: s.map(str::to_owned),
        }
    }

    #[test]
    fn energy_units_count_up_and_the_rest_waits_for_the_profile() {
        let none = HaPoint::default();
        for unit in ["Wh", "kWh", "MWh"] {
            assert_eq!(
                classes(HaEntity::Sensor, &none, Some(unit)),
                (Some("energy"), Some("total_increasing"))
            );
        }
        for unit in ["W", "V", "A", "Hz", "°C", "%RH", "kvarh"] {
            assert_eq!(classes(HaEntity::Sensor, &none, Some(unit)), (None, None));
        }
        let voltage = hints(Some("voltage"), None);
        assert_eq!(
            classes(HaEntity::Sensor, &voltage, Some("V")),
            (Some("voltage"), Some("measurement"))
        );
        let net = hints(None, Some("total"));
        assert_eq!(
            classes(HaEntity::Sensor, &net, Some("kWh")),
            (Some("energy"), Some("total"))
        );
        assert_eq!(
            classes(HaEntity::Number, &voltage, Some("V")),
            (Some("voltage"), None),
            "a number has no state class"
        );
    }

    #[test]
    fn hints_that_home_assistant_would_refuse_are_explained() {
        let p = |e, d, s, u| problem(e, &hints(d, s), u);
        assert_eq!(p(HaEntity::Sensor, Some("voltage"), None, Some("V")), None);
        assert_eq!(
            p(HaEntity::Sensor, Some("humidity"), None, Some("%RH")),
            None
        );
        assert!(p(HaEntity::Sensor, Some("voltag"), None, Some("V"))
            .unwrap()
            .contains("not a device class of a Home Assistant sensor"));
        assert!(p(HaEntity::Sensor, Some("power"), None, Some("kWh"))
            .unwrap()
            .contains("takes a unit of"));
        assert!(p(HaEntity::Sensor, None, Some("measurement"), Some("kWh"))
            .unwrap()
            .contains("total_increasing"));
        assert!(p(HaEntity::Number, None, Some("measurement"), Some("V"))
            .unwrap()
            .contains("numeric sensors only"));
        assert!(p(HaEntity::BinarySensor, Some("running"), None, None).is_none());
        assert!(p(HaEntity::Switch, Some("running"), None, None).is_some());
        assert!(p(HaEntity::Sensor, Some("temperature"), None, None)
            .unwrap()
            .contains("needs a unit"));
    }
}
