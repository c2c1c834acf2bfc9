//! The check made after every CONNACK: did the broker keep our retained messages, and does it
//! deliver what we publish? No I/O, time passed in; `mqtt` sends the packets it asks for.
//!
//! How (MQTT 3.1.1 §3.3.1.3, checked against mosquitto 2.0.11): right after CONNACK we
//! SUBSCRIBE (QoS 0) to our own `<prefix>/status`, and publish the retained `online` birth
//! only once the SUBACK is in, so the subscription exists before the birth reaches the
//! broker. The broker then sends us, in this order:
//! 1. the `status` it kept from before, if any, with the RETAIN flag set (a message sent
//!    because a subscription was just made);
//! 2. our own birth, forwarded live, with the RETAIN flag clear (a message matching an
//!    established subscription).
//!
//! So the first message on `status` tells whether the broker kept our retained state (RETAIN
//! set) or had nothing (RETAIN clear: it is our birth), and the echo of the birth proves that
//! the broker routes our publishes: under MQTT 3.1.1 a broker acknowledges a publish its ACL
//! drops, so a PUBACK proves nothing. No echo within [`CHECK_WAIT`] means the broker
//! swallows our messages (or will not let us read them back); the retained state is then
//! unknown and treated as lost (a republish costs bytes, a missing retained value costs a
//! consumer its data). A broker that sends retained messages after live ones could make us
//! republish needlessly, never skip a needed one.
//!
//! The subscription stays for the whole connection: nothing but our own `status` arrives on
//! it (the birth now, `offline` at goodbye), so an UNSUBSCRIBE would cost more bytes than it
//! saves.
//!
//! Some brokers close the connection on a subscription they do not authorise instead of
//! refusing it in the SUBACK. A connection closed while the check waited for its SUBACK is
//! followed by one without the check ([`BrokerCheck::skipped`]: birth at once, retained state
//! unknown so republished, routing unchecked); the check is tried again on the connection
//! after that, so a random reset never disables it for good.

use std::time::Duration;

use tokio::time::Instant;

/// How long the SUBACK, and then the echo of the birth, may take.
pub const CHECK_WAIT: Duration = Duration::from_secs(5);

/// Whether the broker still held our retained messages when we connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retained {
    Kept,
    Lost,
    /// The check could not tell (no echo, or the subscription was refused).
    Unknown,
}

/// Whether the broker delivers what we publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    Delivered,
    /// Subscribed, published, acknowledged, but nothing came back within [`CHECK_WAIT`].
    NotDelivered,
    /// The broker refused the subscription, so routing could not be checked.
    NotChecked,
}

