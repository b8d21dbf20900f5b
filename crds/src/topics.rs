//! The repartition topic of a two-stage job: its name, the name jobs of earlier versions used,
//! which of the two a job uses, and what shows that a topic is the job's own. Pure: the operator
//! and local mode (`weir run`) decide with the same functions (docs/operator.md, "Names").
//!
//! The name is `weir.<namespace>.<job>.repartition` ([`repartition_topic`]). It cannot collide:
//! a namespace is a DNS label (no dot), so the first dot after `weir.` ends the namespace and
//! the rest up to `.repartition` is the job (a job name may contain dots); two (namespace, job)
//! pairs therefore never share a name. Kafka maps `.` and `_` to the same character in metric
//! names and refuses a topic whose name differs from an existing one only there; weir's full
//! names contain no `_`, so that cannot happen between them either.
//!
//! A name over Kafka's 249 characters keeps its start and ends in `-H<hash>.repartition`, the
//! hash being 16 hex digits of the SHA-256 of `<namespace>/<job>`. The capital `H` never occurs
//! in a namespace or job name (both lowercase), so a shortened name equals no full name, nor
//! differs from one only in `.` and `_`; two shortened names differ unless their 64-bit hashes
//! collide.
//!
//! Jobs of earlier versions used `weir-<namespace>-<job>-repartition`
//! ([`legacy_repartition_topic`]), which is ambiguous (`team-a`/`orders` and `team`/`a-orders`
//! share it). A job keeps that name only while its own assignment or its own merge-stage
//! checkpoints name it ([`repartition_topic_in_use`]): switching a running job to another topic
//! would lose the partials in flight, and its merge-stage checkpoints, which record the topic,
//! would refuse the new one.

use sha2::{Digest, Sha256};

/// Longest Kafka topic name.
pub const MAX_TOPIC_NAME: usize = 249;

const PREFIX: &str = "weir.";
const SUFFIX: &str = ".repartition";

/// The namespace of a job that names none (local mode).
fn namespace_or_default(namespace: Option<&str>) -> &str {
    namespace.unwrap_or("default")
}

/// The repartition topic of `job` in `namespace` (`default` when none, as in local mode):
/// `weir.<namespace>.<job>.repartition`, shortened with a hash when over
/// [`MAX_TOPIC_NAME`] characters (see the module documentation).
pub fn repartition_topic(namespace: Option<&str>, job: &str) -> String {
    let ns = namespace_or_default(namespace);
    let full = format!("{PREFIX}{ns}.{job}{SUFFIX}");
    if full.len() <= MAX_TOPIC_NAME {
        return full;
    }
    let digest = Sha256::digest(format!("{ns}/{job}").as_bytes());
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let tail = format!("-H{hash}{SUFFIX}");
    let head_max = MAX_TOPIC_NAME.saturating_sub(tail.len());
    // Names are ASCII (Kubernetes names), so any byte index is a character boundary.
    let start = format!("{PREFIX}{ns}.{job}");
    let head = start.get(..head_max.min(start.len())).unwrap_or(&start);
    format!("{}{tail}", head.trim_end_matches(['-', '.']))
}

/// The consumer group a job commits its checkpointed source offsets to, for Kafka's tools
/// (`kafka-consumer-groups`, Burrow, KEDA): `weir.<namespace>.<job>` (`default` when none, as in
/// local mode). Never joined; a namespace has no dots, so two jobs never share it.
pub fn consumer_group(namespace: Option<&str>, job: &str) -> String {
    format!("{PREFIX}{}.{job}", namespace_or_default(namespace))
}

/// The name jobs of earlier versions used: `weir-<namespace>-<job>-repartition`. Ambiguous
/// across namespaces; kept only by jobs whose assignment or checkpoints name it.
pub fn legacy_repartition_topic(namespace: Option<&str>, job: &str) -> String {
    format!("weir-{}-{job}-repartition", namespace_or_default(namespace))
}

/// Both names the repartition topic of `job` may have: [`repartition_topic`] and, for a job an
/// earlier version started, [`legacy_repartition_topic`]. A merge-stage record of either is the
/// job's.
pub fn repartition_topic_names(namespace: Option<&str>, job: &str) -> [String; 2] {
    [
        repartition_topic(namespace, job),
        legacy_repartition_topic(namespace, job),
    ]
}

