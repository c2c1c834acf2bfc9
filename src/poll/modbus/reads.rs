//! The reads of one planned request as they are really made, shared by `run` (the poll loop)
//! and `fieldlink read`, so both make exactly the same requests.
//!
//! Owns the exception-2 fallback and its way back. Many devices refuse a read that spans
//! registers they do not map (exception 2, illegal data address), which the planner merged
//! across (`max_gap`); a booting device refuses everything with exception 2 for a while.
//! Rules:
//! - A merged read (more than one point) refused with exception 2 is replaced by one read
//!   per point, made at once, so a bad point only costs itself.
//! - The merged read is tried again after [`FIRST_RETRY_POLLS`] polls of its slot, then after
//!   twice as many each time it is refused while the single reads were refused too (the
//!   device is still booting), up to [`MAX_RETRY_POLLS`]. When the single reads all answered
//!   since the last try and the merged read covers no register outside its points (no gap),
//!   the refusal cannot have been the gap: the merged read is tried at the next poll.
//! - A merged read refused while every single read answered proves the gap: the split then
//!   stays for good (until a restart).
//! - Any other answer to the merged read (data, another exception) restores it.
//!
//! Knows nothing about time, devices or wires: the caller makes the reads and reports each
//! answer; `H` is whatever the caller tracks per read (the poll loop's health, or nothing).

use crate::config::Point;
use crate::model::Value;

use super::codec::{decode_bit, decode_registers};
use super::link::{ExceptionCode, RawData};
use super::plan::ReadRequest;

/// Polls of a split slot before its merged read is tried again the first time.
pub const FIRST_RETRY_POLLS: u32 = 10;
/// The longest wait, in polls, between two tries of a merged read.
pub const MAX_RETRY_POLLS: u32 = 1000;

/// One wire request of a slot, and what the caller keeps about it.
#[derive(Debug)]
pub struct Read<H> {
    pub request: ReadRequest,
    pub state: H,
}

impl<H: Default> Read<H> {
    fn new(request: ReadRequest) -> Self {
        Read {
            request,
            state: H::default(),
        }
    }
}

/// One planned request, and the reads that stand for it now.
#[derive(Debug)]
pub struct Slot<H> {
    planned: ReadRequest,
    /// One read per point of `planned`, for when the device refuses it as a whole.
    singles: Vec<ReadRequest>,
    /// Whether the planned read covers only registers (or bits) of its points.
    gapless: bool,
    /// What is read now: the planned read, its single reads, or (on a try) the planned read
    /// while the single reads wait in `split`.
    reads: Vec<Read<H>>,
    split: Option<Split<H>>,
}

#[derive(Debug)]
struct Split<H> {
    /// The single reads while the merged read is being tried (else they are `Slot::reads`).
    waiting: Vec<Read<H>>,
    /// Polls left before the next try; `None` once the gap is proven.
    next_try_in: Option<u32>,
    period: u32,
    /// Per single read: its latest answer (since the split or the last try) was data.
    answered: Vec<bool>,
}

impl<H> Split<H> {
    /// Every single read's latest answer was data.
    fn singles_answered(&self) -> bool {
        self.answered.iter().all(|&a| a)
    }
}

/// What an answer did to the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotChange {
    /// Nothing: the answer is the points' own.
    None,
    /// The merged read was refused with exception 2: the slot now reads its points one by
    /// one, starting with this poll. The refusal is not the points' answer.
    Split,
    /// The merged read, tried again, was refused again: the single reads are back, starting
    /// with this poll. `proven`: the single reads had all answered, so the gap is real and
    /// the merged read is not tried any more.
    StillSplit { proven: bool },
    /// The merged read, tried again, was answered: the slot reads it again. The answer is the
    /// points' own.
    Merged,
}

impl<H: Default> Slot<H> {
    /// `points` are the device's points, which `planned.points` indexes.
    pub fn new(planned: ReadRequest, points: &[Point]) -> Self {
        let start = u32::from(planned.start);
        let end = start + u32::from(planned.count);
        let mut covered = vec![false; usize::from(planned.count)];
        let singles = planned
            .points
            .iter()
            .map(|&p| {
                let point = &points[p];
                let width = point.data_type.width().max(1);
                let from = u32::from(point.address).max(start);
                let to = (u32::from(point.address) + u32::from(width)).min(end);
                for a in from..to {
                    covered[(a - start) as usize] = true;
                }
                ReadRequest {
                    table: planned.table,
                    start: point.address,
                    count: width,
                    points: vec![p],
                }
            })
            .collect();
        Slot {
            gapless: covered.iter().all(|&c| c),
            singles,
            reads: vec![Read::new(planned.clone())],
            planned,
            split: None,
        }
    }

