//! Commands waiting for their bus, at most one per point: a newer command for a point
//! replaces the one still waiting, which is answered `superseded`. Bounded by construction
//! (one entry per writable point), served in arrival order, ahead of the bus's polls.

use std::collections::VecDeque;

/// The queue of one bus. `K` names a point (device and point), `T` is the command.
#[derive(Debug)]
pub struct Pending<K, T> {
    queue: VecDeque<(K, T)>,
}

impl<K: PartialEq, T> Default for Pending<K, T> {
    fn default() -> Self {
        Pending {
            queue: VecDeque::new(),
        }
    }
}

impl<K: PartialEq, T> Pending<K, T> {
    /// Queues `command` for `point`; returns the command it replaced, if one was waiting.
    /// The newer command takes the older one's place in line: a point does not lose its
    /// turn by being corrected.
    pub fn push(&mut self, point: K, command: T) -> Option<T> {
        match self.queue.iter_mut().find(|(k, _)| *k == point) {
            Some((_, waiting)) => Some(std::mem::replace(waiting, command)),
            None => {
                self.queue.push_back((point, command));
                None
            }
        }
    }

    /// The next command to run.
    pub fn pop(&mut self) -> Option<(K, T)> {
        self.queue.pop_front()
    }

    /// Takes out every waiting command for which `stale` holds (expired while waiting).
    pub fn take_stale(&mut self, mut stale: impl FnMut(&T) -> bool) -> Vec<(K, T)> {
        let mut kept = VecDeque::with_capacity(self.queue.len());
        let mut taken = Vec::new();
        for (k, t) in self.queue.drain(..) {
            if stale(&t) {
                taken.push((k, t));
            } else {
                kept.push_back((k, t));
            }
        }
        self.queue = kept;
        taken
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_command_replaces_the_waiting_one_in_its_place() {
        let mut p = Pending::default();
        assert_eq!(p.push("a", 1), None);
        assert_eq!(p.push("b", 2), None);
        assert_eq!(p.push("a", 3), Some(1));
        assert_eq!(p.len(), 2);
        assert_eq!(p.pop(), Some(("a", 3)));
        assert_eq!(p.pop(), Some(("b", 2)));
        assert!(p.is_empty());
    }

    #[test]
    fn stale_commands_are_taken_out_and_the_rest_keep_their_order() {
        let mut p = Pending::default();
        for (k, v) in [("a", 1), ("b", 20), ("c", 3), ("d", 40)] {
            p.push(k, v);
        }
        assert_eq!(p.take_stale(|v| *v > 10), vec![("b", 20), ("d", 40)]);
        assert_eq!(p.pop(), Some(("a", 1)));
        assert_eq!(p.pop(), Some(("c", 3)));
    }
}