impl Routing {
    /// What the operator must hear about this verdict, in words (`None`: all is well).
    /// `prefix` is the gateway's topic prefix, `status` its status topic.
    pub fn complaint(self, prefix: &str, status: &str) -> Option<String> {
        match self {
            Routing::Delivered => None,
            Routing::NotDelivered => Some(format!(
                "the broker accepts but does not deliver our messages: check its ACL (this \
                 gateway must be allowed to publish to, and read back, {prefix}/#). {status} \
                 did not come back to our own subscription within {}s of being acknowledged, \
                 so readings may vanish while every publish looks fine",
                CHECK_WAIT.as_secs()
            )),
            Routing::NotChecked => Some(format!(
                "the broker refused our subscription to {status} (in its SUBACK, or by \
                 closing the connection), so it cannot be checked that it delivers our \
                 messages, nor that it kept our retained messages (they are republished \
                 after such connects). Check its ACL: allow this gateway to subscribe to \
                 {status}"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitSubAck { until: Instant },
    AwaitEcho { until: Instant },
    Done,
}

/// One connection's check; see the module doc.
#[derive(Debug)]
pub struct BrokerCheck {
    phase: Phase,
    birth_due: bool,
    retained: Option<Retained>,
    retained_taken: bool,
    routing: Option<Routing>,
    routing_taken: bool,
}

impl BrokerCheck {
    /// The SUBSCRIBE to our `status` was handed to the client at `now`.
    pub fn subscribed(now: Instant) -> Self {
        BrokerCheck {
            phase: Phase::AwaitSubAck {
                until: now + CHECK_WAIT,
            },
            birth_due: false,
            retained: None,
            retained_taken: false,
            routing: None,
            routing_taken: false,
        }
    }

    /// No check on this connection (the last one was closed while subscribing).
    pub fn skipped() -> Self {
        BrokerCheck {
            phase: Phase::Done,
            birth_due: true,
            retained: Some(Retained::Unknown),
            retained_taken: false,
            routing: Some(Routing::NotChecked),
            routing_taken: false,
        }
    }

    /// True while the check waits for its SUBACK.
    pub fn subscribing(&self) -> bool {
        matches!(self.phase, Phase::AwaitSubAck { .. })
    }

    /// The SUBACK arrived; `granted` is false when the broker refused the subscription.
    pub fn on_suback(&mut self, granted: bool, now: Instant) {
        if !matches!(self.phase, Phase::AwaitSubAck { .. }) {
            return;
        }
        self.birth_due = true;
        if granted {
            self.phase = Phase::AwaitEcho {
                until: now + CHECK_WAIT,
            };
        } else {
            self.decide_retained(Retained::Unknown);
            self.routing = Some(Routing::NotChecked);
            self.phase = Phase::Done;
        }
    }

    /// A message on our own `status` arrived, with its RETAIN flag.
    pub fn on_own_status(&mut self, retain: bool) {
        match self.phase {
            Phase::Done => {}
            // The spec lets a broker send retained messages before the SUBACK.
            Phase::AwaitSubAck { .. } => {
                if retain {
                    self.decide_retained(Retained::Kept);
                }
            }
            Phase::AwaitEcho { .. } => {
                if retain {
                    self.decide_retained(Retained::Kept);
                } else {
                    self.decide_retained(Retained::Lost);
                    self.routing = Some(Routing::Delivered);
                    self.phase = Phase::Done;
                }
            }
        }
    }

    fn decide_retained(&mut self, verdict: Retained) {
        self.retained.get_or_insert(verdict);
    }

    /// When [`on_deadline`](Self::on_deadline) is due, while the check waits for something.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitSubAck { until } | Phase::AwaitEcho { until } => Some(until),
            Phase::Done => None,
        }
    }

    /// The deadline passed: without a SUBACK the birth goes anyway (it must not wait on a
    /// slow broker); without an echo the broker did not route our birth back.
    pub fn on_deadline(&mut self, now: Instant) {
        match self.phase {
            Phase::AwaitSubAck { until } if now >= until => {
                self.birth_due = true;
                self.phase = Phase::AwaitEcho {
                    until: now + CHECK_WAIT,
                };
            }
            Phase::AwaitEcho { until } if now >= until => {
                self.decide_retained(Retained::Unknown);
                self.routing = Some(Routing::NotDelivered);
                self.phase = Phase::Done;
            }
            _ => {}
        }
    }

    /// True once: the birth may go now.
    pub fn take_birth_due(&mut self) -> bool {
        std::mem::take(&mut self.birth_due)
    }

    /// The retained verdict, once, as soon as it is known.
    pub fn take_retained(&mut self) -> Option<Retained> {
        if self.retained_taken {
            return None;
        }
        let verdict = self.retained?;
        self.retained_taken = true;
        Some(verdict)
    }

    /// The routing verdict, once, as soon as it is known.
    pub fn take_routing(&mut self) -> Option<Routing> {
        if self.routing_taken {
            return None;
        }
        let verdict = self.routing?;
        self.routing_taken = true;
        Some(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_broker_that_kept_our_status_sends_it_retained_before_the_echo_of_the_birth() {
        let mut check = BrokerCheck::subscribed(Instant::now());
        assert!(!check.take_birth_due(), "the birth waits for the SUBACK");
        check.on_suback(true, Instant::now());
        assert!(check.take_birth_due());
        assert!(!check.take_birth_due(), "once");
        check.on_own_status(true);
        assert_eq!(check.take_retained(), Some(Retained::Kept));
        assert_eq!(check.take_routing(), None, "routing waits for the echo");
        check.on_own_status(false);
        assert_eq!(check.take_routing(), Some(Routing::Delivered));
        assert_eq!(check.take_retained(), None, "told once");
        assert_eq!(check.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_broker_that_lost_everything_answers_with_the_echo_of_our_birth_first() {
        let mut check = BrokerCheck::subscribed(Instant::now());
        check.on_suback(true, Instant::now());
        check.on_own_status(false);
        assert_eq!(check.take_retained(), Some(Retained::Lost));
        assert_eq!(check.take_routing(), Some(Routing::Delivered));
        // A late retained copy (a broker that sends them after live ones) changes nothing.
        check.on_own_status(true);
        assert_eq!(check.take_retained(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn no_echo_within_the_wait_means_not_delivered_and_an_unknown_retained_state() {
        let start = Instant::now();
        let mut check = BrokerCheck::subscribed(start);
        tokio::time::advance(Duration::from_millis(100)).await;
        check.on_suback(true, Instant::now());
        let due = check.deadline().unwrap();
        assert_eq!(due, start + Duration::from_millis(100) + CHECK_WAIT);
        check.on_deadline(due - Duration::from_millis(1));
        assert_eq!(check.take_routing(), None, "not yet");
        check.on_deadline(due);
        assert_eq!(check.take_routing(), Some(Routing::NotDelivered));
        assert_eq!(check.take_retained(), Some(Retained::Unknown));
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_suback_delays_the_birth_by_the_wait_only() {
        let start = Instant::now();
        let mut check = BrokerCheck::subscribed(start);
        check.on_deadline(start + CHECK_WAIT);
        assert!(check.take_birth_due());
        check.on_own_status(false);
        assert_eq!(check.take_retained(), Some(Retained::Lost));
        assert_eq!(check.take_routing(), Some(Routing::Delivered));
    }

    #[test]
    fn a_skipped_check_sends_the_birth_at_once_and_leaves_both_questions_open() {
        let mut check = BrokerCheck::skipped();
        assert!(!check.subscribing());
        assert!(check.take_birth_due());
        assert_eq!(check.take_retained(), Some(Retained::Unknown));
        assert_eq!(check.take_routing(), Some(Routing::NotChecked));
        assert_eq!(check.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_subscription_sends_the_birth_and_leaves_both_questions_open() {
        let mut check = BrokerCheck::subscribed(Instant::now());
        check.on_suback(false, Instant::now());
        assert!(check.take_birth_due());
        assert_eq!(check.take_retained(), Some(Retained::Unknown));
        assert_eq!(check.take_routing(), Some(Routing::NotChecked));
        assert_eq!(check.deadline(), None);
    }
}
