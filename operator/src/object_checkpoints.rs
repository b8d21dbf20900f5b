//! Checkpoints in object storage (`spec.checkpoint.store.objectStore`), as the operator sees
//! them: the observe step reads the records of the topic's partitions (the largest epoch, next
//! offsets, write times) through [`read`], and when a job with `deleteOnJobDeletion` is deleted
//! the finalizer's cleanup deletes them ([`cleanup`]). Where they are and
//! what a record is are the workers' ([`weir_objstore::ObjectStoreConfig::for_job`],
//! [`weir_crds::checkpoint`]). The credentials are the keys of the Secret the spec names: the
//! workers get them as environment variables, the operator reads the Secret through the API
//! (`get` on it, which it holds anyway) and never logs the values. Without a Secret, the
//! operator's own identity (its environment, IRSA, workload identity) is used, as the workers
//! use theirs.

use futures::{StreamExt, TryStreamExt};
use kube::Client;
use tracing::{info, warn};
use weir_crds::checkpoint::{parse, partition_of_object, PartitionCheckpoint};
use weir_crds::{ObjectStore, StreamJob};
use weir_objstore::object_store::{self, ObjectStoreExt};
use weir_objstore::{Location, ObjectStoreConfig};

use crate::error::Error;
use crate::secrets::{secret_values, Resolved};

/// Requests to the store in flight at once, per job.
const PARALLEL_REQUESTS: usize = 8;

/// How to reach `job`'s checkpoints: the workers' location, with the credentials Secret's keys
/// as settings; [`Resolved::MissingSecret`] when the Secret does not exist (the user must create
/// it).
pub async fn config(
    client: &Client,
    job: &StreamJob,
    store: &ObjectStore,
) -> Result<Resolved<ObjectStoreConfig>, Error> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let mut config = ObjectStoreConfig::for_job(store, &name);
    let Some(creds) = &store.credentials else {
        config.from_env = true;
        return Ok(Resolved::Ready(config));
    };
    let values = secret_values(
        client,
        &ns,
        &creds.secret_name,
        "spec.checkpoint.store.objectStore.credentials",
    )
    .await?;
    Ok(values.map(|options| ObjectStoreConfig { options, ..config }))
}

/// Where the merge stage of the job at `config` keeps its records: under
/// [`weir_crds::checkpoint::MERGE_LOCATION`].
pub fn merge_config(config: &ObjectStoreConfig) -> ObjectStoreConfig {
    ObjectStoreConfig {
        url: format!("{}/{}", config.url, weir_crds::checkpoint::MERGE_LOCATION),
        ..config.clone()
    }
}

fn open(config: &ObjectStoreConfig) -> Result<Location, String> {
    weir_objstore::open(config).map_err(|e| e.to_string())
}

/// The record of `partition`, if there is one that parses. An unreadable record is skipped
/// with a warning (the workers report it too), as the ConfigMap store's are.
async fn read_one(loc: &Location, partition: i32) -> Result<Option<PartitionCheckpoint>, String> {
    let path = loc.checkpoint(partition);
    let bytes = match loc.store.get(&path).await {
        Ok(got) => got.bytes().await,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => Err(e),
    }
    .map_err(|e| format!("reading {} of {}: {e}", path, loc.description))?;
    match parse(partition, &bytes) {
        Ok(cp) => Ok(Some(cp)),
        Err(e) => {
            warn!(object = %path, store = %loc.description, error = %e, "unreadable checkpoint");
            Ok(None)
        }
    }
}

/// The records of partitions `0..partitions` (those that exist). Exactly the partitions the
/// workers of the next assignment will write, so the largest epoch among them is the one the
/// assignment must start above. A `String` error says what failed, for a person.
pub async fn read(
    config: &ObjectStoreConfig,
    partitions: i32,
) -> Result<Vec<PartitionCheckpoint>, String> {
    let loc = open(config)?;
    let loc = &loc;
    futures::stream::iter(0..partitions.max(0))
        .map(|p| read_one(loc, p))
        .buffer_unordered(PARALLEL_REQUESTS)
        .try_filter_map(|cp| async move { Ok(cp) })
        .try_collect()
        .await
}

/// What a cleanup did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Records deleted.
    pub deleted: usize,
    /// Objects named like records that are not records of that partition (unreadable, or
    /// someone else's): left in place.
    pub kept: Vec<String>,
}

/// Deletes the job's records: every object directly under its location named like a record
/// (`partition-<p>.json`) that is one. Listing rather than counting partitions: the topic may
/// be gone, or have been another one. Idempotent: nothing to delete is a success.
pub async fn delete(config: &ObjectStoreConfig) -> Result<Deleted, String> {
    let loc = open(config)?;
    let loc = &loc;
    let listed: Vec<object_store::ObjectMeta> = loc
        .store
        .list(Some(&loc.prefix))
        .try_collect()
        .await
        .map_err(|e| format!("listing {}: {e}", loc.description))?;
    let candidates: Vec<(i32, object_store::path::Path)> = listed
        .into_iter()
        .filter_map(|o| {
            // Directly under the prefix: one more path segment than it.
            let rest: Vec<_> = o.location.prefix_match(&loc.prefix)?.collect();
            let [name] = rest.as_slice() else {
                return None;
            };
            Some((partition_of_object(name.as_ref())?, o.location))
        })
        .collect();
    // Ok(true): deleted (or gone already); Ok(false): not a record, kept.
    let outcomes: Vec<Result<(bool, String), String>> = futures::stream::iter(candidates)
        .map(|(p, path)| async move {
            let shown = path.to_string();
            let bytes = match loc.store.get(&path).await {
                Ok(got) => got.bytes().await,
                Err(object_store::Error::NotFound { .. }) => return Ok((true, shown)),
                Err(e) => Err(e),
            }
            .map_err(|e| format!("reading {shown} of {}: {e}", loc.description))?;
            if let Err(e) = parse(p, &bytes) {
                warn!(object = %shown, store = %loc.description, error = %e,
                    "not a checkpoint record: left in place");
                return Ok((false, shown));
            }
            match loc.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok((true, shown)),
                Err(e) => Err(format!("deleting {shown} of {}: {e}", loc.description)),
            }
        })
        .buffer_unordered(PARALLEL_REQUESTS)
        .collect()
        .await;
    let mut done = Deleted::default();
    for outcome in outcomes {
        match outcome? {
            (true, _) => done.deleted += 1,
            (false, kept) => done.kept.push(kept),
        }
    }
    done.kept.sort();
    info!(store = %loc.description, deleted = done.deleted, kept = ?done.kept,
        "deleted the object-store checkpoints");
    Ok(done)
}

/// Cleanup of a deleted job with `deleteOnJobDeletion` and an object store: deletes its records,
/// and those of its merge stage (under [`weir_crds::checkpoint::MERGE_LOCATION`]) if any.
pub async fn cleanup(client: &Client, job: &StreamJob, store: &ObjectStore) -> Result<(), Error> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let failed = |message: String| Error::DeleteObjectStoreCheckpoints {
        job: name.clone(),
        message,
    };
    let config = config(client, job, store).await?.ready().map_err(&failed)?;
    let merge = merge_config(&config);
    delete(&config).await.map_err(&failed)?;
    delete(&merge).await.map_err(failed)?;
    Ok(())
}
