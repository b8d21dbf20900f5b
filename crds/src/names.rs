//! The names and labels the operator gives a job's objects and the workers look up: one
//! definition for both binaries, derived from the StreamJob's name.
//!
//! A StreamJob name is a DNS subdomain (up to 253 characters, may contain dots and start with a
//! digit), but several children need stricter names:
//! - a Service name is a DNS-1035 label: at most 63 characters, starts with a letter, no dots;
//! - a StatefulSet's pods carry the label `controller-revision-hash: <statefulset>-<hash>`, whose
//!   value must fit in 63 characters, so the StatefulSet name must stay within 52;
//! - label values are at most 63 characters.
//!
//! [`worker_name`] and [`job_label_value`] therefore keep a name as is when it already fits, and
//! otherwise truncate it and append 8 hex digits of its SHA-256: the result is deterministic,
//! within bounds, and two jobs whose names share a long prefix still get different children.
//!
//! The checkpoint ConfigMaps are the exception: their names (`<job>-checkpoint-<partition>`,
//! [`checkpoint_prefix`], and `<job>-checkpoint-merge-<partition>` for the merge stage,
//! [`merge_checkpoint_prefix`]) are computed by the workers too, so they are never shortened; a
//! job whose name makes them longer than 253 characters is refused as an invalid spec (see
//! [`checkpoint_config_map_name`]).
//!
//! No two checkpoint names of jobs in one namespace are equal (DESIGN.md invariant 10). Every
//! checkpoint name ends in `-checkpoint-<rest>`, and `<rest>` never contains `-checkpoint-`:
//! it is `<p>` (stage 1) or `merge-<p>` (the merge stage), `<p>` the partition in decimal
//! without sign or leading zero. So the part after the *last* `-checkpoint-` of a name is
//! `<rest>`, and the part before it is the job: a name gives back its job, its stage (`<rest>`
//! all digits or not) and its partition. Two equal names therefore have the same job, stage
//! and partition. The merge stage's names before this version, `<job>-merge-checkpoint-<p>`
//! ([`legacy_merge_checkpoint_prefix`]), broke this: they equal the stage-1 names of the job
//! `<job>-merge`. They are only read now, to resume from them (docs/checkpoints.md, "Migration").

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "weir-operator";
/// The field manager of the workers' writes (their checkpoint ConfigMaps): without one, the
/// API server records them as `unknown`.
pub const WORKER_FIELD_MANAGER: &str = "weir-worker";
/// Finalizer added only when `spec.checkpoint.deleteOnJobDeletion` is true: the checkpoints live
/// outside the job's owner-reference tree (they are retained by default), so deleting them
/// needs explicit cleanup.
pub const FINALIZER: &str = "weir.dev/checkpoints";

/// `app.kubernetes.io/name`.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// Its value on every worker object.
pub const NAME_WORKER: &str = "weir-worker";
/// `app.kubernetes.io/instance`: the job (see [`job_label_value`]).
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
/// `app.kubernetes.io/managed-by`.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Its value on the objects the operator applies.
pub const MANAGED_BY_OPERATOR: &str = "weir-operator";
/// Its value on checkpoint ConfigMaps: the workers write it on every checkpoint, and the
/// operator uses the same value rather than fight over it.
pub const MANAGED_BY_CHECKPOINT: &str = "weir";
/// `app.kubernetes.io/component`.
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// Its value on worker objects.
pub const COMPONENT_WORKER: &str = "worker";
/// Its value on checkpoint ConfigMaps.
pub const COMPONENT_CHECKPOINT: &str = "checkpoint";
/// `weir.dev/job`: the job (see [`job_label_value`]); selects everything of one job, including
/// the checkpoint ConfigMaps, for cleanup.
pub const LABEL_JOB: &str = "weir.dev/job";
/// Pod-template annotation holding the hash of the job ConfigMap's content (the operator's
/// `desired::config_hash`): pods roll when the spec or the assignment changes.
pub const ANNOTATION_CONFIG_HASH: &str = "weir.dev/config-hash";

/// Key of the job ConfigMap holding the StreamJob, read by `weir worker --job`.
pub const JOB_KEY: &str = "job.yaml";
/// Key of the job ConfigMap holding the assignment, read by `weir worker --assignment`.
pub const ASSIGNMENT_KEY: &str = "assignment.json";

const MAX_LABEL: usize = 63;
/// 63 minus the 11 characters of `-<revision hash>` the StatefulSet controller appends in the
/// `controller-revision-hash` label of its pods.
const MAX_STATEFULSET: usize = 52;
const MAX_SUBDOMAIN: usize = 253;

