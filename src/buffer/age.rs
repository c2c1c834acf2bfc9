//! The age of a buffered reading, for the `max_age` bound.
//!
//! Measured on the boot-time clock, never on the wall clock, so an NTP step during an
//! outage cannot age readings. For a row queued in this OS boot: now − `boot_ms`. For a row
//! from an earlier OS boot the time the gateway was off is unknowable (no RTC), so its age
//! is the least it can be: what is left of its boot after it (`last_ms` − `boot_ms`), plus
//! every later boot's `last_ms`, plus this boot's clock. A reading is therefore never dropped
//! before it is `max_age` old; time powered off does not count. Schema-1 rows have only
//! their wall-clock `ts_ms` and are aged by it, as before.

use std::collections::HashMap;

/// Now, on both clocks, for `Store::expire`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub wall_ms: u64,
    pub boot_ms: u64,
}

/// The age of a stored row, per the module doc.
pub(crate) struct AgeRule {
    now: Now,
    this_boot: Option<i64>,
    /// Earlier OS boots: (last_ms, sum of last_ms of the boots after it).
    earlier: HashMap<i64, (u64, u64)>,
}

impl AgeRule {
    /// `boots`: every OS boot of the `os_boots` table as (id, last_ms), newest first.
    pub(crate) fn new(now: Now, this_boot: Option<i64>, boots: Vec<(i64, u64)>) -> AgeRule {
        // For each earlier boot: its last_ms, and the sum of last_ms of the boots between
        // it and this one (each lasted at least that long).
        let mut earlier = HashMap::new();
        let mut later_sum = 0u64;
        for (id, last_ms) in boots {
            if Some(id) == this_boot {
                continue;
            }
            earlier.insert(id, (last_ms, later_sum));
            later_sum = later_sum.saturating_add(last_ms);
        }
        AgeRule {
            now,
            this_boot,
            earlier,
        }
    }

    pub(crate) fn age(&self, ts_ms: u64, os_boot: Option<i64>, boot_ms: Option<u64>) -> u64 {
        match (os_boot, boot_ms) {
            (Some(id), Some(at)) if Some(id) == self.this_boot => {
                self.now.boot_ms.saturating_sub(at)
            }
            (Some(id), Some(at)) => match self.earlier.get(&id) {
                Some(&(last_ms, later)) => last_ms
                    .saturating_sub(at)
                    .saturating_add(later)
                    .saturating_add(self.now.boot_ms),
                // A boot the table lost (damage): only this boot's time is certain.
                None => self.now.boot_ms,
            },
            _ => self.now.wall_ms.saturating_sub(ts_ms),
        }
    }
}
