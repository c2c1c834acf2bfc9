//! RTU bus time: the agent's poll cycle over a pty that keeps RS-485 wire timing, against
//! the wire-time lower bound of the frames it plans.

use std::path::Path;
use std::time::{Duration, Instant};

use fieldlink::poll::modbus::plan::plan_groups;

use crate::agent_proc::AgentProc;
use crate::procfs::cpu_seconds;
use crate::report::Report;
use crate::rig::{
    drifting_meter, f32_points, head, mqtt_section, timed_rtu_line, wait_for_requests,
};
use crate::support::Broker;
use crate::Args;

/// `at_wire_minimum`: the bus keeps only t3.5 between exchanges (`inter_request_delay` set
/// to it) instead of the default 20 ms that slow devices need; the difference is silence the
/// user chose, the rest is what the agent costs.
pub async fn rtu(report: &mut Report, args: &Args, baud: u32, at_wire_minimum: bool) {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let meter = drifting_meter(1, 24);
    meter.with_banks(|b| b.set_input(0, &[1, 2, 3, 4]));
    let (path, timing, slave, _server) = timed_rtu_line(baud, vec![meter.clone()]);
    let (scenario, delay) = if at_wire_minimum {
        let micros = timing.frame_gap().as_nanos().div_ceil(1000);
        (
            format!("RTU {baud} 8E1, delay t3.5"),
            format!("inter_request_delay = \"{micros}us\"\n"),
        )
    } else {
        (format!("RTU {baud} 8E1, default"), String::new())
    };
    let mut config = head(dir.path(), &mqtt_section(broker.port, "bench/rtu", ""));
    config.push_str(&format!(
        "[[bus]]\nname = \"rs485\"\ntype = \"modbus_rtu\"\npath = \"{path}\"\nbaud = {baud}\nparity = \"even\"\nresponse_timeout = \"1s\"\n{delay}\n\
         [[device]]\nname = \"meter\"\nbus = \"rs485\"\nunit = 1\ninterval = \"10ms\"\n\n{}\
         [[device.point]]\nname = \"state\"\naddress = \"30001\"\ntype = \"u16\"\n\n\
         [[device.point]]\nname = \"alarms\"\naddress = \"30002\"\ntype = \"u32\"\n\n",
        f32_points(24),
    ));
    // The wire-time lower bound of one cycle, from the frames the agent plans.
    let cfg = fieldlink::config::load_str(Path::new("bench.toml"), &config).unwrap();
    let groups = plan_groups(&cfg.devices[0]);
    let mut bound = Duration::ZERO;
    let mut per_cycle = 0u64;
    for g in &groups {
        for r in &g.requests {
            let answer = if r.table.is_bits() {
                5 + (r.count as usize).div_ceil(8)
            } else {
                5 + 2 * r.count as usize
            };
            // The exchange, and the 3.5-character silence before the next request.
            bound += timing.exchange(8, answer) + timing.frame_gap();
            per_cycle += 1;
        }
    }
    let agent = AgentProc::start(&config, dir);
    let pid = agent.pid();
    wait_for_requests(
        std::slice::from_ref(&meter),
        "the agent polling the RTU line",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = args.window(10, 30);
    let (r0, c0, t0) = (meter.requests(), cpu_seconds(pid), Instant::now());
    tokio::time::sleep(window).await;
    let elapsed = t0.elapsed();
    let cycles = (meter.requests() - r0) as f64 / per_cycle as f64;
    let cpu = cpu_seconds(pid) - c0;
    agent.stop();
    drop(slave);
    let cycle = elapsed.as_secs_f64() / cycles.max(1.0);
    report
        .add(
            &scenario,
            "poll cycle (24 f32 + 2 input regs)",
            cycle * 1000.0,
            "ms",
        )
        .note = format!(
        "{per_cycle} requests a cycle, turnaround 5 ms, window {:.0}s",
        elapsed.as_secs_f64()
    );
    report.add(
        &scenario,
        "wire-time lower bound",
        bound.as_secs_f64() * 1000.0,
        "ms",
    );
    let row = report.add(
        &scenario,
        "ratio cycle / bound",
        cycle / bound.as_secs_f64(),
        "",
    );
    if baud == 9600 && at_wire_minimum {
        row.goal = Some(("<=", 1.2));
    }
    report.add(
        &scenario,
        "agent CPU while the line is busy",
        cpu / elapsed.as_secs_f64() * 100.0,
        "%",
    );
}
