//! The link state machine: keep-alive verdict, reconnect backoff and connection counting.
//!
//! Owns the timing decisions of the uplink and nothing else: no sockets, no rumqttc, no
//! clock reads. Every method takes `now`, so tests drive it with tokio's paused clock.
//!
//! - Keep-alive verdict: the link is dead when nothing at all arrived from the broker for
//!   1.5 x keep-alive (MQTT 3.1.1 §3.1.2.10 applied on our side). Any inbound packet counts.
//! - Backoff: exponential with full jitter. The n-th consecutive failure draws uniformly from
//!   `[initial/2, min(max, initial * 2^n)]`; the floor of `initial/2` keeps an unlucky draw
//!   from turning into a reconnect storm against a broker that refuses us.
//! - The failure count resets once a connection has proved itself: it stayed up at least
//!   twice as long as the wait before it (and at least [`PROVEN_UP_MIN`]), or for
//!   `healthy_after` (`min(2 x backoff_max, 60 s)`) whatever the wait. A link that flaps (up,
//!   then dead at once) keeps backing off instead of hammering the broker, while a path that
//!   works but is cut now and then (a NAT or carrier that resets connections every 30 s, seen
//!   in the chaos soak) reconnects after a short wait every time, not after the ceiling.
//! - Health pacing ([`HealthPacer`]): besides its heartbeat (every `health_interval`, 5 min
//!   by default), the health topic goes out when
//!   something an operator must hear about changed (link state, a trouble such as the
//!   buffer's disk error appearing, changing or clearing, the dropped count starting to
//!   grow), at most once per [`HEALTH_MIN_GAP`]; never for ordinary readings.
//! - Complaint pacing ([`ComplaintPacer`]): a trouble that repeats at every attempt (the
//!   broker refusing us, a TLS failure, an ACL that swallows our messages) is logged when it
//!   starts, when its cause changes, and again every [`REMIND_EVERY`] while it lasts: never
//!   once per attempt, never only at debug.

use std::time::Duration;

use tokio::time::Instant;

use crate::health::LinkState;

/// At most one extra health message per this gap (the heartbeat is not held back).
pub const HEALTH_MIN_GAP: Duration = Duration::from_secs(5);

/// A complaint that goes on is logged again this often.
pub const REMIND_EVERY: Duration = Duration::from_secs(600);

/// Nothing heard for this many keep-alives means dead.
const DEAD_AFTER_KEEP_ALIVES: f64 = 1.5;
/// Upper bound on the healthy period after which the backoff starts again from `initial`.
const HEALTHY_AFTER_MAX: Duration = Duration::from_secs(60);
/// A connection shorter than this proves nothing, whatever the wait before it was.
pub const PROVEN_UP_MIN: Duration = Duration::from_secs(5);

/// When the broker was last heard from, and so when the link must be declared dead.
#[derive(Debug, Clone)]
pub struct KeepAliveWatch {
    allowance: Duration,
    last_inbound: Instant,
}

impl KeepAliveWatch {
    /// Starts the watch at `now` (the CONNACK counts as the first inbound packet).
    pub fn new(keep_alive: Duration, now: Instant) -> Self {
        KeepAliveWatch {
            allowance: keep_alive.mul_f64(DEAD_AFTER_KEEP_ALIVES),
            last_inbound: now,
        }
    }

    pub fn on_inbound(&mut self, now: Instant) {
        self.last_inbound = self.last_inbound.max(now);
    }

    pub fn last_inbound(&self) -> Instant {
        self.last_inbound
    }

    /// The moment the link is dead unless something arrives before.
    pub fn deadline(&self) -> Instant {
        self.last_inbound + self.allowance
    }

    pub fn is_dead(&self, now: Instant) -> bool {
        now >= self.deadline()
    }

    pub fn allowance(&self) -> Duration {
        self.allowance
    }
}

