//! A store in object storage (S3 and S3-compatible, GCS, Azure) through the `object_store`
//! crate: one object `<prefix>/partition-<p>.json` per partition, written with the backend's
//! conditional put (`If-None-Match: *` to create, `If-Match: <etag>` to update).

use std::sync::Arc;

use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};
// Opening the bucket is shared with the operator, which reads and deletes these records.
pub use weir_objstore::{ObjectStoreConfig, OpenObjectStoreError};

use super::{decode, encode, CheckpointStore, PartitionCheckpoint, StoreError, Version, Versioned};

/// Checkpoints as objects; see the module doc.
#[derive(Clone, Debug)]
pub struct ObjectStoreStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    description: String,
}

impl ObjectStoreStore {
    /// Opens the bucket named by `config.url` ([`weir_objstore::open`]: `file://` is refused,
    /// since object_store's local filesystem does not implement conditional updates and so
    /// could not fence; the dir store is the local equivalent).
    pub fn new(config: &ObjectStoreConfig) -> Result<Self, OpenObjectStoreError> {
        let location = weir_objstore::open(config)?;
        Ok(ObjectStoreStore {
            store: location.store,
            prefix: location.prefix,
            description: location.description,
        })
    }

    /// A store over any `object_store` backend (for tests, or backends opened elsewhere).
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: Path, description: String) -> Self {
        ObjectStoreStore {
            store,
            prefix,
            description,
        }
    }

    fn key(&self, partition: i32) -> Path {
        self.prefix
            .clone()
            .join(weir_crds::checkpoint::object_name(partition))
    }
}

/// An object's version as one opaque string: the e-tag and the backend's version id.
fn to_version(
    e_tag: Option<String>,
    version: Option<String>,
) -> Result<Version, serde_json::Error> {
    serde_json::to_string(&(e_tag, version)).map(Version)
}

fn from_version(version: &Version) -> Option<UpdateVersion> {
    let (e_tag, version): (Option<String>, Option<String>) =
        serde_json::from_str(&version.0).ok()?;
    Some(UpdateVersion { e_tag, version })
}

#[async_trait::async_trait]
impl CheckpointStore for ObjectStoreStore {
    async fn get(&self, partition: i32) -> Result<Option<Versioned>, StoreError> {
        let result = match self
            .store
            .get_opts(&self.key(partition), GetOptions::default())
            .await
        {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(StoreError::backend("read", partition, e)),
        };
        let meta = result.meta.clone();
        let bytes = result
            .bytes()
            .await
            .map_err(|e| StoreError::backend("read", partition, e))?;
        let version = to_version(meta.e_tag, meta.version)
            .map_err(|e| StoreError::backend("read", partition, e))?;
        Ok(Some(Versioned {
            checkpoint: decode(partition, &bytes)?,
            version,
        }))
    }

    async fn put(
        &self,
        cp: &PartitionCheckpoint,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError> {
        let partition = cp.partition;
        let mode = match expected {
            None => PutMode::Create,
            Some(expected) => match from_version(expected) {
                Some(update) => PutMode::Update(update),
                // Not a version this store handed out, so it cannot be the stored one.
                None => return Err(StoreError::Conflict { partition }),
            },
        };
        let payload = PutPayload::from(encode(cp)?);
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let key = self.key(partition);
        let result = match self.store.put_opts(&key, payload, options).await {
            Ok(result) => result,
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => return Err(StoreError::Conflict { partition }),
            Err(e) => return Err(StoreError::backend("write", partition, e)),
        };
        if result.e_tag.is_none() && result.version.is_none() {
            // Asking for it with a HEAD could return a later writer's e-tag, and writing
            // over that one would defeat fencing: refuse a backend that does not say.
            return Err(StoreError::backend(
                "write",
                partition,
                "the object store answered the write without an e-tag or version",
            ));
        }
        let (e_tag, version) = (result.e_tag, result.version);
        to_version(e_tag, version).map_err(|e| StoreError::backend("write", partition, e))
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}
