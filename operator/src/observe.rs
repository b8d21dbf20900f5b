//! The observe step: reads only. For one StreamJob it reads the credentials Secret, the source
//! topic (partitions, `retention.ms`) through a [`KafkaObserver`], the job ConfigMap (the
//! previous assignment), the checkpoints — ConfigMaps, or objects in object storage
//! ([`crate::object_checkpoints`]) — (epochs, offsets, times) with the topic's high watermarks
//! for lag, and the StatefulSet. It writes nothing, anywhere.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::{Api, Client};
use weir_crds::assignment::Assignment;
use weir_crds::checkpoint::{self, PartitionCheckpoint};
use weir_crds::StreamJob;

use crate::error::Error;
use crate::names;
use crate::observed::{Observed, TopicObservation};

/// The key of a checkpoint ConfigMap holding the JSON checkpoint (the workers write it).
pub const CHECKPOINT_KEY: &str = checkpoint::CONFIG_MAP_KEY;

/// How to reach the source brokers: bootstrap servers and librdkafka properties (the spec's
/// `properties` overlaid with the credentials Secret's keys). Its `Debug` never shows values.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KafkaConnection {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// Further librdkafka properties, some of them secret.
    pub properties: BTreeMap<String, String>,
}

impl fmt::Debug for KafkaConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConnection")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A topic the operator creates: the repartition topic of a two-stage job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTopic {
    /// Its name.
    pub name: String,
    /// Its partition count.
    pub partitions: i32,
    /// Its replication factor; `None`: the brokers' `default.replication.factor`.
    pub replication_factor: Option<i32>,
    /// Topic configs (`retention.ms`, `cleanup.policy`, ...).
    pub configs: BTreeMap<String, String>,
}

/// What the operator needs from Kafka. The real one is [`RdKafkaObserver`]; tests use a fake.
/// [`topic`](Self::topic) and [`high_watermarks`](Self::high_watermarks) read (the observe
/// step); [`create_topic`](Self::create_topic) and [`delete_topic`](Self::delete_topic) are the
/// operator's only writes to Kafka, for the repartition topic of two-stage jobs, called by the
/// controller, never by observe.
#[async_trait]
pub trait KafkaObserver: Send + Sync {
    /// The topic's partition count and retention, or why they are unknown. Never an error: an
    /// unreachable broker is a status the user can act on, not a reason to back off.
    async fn topic(&self, conn: &KafkaConnection, topic: &str) -> TopicObservation;

    /// [`topic`](Self::topic) when only the partition count matters (the repartition topic):
    /// `retention_ms` may be left `None`, saving a `DescribeConfigs` request.
    async fn topic_partitions(&self, conn: &KafkaConnection, topic: &str) -> TopicObservation {
        self.topic(conn, topic).await
    }

    /// The high watermark (next offset to be written) of partitions `0..partitions`.
    async fn high_watermarks(
        &self,
        conn: &KafkaConnection,
        topic: &str,
        partitions: i32,
    ) -> Result<Vec<i64>, String>;

    /// Creates `topic`. A topic of that name that already exists (another replica of the
    /// operator, or a user, was first) is success: the next observe reads what it is.
    async fn create_topic(&self, conn: &KafkaConnection, topic: &NewTopic) -> Result<(), String>;

    /// Deletes `topic`. A topic that does not exist is success.
    async fn delete_topic(&self, conn: &KafkaConnection, topic: &str) -> Result<(), String>;
}

/// [`KafkaObserver`] over librdkafka: metadata for the partition count, `DescribeConfigs` for
/// `retention.ms`, watermarks for lag, `CreateTopics`/`DeleteTopics` for repartition topics.
/// Blocking librdkafka calls run on tokio's blocking pool.
///
/// It keeps one consumer (metadata, watermarks) and one admin client per connection — brokers
/// and properties, credentials included — and reuses them across reconciles, as a Kafka
/// Streams or Flink application keeps its clients: 1,000 jobs on one cluster share two clients
/// and their broker connections, instead of opening three clients (each with its threads, TCP
/// and TLS/SASL handshakes) per job every reconcile. A connection unused for [`CLIENT_IDLE`]
/// is closed (checked whenever a client is asked for); new credentials are a new connection,
/// so the old one ages out.
#[derive(Clone)]
pub struct RdKafkaObserver {
    /// Bound of every request to the brokers.
    pub timeout: Duration,
    /// Clients unused this long are closed ([`CLIENT_IDLE`] by default).
    pub idle: Duration,
    clients: Arc<Mutex<HashMap<KafkaConnection, Cached>>>,
}