/// First 8 hex digits of the SHA-256 of `s`.
fn short_hash(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// `base + suffix` if it fits in `max` characters, else `base` truncated, `-<hash of base>`,
/// then `suffix`. `base` is ASCII (a Kubernetes name), so byte slicing is safe; a truncated base
/// never ends in `-` or `.`.
fn bounded(base: &str, suffix: &str, max: usize, force_hash: bool) -> String {
    if !force_hash && base.len() + suffix.len() <= max {
        return format!("{base}{suffix}");
    }
    let hash = short_hash(base);
    let keep = max
        .saturating_sub(suffix.len() + hash.len() + 1)
        .min(base.len());
    let head = base
        .get(..keep)
        .unwrap_or(base)
        .trim_end_matches(['-', '.']);
    if head.is_empty() {
        format!("{hash}{suffix}")
    } else {
        format!("{head}-{hash}{suffix}")
    }
}

/// Name of the StatefulSet, its headless Service, the PodDisruptionBudget, the ServiceAccount,
/// the Role and the RoleBinding: `<job>-worker`.
///
/// Kept a DNS-1035 label of at most 52 characters: dots become `-`, a name not starting with a
/// letter gets the prefix `w-`, and a name that was changed or is too long gets a hash of the
/// job name (so `a.b` and `a-b` do not collide). Worker pods are `<worker_name>-<ordinal>`.
pub fn worker_name(job: &str) -> String {
    let mut base = job.replace('.', "-");
    if !base.starts_with(|c: char| c.is_ascii_lowercase()) {
        base = format!("w-{base}");
    }
    let changed = base != job;
    if changed {
        // Hash the original name, not the rewritten one, so distinct jobs stay distinct.
        let hash = short_hash(job);
        let suffix = format!("-{hash}-worker");
        let keep = MAX_STATEFULSET.saturating_sub(suffix.len()).min(base.len());
        let head = base.get(..keep).unwrap_or(&base).trim_end_matches('-');
        return format!("{head}{suffix}");
    }
    bounded(job, "-worker", MAX_STATEFULSET, false)
}

/// Name of the job ConfigMap (`job.yaml`, `assignment.json`): `<job>-config`.
pub fn config_map_name(job: &str) -> String {
    bounded(job, "-config", MAX_SUBDOMAIN, false)
}

/// Prefix of the stage-1 checkpoint ConfigMaps of `job`: partition `p` is `<prefix>-<p>`
/// (the ConfigMap checkpoint store's prefix, `weir worker`'s `ConfigMapStore::new`).
pub fn checkpoint_prefix(job: &str) -> String {
    format!("{job}-checkpoint")
}

/// Prefix of the merge stage's checkpoint ConfigMaps of `job` (one per partition of the
/// repartition topic): `<job>-checkpoint-merge`, so that partition `p` is
/// `<job>-checkpoint-merge-<p>`, which no other job's name can give (see the module doc).
pub fn merge_checkpoint_prefix(job: &str) -> String {
    format!("{job}-checkpoint-merge")
}

/// Prefix of the merge stage's checkpoint ConfigMaps before this version:
/// `<job>-merge-checkpoint`. Equal to [`checkpoint_prefix`] of the job `<job>-merge`, so what a
/// ConfigMap of this name holds may be that job's stage-1 record: the workers resume from it
/// only when its topic is their repartition topic, never write it, and the operator no longer
/// creates it (docs/checkpoints.md, "Migration").
pub fn legacy_merge_checkpoint_prefix(job: &str) -> String {
    format!("{job}-merge-checkpoint")
}

/// `<prefix>-<partition>`, or `None` when over 253 characters (never shortened: the workers
/// compute the same name).
fn checkpoint_name(prefix: String, partition: i32) -> Option<String> {
    let name = format!("{prefix}-{partition}");
    (name.len() <= MAX_SUBDOMAIN).then_some(name)
}

/// Name of the checkpoint ConfigMap of `partition`, exactly as the workers compute it
/// (`<job>-checkpoint-<partition>`). Never shortened: `None` when it would exceed 253
/// characters.
pub fn checkpoint_config_map_name(job: &str, partition: i32) -> Option<String> {
    checkpoint_name(checkpoint_prefix(job), partition)
}

/// The checkpoint ConfigMap of a two-stage job's repartition partition `partition`
/// (`<job>-checkpoint-merge-<partition>`).
pub fn merge_checkpoint_config_map_name(job: &str, partition: i32) -> Option<String> {
    checkpoint_name(merge_checkpoint_prefix(job), partition)
}

/// The name the checkpoint ConfigMap of repartition partition `partition` had before this
/// version (`<job>-merge-checkpoint-<partition>`, [`legacy_merge_checkpoint_prefix`]).
pub fn legacy_merge_checkpoint_config_map_name(job: &str, partition: i32) -> Option<String> {
    checkpoint_name(legacy_merge_checkpoint_prefix(job), partition)
}

/// Why the checkpoint ConfigMaps of a job named `job` whose source topic has `partitions`
/// partitions, and (two-stage jobs) whose repartition topic has `merge_partitions`, cannot be
/// named (the last one, `<job>-checkpoint-<partitions - 1>` or
/// `<job>-checkpoint-merge-<merge_partitions - 1>`, would exceed 253 characters; they are never
/// shortened), or `None` when they all fit. Both the operator (with the topics' partition
/// counts) and `weir validate` (with one partition, the least any topic has) refuse such a job
/// with this message, at `metadata.name`.
pub fn checkpoint_names_problem(
    job: &str,
    partitions: i32,
    merge_partitions: Option<i32>,
) -> Option<String> {
    let stages = [
        (
            checkpoint_prefix(job),
            checkpoint_prefix(""),
            "the ",
            Some(partitions),
        ),
        (
            merge_checkpoint_prefix(job),
            merge_checkpoint_prefix(""),
            "the merge stage's ",
            merge_partitions,
        ),
    ];
    stages.into_iter().find_map(|(prefix, bare, what, count)| {
        let count = count?.max(1);
        let last = count - 1;
        checkpoint_name(prefix.clone(), last).is_none().then(|| {
            let most = MAX_SUBDOMAIN - bare.len() - 1 - last.to_string().len();
            format!(
                "is too long for {what}checkpoint ConfigMaps {prefix}-<partition> (at most \
                 {most} characters with {count} partition{s}): shorten it or use \
                 spec.checkpoint.store.objectStore",
                s = if count == 1 { "" } else { "s" },
            )
        })
    })
}

/// Why `name` cannot be the name of a StreamJob, or `None`. The API server requires a DNS-1123
/// subdomain (RFC 1123): at most 253 characters, lowercase letters, digits, `-` and `.`,
/// starting and ending with a letter or digit, and no empty part between dots. Every name the
/// operator derives from it is then valid too (see [`worker_name`]), except the checkpoint
/// ConfigMaps' ([`checkpoint_names_problem`]).
pub fn job_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is required".to_string());
    }
    if name.len() > MAX_SUBDOMAIN {
        return Some(format!(
            "must be at most {MAX_SUBDOMAIN} characters, not {}",
            name.len()
        ));
    }
    (!name.split('.').all(is_dns1123_label)).then(|| {
        format!(
            "{name:?} is not a valid name: use lowercase letters, digits, '-' and '.', starting \
             and ending with a letter or digit (a DNS-1123 subdomain, such as payments-per-merchant)"
        )
    })
}

