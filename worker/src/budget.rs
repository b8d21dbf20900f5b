//! The worker's bound on open (group, window) rows, shared by every partition it runs, of both
//! stages (`--max-open-rows`; docs/running.md, "A bound on open state").
//!
//! Each partition thread holds a [`RowShare`]: it publishes its own open rows now and then
//! ([`RowShare::publish`]) and gets back the bound for its engine — its own rows plus what the
//! others leave free. So a partition with many groups may use the room a quiet one does not
//! need, instead of a fixed even split that a skewed partition fills early while the others
//! keep most of theirs unused. The sum is one atomic counter; a partition that ends (stopped,
//! moved away, failed) gives its rows back when its share is dropped.
//!
//! The bound is checked against counts at most one publication old: between two publications
//! (every [`crate::partition`] timer tick: 256 messages, or a quiet 100 ms) each of the other
//! partitions may open rows the partition does not yet see. The worker's rows may therefore
//! exceed the bound by at most that many rows per other partition, never grow without limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A worker's bound on open rows and the rows its partitions last published.
#[derive(Debug)]
pub struct RowBudget {
    /// The bound (`None`: no bound).
    limit: Option<usize>,
    /// Open rows summed over the partitions, as last published.
    open: AtomicUsize,
}

impl RowBudget {
    /// A budget of `limit` rows (`None`: unbounded) for one worker.
    pub fn new(limit: Option<usize>) -> Arc<RowBudget> {
        Arc::new(RowBudget {
            limit,
            open: AtomicUsize::new(0),
        })
    }

    /// The bound.
    pub fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// Open rows summed over the partitions, as last published.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A share for one partition, holding no rows yet.
    pub fn share(self: &Arc<Self>) -> RowShare {
        RowShare {
            budget: self.clone(),
            mine: 0,
        }
    }
}

/// One partition's part of a [`RowBudget`]: the rows it published last.
#[derive(Debug)]
pub struct RowShare {
    budget: Arc<RowBudget>,
    mine: usize,
}

impl RowShare {
    /// Publish that this partition holds `rows` open rows; returns the bound for its engine:
    /// `rows` plus the room the worker's other partitions leave (`None`: no bound).
    pub fn publish(&mut self, rows: usize) -> Option<usize> {
        let limit = self.budget.limit?;
        let open = &self.budget.open;
        let total = if rows >= self.mine {
            let more = rows - self.mine;
            open.fetch_add(more, Ordering::Relaxed).saturating_add(more)
        } else {
            let fewer = self.mine - rows;
            open.fetch_sub(fewer, Ordering::Relaxed)
                .saturating_sub(fewer)
        };
        self.mine = rows;
        let others = total.saturating_sub(rows);
        Some(limit.saturating_sub(others))
    }
}

impl Drop for RowShare {
    fn drop(&mut self) {
        // Its rows go with it (the partition's engine is dropped with its thread's state).
        self.budget.open.fetch_sub(self.mine, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_may_use_what_the_others_leave() {
        let budget = RowBudget::new(Some(100));
        let (mut busy, mut quiet) = (budget.share(), budget.share());
        assert_eq!(quiet.publish(5), Some(100));
        // Not an even split (50 each): the busy partition may fill all but the quiet one's 5.
        assert_eq!(busy.publish(0), Some(95));
        assert_eq!(busy.publish(90), Some(95));
        assert_eq!(quiet.publish(5), Some(10));
        assert_eq!(budget.open(), 95);
        // Windows closed: rows given back, room for the other.
        assert_eq!(busy.publish(20), Some(95));
        assert_eq!(quiet.publish(5), Some(80));
        // Over the bound (each filled its room before seeing the other's rows): no room left
        // for new rows anywhere, never a negative one.
        assert_eq!(busy.publish(95), Some(95));
        assert_eq!(quiet.publish(40), Some(5));
        assert_eq!(busy.publish(95), Some(60));
    }

    #[test]
    fn a_partition_that_ends_gives_its_rows_back() {
        let budget = RowBudget::new(Some(10));
        let mut kept = budget.share();
        {
            let mut gone = budget.share();
            gone.publish(8);
            assert_eq!(kept.publish(1), Some(2));
        }
        assert_eq!(budget.open(), 1);
        assert_eq!(kept.publish(1), Some(10));
    }

    #[test]
    fn without_a_bound_nothing_is_counted() {
        let budget = RowBudget::new(None);
        let mut s = budget.share();
        assert_eq!(s.publish(1_000_000), None);
        assert_eq!(budget.open(), 0);
        assert_eq!(budget.limit(), None);
    }
}
