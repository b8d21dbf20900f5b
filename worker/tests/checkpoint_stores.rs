//! The checkpoint stores against the conformance suite and the fencing scenario: in memory,
//! in a local directory, and in a real S3 (SeaweedFS started by the test).

mod support;

use std::sync::Arc;

use support::seaweedfs::{SeaweedFs, ACCESS_KEY, BUCKET, SECRET_KEY};
use support::suites::{conformance, fencing, migration, progress, record};
use weir_worker::checkpoint::{
    CheckpointError, CheckpointStore, DirStore, LegacyAccess, MemoryStore, MigratingStore,
    ObjectStoreConfig, ObjectStoreStore, PartitionLease, Run, StoreError,
};

#[tokio::test]
async fn memory_store_conforms() {
    let store = MemoryStore::new();
    conformance(Arc::new(store.clone()), Arc::new(store)).await;
}

#[tokio::test]
async fn memory_store_fences() {
    let store = MemoryStore::new();
    fencing(Arc::new(store.clone()), Arc::new(store)).await;
}

#[tokio::test]
async fn memory_stores_migrate() {
    for access in [LegacyAccess::Claim, LegacyAccess::Read] {
        migration(
            Arc::new(MemoryStore::new()),
            Arc::new(MemoryStore::new()),
            access,
        )
        .await;
    }
}

/// The migrating store keeps the two guarantees of the contract: the conformance suite on two
/// handles over the same current and legacy storages.
#[tokio::test]
async fn a_migrating_store_conforms() {
    let (current, legacy) = (MemoryStore::new(), MemoryStore::new());
    let handle = || -> Arc<dyn CheckpointStore> {
        Arc::new(MigratingStore::new(
            Arc::new(current.clone()),
            Arc::new(legacy.clone()),
            support::suites::TOPIC,
            LegacyAccess::Claim,
        ))
    };
    conformance(handle(), handle()).await;
    fencing(handle(), handle()).await;
}

