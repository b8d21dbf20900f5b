//! The future-skew guard: a record far ahead of the wall clock, or (when the job asks) of its
//! partition's largest event time, is refused as `future` instead of moving the watermark.
//! One such record would otherwise close every open window of its partition early and make the
//! records after it late.
//!
//! The wall clock is injected ([`Engine::set_wall_clock`], or a function to read it with,
//! [`Engine::read_wall_clock_with`]); an engine that was never given one (tests, benchmarks)
//! judges only by its partitions.

use super::record::{PartitionState, Record, RejectReason, Rejection};
use super::Engine;
use crate::time;

/// Records in a row that must be ahead of their partition by more than `maxAheadOfPartition`
/// before the guard believes the partition really moved on (a gap in the data, not an
/// outlier) and takes the next one.
pub const AHEAD_IN_A_ROW: u32 = 100;

/// The guard's wall clock: its last reading (ms since the Unix epoch; `None`: never given) and
/// the function to read it again with, if any.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct WallClock {
    pub(super) last: Option<i64>,
    pub(super) read: Option<fn() -> i64>,
}

impl WallClock {
    /// The reading `t` is too far ahead of by more than `ahead`, if it is: the last reading, or
    /// when `t` is too far ahead of that one and the clock can be read, a reading now.
    fn refuses(&mut self, t: i64, ahead: i64) -> Option<i64> {
        let mut now = self.last?;
        if t <= now.saturating_add(ahead) {
            return None;
        }
        if let Some(read) = self.read {
            now = read();
            self.last = Some(now);
        }
        (t > now.saturating_add(ahead)).then_some(now)
    }
}

impl Engine {
    /// Refuse `t` if it is too far in the future. A refusal by the partition rule is counted
    /// toward [`AHEAD_IN_A_ROW`]; any other verdict resets the count (the only state a refused
    /// record changes).
    #[inline]
    pub(super) fn guard_future(&mut self, rec: &Record<'_>, t: i64) -> Result<(), Rejection> {
        if let Some(now) = self.wall_clock.refuses(t, self.plan.max_ahead_of_clock) {
            return Err(Rejection::new(
                RejectReason::Future,
                format!(
                    "event time {} is more than maxAheadOfClock ({} ms) ahead of the wall clock ({})",
                    time::format(t),
                    self.plan.max_ahead_of_clock,
                    time::format(now)
                ),
            ));
        }
        let Some(ahead) = self.plan.max_ahead_of_partition else {
            return Ok(());
        };
        let part = self
            .partitions
            .entry(rec.partition)
            .or_insert_with(PartitionState::new);
        let max = part.max_time;
        let outlier = max != i64::MIN && t > max.saturating_add(ahead);
        if !outlier || part.ahead_in_a_row + 1 >= AHEAD_IN_A_ROW {
            part.ahead_in_a_row = 0;
            return Ok(());
        }
        part.ahead_in_a_row += 1;
        Err(Rejection::new(
            RejectReason::Future,
            format!(
                "event time {} is more than maxAheadOfPartition ({ahead} ms) ahead of the \
                 largest event time of partition {} so far ({})",
                time::format(t),
                rec.partition,
                time::format(max)
            ),
        ))
    }
}
