//! The storm's output: one Markdown table with a column per run (as it goes into
//! docs/fleet.md), the per-second histograms, and the rows of the JSON report.

use std::time::Duration;

use crate::report::Report;
use crate::storm::{Outcome, DOWN};

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn label(o: &Outcome) -> &'static str {
    if o.jitter {
        "jitter on"
    } else {
        "jitter off"
    }
}

pub fn summary(outcomes: &[Outcome]) -> String {
    let Some(first) = outcomes.first() else {
        return String::new();
    };
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&Outcome) -> String| {
        rows.push((name.to_string(), outcomes.iter().map(f).collect()));
    };
    row(
        "load average (1 min): fleet up / at the kill / all back",
        &|o| format!("{:.2} / {:.2} / {:.2}", o.load[0], o.load[1], o.load[2]),
    );
    row(
        &format!(
            "connection attempts while the broker was down ({} s)",
            DOWN.as_secs()
        ),
        &|o| {
            let (bin, peak) = o.down.peak_attempts();
            format!(
                "{} (peak {peak}/s in s {})",
                o.down.total_attempts(),
                bin + 1
            )
        },
    );
    row(
        "connection attempts from the restart until all were back",
        &|o| o.storm.total_attempts().to_string(),
    );
    row(
        "attempts after the restart, peak: per second bin / any 1 s / any 100 ms",
        &|o| {
            let (bin, peak) = o.histogram.peak_attempts();
            format!("{peak} (s {}) / {} / {}", bin + 1, o.peak_1s, o.peak_100ms)
        },
    );
    row("back online after the restart: 50 % / 99 % / 100 %", &|o| {
        format!(
            "{} / {} / {}",
            secs(o.back_by(0.5)),
            secs(o.back_by(0.99)),
            secs(o.back_by(1.0))
        )
    });
    row("readings lost (of delivered; duplicates)", &|o| {
        format!(
            "{} (of {}; {} dup)",
            o.tally.lost, o.tally.delivered, o.tally.duplicates
        )
    });
    row("backlog drained after all were back", &|o| {
        o.drained_in.map_or("not within 120 s".into(), secs)
    });
    row("broker CPU steady (before the kill)", &|o| {
        format!("{:.1} %", 100.0 * o.steady_cpu)
    });
    row(
        "broker CPU from the restart until all were back (busiest second)",
        &|o| {
            format!(
                "{:.2} CPU-s ({:.0} %)",
                o.storm.total_cpu(),
                100.0 * o.histogram.peak_cpu()
            )
        },
    );
    row("agent RSS, median, MiB: before / after (private)", &|o| {
        format!(
            "{} / {} ({} / {})",
            mib(o.rss_before.0),
            mib(o.rss_after.0),
            mib(o.rss_before.1),
            mib(o.rss_after.1)
        )
    });
    row(
        "restart to the agents let through (subscriber first)",
        &|o| format!("{:.0} ms", o.restart_gap.as_secs_f64() * 1000.0),
    );

    let mut out = format!("| {} agents |", first.agents);
    for o in outcomes {
        out.push_str(&format!(" {} |", label(o)));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(outcomes.len()));
    out.push('\n');
    for (name, cells) in rows {
        out.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    }
    out
}

pub fn histograms(outcomes: &[Outcome]) -> String {
    let join = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
    let mut out = String::new();
    for o in outcomes {
        let cpu: Vec<u64> = o
            .histogram
            .cpu
            .iter()
            .map(|c| (c * 100.0).round() as u64)
            .collect();
        out.push_str(&format!(
            "{} agents, {}: attempts per second while down (from the kill): {}\n  \
             after the restart (to 3 s after the last was back): {}\n  \
             broker CPU % per second after the restart: {}\n",
            o.agents,
            label(o),
            join(&o.down.attempts),
            join(&o.histogram.attempts),
            join(&cpu)
        ));
    }
    out
}

pub fn report(outcomes: &[Outcome]) -> Report {
    let mut r = Report::default();
    for o in outcomes {
        let s = format!("{} agents {}", o.agents, label(o));
        r.add(&s, "load average 1 min at the kill", o.load[1], "");
        r.add(
            &s,
            "attempts while down",
            o.down.total_attempts() as f64,
            "",
        );
        r.add(
            &s,
            "attempts restart to all back",
            o.storm.total_attempts() as f64,
            "",
        );
        r.add(
            &s,
            "attempts/s after the restart, peak",
            o.histogram.peak_attempts().1 as f64,
            "1/s",
        );
        r.add(
            &s,
            "attempts in any 1 s after the restart, peak",
            o.peak_1s as f64,
            "",
        );
        r.add(
            &s,
            "attempts in any 100 ms after the restart, peak",
            o.peak_100ms as f64,
            "",
        );
        r.add(&s, "back online 50 %", o.back_by(0.5).as_secs_f64(), "s");
        r.add(&s, "back online 99 %", o.back_by(0.99).as_secs_f64(), "s");
        r.add(&s, "back online 100 %", o.back_by(1.0).as_secs_f64(), "s");
        r.add(&s, "readings lost", o.tally.lost as f64, "").goal = Some(("<=", 0.0));
        r.add(&s, "readings delivered", o.tally.delivered as f64, "");
        r.add(
            &s,
            "broker CPU restart to all back",
            o.storm.total_cpu(),
            "CPU-s",
        );
        r.add(
            &s,
            "broker CPU busiest second",
            o.histogram.peak_cpu(),
            "core",
        );
        r.add(
            &s,
            "agent VmRSS median",
            o.rss_after.0 as f64 / 1024.0,
            "MiB",
        );
        r.add(
            &s,
            "agent RssAnon median",
            o.rss_after.1 as f64 / 1024.0,
            "MiB",
        );
    }
    r
}
