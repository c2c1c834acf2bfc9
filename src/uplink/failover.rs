//! Which broker of `[mqtt] servers` to try next, and when: sans-IO, time passed in.
//!
//! On a failed connect or a dead link the next server is tried at once; the reconnect
//! backoff (with full jitter, `state::Link`) applies once per round through the list, so a
//! cluster with one dead node costs one failed attempt, not a backoff. A flapping guard keeps
//! every server together under [`MAX_ATTEMPTS`] connections per [`ATTEMPT_WINDOW`]: brokers
//! such as EMQX ban a client id that connects more often. It counts the connections a broker
//! accepted (CONNACK), which is what such a broker counts: attempts that never reached one
//! (a broker down, a port refused) are paced by the backoff alone, so a short `backoff_max`
//! still brings the link back quickly after an outage.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

pub const MAX_ATTEMPTS: usize = 10;
pub const ATTEMPT_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Failover {
    servers: usize,
    current: usize,
    /// Failed attempts since the last connection that worked or the last full round.
    failed_in_round: usize,
    attempts: VecDeque<Instant>,
}

/// What a failure leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Another server of this round is tried next, without a backoff.
    NextServer,
    /// Every server failed once: back off before the next round.
    RoundDone,
}

impl Failover {
    pub fn new(servers: usize) -> Self {
        Failover {
            servers: servers.max(1),
            current: 0,
            failed_in_round: 0,
            attempts: VecDeque::with_capacity(MAX_ATTEMPTS),
        }
    }

    /// The index of the server to try now.
    pub fn current(&self) -> usize {
        self.current
    }

    /// A broker accepted a connection at `now` (CONNACK).
    pub fn connected(&mut self, now: Instant) {
        if self.attempts.len() == MAX_ATTEMPTS {
            self.attempts.pop_front();
        }
        self.attempts.push_back(now);
    }

    /// The connection (or the attempt) to the current server ended: the next server is up.
    pub fn failed(&mut self) -> AfterFailure {
        self.current = (self.current + 1) % self.servers;
        self.failed_in_round += 1;
        if self.failed_in_round >= self.servers {
            self.failed_in_round = 0;
            AfterFailure::RoundDone
        } else {
            AfterFailure::NextServer
        }
    }

    /// A connection worked (its birth was acknowledged): a new round starts at the next
    /// failure.
    pub fn worked(&mut self) {
        self.failed_in_round = 0;
    }

    /// How long the flapping guard holds the next attempt back: until the oldest of the last
    /// [`MAX_ATTEMPTS`] attempts is [`ATTEMPT_WINDOW`] old.
    pub fn guard_wait(&self, now: Instant) -> Duration {
        if self.attempts.len() < MAX_ATTEMPTS {
            return Duration::ZERO;
        }
        self.attempts.front().map_or(Duration::ZERO, |&oldest| {
            (oldest + ATTEMPT_WINDOW).saturating_duration_since(now)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_server_is_tried_once_a_round_and_the_round_ends_in_a_backoff() {
        let mut f = Failover::new(3);
        assert_eq!(f.current(), 0);
        assert_eq!(f.failed(), AfterFailure::NextServer);
        assert_eq!(f.current(), 1);
        assert_eq!(f.failed(), AfterFailure::NextServer);
        assert_eq!(f.current(), 2);
        assert_eq!(f.failed(), AfterFailure::RoundDone);
        assert_eq!(f.current(), 0, "the next round starts where the list does");
    }

    #[test]
    fn a_dead_link_moves_to_the_next_server_at_once() {
        let mut f = Failover::new(3);
        f.failed();
        f.worked(); // connected to server 1
        assert_eq!(f.failed(), AfterFailure::NextServer);
        assert_eq!(f.current(), 2);
    }

    #[test]
    fn one_server_backs_off_after_every_failure_as_before() {
        let mut f = Failover::new(1);
        assert_eq!(f.failed(), AfterFailure::RoundDone);
        assert_eq!(f.failed(), AfterFailure::RoundDone);
        assert_eq!(f.current(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_ten_connections_a_minute_across_all_servers() {
        let mut f = Failover::new(3);
        let start = Instant::now();
        for i in 0..MAX_ATTEMPTS {
            assert_eq!(
                f.guard_wait(start + Duration::from_secs(i as u64)),
                Duration::ZERO
            );
            f.connected(start + Duration::from_secs(i as u64));
        }
        let now = start + Duration::from_secs(10);
        assert_eq!(f.guard_wait(now), Duration::from_secs(50));
        f.connected(start + Duration::from_secs(60));
        assert_eq!(
            f.guard_wait(start + Duration::from_secs(60)),
            Duration::from_secs(1),
            "the window slides: the second attempt (at 1 s) leaves it next"
        );
    }
}