/// Exponential backoff with full jitter and an injectable random source.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, rng: fastrand::Rng) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
            failures: 0,
            rng,
        }
    }

    /// The upper bound of the next draw: `min(max, initial * 2^failures)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    pub fn floor(&self) -> Duration {
        self.initial / 2
    }

    /// Draws the delay before the next attempt and counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let lo = self.floor().as_millis() as u64;
        let hi = (self.ceiling().as_millis() as u64).max(lo);
        self.failures = self.failures.saturating_add(1);
        if jitter_disabled() {
            return Duration::from_millis(hi);
        }
        Duration::from_millis(self.rng.u64(lo..=hi))
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// For the reconnect-storm bench only (`benches/storm`), never for a gateway: with
/// `FIELDLINK_BENCH_NO_JITTER=1` in the environment every wait is the ceiling itself, plain
/// exponential backoff, so the bench can show what the jitter buys. Read once per process.
#[doc(hidden)]
pub fn jitter_disabled() -> bool {
    static OFF: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        std::env::var_os("FIELDLINK_BENCH_NO_JITTER").is_some_and(|v| v == "1")
    });
    *OFF
}

/// Connection bookkeeping across the life of the agent.
#[derive(Debug)]
pub struct Link {
    backoff: Backoff,
    healthy_after: Duration,
    up_since: Option<Instant>,
    /// The wait before the current (or last) attempt.
    last_wait: Duration,
    connections: u64,
}

impl Link {
    pub fn new(initial: Duration, max: Duration, rng: fastrand::Rng) -> Self {
        Link {
            healthy_after: (max * 2).min(HEALTHY_AFTER_MAX),
            backoff: Backoff::new(initial, max, rng),
            up_since: None,
            last_wait: Duration::ZERO,
            connections: 0,
        }
    }

    /// A CONNACK arrived.
    pub fn on_connected(&mut self, now: Instant) {
        self.up_since = Some(now);
        self.connections += 1;
    }

    /// The link was lost (or an attempt failed): returns the delay before the next attempt.
    pub fn on_down(&mut self, now: Instant) -> Duration {
        if let Some(since) = self.up_since.take() {
            let proven = (self.last_wait * 2)
                .max(PROVEN_UP_MIN)
                .min(self.healthy_after);
            if now.saturating_duration_since(since) >= proven {
                self.backoff.reset();
            }
        }
        self.last_wait = self.backoff.next_delay();
        self.last_wait
    }

    pub fn is_up(&self) -> bool {
        self.up_since.is_some()
    }

    /// Connections established so far.
    pub fn connections(&self) -> u64 {
        self.connections
    }

    /// Connections established after the first one.
    pub fn reconnects(&self) -> u64 {
        self.connections.saturating_sub(1)
    }

    pub fn healthy_after(&self) -> Duration {
        self.healthy_after
    }

    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }
}

/// The facts of a health report that decide whether it is worth an early message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthFacts {
    pub link: LinkState,
    /// `(source, trouble)` pairs, e.g. `("buffer", "disk full")`.
    pub troubles: Vec<(String, String)>,
    /// Readings lost unpublished so far.
    pub dropped: u64,
}

#[derive(Debug, Clone)]
struct PublishedHealth {
    at: Instant,
    facts: HealthFacts,
    /// The dropped count had grown since the message before this one.
    dropping: bool,
}

/// Decides when the health topic goes out early; see the module doc.
#[derive(Debug, Clone, Default)]
pub struct HealthPacer {
    last: Option<PublishedHealth>,
}

impl HealthPacer {
    pub fn new() -> Self {
        HealthPacer::default()
    }

    /// True when `facts` differ materially from the last message and the gap allows one.
    /// Drops that keep growing are reported once when they start; the heartbeat shows how
    /// far they went.
    pub fn due(&self, facts: &HealthFacts, now: Instant) -> bool {
        let Some(last) = &self.last else {
            return true;
        };
        if now < last.at + HEALTH_MIN_GAP {
            return false;
        }
        facts.link != last.facts.link
            || facts.troubles != last.facts.troubles
            || (facts.dropped > last.facts.dropped && !last.dropping)
    }