    pub fn planned(&self) -> &ReadRequest {
        &self.planned
    }

    pub fn reads(&self) -> &[Read<H>] {
        &self.reads
    }

    pub fn reads_mut(&mut self) -> &mut [Read<H>] {
        &mut self.reads
    }

    /// Whether the slot reads its points one by one now.
    pub fn is_split(&self) -> bool {
        self.split.is_some()
    }

    /// Called once per poll of the slot, before its reads: a split slot counts down to the
    /// next try of its merged read, and on the try reads the merged request alone.
    pub fn start_poll(&mut self) {
        let Some(split) = &mut self.split else {
            return;
        };
        if !split.waiting.is_empty() {
            // The try did not get to be made last poll: make it now.
            return;
        }
        let Some(left) = &mut split.next_try_in else {
            return;
        };
        *left = left.saturating_sub(1);
        // Without a gap, a refusal while every single read answers cannot be the registers:
        // try the merged read again at once.
        let due = *left == 0 || (self.gapless && split.singles_answered());
        if due {
            split.waiting =
                std::mem::replace(&mut self.reads, vec![Read::new(self.planned.clone())]);
        }
    }

    /// Records the device's answer to read `index` (data or exception).
    pub fn answered(
        &mut self,
        index: usize,
        answer: &Result<RawData, ExceptionCode>,
    ) -> SlotChange {
        let refused_whole = matches!(answer, Err(ExceptionCode::IllegalDataAddress))
            && self.reads[index].request.points.len() > 1;
        let Some(split) = &mut self.split else {
            if !refused_whole {
                return SlotChange::None;
            }
            self.reads = self.singles.iter().cloned().map(Read::new).collect();
            self.split = Some(Split {
                waiting: Vec::new(),
                next_try_in: Some(FIRST_RETRY_POLLS),
                period: FIRST_RETRY_POLLS,
                answered: vec![false; self.singles.len()],
            });
            return SlotChange::Split;
        };
        if split.waiting.is_empty() {
            // A single read.
            if let Some(a) = split.answered.get_mut(index) {
                *a = answer.is_ok();
            }
            return SlotChange::None;
        }
        if !refused_whole {
            self.split = None;
            return SlotChange::Merged;
        }
        self.reads = std::mem::take(&mut split.waiting);
        let proven = split.singles_answered();
        if proven {
            split.next_try_in = None;
        } else {
            split.period = split.period.saturating_mul(2).min(MAX_RETRY_POLLS);
            split.next_try_in = Some(split.period);
        }
        split.answered.fill(false);
        SlotChange::StillSplit { proven }
    }

    /// Records that read `index` got no answer (an outer error).
    pub fn failed(&mut self, index: usize) {
        let Some(split) = &mut self.split else {
            return;
        };
        if split.waiting.is_empty() {
            if let Some(a) = split.answered.get_mut(index) {
                *a = false;
            }
        } else {
            // The try is void: read the points one by one again, and try later.
            self.reads = std::mem::take(&mut split.waiting);
            split.next_try_in = Some(split.period);
        }
    }
}

