//! The `replay_rate` cap on replayed history: a token bucket on a clock the caller passes
//! in, so a test holds the time.

use std::time::{Duration, Instant};

/// The `replay_rate` cap: whole readings per second, refilled from `now`.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: u32, now: Instant) -> Self {
        TokenBucket {
            rate: rate as f64,
            tokens: rate as f64,
            last: now,
        }
    }
    pub(crate) fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.rate.max(1.0));
        self.last = now;
    }
    pub(crate) fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.floor() as usize
    }
    pub(crate) fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
    pub(crate) fn wait_for_one(&self) -> Duration {
        Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.001))
    }
}
