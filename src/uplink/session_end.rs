//! How one MQTT connection ended, and what follows from it: the facts of a failed or lost
//! connection, its diagnosis sharpened by what happened on it, whether the next connection
//! skips the broker check, and what the log says about it.
//!
//! Owns those decisions and nothing else: no I/O, no rumqttc, no clock reads (the facts carry
//! their instants). `mqtt` gathers the facts when a connection ends, asks here, and acts:
//! requeueing, quarantine, backoff, logging.

use std::time::Duration;

use tokio::time::Instant;

use super::diagnose::{self, Cause, Diagnosis, Severity, Target};
use super::quarantine::{Ending, GiveUp, Quarantine, Unacked, SUSPECT_WINDOW};
use super::state::{ComplaintPacer, Say};
use super::subscriptions::Purpose;

/// How one connection ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// We were asked to stop.
    Shutdown,
    Failed(Failure),
}

/// A connection that failed or was lost.
#[derive(Debug)]
pub struct Failure {
    pub diagnosis: Diagnosis,
    pub at: Instant,
    /// A CONNACK arrived: since when.
    pub connected_at: Option<Instant>,
    /// When the birth was written, if it was.
    pub birth_written_at: Option<Instant>,
    /// The broker acknowledged our birth: the connection worked.
    pub worked: bool,
    /// It ended while this subscription waited for its SUBACK.
    pub awaiting_suback: Option<Purpose>,
    /// Records handed out and not acknowledged.
    pub unacked: Vec<UnackedRecord>,
}

/// A record handed to the client and not acknowledged when the connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnackedRecord {
    /// The record's outbox `seq`.
    pub id: u64,
    pub topic: String,
    pub bytes: usize,
    pub written_at: Option<Instant>,
}

/// One line for the log about a failure; `mqtt` writes it at this level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogLine {
    /// A working connection was lost: news, with how many records go again.
    LinkDown(String),
    /// An attempt failed and this is worth saying (new, a new cause, a reminder).
    Complaint(Severity, String),
    /// The same failure once more: debug only.
    Again(String),
}

impl Failure {
    /// An attempt that never got a CONNACK.
    pub fn before_connack(diagnosis: Diagnosis, at: Instant) -> Failure {
        Failure {
            diagnosis,
            at,
            connected_at: None,
            birth_written_at: None,
            worked: false,
            awaiting_suback: None,
            unacked: Vec::new(),
        }
    }

    /// The failure's diagnosis, sharpened by what happened on the connection: a broker that
    /// closes the connection instead of answering our CONNECT, or that accepts us and then
    /// closes it over our retained birth, is refusing us too.
    pub fn explain(&self, to: Target<'_>) -> Diagnosis {
        let d = &self.diagnosis;
        // A clean close (EOF), not a reset: a broker that refuses our CONNECT reads it whole
        // and closes, while a flaky path resets.
        if self.connected_at.is_none() && d.cause == Cause::Closed {
            return diagnose::closed_before_connack(to);
        }
        if let (Some(connected), Some(birth), false) =
            (self.connected_at, self.birth_written_at, self.worked)
        {
            let soon_after_birth = self.at.saturating_duration_since(birth) <= SUSPECT_WINDOW;
            if d.ending() == Ending::ClosedByBroker && soon_after_birth {
                return diagnose::closed_before_birth(
                    self.at.saturating_duration_since(connected),
                    to,
                );
            }
        }
        d.clone()
    }

    /// The record to give up on, if this end made one earn it (see `quarantine`).
    pub fn quarantined(&self, quarantine: &mut Quarantine) -> Option<GiveUp<'_>> {
        let unacked: Vec<Unacked> = self
            .unacked
            .iter()
            .map(|u| Unacked {
                id: u.id,
                written_at: u.written_at,
            })
            .collect();
        let id = quarantine.connection_ended(self.diagnosis.ending(), &unacked, self.at)?;
        let culprit = self.unacked.iter().find(|u| u.id == id)?;
        Some(GiveUp {
            id,
            topic: &culprit.topic,
            bytes: culprit.bytes,
            why: GiveUp::struck_out(),
        })
    }

    /// Whether the next connection goes without the broker check: once, after a connection
    /// the broker closed while the check waited for its SUBACK (some brokers close instead
    /// of refusing a subscription; see `broker_check`). `skipped` says whether this one went
    /// without it, so the check is tried again after that.
    pub fn skip_next_check(&self, skipped: bool) -> bool {
        self.awaiting_suback == Some(Purpose::BrokerCheck)
            && self.diagnosis.ending() == Ending::ClosedByBroker
            && !skipped
    }

    /// The broker closed the connection while our subscription to commands waited for its
    /// SUBACK: its way of saying this gateway may not read them (AWS IoT Core does this).
    pub fn closed_on_commands(&self) -> bool {
        self.awaiting_suback == Some(Purpose::Commands)
            && self.diagnosis.ending() == Ending::ClosedByBroker
    }

    /// What to log about it (`d` is [`explain`](Self::explain)'s verdict): a working
    /// connection that is lost is news; failing attempts are complained about when they
    /// start, change cause, and every 10 minutes (warn when a setting must change).
    pub fn log_line(
        &self,
        d: &Diagnosis,
        retry_in: Duration,
        pacer: &mut ComplaintPacer<Cause>,
    ) -> LogLine {
        let retry = retry_in.as_secs_f64();
        if self.worked {
            pacer.resolved();
            return LogLine::LinkDown(format!(
                "MQTT link down: {}; reconnecting in {retry:.1}s",
                d.text
            ));
        }
        let text = match pacer.occurred(d.cause, self.at) {
            Say::Nothing => {
                return LogLine::Again(format!(
                    "MQTT connect failed again: {}; retrying in {retry:.1}s",
                    d.text
                ))
            }
            Say::New => format!(
                "cannot connect to the MQTT broker: {}; retrying in {retry:.1}s, with \
                 backoff, until it works",
                d.text
            ),
            Say::Reminder { repeats, lasting } => format!(
                "still cannot connect to the MQTT broker: {} ({repeats} more failed attempts \
                 in the last {})",
                d.text,
                humantime::format_duration(Duration::from_secs(lasting.as_secs()))
            ),
        };
        LogLine::Complaint(d.severity(), text)
    }
}

