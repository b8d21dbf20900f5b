//! The partition threads of one process, watched over while they run: restarted alone after a
//! failure (with backoff), kept in line with readiness, and, for a worker pod, kept in line
//! with the assignment as it changes (DESIGN.md invariant 9).
//!
//! A worker re-reads its assignment file (the job ConfigMap, mounted by the operator) every
//! second. A new assignment of the same [`Shape`] is taken while running: each partition it
//! takes away is stopped alone (final checkpoint, written released, see
//! [`crate::checkpoint::PartitionLease::release`]); each it gives is started under the new
//! epoch, after its previous owner's release; every other partition goes on with its windows
//! in memory and replays nothing. A new shape (partitions added to the source topic, another
//! repartition topic) stops the worker so that it starts again with it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};
use weir_crds::assignment::{Assignment, Shape};

use crate::http::Health;
use crate::partition::{self, Claim, Stage};
use crate::runtime::{JobContext, PartitionEnd, RuntimeError};

/// A partition of either stage.
pub type Key = (Stage, i32);

/// The first wait before a failed partition is started again; it doubles with each failure
/// in a row, up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait before a failed partition is started again.
const RETRY_MAX: Duration = Duration::from_secs(300);
/// A partition that ran this long before failing starts its backoff over.
const RETRY_RESET: Duration = Duration::from_secs(600);
/// How often the assignment file is read again.
const ASSIGNMENT_EVERY: Duration = Duration::from_secs(1);

/// How long to wait before the `failures`-th failure in a row is retried.
fn retry_delay(failures: u32) -> Duration {
    let doubled = RETRY_FIRST.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled.min(RETRY_MAX)
}

/// The assignment file of a worker pod, read again when asked. The kubelet replaces a mounted
/// ConfigMap's files when the ConfigMap changes (within about a minute), by an atomic rename,
/// so a read sees the old content or the new, never a mix.
pub struct AssignmentFile {
    path: PathBuf,
    text: String,
}

impl AssignmentFile {
    /// Read and parse the assignment at `path`.
    pub fn open(path: &Path) -> Result<(AssignmentFile, Assignment), String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let a = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let file = AssignmentFile {
            path: path.to_path_buf(),
            text,
        };
        Ok((file, a))
    }

    /// The assignment, if the file changed since it was last read. A file that cannot be read
    /// or parsed is reported once per content and otherwise ignored: the worker goes on with
    /// the assignment it has.
    pub fn changed(&mut self) -> Option<Assignment> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot read the assignment; keeping the current one");
                return None;
            }
        };
        if text == self.text {
            return None;
        }
        self.text = text;
        match serde_json::from_str(&self.text) {
            Ok(a) => Some(a),
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "the assignment does not parse; keeping the current one");
                None
            }
        }
    }
}

/// The partitions of both stages `a` gives worker `ordinal`.
pub fn owned(a: &Assignment, ordinal: usize) -> BTreeSet<Key> {
    let source = a.partitions_of(ordinal).iter().map(|p| (Stage::Source, *p));
    let merge = a
        .merge_partitions_of(ordinal)
        .iter()
        .map(|p| (Stage::Merge, *p));
    source.chain(merge).collect()
}

/// A worker pod's assignment, followed while it runs.
pub struct Follow {
    /// The file.
    pub file: AssignmentFile,
    /// This worker's ordinal.
    pub ordinal: usize,
    /// The shape the worker was started with.
    pub shape: Shape,
}

/// What to own, under which epoch, and whether the assignment can still change.
pub struct Ownership {
    /// The partitions to run.
    pub mine: BTreeSet<Key>,
    /// The epoch to claim newly started partitions with.
    pub epoch: i64,
    /// How long a newly started partition waits for its previous owner's release.
    pub handoff_timeout: Duration,
    /// The assignment file to follow (`None`: local mode, nothing changes).
    pub follow: Option<Follow>,
}

/// Why supervision ended with an error.
#[derive(Debug)]
pub enum Ended {
    /// A thread could not be started.
    Spawn(std::io::Error),
    /// Partitions stayed fenced by a newer owner while this worker's assignment still gave
    /// them to it: its assignment is out of date (the fencing errors).
    Fenced(Vec<String>),
    /// The assignment changed shape (from, to).
    Reshaped(Shape, Shape),
}