/// How long a connection's clients are kept without use.
pub const CLIENT_IDLE: Duration = Duration::from_secs(600);

/// The clients of one connection.
struct Clients {
    consumer: rdkafka::consumer::BaseConsumer,
    admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
}

struct Cached {
    clients: Arc<Clients>,
    used: Instant,
}

impl fmt::Debug for RdKafkaObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RdKafkaObserver")
            .field("timeout", &self.timeout)
            .field("idle", &self.idle)
            .field("connections", &self.connections())
            .finish()
    }
}

impl Default for RdKafkaObserver {
    fn default() -> Self {
        RdKafkaObserver::new(Duration::from_secs(10))
    }
}

fn client_config(conn: &KafkaConnection) -> rdkafka::ClientConfig {
    let mut c = rdkafka::ClientConfig::new();
    for (k, v) in &conn.properties {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &conn.bootstrap_servers);
    // Observing must never create the topic it looks for.
    c.set("allow.auto.create.topics", "false");
    c
}

impl RdKafkaObserver {
    /// An observer whose requests time out after `timeout`, with no client yet.
    pub fn new(timeout: Duration) -> Self {
        RdKafkaObserver {
            timeout,
            idle: CLIENT_IDLE,
            clients: Arc::default(),
        }
    }

    /// Connections whose clients are open now.
    pub fn connections(&self) -> usize {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The clients of `conn`, created on first use; closes those idle for `idle`.
    /// Creating a client does not connect yet (librdkafka connects in the background), so this
    /// never waits on the network.
    fn clients(&self, conn: &KafkaConnection) -> Result<Arc<Clients>, String> {
        let now = Instant::now();
        let mut idle = Vec::new();
        let clients = {
            let mut map = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, c| {
                let keep = now.duration_since(c.used) < self.idle;
                if !keep {
                    idle.push(c.clients.clone());
                }
                keep
            });
            match map.get_mut(conn) {
                Some(c) => {
                    c.used = now;
                    c.clients.clone()
                }
                None => {
                    let config = client_config(conn);
                    let clients = Arc::new(Clients {
                        consumer: config.create().map_err(|e| e.to_string())?,
                        admin: config.create().map_err(|e| e.to_string())?,
                    });
                    map.insert(
                        conn.clone(),
                        Cached {
                            clients: clients.clone(),
                            used: now,
                        },
                    );
                    clients
                }
            }
        };
        if !idle.is_empty() {
            // Destroying a librdkafka client joins its threads: not on the async runtime.
            tokio::task::spawn_blocking(move || drop(idle));
        }
        Ok(clients)
    }