/// What shows that a repartition topic is the job's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The job's assignment names it: the job ConfigMap that the job owns (its UID in the
    /// ConfigMap's owner references). The operator writes it before it creates the topic.
    Assignment,
    /// The job's merge-stage checkpoints name it (each record carries its topic): a job
    /// deleted and created again keeps its checkpoints, not its ConfigMap.
    Checkpoints,
    /// Nothing names it: the topic is the job's only if the job creates it. One that already
    /// exists is someone else's (a name conflict).
    Unclaimed,
}

/// The repartition topic a job uses, and what shows it is the job's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepartitionTopic {
    /// The topic.
    pub name: String,
    /// Why it is the job's.
    pub claim: Claim,
}

impl RepartitionTopic {
    /// Whether something of the job's own names the topic.
    pub fn is_claimed(&self) -> bool {
        self.claim != Claim::Unclaimed
    }
}

/// The repartition topic of `job` in `namespace`, given the topic its own assignment names
/// (`assigned`, from a job ConfigMap it owns) and the topics its checkpoint records name
/// (`checkpointed`). Only this job's two possible names count, in this order:
/// 1. the one the assignment names: what the running workers use;
/// 2. the one the merge-stage checkpoints name (the new name first): a job created again under
///    the same name resumes its checkpoints, which refuse another topic;
/// 3. otherwise the new name, unclaimed: the job may create it, not take over one that exists.
pub fn repartition_topic_in_use<'a>(
    namespace: Option<&str>,
    job: &str,
    assigned: Option<&str>,
    checkpointed: impl IntoIterator<Item = &'a str>,
) -> RepartitionTopic {
    let current = repartition_topic(namespace, job);
    let legacy = legacy_repartition_topic(namespace, job);
    let ours = |t: &str| t == current || t == legacy;
    if let Some(t) = assigned.filter(|t| ours(t)) {
        return RepartitionTopic {
            name: t.to_string(),
            claim: Claim::Assignment,
        };
    }
    let named: Vec<&str> = checkpointed.into_iter().filter(|t| ours(t)).collect();
    let (name, claim) = if named.contains(&current.as_str()) {
        (current, Claim::Checkpoints)
    } else if named.contains(&legacy.as_str()) {
        (legacy, Claim::Checkpoints)
    } else {
        (current, Claim::Unclaimed)
    };
    RepartitionTopic { name, claim }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_kafka_topic(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= MAX_TOPIC_NAME
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    }

    /// Kafka's metric name of a topic: `.` and `_` are the same there.
    fn metric_name(s: &str) -> String {
        s.replace('.', "_")
    }

    #[test]
    fn pairs_that_shared_the_legacy_name_get_different_names() {
        let long = "o".repeat(240);
        let pairs = [
            (("team-a", "orders"), ("team", "a-orders")),
            (("a-b-c", "d"), ("a", "b-c-d")),
            (("shop", "pay-ments"), ("shop-pay", "ments")),
            (("x", "y-z"), ("x-y", "z")),
            (("team-a", long.as_str()), ("team", &format!("a-{long}"))),
        ];
        for ((ns1, j1), (ns2, j2)) in pairs {
            // The table is of pairs that collided before.
            assert_eq!(
                legacy_repartition_topic(Some(ns1), j1),
                legacy_repartition_topic(Some(ns2), j2)
            );
            let (a, b) = (
                repartition_topic(Some(ns1), j1),
                repartition_topic(Some(ns2), j2),
            );
            assert_ne!(a, b, "{ns1}/{j1} and {ns2}/{j2}");
            assert_ne!(metric_name(&a), metric_name(&b));
            assert!(is_kafka_topic(&a) && is_kafka_topic(&b), "{a} {b}");
        }
    }

    #[test]
    fn the_name_says_namespace_and_job() {
        assert_eq!(
            repartition_topic(Some("shop"), "payments"),
            "weir.shop.payments.repartition"
        );
        assert_eq!(
            repartition_topic(None, "payments"),
            "weir.default.payments.repartition"
        );
        // A job name with dots stays readable and distinct from a namespace boundary.
        assert_eq!(
            repartition_topic(Some("a"), "b.c"),
            "weir.a.b.c.repartition"
        );
        assert_ne!(
            repartition_topic(Some("a"), "b.c"),
            repartition_topic(Some("a-b"), "c")
        );
        assert_ne!(
            repartition_topic(Some("shop"), "payments"),
            legacy_repartition_topic(Some("shop"), "payments")
        );
    }

    #[test]
    fn long_names_are_shortened_with_a_hash_and_never_equal_a_full_name() {
        let ns = "n".repeat(63);
        let fits = "j".repeat(MAX_TOPIC_NAME - "weir...repartition".len() - ns.len());
        let full = repartition_topic(Some(&ns), &fits);
        assert_eq!(full.len(), MAX_TOPIC_NAME);
        assert!(!full.contains('H'), "{full}");

        let a = repartition_topic(Some(&ns), &format!("{fits}a"));
        let b = repartition_topic(Some(&ns), &format!("{fits}b"));
        let longest = repartition_topic(Some(&ns), &"z".repeat(253));
        for t in [&a, &b, &longest] {
            assert!(is_kafka_topic(t), "{t}");
            assert!(
                t.starts_with(&format!("weir.{ns}.jjj")) || t.contains(".zzz"),
                "{t}"
            );
            assert!(t.ends_with(".repartition"), "{t}");
            assert!(t.contains("-H"), "{t}");
        }
        assert_ne!(a, b);
        assert_ne!(metric_name(&a), metric_name(&b));
        // A job named like a shortened name, hash included, gets another name: its full name
        // has no capital letter, and a shortened one always has.
        let job = a
            .strip_prefix(&format!("weir.{ns}."))
            .and_then(|s| s.strip_suffix(".repartition"))
            .expect("shape")
            .to_lowercase();
        let lookalike = repartition_topic(Some(&ns), &job);
        assert_ne!(lookalike, a);
        assert_ne!(metric_name(&lookalike), metric_name(&a));
        // Deterministic: the workers and the operator compute the same name.
        assert_eq!(a, repartition_topic(Some(&ns), &format!("{fits}a")));
    }

    #[test]
    fn a_job_keeps_the_name_its_assignment_or_checkpoints_give() {
        let (ns, job) = (Some("shop"), "payments");
        let current = "weir.shop.payments.repartition";
        let legacy = "weir-shop-payments-repartition";
        let pick = |assigned: Option<&str>, checkpointed: &[&str]| {
            let t = repartition_topic_in_use(ns, job, assigned, checkpointed.iter().copied());
            (t.name, t.claim)
        };
        // A new job: the new name, to be created.
        assert_eq!(pick(None, &[]), (current.to_string(), Claim::Unclaimed));
        // A job of an earlier version: the legacy name its assignment names.
        assert_eq!(
            pick(Some(legacy), &[current]),
            (legacy.to_string(), Claim::Assignment)
        );
        assert_eq!(
            pick(Some(current), &[legacy]),
            (current.to_string(), Claim::Assignment)
        );
        // Created again under its name: what its merge-stage checkpoints name.
        assert_eq!(
            pick(None, &["payments", legacy]),
            (legacy.to_string(), Claim::Checkpoints)
        );
        assert_eq!(
            pick(None, &[legacy, current]),
            (current.to_string(), Claim::Checkpoints)
        );
        // Names of other jobs never count, whatever names them.
        let other = "weir-team-a-orders-repartition";
        assert_eq!(
            pick(Some(other), &[other, "weir.team.a-orders.repartition"]),
            (current.to_string(), Claim::Unclaimed)
        );
        // The legacy name is ambiguous: both jobs of a pair that shared it before keep it
        // while their own records name it (docs/operator.md says how to separate them).
        for (ns, job) in [("team-a", "orders"), ("team", "a-orders")] {
            let t = repartition_topic_in_use(Some(ns), job, None, [other]);
            assert_eq!((t.name.as_str(), t.claim), (other, Claim::Checkpoints));
        }
    }
}