/// Why `namespace` cannot be a namespace's name, or `None`: it must be a DNS-1123 label (at
/// most 63 characters, lowercase letters, digits and `-`, starting and ending with a letter or
/// digit).
pub fn namespace_problem(namespace: &str) -> Option<String> {
    (namespace.len() > MAX_LABEL || !is_dns1123_label(namespace)).then(|| {
        format!(
            "{namespace:?} is not a namespace name: at most {MAX_LABEL} lowercase letters, \
             digits and '-', starting and ending with a letter or digit"
        )
    })
}

/// One part of a DNS-1123 name: lowercase letters, digits and `-`, starting and ending with a
/// letter or digit (the length is the caller's).
fn is_dns1123_label(l: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    l.starts_with(alnum) && l.ends_with(alnum) && l.chars().all(|c| alnum(c) || c == '-')
}

/// The job name as a label value: itself when it fits in 63 characters, else truncated with a
/// hash (label values allow dots, so nothing else changes).
pub fn job_label_value(job: &str) -> String {
    bounded(job, "", MAX_LABEL, false)
}

/// Labels that select a job's worker pods. Never change them: a StatefulSet's selector is
/// immutable.
pub fn selector_labels(job: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), NAME_WORKER.to_string()),
        (LABEL_INSTANCE.to_string(), job_label_value(job)),
    ])
}

