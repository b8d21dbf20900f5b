//! Opening the object store a StreamJob keeps its checkpoints in
//! (`spec.checkpoint.store.objectStore`), one way for the worker, which writes the records, and
//! the operator, which reads them and deletes them with the job: the same URL rules, endpoint,
//! region and credentials handling, and the same location per job
//! ([`weir_crds::checkpoint::object_store_url`], objects [`weir_crds::checkpoint::object_name`]).
//!
//! Credentials never appear in a URL (refused), in `Debug` output or in an error.
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

pub use object_store;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path;
use object_store::ObjectStore;

/// Where and how to reach the bucket.
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
    /// S3 access key, overriding everything else (tests use it).
    pub access_key_id: Option<String>,
    /// S3 secret key, overriding everything else (tests use it).
    pub secret_access_key: Option<String>,
    /// Provider settings named like their environment variables (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SESSION_TOKEN`, `GOOGLE_SERVICE_ACCOUNT_KEY`, `AZURE_STORAGE_ACCOUNT_KEY`, ...): the
    /// keys of the credentials Secret. They override the environment. Values are never printed.
    pub options: BTreeMap<String, String>,
    /// Start from this process's environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`), as the workers do:
    /// the operator mounts the credentials Secret as their environment. The operator itself
    /// does so only for a job without a credentials Secret (then its own identity is the one
    /// used); otherwise its environment, which is its own and not the job's, is left out.
    pub from_env: bool,
}

impl ObjectStoreConfig {
    /// The location of the checkpoints of `job` in `namespace` as its spec gives it:
    /// `<url>/<namespace>/<job>` ([`weir_crds::checkpoint::object_store_url`]; a local run
    /// without a namespace uses [`weir_crds::checkpoint::LOCAL_NAMESPACE`]), the endpoint and
    /// region, plain http iff the endpoint is `http://`. Credentials are the caller's to add.
    pub fn for_job(store: &weir_crds::ObjectStore, namespace: Option<&str>, job: &str) -> Self {
        ObjectStoreConfig {
            url: weir_crds::checkpoint::object_store_url(&store.url, namespace, job),
            ..Self::for_store(store)
        }
    }

    /// Where the checkpoints of `job` were before this version: `<url>/<job>`
    /// ([`weir_crds::checkpoint::legacy_object_store_url`]), read to resume from and deleted
    /// with the job (docs/checkpoints.md, "Migration").
    pub fn legacy_for_job(store: &weir_crds::ObjectStore, job: &str) -> Self {
        ObjectStoreConfig {
            url: weir_crds::checkpoint::legacy_object_store_url(&store.url, job),
            ..Self::for_store(store)
        }
    }

    fn for_store(store: &weir_crds::ObjectStore) -> Self {
        ObjectStoreConfig {
            url: store.url.clone(),
            endpoint: store.endpoint.clone(),
            region: store.region.clone(),
            allow_http: store
                .endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://")),
            ..ObjectStoreConfig::default()
        }
    }

    /// The location of the records of stage 2 (the merge) of the job at `self`:
    /// [`weir_crds::checkpoint::MERGE_LOCATION`] under it.
    pub fn merge(&self) -> Self {
        ObjectStoreConfig {
            url: format!("{}/{}", self.url, weir_crds::checkpoint::MERGE_LOCATION),
            ..self.clone()
        }
    }
}

impl std::fmt::Debug for ObjectStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("ObjectStoreConfig")
            .field("url", &redact(&self.url))
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &redacted(&self.access_key_id))
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .field("from_env", &self.from_env)
            .finish()
    }
}

/// Why an object store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenObjectStoreError {
    /// The URL is not one this store can use.
    #[error("checkpoint URL {url:?}: {reason}")]
    Url {
        /// The URL as given (without credentials).
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// The client could not be built (missing bucket, bad option, ...).
    #[error("checkpoint URL {url:?}: {source}")]
    Build {
        /// The URL as given (without credentials).
        url: String,
        /// The client's error.
        #[source]
        source: object_store::Error,
    },
}

/// An opened location: the store and the prefix the records are under.
#[derive(Clone, Debug)]
pub struct Location {
    /// The bucket.
    pub store: Arc<dyn ObjectStore>,
    /// The prefix inside it (the URL's path).
    pub prefix: Path,
    /// `s3://bucket/prefix at http://endpoint`, for logs and errors.
    pub description: String,
}

impl Location {
    /// The object holding the record of `partition`.
    pub fn checkpoint(&self, partition: i32) -> Path {
        self.prefix
            .clone()
            .join(weir_crds::checkpoint::object_name(partition))
    }
}