/// A running partition thread.
struct Running {
    handle: JoinHandle<Result<PartitionEnd, RuntimeError>>,
    claim: Claim,
}

/// A failed partition waiting to be started again.
struct Retry {
    at: Instant,
    failures: u32,
}

/// Everything the supervision loop keeps between rounds.
struct Supervisor<'a> {
    ctx: &'a Arc<JobContext>,
    rt: &'a tokio::runtime::Runtime,
    health: &'a Health,
    own: Ownership,
    running: BTreeMap<Key, Running>,
    retries: BTreeMap<Key, Retry>,
    /// Failed and not caught up since (readiness).
    failed: BTreeSet<Key>,
    /// When each partition last started, and its failures in a row before that.
    started: BTreeMap<Key, (Instant, u32)>,
    /// Partitions fenced while still assigned to this worker, since when, and why.
    fenced: BTreeMap<Key, (Instant, String)>,
    reshaped: Option<(Shape, Shape)>,
    assignment_read: Instant,
}

/// Run the partitions `own` names until stopped (SIGTERM/SIGINT), following the assignment if
/// any: restart a failed partition alone, from its last checkpoint, after a backoff; keep
/// readiness (every owned partition caught up, none failing); print progress lines.
pub fn run(
    ctx: &Arc<JobContext>,
    rt: &tokio::runtime::Runtime,
    health: &Health,
    own: Ownership,
    progress_every: Option<Duration>,
) -> Result<(), Ended> {
    ctx.metrics.assignment_epoch.set(own.epoch);
    let mut s = Supervisor {
        ctx,
        rt,
        health,
        own,
        running: BTreeMap::new(),
        retries: BTreeMap::new(),
        failed: BTreeSet::new(),
        started: BTreeMap::new(),
        fenced: BTreeMap::new(),
        reshaped: None,
        assignment_read: Instant::now(),
    };
    let mut progress = ProgressLine::new();
    s.start_missing().map_err(Ended::Spawn)?;
    loop {
        let stopping = ctx.stop.load(Ordering::Relaxed);
        if stopping && s.running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        health.beat();
        if !stopping {
            s.follow_assignment();
        }
        s.reap();
        if !ctx.stop.load(Ordering::Relaxed) {
            s.start_due().map_err(Ended::Spawn)?;
            s.start_missing().map_err(Ended::Spawn)?;
            s.give_up_if_fenced_too_long();
        }
        s.keep_readiness();
        if let Some(every) = progress_every {
            progress.maybe_print(ctx, every);
        }
    }
    if let Some((from, to)) = s.reshaped {
        return Err(Ended::Reshaped(from, to));
    }
    if !s.fenced.is_empty() {
        return Err(Ended::Fenced(
            s.fenced.into_values().map(|(_, e)| e).collect(),
        ));
    }
    Ok(())
}

