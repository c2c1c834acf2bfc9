//! Point names of the simulated meters, shared by the rigs, the bare publisher and the micro
//! benches (`#[path]`), so every scenario publishes topics of the same length.

/// Point names of a three-phase meter; devices with more points repeat them with a suffix.
const NAMES: [&str; 24] = [
    "voltage_l1",
    "voltage_l2",
    "voltage_l3",
    "current_l1",
    "current_l2",
    "current_l3",
    "power_l1",
    "power_l2",
    "power_l3",
    "apparent_l1",
    "apparent_l2",
    "apparent_l3",
    "reactive_l1",
    "reactive_l2",
    "reactive_l3",
    "pf_l1",
    "pf_l2",
    "pf_l3",
    "frequency",
    "power_total",
    "energy_import",
    "energy_export",
    "current_n",
    "thd_voltage",
];

pub fn point_name(i: usize) -> String {
    match i / NAMES.len() {
        0 => NAMES[i].to_string(),
        n => format!("{}_{n}", NAMES[i % NAMES.len()]),
    }
}
