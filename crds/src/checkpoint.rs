//! The checkpoint record and where it is kept: the contract between the workers, which write
//! one record per source partition, and the operator, which reads the records (the epoch a new
//! assignment must start above, lag, the time of the last write) and deletes them with the job
//! when asked (DESIGN.md invariants 2 and 3; docs/checkpoints.md).
//!
//! Where: a ConfigMap `<job>-checkpoint-<partition>` under [`CONFIG_MAP_KEY`], or an object
//! [`object_name`] under the job's location [`object_store_url`] in object storage. Records
//! written before this version may be at [`legacy_object_store_url`] or in the ConfigMaps of
//! [`crate::names::legacy_merge_checkpoint_prefix`]; they are read to resume from
//! (docs/checkpoints.md, "Migration").

use serde::{Deserialize, Serialize};

/// The current record format. A reader refuses a format it does not know rather than guess.
pub const FORMAT: u32 = 1;

/// What a partition's owner records about its progress. One per (stream, partition).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionCheckpoint {
    /// Format of this record; readers refuse versions they do not know.
    pub format: u32,
    /// The topic the offsets are in.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// Assignment epoch of the owner that wrote it.
    pub epoch: i64,
    /// Who wrote it (pod name or local task), for people reading it.
    pub owner: String,
    /// Wall-clock time of the write, ms since the epoch, for status and people.
    pub written_at_ms: i64,
    /// `None`: claimed but nothing processed yet; start per `startFrom`.
    pub progress: Option<Progress>,
    /// [`crate::definition::fingerprint`] of the spec whose results this partition computes.
    /// A worker whose spec has another fingerprint does not resume these windows: it starts the
    /// new definition (docs/semantics.md, "Edits, resets and start times"). `None`: written
    /// before fingerprints were recorded, read as the current definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
    /// The first window start (ms) this definition emits: windows starting earlier could not
    /// be complete (the definition started after an edit, a reset, or at a `startFrom` time).
    /// `None`: every window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_from: Option<i64>,
    /// [`crate::Reset::identity`] of the last `spec.reset` this partition applied; a spec whose
    /// reset has another identity starts the partition again from `reset.to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<String>,
    /// The owner stopped the partition and wrote this record as its last (a graceful stop: an
    /// assignment change that took the partition away, SIGTERM). A new owner of a newer epoch
    /// takes the partition at once from a released record; from one still held it first waits
    /// for the release, up to the worker's handoff timeout (docs/checkpoints.md, "Handoff").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
    /// Records (merge stage: partials) this partition refused as `state_full` because the
    /// worker's bound on open (group, window) rows was reached, in its current run (kept across
    /// restarts and handoffs while the definition and reset stay the same). `None`: none refused.
    /// The operator reads it into `Degraded=True, reason StateFull` (docs/operator.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_full: Option<StateFull>,
}

/// What a partition reports of the records its worker's bound on open state refused
/// ([`PartitionCheckpoint::state_full`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateFull {
    /// Records (merge stage: partials) refused as `state_full`, in the partition's run.
    pub refused: u64,
    /// Wall-clock time of the last refusal, ms since the Unix epoch.
    pub last_refused_at_ms: i64,
}

impl StateFull {
    /// `current` with one more refusal at `at_ms` (`None`: none before, this is the first).
    pub fn add(current: Option<StateFull>, at_ms: i64) -> StateFull {
        match current {
            Some(s) => StateFull {
                refused: s.refused.saturating_add(1),
                last_refused_at_ms: s.last_refused_at_ms.max(at_ms),
            },
            None => StateFull {
                refused: 1,
                last_refused_at_ms: at_ms,
            },
        }
    }
}

impl PartitionCheckpoint {
    /// The run this record belongs to: its definition, first window and reset.
    pub fn run(&self) -> Run {
        Run {
            definition: self.definition.clone(),
            results_from: self.results_from,
            reset: self.reset.clone(),
        }
    }
}

/// What a partition's checkpoints say about the run they belong to, as
/// [`PartitionCheckpoint::definition`], [`PartitionCheckpoint::results_from`] and
/// [`PartitionCheckpoint::reset`] (the same meanings).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Run {
    /// The definition's fingerprint.
    pub definition: Option<String>,
    /// The first window start (ms) it emits.
    pub results_from: Option<i64>,
    /// The identity of the last reset applied.
    pub reset: Option<String>,
}