impl Supervisor<'_> {
    /// Read the assignment again (every [`ASSIGNMENT_EVERY`]) and take a new one.
    fn follow_assignment(&mut self) {
        if self.assignment_read.elapsed() < ASSIGNMENT_EVERY {
            return;
        }
        self.assignment_read = Instant::now();
        let Some(follow) = &mut self.own.follow else {
            return;
        };
        let Some(next) = follow.file.changed() else {
            return;
        };
        if next.epoch == self.own.epoch && owned(&next, follow.ordinal) == self.own.mine {
            return;
        }
        if next.shape() != follow.shape {
            warn!(from = ?follow.shape, to = ?next.shape(),
                "the assignment changed shape (source partitions or the merge stage); \
                 stopping every partition (final checkpoints) to start again with it");
            self.reshaped = Some((follow.shape.clone(), next.shape()));
            self.ctx.stop.store(true, Ordering::Relaxed);
            return;
        }
        let mine = owned(&next, follow.ordinal);
        let lost: Vec<Key> = self.own.mine.difference(&mine).copied().collect();
        let gained: Vec<Key> = mine.difference(&self.own.mine).copied().collect();
        info!(epoch = next.epoch, previous_epoch = self.own.epoch, lost = ?lost, gained = ?gained,
            "new assignment: releasing the partitions it moves away, starting the ones it \
             gives; the others go on");
        for (key, r) in &self.running {
            if mine.contains(key) {
                r.claim.epoch.store(next.epoch, Ordering::Relaxed);
            }
        }
        for key in &lost {
            if let Some(r) = self.running.get(key) {
                r.claim.stop.store(true, Ordering::Relaxed);
            }
            self.retries.remove(key);
            self.failed.remove(key);
            if let Ok(mut done) = self.ctx.totals.caught_up.lock() {
                done.remove(key);
            }
        }
        // A newer assignment may give a fenced partition back under an epoch that wins.
        self.fenced.clear();
        self.own.mine = mine;
        self.own.epoch = next.epoch;
        self.ctx.metrics.assignment_epoch.set(next.epoch);
        self.ctx.metrics.assignment_changes.inc();
    }

    /// Collect the threads that ended: stopped (done), fenced (noted if still assigned), or
    /// failed (retried after a backoff if still assigned).
    fn reap(&mut self) {
        let done: Vec<Key> = self
            .running
            .iter()
            .filter(|(_, r)| r.handle.is_finished())
            .map(|(k, _)| *k)
            .collect();
        for key in done {
            let Some(r) = self.running.remove(&key) else {
                continue;
            };
            let error = match r.handle.join() {
                Ok(Ok(PartitionEnd::Stopped)) => continue,
                Ok(Ok(PartitionEnd::Fenced(e))) => {
                    if self.own.mine.contains(&key) {
                        warn!(stage = ?key.0, partition = key.1, error = %e,
                            "a newer owner holds a partition this worker's assignment still \
                             gives it; waiting for the newer assignment");
                        self.fenced.insert(key, (Instant::now(), e.to_string()));
                    }
                    continue;
                }
                Ok(Err(e)) => e,
                Err(_) => RuntimeError::Panicked { partition: key.1 },
            };
            self.failed_partition(key, &error);
        }
    }

    fn failed_partition(&mut self, key: Key, error: &RuntimeError) {
        let (ran, before) = self
            .started
            .get(&key)
            .copied()
            .unwrap_or((Instant::now(), 0));
        let failures = if ran.elapsed() >= RETRY_RESET {
            1
        } else {
            before + 1
        };
        let delay = retry_delay(failures);
        self.ctx.metrics.partition_failures.inc();
        if let Ok(mut done) = self.ctx.totals.caught_up.lock() {
            done.remove(&key);
        }
        error!(stage = ?key.0, partition = key.1, error = %error, failures, retry_in = ?delay,
            "partition failed; it alone stops, and starts again from its last checkpoint \
             (the worker's other partitions go on)");
        if self.own.mine.contains(&key) {
            self.failed.insert(key);
            self.retries.insert(
                key,
                Retry {
                    at: Instant::now() + delay,
                    failures,
                },
            );
        }
    }

    /// Start the failed partitions whose backoff is over.
    fn start_due(&mut self) -> std::io::Result<()> {
        let due: Vec<Key> = self
            .retries
            .iter()
            .filter(|(_, r)| r.at <= Instant::now())
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let Some(retry) = self.retries.remove(&key) else {
                continue;
            };
            info!(stage = ?key.0, partition = key.1, "starting the failed partition again");
            self.spawn(key, retry.failures)?;
        }
        Ok(())
    }

    /// Start every assigned partition that has no thread, no pending retry and no newer owner
    /// (the first start, a partition an assignment gave, one given back while it was still
    /// stopping).
    fn start_missing(&mut self) -> std::io::Result<()> {
        let missing: Vec<Key> = self
            .own
            .mine
            .iter()
            .filter(|k| {
                !self.running.contains_key(k)
                    && !self.retries.contains_key(k)
                    && !self.fenced.contains_key(k)
            })
            .copied()
            .collect();
        for key in missing {
            self.spawn(key, 0)?;
        }
        self.ctx
            .metrics
            .partitions_owned
            .set(self.own.mine.len() as i64);
        Ok(())
    }

    fn spawn(&mut self, key: Key, failures: u32) -> std::io::Result<()> {
        let claim = Claim::new(self.own.epoch, self.own.handoff_timeout);
        let handle = partition::spawn_claimed(
            self.ctx.clone(),
            self.rt.handle().clone(),
            key.0,
            key.1,
            claim.clone(),
        )?;
        self.running.insert(key, Running { handle, claim });
        self.started.insert(key, (Instant::now(), failures));
        Ok(())
    }

    /// A partition fenced while assigned, with no newer assignment for longer than the handoff
    /// timeout: this worker's view is out of date; stop so that the pod starts
    /// again and reads the assignment afresh.
    fn give_up_if_fenced_too_long(&mut self) {
        let patience = self.own.handoff_timeout;
        if self
            .fenced
            .values()
            .any(|(since, _)| since.elapsed() >= patience)
        {
            error!(
                "partitions stayed fenced by a newer owner with no newer assignment in sight; \
                 stopping so that the worker starts again with the current one"
            );
            self.ctx.stop.store(true, Ordering::Relaxed);
        }
    }

    /// Ready when every owned partition has caught up since it last started and none is
    /// failing: a failed partition (in `failed` until its retry catches up) makes the worker
    /// not ready.
    fn keep_readiness(&mut self) {
        let caught_up = match self.ctx.totals.caught_up.lock() {
            Ok(done) => {
                self.failed.retain(|k| !done.contains(k));
                self.own.mine.iter().filter(|k| done.contains(k)).count()
            }
            Err(_) => 0,
        };
        self.ctx
            .metrics
            .partitions_failing
            .set(self.failed.len() as i64);
        if !self.failed.is_empty() {
            self.health
                .set_not_ready("a partition failed and is being retried; see the worker's log");
        } else if caught_up >= self.own.mine.len() {
            self.health.set_ready();
        }
    }
}