/// Decodes one point from its request's data; the error is a sentence for logs and reports.
pub(crate) fn decode_point(
    point: &Point,
    request: &ReadRequest,
    raw: &RawData,
) -> Result<Value, String> {
    let offset = request.offset_of(point);
    match raw {
        RawData::Registers(words) => words
            .get(offset..)
            .ok_or_else(|| format!("register {} is outside the read", point.address))
            .and_then(|w| decode_registers(point, w).map_err(|e| e.to_string())),
        RawData::Bits(bits) => bits
            .get(offset)
            .ok_or_else(|| format!("bit {} is outside the read", point.address))
            .and_then(|&b| decode_bit(point, b).map_err(|e| e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DataType, Table};

    fn point(address: u16) -> Point {
        Point::new(
            &format!("p{address}"),
            Table::Holding,
            address,
            DataType::U16,
        )
    }

    fn slot(points: &[Point]) -> Slot<()> {
        let planned = crate::poll::modbus::plan::plan(points, 10).remove(0);
        Slot::new(planned, points)
    }

    fn shape(slot: &Slot<()>) -> Vec<(u16, u16)> {
        slot.reads()
            .iter()
            .map(|r| (r.request.start, r.request.count))
            .collect()
    }

    const REFUSED: Result<RawData, ExceptionCode> = Err(ExceptionCode::IllegalDataAddress);

    fn data(n: usize) -> Result<RawData, ExceptionCode> {
        Ok(RawData::Registers(vec![0; n]))
    }

    /// Polls `slot` once, answering each read with `answer(start, count)`; returns the changes.
    fn poll(
        slot: &mut Slot<()>,
        _points: &[Point],
        answer: impl Fn(u16, u16) -> Result<RawData, ExceptionCode>,
    ) -> Vec<SlotChange> {
        slot.start_poll();
        let mut changes = Vec::new();
        let mut i = 0;
        while i < slot.reads().len() {
            let r = &slot.reads()[i].request;
            let change = slot.answered(i, &answer(r.start, r.count));
            changes.push(change);
            if matches!(change, SlotChange::Split | SlotChange::StillSplit { .. }) {
                i = 0;
                continue;
            }
            i += 1;
        }
        changes
    }

    #[test]
    fn a_merged_read_refused_with_exception_2_is_read_point_by_point_at_once() {
        let points = [point(0), point(5)];
        let mut s = slot(&points);
        assert_eq!(shape(&s), [(0, 6)]);
        let changes = poll(
            &mut s,
            &points,
            |_, n| if n > 1 { REFUSED } else { data(1) },
        );
        assert_eq!(changes[0], SlotChange::Split);
        assert_eq!(shape(&s), [(0, 1), (5, 1)]);
        assert!(s.is_split());
    }

    #[test]
    fn a_gap_proven_by_single_reads_keeps_the_split_for_good() {
        let points = [point(0), point(5)];
        let mut s = slot(&points);
        let answer = |_, n| if n > 1 { REFUSED } else { data(1) };
        poll(&mut s, &points, answer);
        let mut tries = 0;
        for _ in 0..100 {
            let changes = poll(&mut s, &points, answer);
            if changes.contains(&SlotChange::StillSplit { proven: true }) {
                tries += 1;
            }
            assert!(!changes.contains(&SlotChange::StillSplit { proven: false }));
        }
        assert_eq!(tries, 1, "one try of the merged read proves the gap");
        assert_eq!(shape(&s), [(0, 1), (5, 1)]);
    }

    #[test]
    fn a_device_that_refused_everything_while_booting_gets_its_gapless_read_back() {
        let points = [point(0), point(1)];
        let mut s = slot(&points);
        assert_eq!(shape(&s), [(0, 2)]);
        // Booting: every read refused, merged tries back off.
        for _ in 0..40 {
            poll(&mut s, &points, |_, _| REFUSED);
        }
        assert!(s.is_split());
        // Booted: the single reads answer, so the merged read is tried at the next poll.
        poll(&mut s, &points, |_, _| data(1));
        let changes = poll(&mut s, &points, |_, n| data(usize::from(n)));
        assert_eq!(changes, [SlotChange::Merged]);
        assert_eq!(shape(&s), [(0, 2)]);
        assert!(!s.is_split());
    }

    #[test]
    fn a_merged_read_with_a_gap_is_tried_again_after_some_polls_and_restored_when_answered() {
        let points = [point(0), point(5)];
        let mut s = slot(&points);
        poll(&mut s, &points, |_, _| REFUSED);
        let mut polls = 0;
        loop {
            polls += 1;
            let changes = poll(&mut s, &points, |_, n| data(usize::from(n)));
            if changes == [SlotChange::Merged] {
                break;
            }
            assert!(polls < 100, "never tried again");
        }
        assert_eq!(polls, FIRST_RETRY_POLLS as usize);
        assert_eq!(shape(&s), [(0, 6)]);
    }

    #[test]
    fn a_try_cut_short_by_a_wire_failure_falls_back_to_single_reads() {
        let points = [point(0), point(1)];
        let mut s = slot(&points);
        poll(&mut s, &points, |_, _| REFUSED);
        for _ in 1..FIRST_RETRY_POLLS {
            poll(&mut s, &points, |_, _| REFUSED);
        }
        // Now on a try: fail it.
        s.start_poll();
        let trying = shape(&s);
        s.failed(0);
        assert_eq!(trying, [(0, 2)]);
        assert_eq!(shape(&s), [(0, 1), (1, 1)]);
    }
}
