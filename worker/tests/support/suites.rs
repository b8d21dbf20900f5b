//! What every `CheckpointStore` must do, and the fencing scenario on top of it. Each takes
//! two handles on the same storage (two instances, or two clones): a write through one must
//! be seen through the other, as between two processes.

use std::sync::Arc;

use weir_worker::checkpoint::{
    CheckpointError, CheckpointStore, LegacyAccess, MigratingStore, PartitionCheckpoint,
    PartitionLease, Progress, StoreError, Version, FORMAT,
};

pub const TOPIC: &str = "payments";

pub fn record(
    partition: i32,
    epoch: i64,
    owner: &str,
    progress: Option<Progress>,
) -> PartitionCheckpoint {
    PartitionCheckpoint {
        format: FORMAT,
        topic: TOPIC.to_owned(),
        partition,
        epoch,
        owner: owner.to_owned(),
        written_at_ms: 1_700_000_000_000 + epoch % 1000,
        progress,
        definition: None,
        results_from: None,
        reset: None,
        released: false,
        state_full: None,
    }
}

pub fn progress(next_offset: i64) -> Progress {
    Progress {
        next_offset,
        replay_from: next_offset / 2,
        replay_max_event_time: Some(1_700_000_000_000 + next_offset),
        watermark: Some(1_700_000_000_500 + next_offset),
        emitted_through: Some(1_699_999_999_000 + next_offset),
        ..Default::default()
    }
}

fn is_conflict<T: std::fmt::Debug>(result: &Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::Conflict { .. }))
}