/// Progress lines on stderr (local mode's `--progress`).
struct ProgressLine {
    started: Instant,
    last: Instant,
    last_records: u64,
}

impl ProgressLine {
    fn new() -> ProgressLine {
        ProgressLine {
            started: Instant::now(),
            last: Instant::now(),
            last_records: 0,
        }
    }

    fn maybe_print(&mut self, ctx: &JobContext, every: Duration) {
        if self.last.elapsed() < every {
            return;
        }
        let totals = &ctx.totals;
        let records = totals.records.load(Ordering::Relaxed);
        let rate = (records - self.last_records) as f64 / self.last.elapsed().as_secs_f64();
        // Two-stage jobs: how far the merge stage is behind the source partitions.
        let sent = totals.partials_sent.load(Ordering::Relaxed);
        let stage2 = if sent > 0 {
            let merged = totals.partials_merged.load(Ordering::Relaxed);
            format!("  merge stage: {merged} of {sent} partials and markers merged")
        } else {
            String::new()
        };
        eprintln!(
            "weir: {:>6.0}s  {:>9.0} records/s  {} records  {} results  {} rejected  lag {}{stage2}",
            self.started.elapsed().as_secs_f64(),
            rate,
            records,
            totals.results.load(Ordering::Relaxed),
            totals.rejected.load(Ordering::Relaxed),
            totals.lag(),
        );
        self.last_records = records;
        self.last = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_partition_waits_longer_each_time_up_to_five_minutes() {
        let waits: Vec<u64> = (1..=12).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }

    #[test]
    fn a_worker_owns_its_source_and_merge_partitions_and_none_past_the_last_ordinal() {
        let a = Assignment::round_robin(4, 3, 2).with_merge("t", 2, 4);
        let keys = |o| owned(&a, o).into_iter().collect::<Vec<_>>();
        assert_eq!(
            keys(0),
            [(Stage::Source, 0), (Stage::Source, 3), (Stage::Merge, 0)]
        );
        assert_eq!(keys(2), [(Stage::Source, 2)]);
        assert!(keys(3).is_empty());
    }

    #[test]
    fn the_assignment_file_is_taken_again_only_when_it_changes_and_parses() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("assignment.json");
        let write = |text: &str| std::fs::write(&path, text).expect("write");
        write(r#"{"epoch": 1, "workers": [[0, 1]]}"#);
        let (mut file, first) = AssignmentFile::open(&path).expect("open");
        assert_eq!(first.epoch, 1);
        assert!(file.changed().is_none(), "unchanged");
        write(r#"{"epoch": 2, "workers": [[0], [1]]}"#);
        assert_eq!(
            file.changed().map(|a| a.workers),
            Some(vec![vec![0], vec![1]])
        );
        assert!(file.changed().is_none(), "taken once");
        write(r#"{"epoch": 3, "work"#);
        assert!(
            file.changed().is_none(),
            "a torn or broken file is not taken"
        );
        write(r#"{"epoch": 3, "workers": [[1], [0]]}"#);
        assert_eq!(file.changed().map(|a| a.epoch), Some(3));
    }
}
