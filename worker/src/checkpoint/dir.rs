//! A store in a local directory, shared by the OS processes of local mode and kill tests.
//!
//! Layout: `partition-<p>.json` holds `{"version": n, "checkpoint": {...}}`; `partition-<p>.lock`
//! is only ever locked. A write takes an exclusive lock on the lock file (std's `File::lock`,
//! which the kernel releases when a killed process dies), checks the stored version, writes a
//! temporary file, fsyncs it, renames it over the record and fsyncs the directory. Readers
//! take no lock: a rename is atomic, so they see the old record or the new one, never a torn
//! one.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{decode, CheckpointStore, PartitionCheckpoint, StoreError, Version, Versioned};

/// Checkpoints as files in one directory (one stream per directory).
#[derive(Clone, Debug)]
pub struct DirStore {
    dir: PathBuf,
}

/// The file: the record plus the counter that is its version.
#[derive(Serialize, Deserialize)]
struct Envelope<C> {
    version: u64,
    checkpoint: C,
}

impl DirStore {
    /// A store in `dir`, created on the first write if missing.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirStore { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn record_path(&self, partition: i32) -> PathBuf {
        self.dir.join(format!("partition-{partition}.json"))
    }
}

/// Reads the record file; `None` if there is none yet.
fn read_record(
    path: &Path,
    partition: i32,
) -> Result<Option<(u64, PartitionCheckpoint)>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::backend("read", partition, e)),
    };
    let envelope: Envelope<serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            partition,
            message: format!("{}: {e}", path.display()),
        })?;
    let raw = serde_json::to_vec(&envelope.checkpoint)
        .map_err(|e| StoreError::backend("read", partition, e))?;
    Ok(Some((envelope.version, decode(partition, &raw)?)))
}

fn put_blocking(
    dir: &Path,
    cp: &PartitionCheckpoint,
    expected: Option<&Version>,
) -> Result<Version, StoreError> {
    let partition = cp.partition;
    let io =
        |action: &'static str| move |e: std::io::Error| StoreError::backend(action, partition, e);
    fs::create_dir_all(dir).map_err(io("create the directory for"))?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("partition-{partition}.lock")))
        .map_err(io("open the lock file of"))?;
    // Held until `lock` is dropped at the end of this function, or the process dies.
    lock.lock().map_err(io("lock"))?;

    let path = dir.join(format!("partition-{partition}.json"));
    let current = read_record(&path, partition)?.map(|(version, _)| version);
    let matches = match (current, expected) {
        (None, None) => true,
        (Some(current), Some(expected)) => expected.0 == current.to_string(),
        _ => false,
    };
    if !matches {
        return Err(StoreError::Conflict { partition });
    }
    let next = current.unwrap_or(0) + 1;
    let body = serde_json::to_vec_pretty(&Envelope {
        version: next,
        checkpoint: cp,
    })
    .map_err(|e| StoreError::backend("encode", partition, e))?;

    // Under the lock only one writer uses the temporary name; a file left by a killed writer
    // is simply truncated.
    let tmp = dir.join(format!("partition-{partition}.json.tmp"));
    let mut file = File::create(&tmp).map_err(io("create the temporary file of"))?;
    file.write_all(&body).map_err(io("write"))?;
    file.sync_all().map_err(io("fsync"))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io("rename the record of"))?;
    // Make the rename itself durable.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync the directory of"))?;
    drop(lock);
    Ok(Version(next.to_string()))
}

#[async_trait::async_trait]
impl CheckpointStore for DirStore {
    async fn get(&self, partition: i32) -> Result<Option<Versioned>, StoreError> {
        let path = self.record_path(partition);
        let record = tokio::task::spawn_blocking(move || read_record(&path, partition))
            .await
            .map_err(|e| StoreError::backend("read", partition, e))??;
        Ok(record.map(|(version, checkpoint)| Versioned {
            checkpoint,
            version: Version(version.to_string()),
        }))
    }

    async fn put(
        &self,
        cp: &PartitionCheckpoint,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError> {
        let dir = self.dir.clone();
        let cp = cp.clone();
        let expected = expected.cloned();
        let partition = cp.partition;
        tokio::task::spawn_blocking(move || put_blocking(&dir, &cp, expected.as_ref()))
            .await
            .map_err(|e| StoreError::backend("write", partition, e))?
    }

    fn describe(&self) -> String {
        format!("dir {}", self.dir.display())
    }
}
