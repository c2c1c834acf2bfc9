//! Pure request planning: coalesces a device's points into the fewest reads.
//!
//! Owns the rules for turning a point list into Modbus read requests; does no I/O and knows
//! nothing about transports or scheduling.
//!
//! Rules:
//! - Points are grouped per table and sorted by address (then width); tables come out in the
//!   order coil, discrete, input, holding, so the plan is deterministic.
//! - Neighbours are merged when the run of unwanted addresses between them is at most
//!   `max_gap` and the merged read stays within the Modbus limit of the table
//!   ([`MAX_REGISTERS`] registers, [`MAX_BITS`] bits). Overlapping points always merge
//!   (if the limit allows).
//! - A point is never split across requests. A point wider than the limit (which validation
//!   rejects) still gets a request of its own, so the device answers with an exception and
//!   the point is reported bad instead of silently vanishing.
//! - Greedy left-to-right merging is optimal here: each request is a contiguous window that
//!   must start at a point, so extending the current window as far as allowed never costs an
//!   extra request later.
//! - Per-point intervals: [`plan_groups`] plans every distinct effective interval on its own,
//!   so a point polled every 10 s is never read by the 1 s request (and vice versa).

use std::time::Duration;

use crate::config::{Device, Point, Table};

/// Largest quantity of registers in one read (holding / input), from the Modbus spec.
pub const MAX_REGISTERS: u16 = 125;
/// Largest quantity of bits in one read (coil / discrete input), from the Modbus spec.
pub const MAX_BITS: u16 = 2000;

/// One Modbus read: `count` registers (or bits) of `table` from `start`, covering `points`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub table: Table,
    pub start: u16,
    pub count: u16,
    /// Indexes into the point slice the plan was made from, in address order.
    pub points: Vec<usize>,
}

impl ReadRequest {
    /// The offset of `point` inside this request's data.
    pub fn offset_of(&self, point: &Point) -> usize {
        usize::from(point.address.saturating_sub(self.start))
    }
}

/// The requests of one poll interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanGroup {
    pub interval: Duration,
    pub requests: Vec<ReadRequest>,
}

/// The read limit for a table.
pub fn limit(table: Table) -> u16 {
    if table.is_bits() {
        MAX_BITS
    } else {
        MAX_REGISTERS
    }
}

/// Plans all `points` as one group (ignores per-point intervals).
pub fn plan(points: &[Point], max_gap: u16) -> Vec<ReadRequest> {
    let all: Vec<usize> = (0..points.len()).collect();
    plan_subset(points, &all, max_gap)
}

/// Plans a device: one group per distinct effective interval (a point's own interval, or
/// the device's), shortest interval first. Indexes refer to the device's Modbus points; a
/// serial_line device makes no register reads, so it has no groups.
pub fn plan_groups(device: &Device) -> Vec<PlanGroup> {
    let Some(modbus) = device.modbus() else {
        return Vec::new();
    };
    let effective = |p: &Point| p.interval.unwrap_or(device.interval);
    let mut intervals: Vec<Duration> = modbus.points.iter().map(effective).collect();
    intervals.sort();
    intervals.dedup();
    intervals
        .into_iter()
        .map(|interval| {
            let subset: Vec<usize> = (0..modbus.points.len())
                .filter(|&i| effective(&modbus.points[i]) == interval)
                .collect();
            PlanGroup {
                interval,
                requests: plan_subset(&modbus.points, &subset, modbus.max_gap),
            }
        })
        .collect()
}

/// What `fieldlink check` prints: the device's requests, all groups together.
pub fn describe_plan(device: &Device) -> Vec<PlanGroup> {
    plan_groups(device)
}

