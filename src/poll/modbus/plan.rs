//! Pure request planning: coalesces a device's points into the fewest reads.
use crate::config::{Point, Table};
pub struct ReadRequest {
    pub table: Table,
    pub start: u16,
    pub count: u16,
    pub points: Vec<usize>,
}
pub fn plan(points: &[Point], max_gap: u16) -> Vec<ReadRequest> {
    let _ = (points, max_gap);
    Vec::new()
}