/// How far a partition got. Everything here is a pure function of the records up to
/// `next_offset`, so a replay from `replay_from` rebuilds exactly the open windows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Next offset to read.
    pub next_offset: i64,
    /// Earliest offset still needed by an open window (`<= next_offset`): replay starts here.
    pub replay_from: i64,
    /// Largest event time among records before `replay_from` (the partition's watermark state
    /// at the replay point); `None` if there was none.
    pub replay_max_event_time: Option<i64>,
    /// The partition's watermark at `next_offset` (ms), for lag and status.
    pub watermark: Option<i64>,
    /// Every window ending at or before this (ms) was emitted and acknowledged by the sink;
    /// a replay does not emit them again.
    pub emitted_through: Option<i64>,
    /// Stage 1 of a two-stage job: offsets (at or after `replay_from`) at which the partition
    /// went idle and flushed its open pane rows; a replay flushes at the same offsets, so that it
    /// sends the same partials again (which the merge stage then recognises).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flushes: Vec<i64>,
    /// The merge stage of a two-stage job: each source partition's progress as last reported.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sources: std::collections::BTreeMap<i32, SourceProgress>,
}

/// A source partition's progress, as the merge stage last heard it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceProgress {
    /// Its watermark, ms (`None`: no record yet).
    pub watermark: Option<i64>,
    /// Whether it was idle.
    pub idle: bool,
    /// The first window start (ms) its run emits, from its last marker: the merge stage emits
    /// a window only when it starts at or after every source partition's (`None`: every window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_from: Option<i64>,
}

/// Where the merge stage of a two-stage job (reading the repartition topic) keeps its
/// records, under the job's location: `<job location>/merge/partition-<p>.json` in object
/// storage (ConfigMaps `<job>-checkpoint-merge-<p>`).
pub const MERGE_LOCATION: &str = "merge";

/// Key of a checkpoint ConfigMap under which the record is stored (as JSON).
pub const CONFIG_MAP_KEY: &str = "checkpoint.json";

/// The namespace segment of the object-store location of a job run without one (`weir run`
/// of a file without `metadata.namespace`). A Kubernetes namespace cannot contain `_`, so a
/// local run never shares records with a job in a cluster unless its file names that job's
/// namespace.
pub const LOCAL_NAMESPACE: &str = "_local";

/// Where a job's checkpoints live in object storage: the spec's
/// `checkpoint.store.objectStore.url`, the job's namespace ([`LOCAL_NAMESPACE`] when it has
/// none), then the job's name. Neither a namespace nor a job name contains `/`, so the two
/// segments give back (namespace, job): jobs sharing a bucket and prefix do not share records,
/// in one namespace or in two (staging and prod deployed from one values file).
pub fn object_store_url(url: &str, namespace: Option<&str>, job: &str) -> String {
    let namespace = namespace
        .filter(|n| !n.is_empty())
        .unwrap_or(LOCAL_NAMESPACE);
    format!("{}/{namespace}/{job}", url.trim_end_matches('/'))
}

/// Where a job's checkpoints lived in object storage before this version: `<url>/<job>`,
/// without the namespace, so the jobs of one name in several namespaces shared it. Read only
/// to resume from a record of the job's own topic (docs/checkpoints.md, "Migration").
pub fn legacy_object_store_url(url: &str, job: &str) -> String {
    format!("{}/{job}", url.trim_end_matches('/'))
}

/// Name of the object holding the record of `partition`, under [`object_store_url`].
pub fn object_name(partition: i32) -> String {
    format!("partition-{partition}.json")
}

/// The partition whose record an object named `name` (under [`object_store_url`]) holds, if
/// the name is one [`object_name`] gives.
pub fn partition_of_object(name: &str) -> Option<i32> {
    let p = name.strip_prefix("partition-")?.strip_suffix(".json")?;
    let partition: i32 = p.parse().ok()?;
    (partition >= 0 && object_name(partition) == name).then_some(partition)
}