    /// The topic's partition count from metadata (`retention_ms` left `None`).
    async fn partitions(&self, clients: &Arc<Clients>, topic: &str) -> TopicObservation {
        use rdkafka::consumer::Consumer;
        use rdkafka::error::RDKafkaErrorCode;
        let clients = clients.clone();
        let name = topic.to_string();
        let timeout = self.timeout;
        let partitions = tokio::task::spawn_blocking(move || -> Result<Option<i32>, String> {
            let md = clients
                .consumer
                .fetch_metadata(Some(&name), timeout)
                .map_err(|e| e.to_string())?;
            let Some(t) = md.topics().iter().find(|t| t.name() == name) else {
                return Ok(None);
            };
            match t.error().map(RDKafkaErrorCode::from) {
                Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Ok(None),
                Some(e) => Err(format!("metadata of topic {name}: {e}")),
                None => Ok(Some(t.partitions().len() as i32)),
            }
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match partitions {
            Err(message) => TopicObservation::BrokerUnreachable { message },
            Ok(None) => TopicObservation::NotFound,
            Ok(Some(partitions)) => TopicObservation::Found {
                partitions,
                retention_ms: None,
            },
        }
    }

    async fn retention_ms(
        &self,
        clients: &Arc<Clients>,
        topic: &str,
    ) -> Result<Option<i64>, String> {
        use rdkafka::admin::{AdminOptions, ResourceSpecifier};
        let opts = AdminOptions::new().request_timeout(Some(self.timeout));
        let results = clients
            .admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &opts)
            .await
            .map_err(|e| e.to_string())?;
        for r in results {
            let resource = r.map_err(|e| e.to_string())?;
            if let Some(entry) = resource.get("retention.ms") {
                let ms = entry.value.as_deref().and_then(|v| v.parse::<i64>().ok());
                return Ok(ms.filter(|ms| *ms > 0));
            }
        }
        Ok(None)
    }
}

#[async_trait]
impl KafkaObserver for RdKafkaObserver {
    async fn topic(&self, conn: &KafkaConnection, topic: &str) -> TopicObservation {
        let clients = match self.clients(conn) {
            Ok(c) => c,
            Err(message) => return TopicObservation::BrokerUnreachable { message },
        };
        match self.partitions(&clients, topic).await {
            TopicObservation::Found { partitions, .. } => {
                // Retention only feeds a warning: when it cannot be read (no DescribeConfigs
                // ACL, say) the job still runs.
                let retention_ms = match self.retention_ms(&clients, topic).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(topic, error = %e, "cannot read retention.ms");
                        None
                    }
                };
                TopicObservation::Found {
                    partitions,
                    retention_ms,
                }
            }
            other => other,
        }
    }

    async fn topic_partitions(&self, conn: &KafkaConnection, topic: &str) -> TopicObservation {
        match self.clients(conn) {
            Ok(clients) => self.partitions(&clients, topic).await,
            Err(message) => TopicObservation::BrokerUnreachable { message },
        }
    }

    async fn high_watermarks(
        &self,
        conn: &KafkaConnection,
        topic: &str,
        partitions: i32,
    ) -> Result<Vec<i64>, String> {
        use rdkafka::consumer::Consumer;
        let clients = self.clients(conn)?;
        let topic = topic.to_string();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || {
            (0..partitions)
                .map(|p| {
                    clients
                        .consumer
                        .fetch_watermarks(&topic, p, timeout)
                        .map(|(_, high)| high)
                        .map_err(|e| format!("watermarks of {topic}/{p}: {e}"))
                })
                .collect()
        })
        .await
        .map_err(|e| e.to_string())?
    }

    async fn create_topic(&self, conn: &KafkaConnection, topic: &NewTopic) -> Result<(), String> {
        use rdkafka::admin::{AdminOptions, TopicReplication};
        use rdkafka::error::RDKafkaErrorCode;
        let clients = self.clients(conn)?;
        // -1: the brokers' default.replication.factor (KIP-464, Kafka 2.4).
        let replication = TopicReplication::Fixed(topic.replication_factor.unwrap_or(-1));
        let mut new = rdkafka::admin::NewTopic::new(&topic.name, topic.partitions, replication);
        for (k, v) in &topic.configs {
            new = new.set(k, v);
        }
        let opts = AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout));
        let results = clients
            .admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| format!("creating topic {}: {e}", topic.name))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, e)) => return Err(format!("creating topic {t}: {e}")),
            }
        }
        Ok(())
    }

    async fn delete_topic(&self, conn: &KafkaConnection, topic: &str) -> Result<(), String> {
        use rdkafka::admin::AdminOptions;
        use rdkafka::error::RDKafkaErrorCode;
        let clients = self.clients(conn)?;
        let opts = AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout));
        let results = clients
            .admin
            .delete_topics(&[topic], &opts)
            .await
            .map_err(|e| format!("deleting topic {topic}: {e}"))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((t, e)) => return Err(format!("deleting topic {t}: {e}")),
            }
        }
        Ok(())
    }
}

