//! Unit tests of the controller's pure parts: spread requeues, cleanup's record checks, the
//! cache trim, the backoff.

use super::deletion::another_jobs_checkpoint;
use super::*;

#[test]
fn periodic_requeues_are_spread_over_a_fifth_of_their_period_per_job_and_never_come_early() {
    let delays: Vec<Duration> = (0..2_000)
        .map(|i| {
            spread(
                REQUEUE_WAITING,
                &format!("ns-{}", i % 10),
                &format!("job-{i}"),
            )
        })
        .collect();
    let max = REQUEUE_WAITING.mul_f64(1.0 + REQUEUE_SPREAD);
    assert!(delays.iter().all(|d| *d >= REQUEUE_WAITING && *d < max));
    // Spread out over the jobs, not a constant: 2,000 jobs land over most of the 6 s.
    let lo = delays.iter().min().copied().unwrap_or_default();
    let hi = delays.iter().max().copied().unwrap_or_default();
    assert!(
        hi - lo > REQUEUE_WAITING.mul_f64(REQUEUE_SPREAD * 0.9),
        "{lo:?}..{hi:?}"
    );
    let first_half = delays
        .iter()
        .filter(|d| **d < REQUEUE_WAITING.mul_f64(1.0 + REQUEUE_SPREAD / 2.0))
        .count();
    assert!((850..1_150).contains(&first_half), "{first_half} of 2,000");
    // The same job, the same period.
    assert_eq!(
        spread(REQUEUE_HEALTHY, "shop", "payments"),
        spread(REQUEUE_HEALTHY, "shop", "payments")
    );
}

#[test]
fn cleanup_leaves_a_legacy_merge_name_holding_another_topics_record() {
    let cm = |name: &str, topic: Option<&str>| ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        data: topic.map(|t| {
            let record = serde_json::json!({"format": 1, "topic": t, "partition": 0,
                "epoch": 1, "owner": "x-worker-0", "writtenAtMs": 1, "progress": null});
            [(
                weir_crds::checkpoint::CONFIG_MAP_KEY.to_string(),
                record.to_string(),
            )]
            .into()
        }),
        ..ConfigMap::default()
    };
    let rep = &["weir.ns.x.repartition", "weir-ns-x-repartition"][..];
    // The job `x-merge`'s stage 1 under x's legacy merge name: left.
    assert!(another_jobs_checkpoint(
        &cm("x-merge-checkpoint-0", Some("orders")),
        "x",
        rep
    ));
    // x's own merge record, an empty one, x's current names: deleted.
    for own in rep {
        assert!(!another_jobs_checkpoint(
            &cm("x-merge-checkpoint-0", Some(own)),
            "x",
            rep
        ));
    }
    assert!(!another_jobs_checkpoint(
        &cm("x-merge-checkpoint-0", None),
        "x",
        rep
    ));
    assert!(!another_jobs_checkpoint(
        &cm("x-checkpoint-0", Some("orders")),
        "x",
        rep
    ));
    assert!(!another_jobs_checkpoint(
        &cm("x-checkpoint-merge-0", Some("o")),
        "x",
        rep
    ));
}

#[test]
fn the_cache_keeps_neither_managed_fields_nor_the_last_applied_copy() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
    let mut meta = ObjectMeta {
        name: Some("payments".to_string()),
        annotations: Some(
            [
                (LAST_APPLIED.to_string(), "{...}".to_string()),
                ("team".to_string(), "payments".to_string()),
            ]
            .into(),
        ),
        managed_fields: Some(vec![ManagedFieldsEntry::default()]),
        finalizers: Some(vec![FINALIZER.to_string()]),
        ..ObjectMeta::default()
    };
    trim_for_cache(&mut meta);
    assert_eq!(meta.managed_fields, None);
    assert_eq!(
        meta.annotations,
        Some([("team".to_string(), "payments".to_string())].into())
    );
    // What reconciles read stays.
    assert_eq!(meta.name.as_deref(), Some("payments"));
    assert_eq!(meta.finalizers, Some(vec![FINALIZER.to_string()]));
    let mut only_last_applied = ObjectMeta {
        annotations: Some([(LAST_APPLIED.to_string(), "{}".to_string())].into()),
        ..ObjectMeta::default()
    };
    trim_for_cache(&mut only_last_applied);
    assert_eq!(only_last_applied.annotations, None);
}

#[test]
fn a_job_deleted_before_its_queued_reconcile_is_not_a_warning() {
    use kube::runtime::reflector::ObjectRef;
    let gone = ObjectRef::<StreamJob>::new("payments")
        .within("shop")
        .erase();
    assert!(is_expected(&ControllerError::ObjectNotFound(Box::new(
        gone.clone()
    ))));
    let failed = Error::DeleteRepartitionTopic {
        topic: "t".to_string(),
        message: "m".to_string(),
    };
    assert!(is_expected(&ControllerError::ReconcilerFailed(
        failed,
        Box::new(gone)
    )));
    let queue = watcher::Error::NoResourceVersion;
    assert!(!is_expected(&ControllerError::QueueError(queue)));
}

#[test]
fn backoff_doubles_per_failure_with_jitter_caps_and_resets() {
    let b = Backoff::default();
    let k = ("ns".to_string(), "job".to_string());
    let other = ("ns".to_string(), "other".to_string());
    for n in 0..12u32 {
        let d = b.next_delay(k.clone());
        let full = BACKOFF_BASE.saturating_mul(1 << n).min(BACKOFF_MAX);
        assert!(
            d >= full / 2 && d <= full,
            "attempt {n}: {d:?} not in [{full:?}/2, {full:?}]"
        );
    }
    assert_eq!(b.attempts(&k), 12);
    // Per object: another job starts from the base delay.
    assert!(b.next_delay(other.clone()) <= BACKOFF_BASE);
    b.reset(&k);
    assert_eq!(b.attempts(&k), 0);
    assert_eq!(b.attempts(&other), 1);
}
