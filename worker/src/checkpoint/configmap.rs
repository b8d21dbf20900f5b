//! A store in Kubernetes ConfigMaps: one ConfigMap `<prefix>-<p>` per partition, the record
//! under the data key `checkpoint.json`, the version is the ConfigMap's `resourceVersion`.
//!
//! Conditional writes are the API server's optimistic concurrency: a PUT carrying
//! `metadata.resourceVersion` is refused with 409 if the object changed, a POST of an existing
//! name is refused with 409. The operator may pre-create the ConfigMaps empty (so that workers
//! need no `create` permission); an empty one counts as "nothing stored yet".

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use super::{decode, encode, CheckpointStore, PartitionCheckpoint, StoreError, Version, Versioned};

/// The data key holding the record (shared with the operator, which reads it).
pub const CHECKPOINT_KEY: &str = weir_crds::checkpoint::CONFIG_MAP_KEY;
/// The label every checkpoint ConfigMap carries (the operator uses the same value).
pub const MANAGED_BY_LABEL: &str = weir_crds::names::LABEL_MANAGED_BY;
/// Its value.
pub const MANAGED_BY_VALUE: &str = weir_crds::names::MANAGED_BY_CHECKPOINT;

/// The field manager of every write, so that `managedFields` (and `kubectl get -o yaml
/// --show-managed-fields`) says who wrote the checkpoint.
fn write_params() -> PostParams {
    PostParams {
        field_manager: Some(weir_crds::names::WORKER_FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    }
}

/// Checkpoints as ConfigMaps in one namespace; see the module doc.
pub struct ConfigMapStore {
    api: Api<ConfigMap>,
    namespace: String,
    prefix: String,
    /// Metadata of each partition's ConfigMap as last seen, so that a replace keeps what the
    /// operator put there (owner references, labels, annotations) instead of wiping it.
    seen: Mutex<HashMap<i32, ObjectMeta>>,
}

impl std::fmt::Debug for ConfigMapStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn api_error(action: &'static str, partition: i32, e: kube::Error) -> StoreError {
    match &e {
        kube::Error::Api(status) if status.is_conflict() || status.is_already_exists() => {
            StoreError::Conflict { partition }
        }
        _ => StoreError::backend(action, partition, e),
    }
}

impl ConfigMapStore {
    /// ConfigMaps named `<prefix>-<partition>` in `namespace`.
    pub fn new(client: Client, namespace: &str, prefix: &str) -> Self {
        ConfigMapStore {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            prefix: prefix.to_owned(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The ConfigMap name of `partition`.
    pub fn name(&self, partition: i32) -> String {
        format!("{}-{partition}", self.prefix)
    }

    fn remember(&self, partition: i32, meta: &ObjectMeta) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert(partition, meta.clone());
    }

    fn remembered(&self, partition: i32) -> Option<ObjectMeta> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&partition).cloned()
    }

    async fn fetch(&self, partition: i32) -> Result<Option<ConfigMap>, StoreError> {
        let cm = self
            .api
            .get_opt(&self.name(partition))
            .await
            .map_err(|e| api_error("read", partition, e))?;
        if let Some(cm) = &cm {
            self.remember(partition, &cm.metadata);
        }
        Ok(cm)
    }

    /// The object to write: `meta` (kept from what was read) with our label and data.
    fn object(&self, partition: i32, mut meta: ObjectMeta, json: String) -> ConfigMap {
        meta.name = Some(self.name(partition));
        meta.namespace = Some(self.namespace.clone());
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned());
        ConfigMap {
            metadata: meta,
            data: Some(BTreeMap::from([(CHECKPOINT_KEY.to_owned(), json)])),
            ..ConfigMap::default()
        }
    }

    async fn replace(
        &self,
        partition: i32,
        mut meta: ObjectMeta,
        resource_version: String,
        json: String,
    ) -> Result<Version, StoreError> {
        meta.resource_version = Some(resource_version);
        let cm = self.object(partition, meta, json);
        let written = self
            .api
            .replace(&self.name(partition), &write_params(), &cm)
            .await
            .map_err(|e| api_error("write", partition, e))?;
        self.written(partition, written)
    }

    fn written(&self, partition: i32, cm: ConfigMap) -> Result<Version, StoreError> {
        self.remember(partition, &cm.metadata);
        cm.metadata.resource_version.map(Version).ok_or_else(|| {
            StoreError::backend(
                "write",
                partition,
                "the API server answered without a resourceVersion",
            )
        })
    }
}

fn has_record(cm: &ConfigMap) -> bool {
    cm.data
        .as_ref()
        .is_some_and(|d| d.contains_key(CHECKPOINT_KEY))
}

#[async_trait::async_trait]
impl CheckpointStore for ConfigMapStore {
    async fn get(&self, partition: i32) -> Result<Option<Versioned>, StoreError> {
        let Some(cm) = self.fetch(partition).await? else {
            return Ok(None);
        };
        let Some(json) = cm.data.as_ref().and_then(|d| d.get(CHECKPOINT_KEY)) else {
            // Pre-created by the operator, nothing written yet.
            return Ok(None);
        };
        let checkpoint = decode(partition, json.as_bytes())?;
        let version = cm
            .metadata
            .resource_version
            .clone()
            .map(Version)
            .ok_or_else(|| {
                StoreError::backend("read", partition, "ConfigMap without a resourceVersion")
            })?;
        Ok(Some(Versioned {
            checkpoint,
            version,
        }))
    }

    async fn put(
        &self,
        cp: &PartitionCheckpoint,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError> {
        let partition = cp.partition;
        let json = String::from_utf8(encode(cp)?)
            .map_err(|e| StoreError::backend("encode", partition, e))?;
        match expected {
            Some(expected) => {
                let meta = self.remembered(partition).unwrap_or_default();
                self.replace(partition, meta, expected.0.clone(), json)
                    .await
            }
            None => {
                // Look first: a ConfigMap the operator pre-created empty is filled with a
                // conditional replace, which needs no `create` permission.
                match self.fetch(partition).await? {
                    Some(cm) if has_record(&cm) => Err(StoreError::Conflict { partition }),
                    Some(cm) => {
                        let rv = cm.metadata.resource_version.clone().ok_or_else(|| {
                            StoreError::backend(
                                "read",
                                partition,
                                "ConfigMap without a resourceVersion",
                            )
                        })?;
                        self.replace(partition, cm.metadata, rv, json).await
                    }
                    None => {
                        let cm = self.object(partition, ObjectMeta::default(), json);
                        let created = self
                            .api
                            .create(&write_params(), &cm)
                            .await
                            .map_err(|e| api_error("create", partition, e))?;
                        self.written(partition, created)
                    }
                }
            }
        }
    }

    fn describe(&self) -> String {
        format!("configmap {}/{}-*", self.namespace, self.prefix)
    }
}
