//! The bench report: rows of figures printed as they come, then one table on stdout and the
//! same rows as JSON with the machine they were measured on. Shared by the agent and micro
//! benches (`#[path]`), so their tables have one shape.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use serde_json::json;

pub struct Row {
    scenario: String,
    metric: String,
    value: f64,
    unit: &'static str,
    pub goal: Option<(&'static str, f64)>,
    pub note: String,
}

impl Row {
    fn met(&self) -> Option<bool> {
        self.goal.map(|(op, limit)| match op {
            "<=" => self.value <= limit,
            _ => self.value >= limit,
        })
    }
}

#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
}

impl Report {
    pub fn add(
        &mut self,
        scenario: &str,
        metric: &str,
        value: f64,
        unit: &'static str,
    ) -> &mut Row {
        self.rows.push(Row {
            scenario: scenario.into(),
            metric: metric.into(),
            value,
            unit,
            goal: None,
            note: String::new(),
        });
        let row = self.rows.last_mut().unwrap();
        println!("  {:<22} {:<42} {}", row.scenario, row.metric, fmt(value));
        row
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "| {:<26} | {:<40} | {:>10} | {:<5} | {:<8} | {:<3} |\n",
            "scenario", "metric", "value", "unit", "goal", "met"
        ));
        out.push_str(&format!(
            "|{}|{}|{}|{}|{}|{}|\n",
            "-".repeat(28),
            "-".repeat(42),
            "-".repeat(12),
            "-".repeat(7),
            "-".repeat(10),
            "-".repeat(5)
        ));
        for r in &self.rows {
            let goal = r
                .goal
                .map(|(op, v)| format!("{op} {}", fmt(v)))
                .unwrap_or_default();
            let met = match r.met() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            };
            out.push_str(&format!(
                "| {:<26} | {:<40} | {:>10} | {:<5} | {:<8} | {:<3} |\n",
                r.scenario,
                r.metric,
                fmt(r.value),
                r.unit,
                goal,
                met
            ));
        }
        out
    }

    /// `settings`: the run's own keys (mode, windows), added next to the machine and rows.
    fn json(&self, settings: serde_json::Value, started: Instant) -> serde_json::Value {
        let mut out = json!({
            "machine": machine(),
            "duration_s": started.elapsed().as_secs(),
            "rows": self.rows.iter().map(|r| json!({
                "scenario": r.scenario,
                "metric": r.metric,
                "value": r.value,
                "unit": r.unit,
                "goal": r.goal.map(|(op, v)| format!("{op} {v}")),
                "met": r.met(),
                "note": r.note,
            })).collect::<Vec<_>>(),
        });
        if let (Some(out), serde_json::Value::Object(settings)) = (out.as_object_mut(), settings) {
            out.extend(settings);
        }
        out
    }

    /// Writes `<name>.json` and the table as `<name>.md` under `$CARGO_TARGET_DIR/bench`
    /// (else `target/bench`), and says where.
    pub fn write(&self, name: &str, settings: serde_json::Value, started: Instant) {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
        let out = target.join("bench");
        std::fs::create_dir_all(&out).unwrap();
        let path = out.join(format!("{name}.json"));
        let body = serde_json::to_vec_pretty(&self.json(settings, started)).unwrap();
        std::fs::write(&path, body).unwrap();
        std::fs::write(out.join(format!("{name}.md")), self.table()).unwrap();
        println!("written: {} (and {name}.md)", path.display());
    }
}

fn fmt(v: f64) -> String {
    if v == 0.0 || v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let mosquitto = Command::new("mosquitto")
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(String::from)
        })
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_mib": mem_kb / 1024,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "arch": std::env::consts::ARCH,
        "mosquitto": mosquitto,
    })
}