#[tokio::test]
async fn memory_store_refuses_unknown_formats() {
    let store = MemoryStore::new();
    store.put_raw(0, br#"{"format": 2, "whatever": true}"#.to_vec());
    store.put_raw(1, b"not json".to_vec());
    let mut wrong_partition = serde_json::to_value(record(2, 1, "w", None)).expect("json");
    wrong_partition["partition"] = 5.into();
    store.put_raw(2, wrong_partition.to_string().into_bytes());
    for p in 0..3 {
        let got = store.get(p).await;
        assert!(
            matches!(got, Err(StoreError::Corrupt { partition, .. }) if partition == p),
            "{got:?}"
        );
    }
    // A lease does not start on a record it cannot read.
    let acquired = PartitionLease::acquire(Arc::new(store), "payments", 0, 1, "w").await;
    assert!(matches!(
        acquired,
        Err(CheckpointError::Store(StoreError::Corrupt { .. }))
    ));
}

#[tokio::test]
async fn lease_refuses_another_topics_checkpoint() {
    let store: Arc<dyn CheckpointStore> = Arc::new(MemoryStore::new());
    PartitionLease::acquire(store.clone(), "payments", 0, 1, "w")
        .await
        .expect("acquire");
    let other = PartitionLease::acquire(store, "refunds", 0, 2, "w").await;
    assert!(
        matches!(other, Err(CheckpointError::WrongTopic { .. })),
        "{other:?}"
    );
}

/// The run a record names (definition, resultsFrom, reset) survives a new owner's claim, and
/// every write after `set_run` records the new one (docs/semantics.md, "Edits, resets and
/// start times").
#[tokio::test]
async fn a_lease_keeps_the_stored_run_until_told_another() {
    let store: Arc<dyn CheckpointStore> = Arc::new(MemoryStore::new());
    let old = Run {
        definition: Some("0123456789abcdef".into()),
        results_from: Some(60_000),
        reset: Some("earliest".into()),
    };
    let (mut first, _) = PartitionLease::acquire(store.clone(), "payments", 0, 1, "a")
        .await
        .expect("acquire");
    assert_eq!(*first.run(), Run::default());
    first.set_run(old.clone());
    first
        .commit(support::suites::progress(10))
        .await
        .expect("commit");
    let (mut second, _) = PartitionLease::acquire(store.clone(), "payments", 0, 2, "b")
        .await
        .expect("acquire");
    assert_eq!(*second.run(), old);
    let claimed = store.get(0).await.expect("get").expect("a record");
    assert_eq!(claimed.checkpoint.run(), old, "the claim keeps the run");
    let new = Run {
        definition: Some("fedcba9876543210".into()),
        results_from: Some(120_000),
        reset: None,
    };
    second.set_run(new.clone());
    second
        .commit(support::suites::progress(20))
        .await
        .expect("commit");
    let written = store.get(0).await.expect("get").expect("a record");
    assert_eq!(written.checkpoint.run(), new);
}

/// The refusals of the bound on open state a partition reports: counted by its lease, kept by
/// the next owner's claim and writes of the same run, started over by another run.
#[tokio::test]
async fn a_lease_reports_state_full_refusals_for_the_run() {
    let store: Arc<dyn CheckpointStore> = Arc::new(MemoryStore::new());
    let run = Run {
        definition: Some("0123456789abcdef".into()),
        ..Run::default()
    };
    let (mut first, _) = PartitionLease::acquire(store.clone(), "payments", 0, 1, "a")
        .await
        .expect("acquire");
    first.set_run(run.clone());
    first.commit(progress(10)).await.expect("commit");
    let stored = |store: &Arc<dyn CheckpointStore>| {
        let store = store.clone();
        async move {
            let v = store.get(0).await.expect("get").expect("a record");
            v.checkpoint
                .state_full
                .map(|s| (s.refused, s.last_refused_at_ms))
        }
    };
    assert_eq!(stored(&store).await, None, "nothing refused: no report");
    first.note_state_full(5_000);
    first.note_state_full(7_000);
    first.commit(progress(20)).await.expect("commit");
    assert_eq!(stored(&store).await, Some((2, 7_000)));

    // The next owner (a restart, a handoff) keeps counting the same run.
    let (mut second, _) = PartitionLease::acquire(store.clone(), "payments", 0, 2, "b")
        .await
        .expect("acquire");
    assert_eq!(stored(&store).await, Some((2, 7_000)), "the claim keeps it");
    second.set_run(run);
    second.note_state_full(9_000);
    second.commit(progress(30)).await.expect("commit");
    assert_eq!(stored(&store).await, Some((3, 9_000)));

    // Another run (an edit, a reset) starts over.
    second.set_run(Run {
        definition: Some("fedcba9876543210".into()),
        ..Run::default()
    });
    second.commit(progress(40)).await.expect("commit");
    assert_eq!(stored(&store).await, None);
}

#[tokio::test]
async fn lease_stops_when_its_checkpoint_vanishes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn CheckpointStore> = Arc::new(DirStore::new(dir.path()));
    let (mut lease, _) = PartitionLease::acquire(store, "payments", 3, 1, "w")
        .await
        .expect("acquire");
    std::fs::remove_file(dir.path().join("partition-3.json")).expect("delete the record");
    let lost = lease.commit(support::suites::progress(1)).await;
    assert!(
        matches!(lost, Err(CheckpointError::Lost { partition: 3, .. })),
        "{lost:?}"
    );
    assert!(lost.is_err_and(|e| e.is_fenced()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dir_store_conforms_across_two_instances() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory that does not exist yet is created on the first write.
    let path = dir.path().join("job").join("payments");
    conformance(
        Arc::new(DirStore::new(&path)),
        Arc::new(DirStore::new(&path)),
    )
    .await;
    let names: Vec<String> = std::fs::read_dir(&path)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"partition-0.json".to_owned()), "{names:?}");
    assert!(
        !names.iter().any(|n| n.contains(".tmp")),
        "temporary files left: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dir_store_fences_across_two_instances() {
    let dir = tempfile::tempdir().expect("tempdir");
    fencing(
        Arc::new(DirStore::new(dir.path())),
        Arc::new(DirStore::new(dir.path())),
    )
    .await;
}

#[tokio::test]
async fn dir_store_reports_a_damaged_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("partition-0.json"), b"{\"version\": 1,").expect("write");
    let store = DirStore::new(dir.path());
    let got = store.get(0).await;
    assert!(
        matches!(got, Err(StoreError::Corrupt { partition: 0, .. })),
        "{got:?}"
    );
}

#[test]
fn object_store_refuses_file_urls_and_bad_urls() {
    for url in [
        "file:///tmp/weir",
        "ftp://host/x",
        "s3://user:pass@bucket/p",
        "nonsense",
    ] {
        let config = ObjectStoreConfig {
            url: url.to_owned(),
            ..ObjectStoreConfig::default()
        };
        let error = ObjectStoreStore::new(&config).expect_err(url);
        assert!(!format!("{error} {error:?}").contains("pass"), "{error}");
        if url.starts_with("file:") {
            assert!(
                error.to_string().contains("dir checkpoint store"),
                "{error}"
            );
        }
    }
}

#[test]
fn object_store_config_never_prints_secrets() {
    let config = ObjectStoreConfig {
        url: "s3://b/p".to_owned(),
        access_key_id: Some("AKIA-SHOULD-NOT-SHOW".to_owned()),
        secret_access_key: Some("SECRET-SHOULD-NOT-SHOW".to_owned()),
        ..ObjectStoreConfig::default()
    };
    let printed = format!("{config:?}");
    assert!(!printed.contains("SHOULD-NOT-SHOW"), "{printed}");
}

fn seaweed_store(endpoint: &str, prefix: &str) -> ObjectStoreStore {
    ObjectStoreStore::new(&ObjectStoreConfig {
        url: format!("s3://{BUCKET}/{prefix}"),
        endpoint: Some(endpoint.to_owned()),
        region: Some("us-east-1".to_owned()),
        allow_http: false, // implied by the http:// endpoint
        access_key_id: Some(ACCESS_KEY.to_owned()),
        secret_access_key: Some(SECRET_KEY.to_owned()),
        ..ObjectStoreConfig::default()
    })
    .expect("open the SeaweedFS store")
}