#[cfg(test)]
mod tests {
    use rumqttc::{ConnectReturnCode, ConnectionError, StateError};

    use super::*;

    const TO: Target<'static> = Target {
        broker: "broker.example:1883",
        host: "broker.example",
        client_id: "gw1",
    };

    fn closed() -> Diagnosis {
        diagnose::connection_error(
            &ConnectionError::MqttState(StateError::ConnectionAborted),
            TO,
        )
    }

    fn refused() -> Diagnosis {
        diagnose::connection_error(
            &ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized),
            TO,
        )
    }

    fn connected(diagnosis: Diagnosis, at: Instant) -> Failure {
        Failure {
            connected_at: Some(at),
            ..Failure::before_connack(diagnosis, at)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_broker_that_closes_instead_of_answering_our_connect_is_refusing_us() {
        let d = Failure::before_connack(closed(), Instant::now()).explain(TO);
        assert_eq!(d.cause, Cause::ClosedBeforeConnack);
        assert_eq!(d.severity(), Severity::Warn);
        assert!(d.text.contains("retain_available"), "{}", d.text);
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_soon_after_our_unacknowledged_birth_is_a_refusal_and_a_later_one_is_not() {
        let t0 = Instant::now();
        let mut f = connected(closed(), t0);
        f.birth_written_at = Some(t0);
        f.at = t0 + Duration::from_secs(1);
        let d = f.explain(TO);
        assert_eq!(d.cause, Cause::ClosedBeforeBirth);
        assert!(d.text.contains("1.0s later"), "{}", d.text);

        f.at = t0 + SUSPECT_WINDOW + Duration::from_secs(1);
        assert_eq!(f.explain(TO).cause, Cause::Closed, "long after the birth");
        f.at = t0 + Duration::from_secs(1);
        f.worked = true;
        assert_eq!(
            f.explain(TO).cause,
            Cause::Closed,
            "the birth was acknowledged"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_attempt_is_warned_once_then_kept_quiet_and_a_lost_link_is_news() {
        let t0 = Instant::now();
        let mut pacer = ComplaintPacer::new();
        let first = Failure::before_connack(refused(), t0);
        let d = first.explain(TO);
        let LogLine::Complaint(Severity::Warn, text) =
            first.log_line(&d, Duration::from_secs(2), &mut pacer)
        else {
            panic!("the first refusal is a warning");
        };
        assert!(
            text.contains("not authorized") && text.contains("retrying in 2.0s"),
            "{text}"
        );
        let again = Failure::before_connack(refused(), t0 + Duration::from_secs(3));
        assert!(matches!(
            again.log_line(&d, Duration::from_secs(4), &mut pacer),
            LogLine::Again(_)
        ));

        let mut lost = connected(closed(), t0 + Duration::from_secs(60));
        lost.worked = true;
        let d = lost.explain(TO);
        assert!(matches!(
            lost.log_line(&d, Duration::from_secs(1), &mut pacer),
            LogLine::LinkDown(_)
        ));
        assert!(
            !pacer.is_complaining(),
            "a working connection ends the complaint"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_closed_while_subscribing_skips_the_check_once() {
        let mut f = connected(closed(), Instant::now());
        f.awaiting_suback = Some(Purpose::BrokerCheck);
        assert!(f.skip_next_check(false));
        assert!(!f.skip_next_check(true), "tried again after one without");
        f.diagnosis = diagnose::keep_alive(Duration::from_secs(3));
        assert!(
            !f.skip_next_check(false),
            "our own verdict blames no subscription"
        );
    }
}
