//! Which of our subscriptions a SUBACK answers. rumqttc hands out packet ids as it writes
//! SUBSCRIBEs (in the order we asked) and reports each on the outgoing side, so the pairing
//! needs no I/O: asked → written with a packet id → acknowledged.

use std::collections::VecDeque;

/// What a subscription is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Our own status topic, for the check of what the broker kept (`broker_check`).
    BrokerCheck,
    /// `<prefix>/+/+/set`: commands for writable points.
    Commands,
    /// Home Assistant's status, and this gateway's own discovery topics (`homeassistant`).
    Discovery,
}

#[derive(Debug, Default)]
pub struct Subscriptions {
    asked: VecDeque<Purpose>,
    written: Vec<(u16, Purpose)>,
}

impl Subscriptions {
    pub fn asked(&mut self, purpose: Purpose) {
        self.asked.push_back(purpose);
    }

    /// rumqttc wrote the next SUBSCRIBE with `pkid`.
    pub fn written(&mut self, pkid: u16) {
        if let Some(purpose) = self.asked.pop_front() {
            self.written.push((pkid, purpose));
        }
    }

    /// The subscription a SUBACK with `pkid` answers (`None` for one we do not know).
    pub fn acknowledged(&mut self, pkid: u16) -> Option<Purpose> {
        let at = self.written.iter().position(|&(p, _)| p == pkid)?;
        Some(self.written.swap_remove(at).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subacks_are_paired_by_packet_id_whatever_their_order() {
        let mut s = Subscriptions::default();
        s.asked(Purpose::BrokerCheck);
        s.asked(Purpose::Commands);
        s.written(7);
        s.written(8);
        assert_eq!(s.acknowledged(8), Some(Purpose::Commands));
        assert_eq!(s.acknowledged(9), None);
        assert_eq!(s.acknowledged(7), Some(Purpose::BrokerCheck));
        assert_eq!(
            s.acknowledged(7),
            None,
            "a duplicate SUBACK answers nothing"
        );
    }
}