fn plan_subset(points: &[Point], subset: &[usize], max_gap: u16) -> Vec<ReadRequest> {
    let mut order: Vec<usize> = subset.to_vec();
    order.sort_by_key(|&i| {
        let p = &points[i];
        (
            p.table,
            p.address,
            std::cmp::Reverse(p.data_type.width()),
            i,
        )
    });

    let mut out: Vec<ReadRequest> = Vec::new();
    // End (exclusive) of the open request, in u32 so address 65535 + width cannot overflow.
    let mut open_end: u32 = 0;
    for i in order {
        let p = &points[i];
        let start = u32::from(p.address);
        let end = start + u32::from(p.data_type.width().max(1));
        if let Some(cur) = out.last_mut() {
            let same_table = cur.table == p.table;
            let gap_ok = start <= open_end + u32::from(max_gap);
            let merged_end = open_end.max(end);
            let fits = merged_end - u32::from(cur.start) <= u32::from(limit(p.table));
            if same_table && gap_ok && fits {
                open_end = merged_end;
                cur.count = (open_end - u32::from(cur.start)) as u16;
                cur.points.push(i);
                continue;
            }
        }
        open_end = end;
        out.push(ReadRequest {
            table: p.table,
            start: p.address,
            // A lone point wider than u16 cannot exist (width is u16), so this cannot truncate.
            count: (end - start) as u16,
            points: vec![i],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DataType, DeviceKind, ModbusDevice};

    fn pt(name: &str, table: Table, address: u16, data_type: DataType) -> Point {
        Point::new(name, table, address, data_type)
    }

    fn reg(address: u16, data_type: DataType) -> Point {
        pt("p", Table::Holding, address, data_type)
    }

    /// `(table, start, count, points)` tuples: the golden form of a plan.
    fn golden(reqs: &[ReadRequest]) -> Vec<(Table, u16, u16, Vec<usize>)> {
        reqs.iter()
            .map(|r| (r.table, r.start, r.count, r.points.clone()))
            .collect()
    }

    #[test]
    fn a_single_point_is_one_request_of_its_width() {
        let points = [reg(7, DataType::F64)];
        assert_eq!(
            golden(&plan(&points, 10)),
            vec![(Table::Holding, 7, 4, vec![0])]
        );
    }

    #[test]
    fn no_points_plan_no_requests() {
        assert!(plan(&[], 10).is_empty());
    }

    #[test]
    fn neighbours_within_the_gap_merge_and_beyond_it_split() {
        // 0..2, gap 3 (2,3,4), 5..6, gap 4 (6..9), 10
        let points = [
            reg(0, DataType::U32),
            reg(5, DataType::U16),
            reg(10, DataType::U16),
        ];
        assert_eq!(
            golden(&plan(&points, 3)),
            vec![
                (Table::Holding, 0, 6, vec![0, 1]),
                (Table::Holding, 10, 1, vec![2]),
            ]
        );
        assert_eq!(
            golden(&plan(&points, 4)),
            vec![(Table::Holding, 0, 11, vec![0, 1, 2])]
        );
    }

    #[test]
    fn max_gap_zero_merges_only_adjacent_points() {
        let points = [
            reg(0, DataType::U16),
            reg(1, DataType::U32),
            reg(4, DataType::U16),
        ];
        assert_eq!(
            golden(&plan(&points, 0)),
            vec![
                (Table::Holding, 0, 3, vec![0, 1]),
                (Table::Holding, 4, 1, vec![2]),
            ]
        );
    }

    #[test]
    fn points_are_sorted_by_address_whatever_the_file_order() {
        let points = [
            reg(20, DataType::U16),
            reg(0, DataType::U16),
            reg(10, DataType::U16),
        ];
        assert_eq!(
            golden(&plan(&points, 0)),
            vec![
                (Table::Holding, 0, 1, vec![1]),
                (Table::Holding, 10, 1, vec![2]),
                (Table::Holding, 20, 1, vec![0]),
            ]
        );
    }

    #[test]
    fn exactly_125_registers_fit_in_one_request_and_126_do_not() {
        let points = [reg(0, DataType::U16), reg(124, DataType::U16)];
        assert_eq!(
            golden(&plan(&points, 200)),
            vec![(Table::Holding, 0, 125, vec![0, 1])]
        );
        let points = [reg(0, DataType::U16), reg(125, DataType::U16)];
        assert_eq!(
            golden(&plan(&points, 200)),
            vec![
                (Table::Holding, 0, 1, vec![0]),
                (Table::Holding, 125, 1, vec![1]),
            ]
        );
    }

    #[test]
    fn a_point_straddling_the_125_register_limit_starts_a_new_request_whole() {
        // A u32 at 124 would end at 126: it must not be split, so it opens request two.
        let points = [reg(0, DataType::U16), reg(123, DataType::U32)];
        assert_eq!(
            golden(&plan(&points, 200)),
            vec![(Table::Holding, 0, 125, vec![0, 1])]
        );
        let points = [reg(0, DataType::U16), reg(124, DataType::U32)];
        assert_eq!(
            golden(&plan(&points, 200)),
            vec![
                (Table::Holding, 0, 1, vec![0]),
                (Table::Holding, 124, 2, vec![1]),
            ]
        );
    }

    #[test]
    fn exactly_2000_bits_fit_in_one_request_and_2001_do_not() {
        let c = |a| pt("c", Table::Coil, a, DataType::Bool);
        assert_eq!(
            golden(&plan(&[c(0), c(1999)], 5000)),
            vec![(Table::Coil, 0, 2000, vec![0, 1])]
        );
        assert_eq!(
            golden(&plan(&[c(0), c(2000)], 5000)),
            vec![
                (Table::Coil, 0, 1, vec![0]),
                (Table::Coil, 2000, 1, vec![1])
            ]
        );
    }

    #[test]
    fn registers_and_bits_use_their_own_limit() {
        // 200 apart: fine for bits (2000), too far for registers (125).
        let points = [
            pt("d0", Table::Discrete, 0, DataType::Bool),
            pt("d1", Table::Discrete, 199, DataType::Bool),
            pt("i0", Table::Input, 0, DataType::U16),
            pt("i1", Table::Input, 199, DataType::U16),
        ];
        assert_eq!(
            golden(&plan(&points, 500)),
            vec![
                (Table::Discrete, 0, 200, vec![0, 1]),
                (Table::Input, 0, 1, vec![2]),
                (Table::Input, 199, 1, vec![3]),
            ]
        );
    }

    #[test]
    fn mixed_tables_never_merge_and_come_out_coil_discrete_input_holding() {
        let points = [
            pt("h", Table::Holding, 0, DataType::U16),
            pt("i", Table::Input, 0, DataType::U16),
            pt("c", Table::Coil, 0, DataType::Bool),
            pt("d", Table::Discrete, 0, DataType::Bool),
            pt("h2", Table::Holding, 1, DataType::U16),
        ];
        assert_eq!(
            golden(&plan(&points, 10)),
            vec![
                (Table::Coil, 0, 1, vec![2]),
                (Table::Discrete, 0, 1, vec![3]),
                (Table::Input, 0, 1, vec![1]),
                (Table::Holding, 0, 2, vec![0, 4]),
            ]
        );
    }

    #[test]
    fn overlapping_points_share_one_read() {
        // A u32 at 0..2 and a u16 view of its low word at 1: one read of 2 registers.
        let points = [reg(0, DataType::U32), reg(1, DataType::U16)];
        assert_eq!(
            golden(&plan(&points, 0)),
            vec![(Table::Holding, 0, 2, vec![0, 1])]
        );
        // A wide point covering a narrower later one does not shrink the read.
        let points = [
            reg(0, DataType::U64),
            reg(1, DataType::U16),
            reg(4, DataType::U16),
        ];
        assert_eq!(
            golden(&plan(&points, 0)),
            vec![(Table::Holding, 0, 5, vec![0, 1, 2])]
        );
    }

    #[test]
    fn a_point_wider_than_the_gap_is_read_whole() {
        let points = [
            reg(0, DataType::U16),
            reg(2, DataType::String { registers: 10 }),
            reg(30, DataType::U16),
        ];
        assert_eq!(
            golden(&plan(&points, 1)),
            vec![
                (Table::Holding, 0, 12, vec![0, 1]),
                (Table::Holding, 30, 1, vec![2]),
            ]
        );
    }

    #[test]
    fn a_point_wider_than_the_limit_gets_its_own_request_unsplit() {
        let points = [
            reg(0, DataType::U16),
            reg(1, DataType::String { registers: 130 }),
        ];
        assert_eq!(
            golden(&plan(&points, 10)),
            vec![
                (Table::Holding, 0, 1, vec![0]),
                (Table::Holding, 1, 130, vec![1]),
            ]
        );
    }

    #[test]
    fn a_point_at_the_top_of_the_address_space_does_not_overflow() {
        let points = [reg(65533, DataType::U16), reg(65534, DataType::U16)];
        assert_eq!(
            golden(&plan(&points, 0)),
            vec![(Table::Holding, 65533, 2, vec![0, 1])]
        );
    }

    #[test]
    fn points_with_their_own_interval_are_planned_in_their_own_group() {
        let mut slow = reg(1, DataType::U16);
        slow.interval = Some(Duration::from_secs(60));
        let device = Device {
            name: "d".into(),
            bus: "b".into(),
            interval: Duration::from_secs(1),
            kind: DeviceKind::Modbus(ModbusDevice {
                unit: 1,
                max_gap: 10,
                points: vec![reg(0, DataType::U16), slow, reg(2, DataType::U16)],
                offline_after: 3,
            }),
        };
        let groups = plan_groups(&device);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].interval, Duration::from_secs(1));
        assert_eq!(
            golden(&groups[0].requests),
            vec![(Table::Holding, 0, 3, vec![0, 2])]
        );
        assert_eq!(groups[1].interval, Duration::from_secs(60));
        assert_eq!(
            golden(&groups[1].requests),
            vec![(Table::Holding, 1, 1, vec![1])]
        );
    }

    #[test]
    fn a_point_interval_equal_to_the_device_interval_joins_the_device_group() {
        let mut same = reg(1, DataType::U16);
        same.interval = Some(Duration::from_secs(1));
        let device = Device {
            name: "d".into(),
            bus: "b".into(),
            interval: Duration::from_secs(1),
            kind: DeviceKind::Modbus(ModbusDevice {
                unit: 1,
                max_gap: 0,
                points: vec![reg(0, DataType::U16), same],
                offline_after: 3,
            }),
        };
        let groups = plan_groups(&device);
        assert_eq!(groups.len(), 1);
        assert_eq!(
            golden(&groups[0].requests),
            vec![(Table::Holding, 0, 2, vec![0, 1])]
        );
    }
}