/// What observe read: [`Observed`] for the pure steps, plus what only the controller needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// Input of `desired` and `status`.
    pub observed: Observed,
    /// Names of the checkpoint ConfigMaps that exist (so only the missing ones are created).
    pub checkpoint_names: BTreeSet<String>,
    /// How to reach the source brokers, when the credentials could be read (the repartition
    /// topic is created on the source's cluster).
    pub connection: Option<KafkaConnection>,
}

/// The checkpoints of one job, summarised.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckpointSummary {
    /// Largest epoch of any checkpoint (whatever its topic).
    pub max_epoch: Option<i64>,
    /// Oldest of the partitions' latest writes (ms): one partition that stopped checkpointing
    /// shows here, which the newest would hide.
    pub oldest_written_at_ms: Option<i64>,
    /// Next offset to read, per partition of `topic` that has progress.
    pub next_offsets: BTreeMap<i32, i64>,
}

impl CheckpointSummary {
    /// Counts one checkpoint of a job reading `topic` (a record of another topic, the one the
    /// job read before, counts for the epoch only).
    pub fn add(&mut self, cp: &PartitionCheckpoint, topic: &str) {
        self.max_epoch = Some(self.max_epoch.map_or(cp.epoch, |m| m.max(cp.epoch)));
        if cp.topic != topic {
            return;
        }
        self.oldest_written_at_ms = Some(
            self.oldest_written_at_ms
                .map_or(cp.written_at_ms, |m| m.min(cp.written_at_ms)),
        );
        if let Some(p) = &cp.progress {
            self.next_offsets.insert(cp.partition, p.next_offset);
        }
    }
}

/// Summarises the checkpoint ConfigMaps of a job reading `topic`. ConfigMaps without a
/// checkpoint yet (created empty by the operator) or that do not parse are skipped.
pub fn summarize_checkpoints(config_maps: &[ConfigMap], topic: &str) -> CheckpointSummary {
    let mut s = CheckpointSummary::default();
    for cm in config_maps {
        let Some(text) = cm.data.as_ref().and_then(|d| d.get(CHECKPOINT_KEY)) else {
            continue;
        };
        let cp = match serde_json::from_str::<PartitionCheckpoint>(text) {
            Ok(cp) if cp.format == checkpoint::FORMAT => cp,
            Ok(cp) => {
                tracing::warn!(configmap = ?cm.metadata.name, format = cp.format,
                    "checkpoint of a format this operator does not know");
                continue;
            }
            Err(e) => {
                tracing::warn!(configmap = ?cm.metadata.name, error = %e, "unreadable checkpoint");
                continue;
            }
        };
        s.add(&cp, topic);
    }
    s
}

/// Records not yet checkpointed: Σ (high watermark − next offset) over the partitions that have
/// progress, never negative per partition.
pub fn lag(next_offsets: &BTreeMap<i32, i64>, high_watermarks: &[i64]) -> i64 {
    next_offsets
        .iter()
        .filter_map(|(p, next)| {
            let high = high_watermarks.get(usize::try_from(*p).ok()?)?;
            Some((high - next).max(0))
        })
        .sum()
}

/// Label selector of a job's checkpoint ConfigMaps (the job ConfigMap carries the job label
/// too, hence the component).
pub fn checkpoint_selector(job: &str) -> String {
    format!(
        "{}={},{}={}",
        names::LABEL_JOB,
        names::job_label_value(job),
        names::LABEL_COMPONENT,
        names::COMPONENT_CHECKPOINT
    )
}

fn time_from_ms(ms: i64) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .ok()
        .map(Time)
}