/// One SeaweedFS for the whole scenario (it takes seconds to start); each part has its own
/// prefix, so they cannot see each other's objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn object_store_on_seaweedfs() {
    let weed = SeaweedFs::start(|endpoint| async move {
        // Ready when the bucket answers an authenticated read.
        seaweed_store(&endpoint, "ready")
            .get(0)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;

    let store = seaweed_store(&weed.endpoint, "jobs/conformance");
    assert_eq!(
        store.describe(),
        format!("s3://{BUCKET}/jobs/conformance at {}", weed.endpoint)
    );
    conformance(
        Arc::new(store),
        Arc::new(seaweed_store(&weed.endpoint, "jobs/conformance")),
    )
    .await;
    fencing(
        Arc::new(seaweed_store(&weed.endpoint, "jobs/fencing")),
        Arc::new(seaweed_store(&weed.endpoint, "jobs/fencing")),
    )
    .await;
    // Records at the previous version's location (`<url>/<job>`) move to the current one
    // (`<url>/<namespace>/<job>`).
    migration(
        Arc::new(seaweed_store(
            &weed.endpoint,
            "jobs/migration/prod/payments",
        )),
        Arc::new(seaweed_store(&weed.endpoint, "jobs/migration/payments")),
        LegacyAccess::Claim,
    )
    .await;
    // Another prefix is another stream.
    assert!(seaweed_store(&weed.endpoint, "jobs/other")
        .get(0)
        .await
        .expect("get")
        .is_none());
}

/// The handoff rule (docs/checkpoints.md, "Handoff"): a new owner of a newer epoch waits while
/// the previous owner holds the partition, takes it as soon as that owner's last write is a
/// release (resuming exactly its progress), takes it anyway after the timeout, and waits for
/// nobody when the record is its own, released, or absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_waits_for_the_release_up_to_the_timeout() {
    use std::time::Duration;
    use weir_worker::checkpoint::{Handoff, HandoffWait};

    let store: Arc<dyn CheckpointStore> = Arc::new(MemoryStore::new());
    let (mut old, _) = PartitionLease::acquire(store.clone(), "payments", 0, 1, "w-0")
        .await
        .expect("old owner");
    old.commit(progress(10)).await.expect("commit");
    let never = || false;
    let wait = |timeout| HandoffWait {
        timeout,
        cancelled: &never,
    };

    // Held: the new owner waits until the old one releases at offset 42.
    let releasing = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        old.release(progress(42)).await.expect("release");
    });
    let taken = PartitionLease::acquire_after_release(
        store.clone(),
        "payments",
        0,
        2,
        "w-1",
        &wait(Duration::from_secs(30)),
    )
    .await
    .expect("handoff");
    releasing.await.expect("release task");
    let Handoff::Taken {
        progress: resumed,
        waited,
        timed_out,
        ..
    } = taken
    else {
        panic!("cancelled");
    };
    assert_eq!(
        resumed.map(|p| p.next_offset),
        Some(42),
        "the released progress"
    );
    assert!(waited >= Duration::from_millis(400), "waited {waited:?}");
    assert!(!timed_out);
    let stored = store.get(0).await.expect("get").expect("record");
    assert_eq!(
        (stored.checkpoint.epoch, stored.checkpoint.owner.as_str()),
        (2, "w-1")
    );
    assert!(!stored.checkpoint.released, "a claim is not a release");

    // Held and never released: taken after the timeout.
    let taken = PartitionLease::acquire_after_release(
        store.clone(),
        "payments",
        0,
        3,
        "w-2",
        &wait(Duration::from_millis(500)),
    )
    .await
    .expect("handoff");
    assert!(
        matches!(&taken, Handoff::Taken { timed_out: true, waited, .. } if *waited >= Duration::from_millis(500)),
        "{taken:?}"
    );

    // Its own record (a restarted pod), or no record: no wait.
    for (partition, owner) in [(0, "w-2"), (1, "w-9")] {
        let taken = PartitionLease::acquire_after_release(
            store.clone(),
            "payments",
            partition,
            4,
            owner,
            &wait(Duration::from_secs(30)),
        )
        .await
        .expect("handoff");
        assert!(
            matches!(&taken, Handoff::Taken { waited, timed_out: false, .. } if waited.is_zero()),
            "{taken:?}"
        );
    }

    // Cancelled while waiting (the partition was taken away again): nothing written.
    let cancel = || true;
    let before = store.get(0).await.expect("get").expect("record").version;
    let taken = PartitionLease::acquire_after_release(
        store.clone(),
        "payments",
        0,
        5,
        "w-5",
        &HandoffWait {
            timeout: Duration::from_secs(30),
            cancelled: &cancel,
        },
    )
    .await
    .expect("handoff");
    assert!(matches!(taken, Handoff::Cancelled), "{taken:?}");
    assert_eq!(
        store.get(0).await.expect("get").expect("record").version,
        before
    );
}
