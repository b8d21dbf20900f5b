//! Checkpoints in object storage (`spec.checkpoint.store.objectStore`), as the operator sees
//! them: the observe step reads the records of the topic's partitions (the largest epoch, next
//! offsets, write times) through [`read`], and when a job with `deleteOnJobDeletion` is deleted
//! the finalizer's cleanup deletes them ([`cleanup`]). Where they are and
//! what a record is are the workers' ([`weir_objstore::ObjectStoreConfig::for_job`],
//! [`weir_crds::checkpoint`]). Records the previous version wrote at `<url>/<job>` are read
//! where the current location has none and deleted with the job, both only when they are of the
//! job's topic ([`Locations`], docs/checkpoints.md "Migration"). The credentials are the keys of the Secret the spec names: the
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

/// Where one stage of a job keeps its records: the current location, and the previous
/// version's (without the namespace), whose records count only when they are of the stage's
/// topic.
#[derive(Clone, Debug)]
pub struct Locations {
    /// `<url>/<namespace>/<job>` (or its `merge/`).
    pub current: ObjectStoreConfig,
    /// `<url>/<job>` (or its `merge/`).
    pub legacy: ObjectStoreConfig,
}

impl Locations {
    /// The merge stage's: [`weir_crds::checkpoint::MERGE_LOCATION`] under each.
    pub fn merge(&self) -> Locations {
        Locations {
            current: self.current.merge(),
            legacy: self.legacy.merge(),
        }
    }
}

/// How to reach `job`'s checkpoints: the workers' locations, with the credentials Secret's keys
/// as settings; [`Resolved::MissingSecret`] when the Secret does not exist (the user must create
/// it).
pub async fn config(
    client: &Client,
    job: &StreamJob,
    store: &ObjectStore,
) -> Result<Resolved<Locations>, Error> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let with = |settings: &ObjectStoreConfig| Locations {
        current: settings.clone(),
        legacy: ObjectStoreConfig {
            url: ObjectStoreConfig::legacy_for_job(store, &name).url,
            ..settings.clone()
        },
    };
    let mut settings = ObjectStoreConfig::for_job(store, Some(&ns), &name);
    let Some(creds) = &store.credentials else {
        settings.from_env = true;
        return Ok(Resolved::Ready(with(&settings)));
    };
    let values = secret_values(
        client,
        &ns,
        &creds.secret_name,
        "spec.checkpoint.store.objectStore.credentials",
    )
    .await?;
    Ok(values.map(|options| {
        with(&ObjectStoreConfig {
            options,
            ..settings
        })
    }))
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

/// The record of `partition` as the workers resume from it: the current location's, else the
/// legacy one's if it is of `topic` (a worker takes no other).
async fn read_either(
    current: &Location,
    legacy: &Location,
    topics: &[&str],
    partition: i32,
) -> Result<Option<PartitionCheckpoint>, String> {
    if let Some(cp) = read_one(current, partition).await? {
        return Ok(Some(cp));
    }
    Ok(read_one(legacy, partition)
        .await?
        .filter(|cp| topics.contains(&cp.topic.as_str())))
}

/// The records of partitions `0..partitions` (those that exist) of a stage reading one of
/// `topics` (a legacy record counts only if it is of one of them).
/// Exactly the partitions the workers of the next assignment will write, and the records they
/// will resume from (a legacy one included), so the largest epoch among them is the one the
/// assignment must start above. A `String` error says what failed, for a person.
pub async fn read(
    locations: &Locations,
    topics: &[&str],
    partitions: i32,
) -> Result<Vec<PartitionCheckpoint>, String> {
    let (current, legacy) = (open(&locations.current)?, open(&locations.legacy)?);
    let (current, legacy) = (&current, &legacy);
    futures::stream::iter(0..partitions.max(0))
        .map(|p| read_either(current, legacy, topics, p))
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
/// (`partition-<p>.json`) that is one, and, when `only_topics` is given, of one of them (a
/// legacy location may hold another job's records). Listing rather than counting partitions:
/// the topic may be gone, or have been another one. Idempotent: nothing to delete is a success.
pub async fn delete(
    config: &ObjectStoreConfig,
    only_topics: Option<&[&str]>,
) -> Result<Deleted, String> {
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
            match parse(p, &bytes) {
                Err(e) => {
                    warn!(object = %shown, store = %loc.description, error = %e,
                        "not a checkpoint record: left in place");
                    return Ok((false, shown));
                }
                Ok(cp) if only_topics.is_some_and(|t| !t.contains(&cp.topic.as_str())) => {
                    info!(object = %shown, store = %loc.description, topic = %cp.topic,
                        "a record of another topic at the legacy location: left in place");
                    return Ok((false, shown));
                }
                Ok(_) => {}
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
/// and those of its merge stage (under [`weir_crds::checkpoint::MERGE_LOCATION`]) if any; at
/// the previous version's location, only the records of the job's source topic (stage 1) and
/// of its repartition topic (the merge stage), since a job of the same name in another
/// namespace shared that location.
pub async fn cleanup(client: &Client, job: &StreamJob, store: &ObjectStore) -> Result<(), Error> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let failed = |message: String| Error::DeleteObjectStoreCheckpoints {
        job: name.clone(),
        message,
    };
    let source = config(client, job, store).await?.ready().map_err(&failed)?;
    let merge = source.merge();
    let topic = &job.spec.source.kafka.topic.0;
    // The merge stage's legacy records name the job's repartition topic by either of its names
    // (before and since `weir_crds::topics`).
    let ns = job.metadata.namespace.as_deref();
    let repartition = weir_crds::topics::repartition_topic_names(ns, &name);
    let repartition = repartition.each_ref().map(String::as_str);
    delete(&source.current, None).await.map_err(&failed)?;
    delete(&merge.current, None).await.map_err(&failed)?;
    delete(&source.legacy, Some(&[topic.as_str()]))
        .await
        .map_err(&failed)?;
    delete(&merge.legacy, Some(&repartition))
        .await
        .map_err(failed)?;
    Ok(())
}
