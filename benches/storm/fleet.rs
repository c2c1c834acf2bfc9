//! The fleet: N release agents, each with its own state directory, gateway id and prefix,
//! polling one device on the shared Modbus simulator and publishing through the counting
//! proxy in front of mosquitto.

use crate::agent_proc::AgentProc;
use crate::procfs;
use crate::rig;

/// Every agent's prefix is `storm/a<i>`; the subscriber watches `storm/#`.
pub const TOPIC_ROOT: &str = "storm";

pub fn prefix(i: usize) -> String {
    format!("{TOPIC_ROOT}/a{i}")
}

/// Keep-alive 5 s as the issue asks; a small buffer bound and a small memory queue (the
/// storm lasts seconds, each agent has one reading a second to hold); warnings only, so
/// that N agents do not fill the disk with log lines.
fn config(i: usize, state: &std::path::Path, broker_port: u16, sim_port: u16) -> String {
    format!(
        "[gateway]\nid = \"storm-a{i}\"\n\n\
         [mqtt]\nurl = \"mqtt://127.0.0.1:{broker_port}\"\nprefix = \"{prefix}\"\n\
         keep_alive = \"5s\"\nqueue_capacity = 1000\n\n\
         [buffer]\npath = \"{state}\"\nmax_size = \"1MiB\"\n\n\
         [log]\nlevel = \"warn\"\n\n\
         [[bus]]\nname = \"sim\"\ntype = \"modbus_tcp\"\naddress = \"127.0.0.1:{sim_port}\"\n\n\
         [[device]]\nname = \"m\"\nbus = \"sim\"\nunit = 1\ninterval = \"1s\"\n\n{points}",
        prefix = prefix(i),
        state = state.display(),
        points = rig::f32_points(1),
    )
}

pub struct Fleet {
    pub agents: Vec<AgentProc>,
}

impl Fleet {
    /// Starts `n` agents against `broker_port`; `jitter: false` sets the bench-only switch
    /// that turns the backoff's jitter off (`src/uplink/state.rs`).
    pub fn start(n: usize, broker_port: u16, sim_port: u16, jitter: bool) -> Fleet {
        let switch = [("FIELDLINK_BENCH_NO_JITTER", if jitter { "0" } else { "1" })];
        let agents = (0..n)
            .map(|i| {
                let dir = tempfile::tempdir().unwrap();
                let text = config(i, dir.path(), broker_port, sim_port);
                AgentProc::spawn(&text, dir, &switch)
            })
            .collect();
        Fleet { agents }
    }

    /// Median VmRSS and median RssAnon (the private part) in KiB.
    pub fn median_rss_kib(&self) -> (u64, u64) {
        let median = |key: &str| {
            let mut v: Vec<u64> = self
                .agents
                .iter()
                .map(|a| procfs::status_kb(a.pid(), key))
                .collect();
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or(0)
        };
        (median("VmRSS"), median("RssAnon"))
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }
}