/// The librdkafka properties of the source: the spec's `properties`, overlaid with the keys of
/// the credentials Secret (read through the API; values never logged). `Ok(Err(message))`
/// when the referenced Secret does not exist: the user must create it, so it is reported as a
/// status (BrokerUnreachable), not retried as an error.
pub async fn connection(
    client: &Client,
    job: &StreamJob,
) -> Result<Result<KafkaConnection, String>, Error> {
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let kafka = &job.spec.source.kafka;
    let mut properties = kafka.properties.clone();
    if let Some(creds) = &kafka.credentials {
        match secret_values(
            client,
            &ns,
            &creds.secret_name,
            "spec.source.kafka.credentials",
        )
        .await?
        {
            Ok(values) => properties.extend(values),
            Err(missing) => return Ok(Err(missing)),
        }
    }
    Ok(Ok(KafkaConnection {
        bootstrap_servers: kafka.bootstrap_servers.clone(),
        properties,
    }))
}

/// The keys and values of Secret `name` in `ns` (`data` decoded as UTF-8, then `stringData`),
/// or, when it does not exist, a message naming the spec `field` that references it: the user
/// must create it, so it is a status, not an error to retry.
pub async fn secret_values(
    client: &Client,
    ns: &str,
    name: &str,
    field: &str,
) -> Result<Result<BTreeMap<String, String>, String>, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|source| Error::ReadSecret {
            name: name.to_string(),
            source,
        })?;
    let Some(secret) = secret else {
        return Ok(Err(format!(
            "the credentials Secret {name} ({field}) does not exist in namespace {ns}"
        )));
    };
    let mut values: BTreeMap<String, String> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    values.extend(secret.string_data.unwrap_or_default());
    Ok(Ok(values))
}