/// The guarantees of `CheckpointStore`. `a` and `b` are two handles on one (empty) storage.
pub async fn conformance(a: Arc<dyn CheckpointStore>, b: Arc<dyn CheckpointStore>) {
    // Nothing stored yet.
    assert!(a.get(0).await.expect("get empty").is_none());

    // put None, then get (through the other handle): read-after-write, same version.
    let first = record(0, 1, "worker-0", None);
    let v1 = a.put(&first, None).await.expect("first put");
    let got = b.get(0).await.expect("get").expect("record after put");
    assert_eq!(got.checkpoint, first);
    assert_eq!(got.version, v1);

    // A write naming the current version succeeds and changes the version.
    let second = record(0, 1, "worker-0", Some(progress(10)));
    let v2 = b
        .put(&second, Some(&v1))
        .await
        .expect("put with current version");
    assert_ne!(v2, v1, "a write must produce a new version");
    assert_eq!(
        a.get(0).await.expect("get").expect("record").checkpoint,
        second
    );

    // A stale version is refused and changes nothing.
    let stale = a
        .put(&record(0, 1, "zombie", Some(progress(5))), Some(&v1))
        .await;
    assert!(
        is_conflict(&stale),
        "stale version must conflict, got {stale:?}"
    );
    let after = b.get(0).await.expect("get").expect("record");
    assert_eq!(
        (after.checkpoint, after.version),
        (second.clone(), v2.clone())
    );

    // put None when something is stored is refused.
    let again = b.put(&record(0, 9, "late", None), None).await;
    assert!(
        is_conflict(&again),
        "create over an existing record must conflict, got {again:?}"
    );

    // A version this store never handed out is refused too.
    let bogus = a
        .put(&second, Some(&Version("not-a-version".to_owned())))
        .await;
    assert!(
        is_conflict(&bogus),
        "unknown version must conflict, got {bogus:?}"
    );

    // Partitions are independent keys.
    assert!(a.get(1).await.expect("get other partition").is_none());

    // 16 concurrent writers naming the same version: exactly one wins.
    let base = a
        .put(&record(1, 1, "base", None), None)
        .await
        .expect("base");
    let mut writers = Vec::new();
    for i in 0..16 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let base = base.clone();
        writers.push(tokio::spawn(async move {
            let cp = record(1, 1, &format!("writer-{i}"), Some(progress(i)));
            (i, store.put(&cp, Some(&base)).await)
        }));
    }
    let mut winners = Vec::new();
    for writer in writers {
        let (i, result) = writer.await.expect("writer task");
        match result {
            Ok(version) => winners.push((i, version)),
            Err(StoreError::Conflict { partition: 1 }) => {}
            Err(e) => panic!("writer {i}: expected success or conflict, got {e:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one concurrent writer must win: {winners:?}"
    );
    let (winner, version) = winners.remove(0);
    let stored = b.get(1).await.expect("get").expect("record");
    assert_eq!(stored.checkpoint.owner, format!("writer-{winner}"));
    assert_eq!(stored.version, version);

    // Round trip of every field, with and without the optional ones.
    let full = Progress {
        next_offset: i64::MAX - 1,
        replay_from: 0,
        replay_max_event_time: Some(-5),
        watermark: Some(i64::MIN + 1),
        emitted_through: Some(1_700_000_060_000),
        ..Default::default()
    };
    let sparse = Progress {
        next_offset: 42,
        replay_from: 40,
        replay_max_event_time: None,
        watermark: None,
        emitted_through: None,
        ..Default::default()
    };
    for (partition, progress) in [(2, None), (3, Some(full)), (4, Some(sparse))] {
        let mut cp = record(
            partition,
            i64::MAX,
            "pod/weir-worker-2 ünïcode \"quoted\"",
            progress,
        );
        cp.written_at_ms = 1_234;
        cp.topic = "topic.with-dots_and_underscores".to_owned();
        a.put(&cp, None).await.expect("put for round trip");
        let back = b.get(partition).await.expect("get").expect("record");
        assert_eq!(back.checkpoint, cp, "round trip of partition {partition}");
    }
}

fn assert_fenced(
    result: Result<impl std::fmt::Debug, CheckpointError>,
    newer_epoch: i64,
    newer_owner: &str,
) {
    match result {
        Err(CheckpointError::Fenced {
            newer_epoch: e,
            newer_owner: o,
            ..
        }) => {
            assert_eq!((e, o.as_str()), (newer_epoch, newer_owner));
        }
        other => panic!("expected Fenced by epoch {newer_epoch} ({newer_owner}), got {other:?}"),
    }
}

/// The fencing scenario of DESIGN.md invariant 2, on partition 7 (and 8 for the race).
pub async fn fencing(a_store: Arc<dyn CheckpointStore>, b_store: Arc<dyn CheckpointStore>) {
    // A (epoch 1) acquires a fresh partition and commits.
    let (mut a, resume) = PartitionLease::acquire(a_store.clone(), TOPIC, 7, 1, "worker-a")
        .await
        .expect("A acquires");
    assert_eq!(resume, None);
    assert_eq!((a.partition(), a.epoch()), (7, 1));
    let written = a.commit(progress(100)).await.expect("A commits");
    assert!(written > 0);
    a.commit(progress(150)).await.expect("A commits again");

    // B (epoch 2) acquires and resumes from A's progress.
    let (mut b, resume) = PartitionLease::acquire(b_store.clone(), TOPIC, 7, 2, "worker-b")
        .await
        .expect("B acquires");
    assert_eq!(resume, Some(progress(150)));

    // A's next commit is refused, naming B.
    let refused = a.commit(progress(200)).await;
    assert!(refused.as_ref().is_err_and(|e| e.is_fenced()));
    assert_fenced(refused, 2, "worker-b");

    // B keeps committing; A's refused progress never landed.
    b.commit(progress(160)).await.expect("B commits");
    b.commit(progress(170)).await.expect("B commits again");
    let stored = a_store.get(7).await.expect("get").expect("record");
    assert_eq!(
        (stored.checkpoint.epoch, stored.checkpoint.owner.as_str()),
        (2, "worker-b")
    );
    assert_eq!(stored.checkpoint.progress, Some(progress(170)));

    // An epoch-1 owner acquiring now is refused.
    assert_fenced(
        PartitionLease::acquire(a_store.clone(), TOPIC, 7, 1, "worker-a").await,
        2,
        "worker-b",
    );
    // So is another owner claiming B's own epoch.
    assert_fenced(
        PartitionLease::acquire(a_store.clone(), TOPIC, 7, 2, "worker-c").await,
        2,
        "worker-b",
    );
    // B restarting (same epoch, same owner) gets its partition back where it left it.
    let (mut b2, resume) = PartitionLease::acquire(b_store.clone(), TOPIC, 7, 2, "worker-b")
        .await
        .expect("B re-acquires");
    assert_eq!(resume, Some(progress(170)));
    b2.commit(progress(180))
        .await
        .expect("B after restart commits");

    // The race: A (epoch 1) holds partition 8 and has not committed since B acquired it.
    let (mut a, _) = PartitionLease::acquire(a_store.clone(), TOPIC, 8, 1, "worker-a")
        .await
        .expect("A acquires 8");
    a.commit(progress(10)).await.expect("A commits on 8");
    let (mut b, resume) = PartitionLease::acquire(b_store.clone(), TOPIC, 8, 2, "worker-b")
        .await
        .expect("B acquires 8");
    assert_eq!(resume, Some(progress(10)));
    assert_fenced(a.commit(progress(20)).await, 2, "worker-b");
    b.commit(progress(11))
        .await
        .expect("B unaffected by A's attempt");
    let stored = b_store.get(8).await.expect("get").expect("record");
    assert_eq!(stored.checkpoint.progress, Some(progress(11)));
    assert_eq!(stored.checkpoint.epoch, 2);
}

/// Resuming from the previous version's location (docs/checkpoints.md, "Migration"):
/// `current` and `legacy` are two empty storages, `access` what workers may do at the legacy
/// one. A record written at the legacy location is resumed from exactly, the next writes go to
/// the current location only, a worker of the previous version is fenced (with
/// [`LegacyAccess::Claim`]; with [`LegacyAccess::Read`] it cannot write there at all), and a
/// record of another topic at the legacy location is not taken.
pub async fn migration(
    current: Arc<dyn CheckpointStore>,
    legacy: Arc<dyn CheckpointStore>,
    access: LegacyAccess,
) {
    let migrating = || -> Arc<dyn CheckpointStore> {
        Arc::new(MigratingStore::new(
            current.clone(),
            legacy.clone(),
            TOPIC,
            access,
        ))
    };
    // The previous version: an epoch-3 owner committed progress 150 of partition 5 at the
    // legacy location, and is still running.
    let (mut old, _) = PartitionLease::acquire(legacy.clone(), TOPIC, 5, 3, "worker-old")
        .await
        .expect("the old worker acquires");
    old.commit(progress(150))
        .await
        .expect("the old worker commits");
    // At the legacy location of partition 6, another stream's record (the old names of the
    // merge stage of `x` are those of stage 1 of `x-merge`).
    let foreign = PartitionCheckpoint {
        topic: "orders".to_owned(),
        ..record(6, 9, "x-merge-worker-0", Some(progress(70)))
    };
    legacy.put(&foreign, None).await.expect("a foreign record");

    // The upgraded worker (epoch 4) resumes exactly where the old one was: no record counted
    // twice (it would resume earlier), none lost (later).
    let (mut new, resume) = PartitionLease::acquire(migrating(), TOPIC, 5, 4, "worker-new")
        .await
        .expect("the upgraded worker acquires");
    assert_eq!(resume, Some(progress(150)));
    let moved = current.get(5).await.expect("get").expect("moved");
    assert_eq!(
        (moved.checkpoint.epoch, moved.checkpoint.owner.as_str()),
        (4, "worker-new")
    );
    assert_eq!(moved.checkpoint.progress, Some(progress(150)));
    // Its next writes go to the current location only.
    new.commit(progress(160)).await.expect("commits");
    new.commit(progress(170)).await.expect("commits again");
    let at_current = current.get(5).await.expect("get").expect("record");
    assert_eq!(at_current.checkpoint.progress, Some(progress(170)));
    let at_legacy = legacy.get(5).await.expect("get").expect("record");
    assert_eq!(at_legacy.checkpoint.progress, Some(progress(150)));
    match access {
        LegacyAccess::Claim => {
            // The legacy record was claimed at epoch 4: the old worker's next write is refused
            // and names the new owner, and its progress never lands.
            assert_eq!(at_legacy.checkpoint.epoch, 4);
            assert_fenced(old.commit(progress(200)).await, 4, "worker-new");
            let at_legacy = legacy.get(5).await.expect("get").expect("record");
            assert_eq!(at_legacy.checkpoint.progress, Some(progress(150)));
        }
        LegacyAccess::Read => {
            // Untouched: the workers' Role makes the legacy names read-only.
            assert_eq!(at_legacy.checkpoint.epoch, 3);
        }
    }
    // A restart (a new process) resumes from the current location, not the legacy record.
    let (mut again, resume) = PartitionLease::acquire(migrating(), TOPIC, 5, 4, "worker-new")
        .await
        .expect("re-acquires");
    assert_eq!(resume, Some(progress(170)));
    again.commit(progress(180)).await.expect("commits");
    // A newer owner fences through the current location as ever.
    let (_, resume) = PartitionLease::acquire(migrating(), TOPIC, 5, 5, "worker-newer")
        .await
        .expect("a newer owner acquires");
    assert_eq!(resume, Some(progress(180)));
    assert_fenced(again.commit(progress(190)).await, 5, "worker-newer");

    // Another stream's record is not taken: partition 6 starts afresh, the record untouched.
    let (mut fresh, resume) = PartitionLease::acquire(migrating(), TOPIC, 6, 4, "worker-new")
        .await
        .expect("acquires 6");
    assert_eq!(resume, None);
    fresh.commit(progress(1)).await.expect("commits on 6");
    let kept = legacy.get(6).await.expect("get").expect("kept");
    assert_eq!(kept.checkpoint, foreign);
    // Nothing at either location: a fresh start, written at the current location only.
    let (mut fresh, resume) = PartitionLease::acquire(migrating(), TOPIC, 7, 4, "worker-new")
        .await
        .expect("acquires 7");
    assert_eq!(resume, None);
    fresh.commit(progress(2)).await.expect("commits on 7");
    assert!(legacy.get(7).await.expect("get").is_none());
    assert!(current.get(7).await.expect("get").is_some());
}