    /// A health message with `facts` went out at `now` (early or as the heartbeat).
    pub fn published(&mut self, facts: HealthFacts, now: Instant) {
        let dropping = self
            .last
            .as_ref()
            .is_some_and(|l| facts.dropped > l.facts.dropped);
        self.last = Some(PublishedHealth {
            at: now,
            facts,
            dropping,
        });
    }
}

/// What the log should say about one more occurrence of a complaint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Say {
    /// Nothing new: log at debug only.
    Nothing,
    /// A new complaint, or a new cause.
    New,
    /// The same cause, still there: `repeats` more occurrences over `lasting`.
    Reminder { repeats: u64, lasting: Duration },
}

#[derive(Debug, Clone)]
struct Complaint<C> {
    cause: C,
    since: Instant,
    logged_at: Instant,
    repeats: u64,
}

/// Decides which occurrences of a recurring complaint reach the log; see the module doc.
/// `C` is the complaint's typed cause: the same trouble gives an equal cause.
#[derive(Debug, Clone)]
pub struct ComplaintPacer<C> {
    current: Option<Complaint<C>>,
}

impl<C> Default for ComplaintPacer<C> {
    fn default() -> Self {
        ComplaintPacer { current: None }
    }
}

impl<C: PartialEq> ComplaintPacer<C> {
    pub fn new() -> Self {
        ComplaintPacer::default()
    }

    /// One more occurrence with `cause`.
    pub fn occurred(&mut self, cause: C, now: Instant) -> Say {
        match &mut self.current {
            Some(c) if c.cause == cause => {
                c.repeats += 1;
                if now.saturating_duration_since(c.logged_at) < REMIND_EVERY {
                    return Say::Nothing;
                }
                let say = Say::Reminder {
                    repeats: c.repeats,
                    lasting: now.saturating_duration_since(c.since),
                };
                c.logged_at = now;
                c.repeats = 0;
                say
            }
            _ => {
                self.current = Some(Complaint {
                    cause,
                    since: now,
                    logged_at: now,
                    repeats: 0,
                });
                Say::New
            }
        }
    }

    /// The trouble is over. Returns the cause that had been complained about, if any.
    pub fn resolved(&mut self) -> Option<C> {
        self.current.take().map(|c| c.cause)
    }

