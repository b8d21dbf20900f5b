//! This thread's CPU time, shared by the engine benchmarks that measure by it.

use std::time::Duration;

/// CPU time of the calling thread (Linux: the first field of `/proc/thread-self/schedstat`, in
/// nanoseconds). Less disturbed than wall-clock time by other processes on a shared machine,
/// though not immune (they share caches and memory bandwidth).
pub fn thread_cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}