/// Reads everything `desired` and `status` need for `job`. Only reads.
pub async fn observe(
    client: &Client,
    kafka: &dyn KafkaObserver,
    job: &StreamJob,
) -> Result<Observation, Error> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let topic_name = job.spec.source.kafka.topic.0.clone();

    let (conn, topic) = match connection(client, job).await? {
        Ok(conn) => {
            let topic = kafka.topic(&conn, &topic_name).await;
            (Some(conn), topic)
        }
        Err(message) => (None, TopicObservation::BrokerUnreachable { message }),
    };

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let config_name = names::config_map_name(&name);
    let previous_assignment = config_maps
        .get_opt(&config_name)
        .await
        .map_err(|source| Error::ReadJobConfigMap {
            name: config_name.clone(),
            source,
        })?
        .and_then(|cm| cm.data)
        .and_then(|d| d.get(names::ASSIGNMENT_KEY).cloned())
        .and_then(|text| match serde_json::from_str::<Assignment>(&text) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(configmap = %config_name, error = %e, "unreadable assignment");
                None
            }
        });

    let mut checkpoint_names = BTreeSet::new();
    let mut summary = CheckpointSummary::default();
    // Two-stage jobs: the second stage's checkpoints, offsets in the repartition topic.
    let repartition =
        (!job.spec.co_partitioned()).then(|| weir_crds::repartition_topic(Some(&ns), &name));
    let mut merge_summary = CheckpointSummary::default();
    if job.spec.checkpoint.store.config_map.is_some() {
        let selector = checkpoint_selector(&name);
        let list = config_maps
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|source| Error::ReadCheckpoints {
                job: name.clone(),
                source,
            })?;
        checkpoint_names = list
            .items
            .iter()
            .filter_map(|cm| cm.metadata.name.clone())
            .collect();
        summary = summarize_checkpoints(&list.items, &topic_name);
        if let Some(r) = &repartition {
            merge_summary = summarize_checkpoints(&list.items, r);
        }
    } else if let Some(store) = &job.spec.checkpoint.store.object_store {
        (summary, merge_summary) = crate::object_checkpoints::observe(
            client,
            job,
            store,
            topic.partitions(),
            repartition.as_deref(),
            previous_assignment.is_some(),
        )
        .await?;
    }

    let lag = match (&conn, topic.partitions()) {
        (Some(conn), Some(p)) if !summary.next_offsets.is_empty() => {
            match kafka.high_watermarks(conn, &topic_name, p).await {
                Ok(high) => Some(lag(&summary.next_offsets, &high)),
                Err(e) => {
                    tracing::warn!(topic = %topic_name, error = %e, "cannot read high watermarks");
                    None
                }
            }
        }
        _ => None,
    };

    let repartition_lag = match (&conn, &repartition) {
        (Some(conn), Some(r)) if !merge_summary.next_offsets.is_empty() => {
            let count = merge_summary.next_offsets.keys().max().map_or(0, |p| p + 1);
            match kafka.high_watermarks(conn, r, count).await {
                Ok(high) => Some(self::lag(&merge_summary.next_offsets, &high)),
                Err(e) => {
                    tracing::warn!(topic = %r, error = %e, "cannot read high watermarks");
                    None
                }
            }
        }
        _ => None,
    };

    // Two-stage jobs: whether the repartition topic exists, and its partitions (only asked when
    // the source could be read: a broker that is down already blocks the job).
    let repartition_topic = match (&conn, &repartition, &topic) {
        (Some(conn), Some(r), TopicObservation::Found { .. }) => {
            Some(kafka.topic_partitions(conn, r).await)
        }
        _ => None,
    };

    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let sts_name = names::worker_name(&name);
    let stateful_set =
        statefulsets
            .get_opt(&sts_name)
            .await
            .map_err(|source| Error::ReadStatefulSet {
                name: sts_name,
                source,
            })?;

    Ok(Observation {
        observed: Observed {
            topic,
            previous_assignment,
            max_checkpoint_epoch: summary.max_epoch,
            stateful_set,
            lag,
            repartition_lag,
            repartition: repartition_topic,
            last_checkpoint_time: summary.oldest_written_at_ms.and_then(time_from_ms),
        },
        checkpoint_names,
        connection: conn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn cm(name: &str, checkpoint: Option<&str>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            data: checkpoint.map(|c| BTreeMap::from([(CHECKPOINT_KEY.to_string(), c.to_string())])),
            ..ConfigMap::default()
        }
    }

    /// A checkpoint exactly as the worker serialises `PartitionCheckpoint`.
    fn checkpoint(topic: &str, partition: i32, epoch: i64, at: i64, next: Option<i64>) -> String {
        let progress = next.map(|n| {
            serde_json::json!({"nextOffset": n, "replayFrom": n, "replayMaxEventTime": null,
                               "watermark": null, "emittedThrough": null})
        });
        serde_json::json!({"format": 1, "topic": topic, "partition": partition, "epoch": epoch,
                           "owner": "payments-worker-0", "writtenAtMs": at, "progress": progress})
        .to_string()
    }

    #[test]
    fn checkpoints_give_max_epoch_oldest_write_and_next_offsets() {
        let cms = [
            cm("payments-config", None),
            cm(
                "payments-checkpoint-0",
                Some(&checkpoint("payments", 0, 3, 2_000, Some(40))),
            ),
            cm(
                "payments-checkpoint-1",
                Some(&checkpoint("payments", 1, 2, 1_000, None)),
            ),
            cm("payments-checkpoint-2", Some("{not json")),
            // A checkpoint of the topic the job read before: its epoch counts, nothing else.
            cm(
                "payments-checkpoint-3",
                Some(&checkpoint("old", 3, 7, 10, Some(5))),
            ),
        ];
        let s = summarize_checkpoints(&cms, "payments");
        assert_eq!(s.max_epoch, Some(7));
        assert_eq!(s.oldest_written_at_ms, Some(1_000));
        assert_eq!(s.next_offsets, BTreeMap::from([(0, 40)]));
    }

    #[test]
    fn lag_sums_high_watermark_minus_next_offset_never_negative() {
        let next = BTreeMap::from([(0, 40), (1, 100), (2, 7), (9, 1)]);
        // Partition 1 is ahead of a stale watermark; partition 9 no longer exists.
        assert_eq!(lag(&next, &[100, 90, 10]), 60 + 3);
        assert_eq!(lag(&BTreeMap::new(), &[5]), 0);
    }

    #[test]
    fn connection_debug_hides_secret_values() {
        let c = KafkaConnection {
            bootstrap_servers: "kafka:9092".to_string(),
            properties: BTreeMap::from([("sasl.password".to_string(), "s3cret".to_string())]),
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("sasl.password"));
        assert!(!shown.contains("s3cret"));
    }
}