    pub fn is_complaining(&self) -> bool {
        self.current.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KA: Duration = Duration::from_secs(2);

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[tokio::test(start_paused = true)]
    async fn the_link_is_dead_one_and_a_half_keep_alives_after_the_last_inbound_packet() {
        let mut watch = KeepAliveWatch::new(KA, Instant::now());
        tokio::time::advance(secs(1.0)).await;
        watch.on_inbound(Instant::now());
        let last = Instant::now();
        tokio::time::advance(secs(2.999)).await;
        assert!(!watch.is_dead(Instant::now()));
        tokio::time::advance(secs(0.001)).await;
        assert!(watch.is_dead(Instant::now()));
        assert_eq!(watch.deadline() - last, secs(3.0));
    }

    #[tokio::test(start_paused = true)]
    async fn sleeping_until_the_deadline_wakes_exactly_at_the_verdict() {
        let start = Instant::now();
        let watch = KeepAliveWatch::new(KA, start);
        tokio::time::sleep_until(watch.deadline()).await;
        assert!(watch.is_dead(Instant::now()));
        assert_eq!(Instant::now() - start, secs(3.0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_older_timestamp_never_moves_the_deadline_back() {
        let early = Instant::now();
        tokio::time::advance(secs(2.0)).await;
        let mut watch = KeepAliveWatch::new(KA, Instant::now());
        watch.on_inbound(early);
        assert_eq!(watch.deadline(), early + secs(5.0));
    }

    #[test]
    fn backoff_draws_stay_between_the_floor_and_a_doubling_ceiling_capped_at_max() {
        for seed in 0..200 {
            let mut b = Backoff::new(secs(1.0), secs(60.0), fastrand::Rng::with_seed(seed));
            let mut expected_ceiling = 1.0f64;
            for _ in 0..12 {
                let ceiling = b.ceiling();
                assert_eq!(ceiling, secs(expected_ceiling.min(60.0)));
                let d = b.next_delay();
                assert!(
                    d >= secs(0.5) && d <= ceiling,
                    "{d:?} outside [0.5s, {ceiling:?}]"
                );
                expected_ceiling *= 2.0;
            }
        }
    }

    #[test]
    fn backoff_jitter_spreads_a_fleet_out() {
        let draws: Vec<Duration> = (0..100)
            .map(|seed| {
                let mut b = Backoff::new(secs(1.0), secs(60.0), fastrand::Rng::with_seed(seed));
                for _ in 0..5 {
                    b.next_delay();
                }
                b.next_delay()
            })
            .collect();
        let min = draws.iter().min().unwrap();
        let max = draws.iter().max().unwrap();
        assert!(
            *max - *min > secs(20.0),
            "draws too close: {min:?}..{max:?}"
        );
    }

    #[test]
    fn backoff_survives_absurd_failure_counts() {
        let mut b = Backoff::new(secs(1.0), secs(60.0), fastrand::Rng::with_seed(1));
        for _ in 0..1000 {
            assert!(b.next_delay() <= secs(60.0));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_resets_only_after_the_connection_stayed_healthy() {
        let mut link = Link::new(secs(1.0), secs(8.0), fastrand::Rng::with_seed(3));
        assert_eq!(link.healthy_after(), secs(16.0));
        for _ in 0..4 {
            link.on_down(Instant::now());
        }
        assert_eq!(link.backoff().ceiling(), secs(8.0));

        // Up, but dead again at once: keep backing off.
        link.on_connected(Instant::now());
        tokio::time::advance(secs(4.9)).await;
        link.on_down(Instant::now());
        assert_eq!(link.backoff().failures(), 5);

        // Up for the whole healthy period: the next delay starts from `initial` again.
        link.on_connected(Instant::now());
        tokio::time::advance(secs(16.0)).await;
        let d = link.on_down(Instant::now());
        assert!(d <= secs(1.0), "{d:?}");
        assert_eq!(link.backoff().failures(), 1);
        assert_eq!(link.connections(), 2);
        assert_eq!(link.reconnects(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_cut_every_half_minute_reconnects_after_a_short_wait_every_time() {
        let mut link = Link::new(secs(1.0), secs(60.0), fastrand::Rng::with_seed(7));
        let mut waits = Vec::new();
        for _ in 0..20 {
            let wait = link.on_down(Instant::now());
            waits.push(wait);
            tokio::time::advance(wait).await;
            link.on_connected(Instant::now());
            tokio::time::advance(secs(30.0)).await;
        }
        assert!(
            waits.iter().all(|&w| w <= secs(1.0)),
            "every connection outlived twice its wait, so none escalates: {waits:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_lasts_no_longer_than_twice_its_wait_keeps_backing_off() {
        let mut link = Link::new(secs(1.0), secs(60.0), fastrand::Rng::with_seed(11));
        for _ in 0..6 {
            link.on_down(Instant::now());
        }
        let before = link.backoff().failures();
        let wait = link.on_down(Instant::now());
        link.on_connected(Instant::now());
        let proven = (wait * 2).max(PROVEN_UP_MIN).min(link.healthy_after());
        tokio::time::advance(proven - secs(0.1)).await;
        link.on_down(Instant::now());
        assert_eq!(link.backoff().failures(), before + 2, "no reset");
    }

    #[test]
    fn the_healthy_period_is_capped_at_a_minute() {
        let link = Link::new(secs(1.0), secs(300.0), fastrand::Rng::with_seed(0));
        assert_eq!(link.healthy_after(), secs(60.0));
    }

    fn facts(link: LinkState, trouble: Option<&str>, dropped: u64) -> HealthFacts {
        HealthFacts {
            link,
            troubles: trouble
                .map(|t| vec![("buffer".to_string(), t.to_string())])
                .unwrap_or_default(),
            dropped,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn health_goes_out_early_for_a_new_trouble_and_a_link_change_at_most_every_five_seconds()
    {
        let t0 = Instant::now();
        let mut pacer = HealthPacer::new();
        let calm = facts(LinkState::Up, None, 0);
        assert!(pacer.due(&calm, t0), "nothing published yet");
        pacer.published(calm.clone(), t0);
        assert!(!pacer.due(&calm, t0 + Duration::from_secs(30)), "no change");

        let disk = facts(LinkState::Up, Some("read-only file system"), 0);
        assert!(
            !pacer.due(&disk, t0 + Duration::from_secs(4)),
            "within the gap"
        );
        assert!(pacer.due(&disk, t0 + HEALTH_MIN_GAP));
        pacer.published(disk.clone(), t0 + HEALTH_MIN_GAP);
        assert!(!pacer.due(&disk, t0 + Duration::from_secs(20)), "told once");

        let other = facts(LinkState::Up, Some("disk full"), 0);
        assert!(
            pacer.due(&other, t0 + Duration::from_secs(20)),
            "a new error"
        );
        let cleared = facts(LinkState::Up, None, 0);
        assert!(pacer.due(&cleared, t0 + Duration::from_secs(20)), "cleared");
        let down = facts(LinkState::Down, Some("read-only file system"), 0);
        assert!(pacer.due(&down, t0 + Duration::from_secs(20)), "link state");
    }

    #[tokio::test(start_paused = true)]
    async fn drops_are_reported_early_when_they_start_not_while_they_go_on() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut pacer = HealthPacer::new();
        pacer.published(facts(LinkState::Up, None, 0), at(0));
        assert!(pacer.due(&facts(LinkState::Up, None, 3), at(10)), "started");
        pacer.published(facts(LinkState::Up, None, 3), at(10));
        assert!(
            !pacer.due(&facts(LinkState::Up, None, 50), at(20)),
            "going on"
        );
        // The minute's message sees them still growing, then one that sees them stopped.
        pacer.published(facts(LinkState::Up, None, 90), at(60));
        assert!(!pacer.due(&facts(LinkState::Up, None, 95), at(70)));
        pacer.published(facts(LinkState::Up, None, 95), at(120));
        pacer.published(facts(LinkState::Up, None, 95), at(180));
        assert!(
            pacer.due(&facts(LinkState::Up, None, 96), at(190)),
            "a new episode"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_complaint_is_logged_when_it_starts_changes_and_every_ten_minutes_while_it_lasts() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut pacer = ComplaintPacer::new();
        assert_eq!(pacer.occurred("refused: bad password", at(0)), Say::New);
        assert_eq!(pacer.occurred("refused: bad password", at(5)), Say::Nothing);
        assert_eq!(
            pacer.occurred("refused: bad password", at(599)),
            Say::Nothing
        );
        assert_eq!(
            pacer.occurred("refused: bad password", at(600)),
            Say::Reminder {
                repeats: 3,
                lasting: Duration::from_secs(600)
            }
        );
        assert_eq!(
            pacer.occurred("refused: bad password", at(700)),
            Say::Nothing
        );
        assert_eq!(pacer.occurred("tls: unknown issuer", at(701)), Say::New);
        assert_eq!(pacer.occurred("refused: bad password", at(702)), Say::New);
        assert_eq!(pacer.resolved(), Some("refused: bad password"));
        assert_eq!(pacer.resolved(), None);
        assert_eq!(pacer.occurred("refused: bad password", at(703)), Say::New);
    }
}
