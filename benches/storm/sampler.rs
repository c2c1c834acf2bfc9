//! The broker side of the storm, sampled every 50 ms on a thread of its own (the runtime
//! that carries the proxy may lag under the storm; an atomic and /proc do not): connection
//! attempts (the proxy's accept counter: every TCP connection an agent opened, including
//! those refused while the broker was down) and mosquitto's CPU time (utime + stime from
//! /proc/<pid>/stat, 10 ms ticks).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::procfs;
use crate::support::proxy::Proxy;

const EVERY: Duration = Duration::from_millis(50);

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    accepted: u64,
    /// The broker's pid then (0: down) and its CPU seconds so far.
    pid: u32,
    cpu: f64,
}

pub struct Sampler {
    /// The mosquitto to read; 0 while it is down. A restart brings a new pid.
    pub broker_pid: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Sample>>,
}

/// One-second bins from `origin`: attempts, and broker CPU seconds spent.
#[derive(Debug, Clone, Default)]
pub struct Bins {
    pub attempts: Vec<u64>,
    pub cpu: Vec<f64>,
}

impl Sampler {
    pub fn start(proxy: Arc<Proxy>, broker_pid: u32) -> Sampler {
        let pid = Arc::new(AtomicU32::new(broker_pid));
        let stop = Arc::new(AtomicBool::new(false));
        let (pid_in, stop_in) = (pid.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stop_in.load(Ordering::SeqCst) {
                let pid = pid_in.load(Ordering::SeqCst);
                samples.push(Sample {
                    at: Instant::now(),
                    accepted: proxy.accepted(),
                    pid,
                    cpu: if pid == 0 {
                        0.0
                    } else {
                        procfs::cpu_ticks_seconds(pid)
                    },
                });
                std::thread::sleep(EVERY);
            }
            samples
        });
        Sampler {
            broker_pid: pid,
            stop,
            thread,
        }
    }

    pub fn finish(self) -> Samples {
        self.stop.store(true, Ordering::SeqCst);
        Samples(self.thread.join().unwrap())
    }
}

pub struct Samples(Vec<Sample>);

impl Samples {
    /// What happened from `origin` to `until`, a bin a second. What happened between two
    /// samples goes to the bin of the later one.
    pub fn bins(&self, origin: Instant, until: Instant) -> Bins {
        let mut bins = Bins::default();
        for pair in self.0.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if b.at > until {
                break;
            }
            let Some(since) = b.at.checked_duration_since(origin) else {
                continue;
            };
            let bin = since.as_secs() as usize;
            if bins.attempts.len() <= bin {
                bins.attempts.resize(bin + 1, 0);
                bins.cpu.resize(bin + 1, 0.0);
            }
            bins.attempts[bin] += b.accepted - a.accepted;
            // CPU only between two readings of the same live broker.
            if a.pid != 0 && a.pid == b.pid && b.cpu >= a.cpu {
                bins.cpu[bin] += b.cpu - a.cpu;
            }
        }
        bins
    }

    /// The most attempts in any `window` (sliding, at the sampling step) between `from` and
    /// `until`: unlike the one-second bins, a burst that straddles a bin edge counts whole.
    pub fn peak_in_window(&self, window: Duration, from: Instant, until: Instant) -> u64 {
        let s: Vec<&Sample> = self
            .0
            .iter()
            .filter(|s| s.at >= from && s.at <= until)
            .collect();
        let mut peak = 0;
        let mut j = 0;
        for (i, a) in s.iter().enumerate() {
            j = j.max(i);
            while j + 1 < s.len() && s[j + 1].at <= a.at + window {
                j += 1;
            }
            peak = peak.max(s[j].accepted - a.accepted);
        }
        peak
    }
}

impl Bins {
    /// The busiest second: (bin, attempts); the earliest of equals.
    pub fn peak_attempts(&self) -> (usize, u64) {
        self.attempts
            .iter()
            .copied()
            .enumerate()
            .max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)))
            .unwrap_or((0, 0))
    }

    pub fn total_attempts(&self) -> u64 {
        self.attempts.iter().sum()
    }

    pub fn total_cpu(&self) -> f64 {
        self.cpu.iter().sum()
    }

    /// The busiest second's CPU, as a share of one core.
    pub fn peak_cpu(&self) -> f64 {
        self.cpu.iter().copied().fold(0.0, f64::max)
    }
}
