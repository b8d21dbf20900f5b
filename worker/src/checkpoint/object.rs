//! A store in object storage (S3 and S3-compatible, GCS, Azure) through the `object_store`
//! crate: one object `<prefix>/partition-<p>.json` per partition, written with the backend's
//! conditional put (`If-None-Match: *` to create, `If-Match: <etag>` to update).

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::{decode, encode, CheckpointStore, PartitionCheckpoint, StoreError, Version, Versioned};

/// Where and how to reach the bucket. Credentials not given here come from the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `GOOGLE_*`, `AZURE_*`), which is how the
/// operator mounts them from a Secret. They are never printed: `Debug` redacts them.
#[derive(Clone, Default)]
pub struct ObjectStoreConfig {
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`.
    pub url: String,
    /// An S3-compatible endpoint (MinIO, SeaweedFS, ...), e.g. `http://minio:9000`.
    pub endpoint: Option<String>,
    /// The region (S3).
    pub region: Option<String>,
    /// Allow plain http to the endpoint; implied by an `http://` endpoint.
    pub allow_http: bool,
    /// S3 access key, overriding the environment (tests use it).
    pub access_key_id: Option<String>,
    /// S3 secret key, overriding the environment (tests use it).
    pub secret_access_key: Option<String>,
}

impl std::fmt::Debug for ObjectStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("ObjectStoreConfig")
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &redacted(&self.access_key_id))
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .finish()
    }
}

/// Why an object store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenObjectStoreError {
    /// The URL is not one this store can use.
    #[error("checkpoint URL {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// The client could not be built (missing bucket, bad option, ...).
    #[error("checkpoint URL {url:?}: {source}")]
    Build {
        /// The URL as given.
        url: String,
        /// The client's error.
        #[source]
        source: object_store::Error,
    },
}

/// Checkpoints as objects; see the module doc.
#[derive(Clone, Debug)]
pub struct ObjectStoreStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    description: String,
}

impl ObjectStoreStore {
    /// Opens the bucket named by `config.url`. `file://` is refused: object_store's local
    /// filesystem does not implement conditional updates, so it could not fence; the dir
    /// store is the local equivalent.
    pub fn new(config: &ObjectStoreConfig) -> Result<Self, OpenObjectStoreError> {
        let shown = redact(&config.url);
        let url_error = |reason: String| OpenObjectStoreError::Url {
            url: shown.clone(),
            reason,
        };
        let build_error = |source| OpenObjectStoreError::Build {
            url: shown.clone(),
            source,
        };
        let url = url::Url::parse(&config.url).map_err(|e| url_error(e.to_string()))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(url_error(
                "credentials do not belong in the URL; give them as environment variables from a Secret".to_owned(),
            ));
        }
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "s3" | "s3a" => {
                let mut builder = AmazonS3Builder::from_env().with_url(config.url.as_str());
                if let Some(endpoint) = &config.endpoint {
                    builder = builder.with_endpoint(endpoint.as_str());
                }
                if let Some(region) = &config.region {
                    builder = builder.with_region(region.as_str());
                }
                let http_endpoint = config
                    .endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://"));
                builder = builder.with_allow_http(config.allow_http || http_endpoint);
                if let Some(key) = &config.access_key_id {
                    builder = builder.with_access_key_id(key.as_str());
                }
                if let Some(secret) = &config.secret_access_key {
                    builder = builder.with_secret_access_key(secret.as_str());
                }
                Arc::new(builder.build().map_err(build_error)?)
            }
            "gs" => Arc::new(
                GoogleCloudStorageBuilder::from_env()
                    .with_url(config.url.as_str())
                    .build()
                    .map_err(build_error)?,
            ),
            "az" | "azure" | "abfs" | "abfss" => Arc::new(
                MicrosoftAzureBuilder::from_env()
                    .with_url(config.url.as_str())
                    .build()
                    .map_err(build_error)?,
            ),
            "file" => {
                return Err(url_error(
                    "a local directory cannot be used through object storage (conditional updates are not implemented there, so writes could not be fenced); use the dir checkpoint store for a local directory".to_owned(),
                ))
            }
            other => {
                return Err(url_error(format!(
                    "unknown scheme {other:?}; expected s3://, gs:// or az://"
                )))
            }
        };
        let prefix = Path::parse(url.path().trim_matches('/'))
            .map_err(|e| url_error(format!("bad prefix: {e}")))?;
        let mut description = format!(
            "{}://{}/{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            prefix
        );
        if let Some(endpoint) = &config.endpoint {
            description.push_str(&format!(" at {endpoint}"));
        }
        Ok(ObjectStoreStore {
            store,
            prefix,
            description,
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
            .join(format!("partition-{partition}.json"))
    }
}

/// The URL as it may appear in an error or a log: without user or password.
fn redact(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if !url.username().is_empty() || url.password().is_some() {
                // Both only fail for URLs that cannot have credentials anyway.
                let _ = url.set_username("");
                let _ = url.set_password(None);
            }
            url.to_string()
        }
        Err(_) if raw.contains('@') => "<unparsable URL>".to_owned(),
        Err(_) => raw.to_owned(),
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
