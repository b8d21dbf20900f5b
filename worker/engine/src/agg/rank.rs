//! Nearest-rank selection for `percentile`: the 0-based rank `⌈q·n⌉ − 1`, found among exact
//! values (in one pass near either end, by selection otherwise) or estimated from a DDSketch.
//! Every function here is a function of the multiset of values only.

use std::cmp::Ordering;

use sketches_ddsketch::DDSketch;

/// 0-based index of the nearest-rank value, `⌈q·n⌉ − 1` clamped to `[0, n − 1]`, for `n > 0`.
pub(super) fn rank_index(q: f64, n: u64) -> u64 {
    let rank = (q * n as f64).ceil();
    let rank = if rank >= 1.0 { (rank as u64).min(n) } else { 1 };
    rank - 1
}

thread_local! {
    /// Reused buffer for selecting the nearest-rank value among exact values.
    static SELECT: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Ranks within this distance of either end are found in one pass (see [`near_end_rank`]).
pub(super) const NEAR_END: usize = 8;

/// Which rank to look for, as a distance from an end: `(k, Less)` for the `k + 1`-th smallest,
/// `(k, Greater)` for the `k + 1`-th largest, whichever is nearer, for the 0-based rank `r0` of
/// `n` values.
pub(super) fn rank_from_end(r0: usize, n: usize) -> (usize, Ordering) {
    if r0 <= n - 1 - r0 {
        (r0, Ordering::Less)
    } else {
        (n - 1 - r0, Ordering::Greater)
    }
}

/// The `k + 1`-th smallest (`want == Less`) or largest (`Greater`) of the values of `parts`, for
/// `k < NEAR_END`, in one pass keeping the `k + 1` most extreme values, sorted, most extreme first.
/// The values are finite and `-0.0` is not among them (as [`Quantile`](super::Quantile) keeps them); `None` when
/// there are at most `k` of them.
pub(super) fn near_end_rank<'a>(
    parts: impl IntoIterator<Item = &'a [f64]>,
    k: usize,
    want: Ordering,
) -> Option<f64> {
    if k >= NEAR_END {
        return None;
    }
    // `>` orders the values like `total_cmp`; the smallest are the largest of the negated values.
    let sign = if want == Ordering::Greater { 1.0 } else { -1.0 };
    // The k + 1 largest keys so far with their values, largest first.
    let mut best = [(f64::NEG_INFINITY, 0.0f64); NEAR_END];
    let mut len = 0;
    let mut offer = |x: f64, kx: f64| {
        let mut i = len.min(k);
        while i > 0 && kx > best[i - 1].0 {
            best[i] = best[i - 1];
            i -= 1;
        }
        best[i] = (kx, x);
        len = (len + 1).min(k + 1);
        best[k].0
    };
    // The (k + 1)-th largest key so far, `-inf` until there are k + 1 (the values are finite).
    // Almost every value fails the test against it, a branch that is then well predicted.
    let mut bar = f64::NEG_INFINITY;
    for part in parts {
        for &x in part {
            let kx = sign * x;
            if kx > bar {
                bar = offer(x, kx);
            }
        }
    }
    (len > k).then_some(best[k].1)
}

/// The exact nearest-rank value of `values` (in any order; finite, without `-0.0`, as
/// [`Quantile`](super::Quantile) keeps them): a function of their multiset.
pub(super) fn exact_rank(values: &[f64], q: f64) -> Option<f64> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let r0 = rank_index(q, n as u64) as usize;
    // Ranks near either end (p99 of a few hundred values): one pass.
    let (k, want) = rank_from_end(r0, n);
    if k < NEAR_END {
        return near_end_rank([values], k, want);
    }
    SELECT.with_borrow_mut(|buf| {
        buf.clear();
        buf.extend_from_slice(values);
        buf.select_nth_unstable_by(r0, f64::total_cmp);
        buf.get(r0).copied()
    })
}

/// The sketch's estimate of the nearest-rank value: the `⌈q·n⌉`-th smallest input (1-based).
pub(super) fn nearest_rank(sketch: &DDSketch, q: f64) -> Option<f64> {
    let n = sketch.count() as u64;
    if n == 0 {
        return None;
    }
    let (min, max) = (sketch.min()?, sketch.max()?);
    let r0 = rank_index(q, n); // 0-based
    if r0 == 0 {
        return Some(min);
    }
    if r0 == n - 1 {
        return Some(max);
    }
    // `DDSketch::quantile(p)` returns the bucket holding the value of 0-based rank
    // `(p * (n - 1.0)) as u64`; aim `p` at the middle of `r0`'s unit interval and make sure.
    let denom = n as f64 - 1.0;
    let mut p = (r0 as f64 + 0.5) / denom;
    for _ in 0..8 {
        match ((p * denom) as u64).cmp(&r0) {
            Ordering::Equal => break,
            Ordering::Less => p = p.next_up(),
            Ordering::Greater => p = p.next_down(),
        }
    }
    let value = sketch.quantile(p.clamp(0.0, 1.0)).ok().flatten()?;
    Some(value.clamp(min, max))
}