/// Reads a stored record of `partition`: refuses records that do not parse, of a format this
/// reader does not know, or of another partition. The error says which, for a person.
pub fn parse(partition: i32, bytes: &[u8]) -> Result<PartitionCheckpoint, String> {
    #[derive(Deserialize)]
    struct FormatOnly {
        format: u32,
    }
    // Look at the format first, so a newer format is reported as such, not as a parse error.
    let head: FormatOnly =
        serde_json::from_slice(bytes).map_err(|e| format!("not a checkpoint: {e}"))?;
    if head.format != FORMAT {
        return Err(format!(
            "format {} is not known to this version of weir (it reads format {FORMAT})",
            head.format
        ));
    }
    let cp: PartitionCheckpoint =
        serde_json::from_slice(bytes).map_err(|e| format!("not a checkpoint: {e}"))?;
    if cp.partition != partition {
        return Err(format!(
            "record is for partition {}, stored under partition {partition}",
            cp.partition
        ));
    }
    Ok(cp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32) -> PartitionCheckpoint {
        PartitionCheckpoint {
            format: FORMAT,
            topic: "payments".to_string(),
            partition,
            epoch: 7,
            owner: "payments-worker-1".to_string(),
            written_at_ms: 1_700_000_000_000,
            progress: Some(Progress {
                next_offset: 1200,
                replay_from: 1100,
                replay_max_event_time: Some(1_699_999_990_000),
                watermark: None,
                emitted_through: Some(1_699_999_980_000),
                ..Progress::default()
            }),
            definition: None,
            results_from: None,
            reset: None,
            released: false,
            state_full: None,
        }
    }

    #[test]
    fn the_documented_record_parses_and_round_trips() {
        // The example of docs/checkpoints.md, field for field.
        let text = r#"{"format": 1, "topic": "payments", "partition": 3, "epoch": 7,
            "owner": "payments-per-merchant-worker-1", "writtenAtMs": 1700000000000,
            "progress": {"nextOffset": 1200, "replayFrom": 1100,
                         "replayMaxEventTime": 1699999990000, "watermark": 1699999999000,
                         "emittedThrough": 1699999980000}}"#;
        let cp = parse(3, text.as_bytes()).expect("parses");
        assert_eq!((cp.epoch, cp.written_at_ms), (7, 1_700_000_000_000));
        assert_eq!(cp.progress.as_ref().map(|p| p.next_offset), Some(1200));
        let again = serde_json::to_vec(&record(3)).expect("JSON");
        assert_eq!(parse(3, &again), Ok(record(3)));
    }

    #[test]
    fn the_state_full_report_is_optional_and_round_trips() {
        // A record written before the field (the documented example) has none, and a record
        // without refusals writes none: older readers see the record they know.
        let old = r#"{"format": 1, "topic": "payments", "partition": 0, "epoch": 1,
            "owner": "w-0", "writtenAtMs": 5, "progress": null}"#;
        assert_eq!(parse(0, old.as_bytes()).expect("parses").state_full, None);
        let plain = serde_json::to_string(&record(0)).expect("JSON");
        assert!(!plain.contains("stateFull"), "{plain}");
        let mut full = record(0);
        full.state_full = Some(StateFull::add(Some(StateFull::add(None, 1_000)), 2_000));
        let text = serde_json::to_string(&full).expect("JSON");
        assert!(
            text.contains(r#""stateFull":{"refused":2,"lastRefusedAtMs":2000}"#),
            "{text}"
        );
        assert_eq!(parse(0, text.as_bytes()), Ok(full));
        // The last refusal's time never goes back (a clock stepped back between two).
        let later = StateFull::add(Some(StateFull::add(None, 9_000)), 8_000);
        assert_eq!((later.refused, later.last_refused_at_ms), (2, 9_000));
    }

    #[test]
    fn unknown_format_other_partition_and_garbage_are_refused() {
        let mut newer = serde_json::to_value(record(0)).expect("JSON");
        newer["format"] = serde_json::json!(2);
        let e = parse(0, newer.to_string().as_bytes()).expect_err("format 2");
        assert!(e.contains("format 2 is not known"), "{e}");
        let e = parse(1, &serde_json::to_vec(&record(0)).expect("JSON")).expect_err("other");
        assert!(e.contains("stored under partition 1"), "{e}");
        let e = parse(0, b"{not json").expect_err("garbage");
        assert!(e.starts_with("not a checkpoint"), "{e}");
    }

    #[test]
    fn object_names_map_to_partitions_and_back() {
        assert_eq!(
            object_store_url("s3://b/jobs/", Some("prod"), "payments"),
            "s3://b/jobs/prod/payments"
        );
        assert_eq!(
            object_store_url("s3://b", Some("staging"), "payments"),
            "s3://b/staging/payments"
        );
        // Without a namespace (a local run): a segment no namespace can be.
        assert_eq!(
            object_store_url("s3://b", None, "payments"),
            "s3://b/_local/payments"
        );
        assert_eq!(
            object_store_url("s3://b", Some(""), "payments"),
            "s3://b/_local/payments"
        );
        assert_eq!(
            legacy_object_store_url("s3://b/", "payments"),
            "s3://b/payments"
        );
        // The collision this removes: one job name in two namespaces.
        assert_ne!(
            object_store_url("s3://b", Some("staging"), "payments"),
            object_store_url("s3://b", Some("prod"), "payments")
        );
        assert_eq!(object_name(12), "partition-12.json");
        for p in [0, 1, 12, 4096] {
            assert_eq!(partition_of_object(&object_name(p)), Some(p));
        }
        for other in [
            "partition-.json",
            "partition--1.json",
            "partition-01.json",
            "partition-1.json.tmp",
            "partition-1.lock",
            "checkpoint.json",
        ] {
            assert_eq!(partition_of_object(other), None, "{other}");
        }
    }
}
