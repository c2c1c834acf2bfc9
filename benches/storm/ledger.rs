//! What the one wildcard subscriber saw, per agent: when each `online` birth arrived, and
//! every `(boot, seq)` of its readings. The watcher's messages carry no arrival time, so a
//! task takes them every 20 ms and stamps them: online times are good to about 20 ms.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::fleet::TOPIC_ROOT;
use crate::support::watch::Message;

const TAKE_EVERY: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Agent {
    births: Vec<Instant>,
    /// boot → seqs delivered in it.
    seqs: BTreeMap<u64, BTreeSet<u64>>,
    /// Arrival of the newest reading.
    last_reading: Option<Instant>,
    duplicates: u64,
}

pub struct Ledger {
    agents: Vec<Agent>,
}

/// Readings accounted for at a moment: what is missing in each boot up to its newest
/// delivered seq. A fresh state directory starts at seq 1, and the subscriber is there
/// before the agents start, so a first seq above 1 is a loss too.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
}

impl Ledger {
    /// Starts taking `messages` (the watcher's buffer) for `n` agents.
    pub fn spawn(n: usize, messages: Arc<Mutex<Vec<Message>>>) -> Arc<Mutex<Ledger>> {
        let ledger = Arc::new(Mutex::new(Ledger {
            agents: (0..n).map(|_| Agent::default()).collect(),
        }));
        let sink = ledger.clone();
        tokio::spawn(async move {
            // Until the watcher is gone (its task and itself held the other references).
            while Arc::strong_count(&messages) > 1 {
                let taken = std::mem::take(&mut *messages.lock().unwrap());
                let now = Instant::now();
                {
                    let mut ledger = sink.lock().unwrap();
                    for m in &taken {
                        ledger.note(m, now);
                    }
                }
                tokio::time::sleep(TAKE_EVERY).await;
            }
        });
        ledger
    }

    fn note(&mut self, m: &Message, at: Instant) {
        // storm/a<i>/status, storm/a<i>/m/<point>; the device status and health are ignored.
        let mut levels = m.topic.split('/');
        if levels.next() != Some(TOPIC_ROOT) {
            return;
        }
        let Some(agent) = levels
            .next()
            .and_then(|a| a.strip_prefix('a'))
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| self.agents.get_mut(i))
        else {
            return;
        };
        let rest: Vec<&str> = levels.collect();
        match rest.as_slice() {
            ["status"] if m.payload == "online" => agent.births.push(at),
            ["m", point] if *point != "status" => {
                let json = m.json();
                let (Some(boot), Some(seq)) = (json["boot"].as_u64(), json["seq"].as_u64()) else {
                    return;
                };
                if !agent.seqs.entry(boot).or_default().insert(seq) {
                    agent.duplicates += 1;
                }
                agent.last_reading = Some(at);
            }
            _ => {}
        }
    }

    /// Per agent, the arrival of its first `online` at or after `since` (None: not yet).
    pub fn online_since(&self, since: Instant) -> Vec<Option<Instant>> {
        self.agents
            .iter()
            .map(|a| a.births.iter().copied().find(|&t| t >= since))
            .collect()
    }

    pub fn all_online_since(&self, since: Instant) -> bool {
        self.online_since(since).iter().all(Option::is_some)
    }

    /// Whether every agent delivered a reading that arrived after `since`.
    pub fn all_reading_since(&self, since: Instant) -> bool {
        self.agents
            .iter()
            .all(|a| a.last_reading.is_some_and(|t| t > since))
    }

    pub fn tally(&self) -> Tally {
        let mut t = Tally::default();
        for a in &self.agents {
            t.duplicates += a.duplicates;
            for seqs in a.seqs.values() {
                let Some(&last) = seqs.last() else {
                    continue;
                };
                t.delivered += seqs.len() as u64;
                t.lost += last - seqs.len() as u64;
            }
        }
        t
    }
}
