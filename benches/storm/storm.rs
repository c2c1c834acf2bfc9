//! One storm: a fresh mosquitto behind the counting proxy, the fleet brought up and settled,
//! the broker killed and kept down 10 s, started again on its port, and the fleet watched
//! until every agent is back and every reading is accounted for.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fleet::{Fleet, TOPIC_ROOT};
use crate::ledger::{Ledger, Tally};
use crate::sampler::{Bins, Sampler};
use crate::support::proxy::{Mode, Proxy};
use crate::support::watch::Watch;
use crate::support::{wait_until, Broker};

pub const DOWN: Duration = Duration::from_secs(10);
/// Longer than the backoff's proving period (5 s up resets it), so every agent meets the
/// kill with a fresh backoff, as a fleet that has been up for a while does.
const SETTLE: Duration = Duration::from_secs(8);
/// After everyone is back: how long their backlogs may take to arrive.
const DRAIN_DEADLINE: Duration = Duration::from_secs(120);

pub struct Outcome {
    pub jitter: bool,
    pub agents: usize,
    /// /proc/loadavg's 1-minute figure when the fleet was up, at the kill, and when all
    /// were back.
    pub load: [f64; 3],
    /// While the broker was down, a bin a second from the kill.
    pub down: Bins,
    /// From the restart until every agent was back, a bin a second.
    pub storm: Bins,
    /// The same, three seconds longer, for the histogram's tail.
    pub histogram: Bins,
    /// The most attempts in any sliding 1 s and 100 ms window from the restart until 3 s
    /// after the last agent was back.
    pub peak_1s: u64,
    pub peak_100ms: u64,
    /// Broker CPU seconds per second while the fleet was up and steady, before the kill.
    pub steady_cpu: f64,
    /// From mosquitto listening again to the proxy letting the agents through (the
    /// subscriber subscribes again first, so that it sees every reading).
    pub restart_gap: Duration,
    /// Each agent's first `online` after the restart, sorted.
    pub back: Vec<Duration>,
    pub tally: Tally,
    /// From all back online until no reading was missing.
    pub drained_in: Option<Duration>,
    /// Median VmRSS and RssAnon (KiB) of the agents, before the kill and when all were back.
    pub rss_before: (u64, u64),
    pub rss_after: (u64, u64),
}

impl Outcome {
    /// The time by which `share` of the agents were back online.
    pub fn back_by(&self, share: f64) -> Duration {
        let rank = ((share * self.back.len() as f64).ceil() as usize).max(1);
        self.back.get(rank - 1).copied().unwrap_or(Duration::ZERO)
    }
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

pub async fn run(agents: usize, sim_port: u16, jitter: bool) -> Outcome {
    let label = if jitter { "jitter on" } else { "jitter off" };
    println!("== {agents} agents, {label}");
    let mut broker = Broker::start();
    let proxy = Arc::new(Proxy::start(broker.port).await);
    // Directly on the broker, not through the proxy: its connections are not attempts.
    let watch = Watch::start_surviving_restarts(broker.port, &format!("{TOPIC_ROOT}/#")).await;
    let ledger = Ledger::spawn(agents, watch.messages.clone());

    let started = Instant::now();
    let fleet = Fleet::start(agents, proxy.port, sim_port, jitter);
    let up_deadline = Duration::from_secs(60) + Duration::from_millis(200) * agents as u32;
    wait_until("every agent online", up_deadline, || {
        ledger
            .lock()
            .unwrap()
            .all_online_since(started)
            .then_some(())
    })
    .await;
    println!(
        "  all {} online {:.1} s after the first was started",
        fleet.len(),
        started.elapsed().as_secs_f64()
    );
    let sampler = Sampler::start(proxy.clone(), broker.pid().unwrap());
    let settle_from = Instant::now();
    tokio::time::sleep(SETTLE).await;
    let rss_before = fleet.median_rss_kib();

    // The storm: refused at the proxy from now on (as a dead broker's port refuses), then
    // the broker is gone with its sessions and its retained messages.
    let load_up = load1();
    proxy.set(Mode::Refuse);
    let killed = Instant::now();
    broker.kill();
    sampler.broker_pid.store(0, Ordering::SeqCst);
    let load_kill = load1();
    tokio::time::sleep(DOWN.saturating_sub(killed.elapsed())).await;
    broker.restart();
    let listening = Instant::now();
    sampler
        .broker_pid
        .store(broker.pid().unwrap(), Ordering::SeqCst);
    wait_until(
        "the subscriber back on the broker",
        Duration::from_secs(20),
        || (watch.subacks() >= 2).then_some(()),
    )
    .await;
    proxy.set(Mode::Pass);
    let restarted = Instant::now();
    println!(
        "  broker killed, down {:.1} s, back; waiting for {agents} agents",
        (restarted - killed).as_secs_f64()
    );

    wait_until("every agent online again", Duration::from_secs(300), || {
        ledger
            .lock()
            .unwrap()
            .all_online_since(restarted)
            .then_some(())
    })
    .await;
    let all_back = Instant::now();
    let load_back = load1();
    let rss_after = fleet.median_rss_kib();
    let mut back: Vec<Duration> = ledger
        .lock()
        .unwrap()
        .online_since(restarted)
        .into_iter()
        .map(|t| t.map_or(Duration::MAX, |t| t - restarted))
        .collect();
    back.sort_unstable();

    // Drained: every agent has delivered a reading taken since, and no seq is missing.
    let drained_in = tokio::time::timeout(DRAIN_DEADLINE, async {
        loop {
            {
                let l = ledger.lock().unwrap();
                if l.all_reading_since(all_back) && l.tally().lost == 0 {
                    return all_back.elapsed();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .ok();
    // Three seconds after the last agent was back, for the histogram's tail.
    let tail_end = all_back + Duration::from_secs(3);
    tokio::time::sleep(tail_end.saturating_duration_since(Instant::now())).await;
    let samples = sampler.finish();
    let tally = ledger.lock().unwrap().tally();

    let steady = samples.bins(settle_from, killed);
    let outcome = Outcome {
        jitter,
        agents,
        load: [load_up, load_kill, load_back],
        down: samples.bins(killed, restarted),
        storm: samples.bins(restarted, all_back),
        histogram: samples.bins(restarted, tail_end),
        peak_1s: samples.peak_in_window(Duration::from_secs(1), restarted, tail_end),
        peak_100ms: samples.peak_in_window(Duration::from_millis(100), restarted, tail_end),
        steady_cpu: steady.total_cpu() / (killed - settle_from).as_secs_f64(),
        restart_gap: restarted - listening,
        back,
        tally,
        drained_in,
        rss_before,
        rss_after,
    };
    drop(fleet);
    watch.stop().await;
    drop(broker);
    outcome
}