/// Labels of every object the operator applies for a job (and of its worker pods).
pub fn labels(job: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(job);
    l.insert(
        LABEL_MANAGED_BY.to_string(),
        MANAGED_BY_OPERATOR.to_string(),
    );
    l.insert(LABEL_COMPONENT.to_string(), COMPONENT_WORKER.to_string());
    l.insert(LABEL_JOB.to_string(), job_label_value(job));
    l
}

/// Labels of a job's checkpoint ConfigMaps.
pub fn checkpoint_labels(job: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            LABEL_MANAGED_BY.to_string(),
            MANAGED_BY_CHECKPOINT.to_string(),
        ),
        (
            LABEL_COMPONENT.to_string(),
            COMPONENT_CHECKPOINT.to_string(),
        ),
        (LABEL_JOB.to_string(), job_label_value(job)),
    ])
}

/// Label selector of a job's checkpoint ConfigMaps (the job ConfigMap carries the job label
/// too, hence the component): what the operator lists and, on cleanup, deletes.
pub fn checkpoint_selector(job: &str) -> String {
    format!(
        "{LABEL_JOB}={},{LABEL_COMPONENT}={COMPONENT_CHECKPOINT}",
        job_label_value(job)
    )
}

/// The worker pods' label selector as a string, for `status.selector` (the `/scale`
/// subresource, HPA, KEDA).
pub fn selector_string(job: &str) -> String {
    selector_labels(job)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns1035_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }

    #[test]
    fn short_names_are_kept() {
        assert_eq!(worker_name("payments"), "payments-worker");
        assert_eq!(config_map_name("payments"), "payments-config");
        assert_eq!(job_label_value("payments"), "payments");
        assert_eq!(
            checkpoint_config_map_name("payments", 3).as_deref(),
            Some("payments-checkpoint-3")
        );
        assert_eq!(
            selector_string("payments"),
            "app.kubernetes.io/instance=payments,app.kubernetes.io/name=weir-worker"
        );
    }

    #[test]
    fn long_or_odd_names_are_bounded_distinct_and_valid() {
        let long_a = format!("{}a", "x".repeat(200));
        let long_b = format!("{}b", "x".repeat(200));
        for job in [
            long_a.as_str(),
            long_b.as_str(),
            "a.b",
            "a-b",
            "9lives",
            "x".repeat(45).as_str(),
        ] {
            let w = worker_name(job);
            assert!(w.len() <= 52, "{w}");
            assert!(is_dns1035_label(&w), "{w}");
            assert!(w.ends_with("-worker"), "{w}");
            let l = job_label_value(job);
            assert!(l.len() <= 63, "{l}");
        }
        assert_ne!(worker_name(&long_a), worker_name(&long_b));
        assert_ne!(job_label_value(&long_a), job_label_value(&long_b));
        assert_ne!(worker_name("a.b"), worker_name("a-b"));
        assert!(config_map_name(&"y".repeat(253)).len() <= 253);
        assert_eq!(checkpoint_config_map_name(&"y".repeat(241), 0), None);
    }

    #[test]
    fn job_names_are_dns_subdomains() {
        for ok in ["payments", "a", "9lives", "a.b-c", "x".repeat(253).as_str()] {
            assert_eq!(job_name_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "Payments",
            "pay_ments",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a b",
            "x".repeat(254).as_str(),
        ] {
            assert!(job_name_problem(bad).is_some(), "{bad:?} accepted");
        }
    }

    #[test]
    fn checkpoint_names_problem_agrees_with_checkpoint_config_map_name() {
        // 253 - "-checkpoint-".len() - 1 digit = 240 characters fit one partition.
        assert_eq!(checkpoint_names_problem(&"y".repeat(240), 1, None), None);
        let too_long = checkpoint_names_problem(&"y".repeat(241), 1, None).expect("too long");
        assert!(
            too_long.contains("at most 240 characters with 1 partition)"),
            "{too_long}"
        );
        // Partition 10 has two digits.
        assert_eq!(checkpoint_names_problem(&"y".repeat(239), 11, None), None);
        let too_long = checkpoint_names_problem(&"y".repeat(240), 11, None).expect("too long");
        assert!(
            too_long.contains("at most 239 characters with 11 partitions"),
            "{too_long}"
        );
        for (len, p) in [(230, 1000), (240, 1), (241, 1), (239, 12), (238, 100)] {
            let job = "z".repeat(len);
            assert_eq!(
                checkpoint_names_problem(&job, p, None).is_none(),
                checkpoint_config_map_name(&job, p - 1).is_some(),
                "{len} {p}"
            );
            // Two stages: the merge stage's names are 6 characters longer.
            assert_eq!(
                checkpoint_names_problem(&job, p, Some(p)).is_none(),
                merge_checkpoint_config_map_name(&job, p - 1).is_some(),
                "{len} {p}"
            );
        }
        // 253 - "-checkpoint-merge-".len() - 1 digit = 234 characters fit one partition.
        assert_eq!(checkpoint_names_problem(&"y".repeat(234), 1, Some(1)), None);
        let merge = checkpoint_names_problem(&"y".repeat(235), 1, Some(1)).expect("too long");
        assert!(
            merge.contains("the merge stage's checkpoint ConfigMaps")
                && merge.contains(
                    "-checkpoint-merge-<partition> (at most 234 characters with 1 partition)"
                ),
            "{merge}"
        );
    }

    /// Stage 1 or the merge stage, for the tables below.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Stage {
        Source,
        Merge,
    }

    fn name(stage: Stage, job: &str, p: i32) -> Option<String> {
        match stage {
            Stage::Source => checkpoint_config_map_name(job, p),
            Stage::Merge => merge_checkpoint_config_map_name(job, p),
        }
    }

    /// The module doc's argument, as code: a checkpoint name gives back (job, stage, partition).
    fn parse(name: &str) -> Option<(String, Stage, i32)> {
        let at = name.rfind("-checkpoint-")?;
        let (job, rest) = (&name[..at], &name[at + "-checkpoint-".len()..]);
        let (stage, digits) = match rest.strip_prefix("merge-") {
            Some(d) => (Stage::Merge, d),
            None => (Stage::Source, rest),
        };
        let p: i32 = digits.parse().ok()?;
        (p.to_string() == digits).then(|| (job.to_string(), stage, p))
    }

    #[test]
    fn checkpoint_names_of_the_merge_stage_are_apart_from_stage_1() {
        assert_eq!(
            merge_checkpoint_config_map_name("payments", 3).as_deref(),
            Some("payments-checkpoint-merge-3")
        );
        assert_eq!(
            legacy_merge_checkpoint_config_map_name("payments", 3).as_deref(),
            Some("payments-merge-checkpoint-3")
        );
        // The same length as before: the 253-character rule refuses the same job names.
        assert_eq!(
            merge_checkpoint_prefix("j").len(),
            legacy_merge_checkpoint_prefix("j").len()
        );
    }

    /// Pairs whose names collided before this version, or look as if they might: (stage, job,
    /// partition) twice. Every pair is now two distinct names, and each name parses back to
    /// its own (job, stage, partition).
    /// A checkpoint's (stage, job, partition).
    type Checkpoint<'a> = (Stage, &'a str, i32);

    #[test]
    fn no_two_checkpoint_names_are_equal() {
        use Stage::{Merge, Source};
        let pairs: &[(Checkpoint, Checkpoint)] = &[
            // The collision of the old names: x's merge stage = x-merge's stage 1.
            ((Merge, "x", 0), (Source, "x-merge", 0)),
            ((Merge, "x", 12), (Source, "x-merge", 12)),
            // The new merge names against jobs whose names spell them.
            ((Merge, "x", 0), (Source, "x-checkpoint-merge", 0)),
            ((Merge, "x", 0), (Merge, "x-checkpoint-merge", 0)),
            ((Source, "x", 0), (Source, "x-checkpoint", 0)),
            ((Source, "x-checkpoint-1", 2), (Source, "x", 1)),
            ((Merge, "x-checkpoint-1", 2), (Merge, "x", 1)),
            ((Merge, "x-merge", 0), (Source, "x-merge-merge", 0)),
            // Digits that move between the job and the partition.
            ((Source, "x-1", 2), (Source, "x", 12)),
            ((Merge, "x-1", 2), (Merge, "x", 12)),
            ((Source, "x", 1), (Source, "x", 10)),
            // A job named like a stage.
            ((Merge, "a", 3), (Source, "merge", 3)),
            ((Merge, "a.merge", 0), (Source, "a", 0)),
        ];
        for &(a, b) in pairs {
            let na = name(a.0, a.1, a.2).expect("fits");
            let nb = name(b.0, b.1, b.2).expect("fits");
            assert_ne!(na, nb, "{a:?} and {b:?}");
            for ((stage, job, p), n) in [(a, &na), (b, &nb)] {
                assert_eq!(parse(n), Some((job.to_string(), stage, p)), "{n}");
            }
        }
        // The old names did collide (this table is not vacuous).
        assert_eq!(
            legacy_merge_checkpoint_config_map_name("x", 0),
            checkpoint_config_map_name("x-merge", 0)
        );
    }
}