/// Settings from `options` whose names start with `prefix` (`AWS_`), as the builder's
/// `from_env` would read them from the environment; names it does not know are skipped.
fn overlay<K: FromStr, B>(
    mut builder: B,
    options: &BTreeMap<String, String>,
    prefix: &str,
    with: impl Fn(B, K, &str) -> B,
) -> B {
    for (name, value) in options {
        if name.starts_with(prefix) {
            if let Ok(key) = name.to_ascii_lowercase().parse::<K>() {
                builder = with(builder, key, value);
            }
        }
    }
    builder
}

/// Opens the bucket `config.url` names. `file://` is refused: object_store's local filesystem
/// does not implement conditional updates, so writes could not be fenced; the dir store is the
/// local equivalent.
pub fn open(config: &ObjectStoreConfig) -> Result<Location, OpenObjectStoreError> {
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
    let options = &config.options;
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "s3" | "s3a" => {
            let base = if config.from_env {
                AmazonS3Builder::from_env()
            } else {
                AmazonS3Builder::new()
            };
            let mut builder = overlay(base, options, "AWS_", |b: AmazonS3Builder, k, v: &str| {
                b.with_config(k, v)
            })
                .with_url(config.url.as_str());
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
        "gs" => {
            let base = if config.from_env {
                GoogleCloudStorageBuilder::from_env()
            } else {
                GoogleCloudStorageBuilder::new()
            };
            let builder = overlay(
                base,
                options,
                "GOOGLE_",
                |b: GoogleCloudStorageBuilder, k, v: &str| b.with_config(k, v),
            );
            Arc::new(
                builder
                    .with_url(config.url.as_str())
                    .build()
                    .map_err(build_error)?,
            )
        }
        "az" | "azure" | "abfs" | "abfss" => {
            let base = if config.from_env {
                MicrosoftAzureBuilder::from_env()
            } else {
                MicrosoftAzureBuilder::new()
            };
            let builder = overlay(base, options, "AZURE_", |b: MicrosoftAzureBuilder, k, v: &str| {
                b.with_config(k, v)
            });
            Arc::new(
                builder
                    .with_url(config.url.as_str())
                    .build()
                    .map_err(build_error)?,
            )
        }
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
    Ok(Location {
        store,
        prefix,
        description,
    })
}

/// The URL as it may appear in an error or a log: without user or password.
pub fn redact(raw: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str, endpoint: Option<&str>) -> weir_crds::ObjectStore {
        weir_crds::ObjectStore {
            url: url.to_string(),
            endpoint: endpoint.map(str::to_string),
            region: Some("eu-west-1".to_string()),
            credentials: None,
        }
    }

    #[test]
    fn a_job_gets_its_own_location_under_the_spec_url() {
        let store = spec("s3://bucket/jobs/", Some("http://seaweed:8333"));
        let c = ObjectStoreConfig::for_job(&store, Some("prod"), "payments");
        assert_eq!(c.url, "s3://bucket/jobs/prod/payments");
        assert!(c.allow_http);
        assert!(!c.from_env);
        let loc = open(&c).expect("opens");
        assert_eq!(loc.prefix.as_ref(), "jobs/prod/payments");
        assert_eq!(
            loc.checkpoint(3).as_ref(),
            "jobs/prod/payments/partition-3.json"
        );
        assert_eq!(
            loc.description,
            "s3://bucket/jobs/prod/payments at http://seaweed:8333"
        );
        assert_eq!(c.merge().url, "s3://bucket/jobs/prod/payments/merge");
        let legacy = ObjectStoreConfig::legacy_for_job(&store, "payments");
        assert_eq!(legacy.url, "s3://bucket/jobs/payments");
        assert_eq!(legacy.endpoint, c.endpoint);
        assert_eq!(legacy.merge().url, "s3://bucket/jobs/payments/merge");
        let https = ObjectStoreConfig::for_job(&spec("gs://b/p", Some("https://x")), None, "j");
        assert!(!https.allow_http);
        assert_eq!(https.url, "gs://b/p/_local/j");
    }

    #[test]
    fn refuses_file_urls_credentials_in_urls_and_unknown_schemes() {
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
            let error = open(&config).expect_err(url);
            assert!(!format!("{error} {error:?}").contains("pass"), "{error}");
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let config = ObjectStoreConfig {
            url: "s3://u:URLPASS-SHOULD-NOT-SHOW@b/p".to_owned(),
            access_key_id: Some("AKIA-SHOULD-NOT-SHOW".to_owned()),
            secret_access_key: Some("SECRET-SHOULD-NOT-SHOW".to_owned()),
            options: BTreeMap::from([(
                "AWS_SECRET_ACCESS_KEY".to_owned(),
                "OPTION-SHOULD-NOT-SHOW".to_owned(),
            )]),
            ..ObjectStoreConfig::default()
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains("SHOULD-NOT-SHOW"), "{printed}");
        assert!(printed.contains("AWS_SECRET_ACCESS_KEY"), "{printed}");
    }
}
