//! The operator's Kafka client: reads topic metadata and high watermarks, creates and deletes
//! repartition topics. [`KafkaClient`] is what the reconcile steps use; [`RdKafkaClient`] is
//! that over librdkafka, with clients reused across reconciles.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use weir_crds::plan::NewTopic;

use crate::observation::{KafkaConnection, TopicObservation};

/// What the operator asks of Kafka: topic metadata and watermarks (read by the observe step),
/// and the creation and deletion of a two-stage job's repartition topic (its only writes to
/// Kafka: creation by the apply step, deletion by the finalizer's cleanup; never by observe).
/// The real one is [`RdKafkaClient`]; tests use a fake.
#[async_trait]
pub trait KafkaClient: Send + Sync {
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
    async fn create_topic(
        &self,
        conn: &KafkaConnection,
        topic: &NewTopic,
    ) -> Result<(), KafkaFailure>;

    /// Deletes `topic`. A topic that does not exist is success.
    async fn delete_topic(&self, conn: &KafkaConnection, topic: &str) -> Result<(), KafkaFailure>;
}

/// What the status and Events say when the brokers could not be asked, whatever the reason.
pub const UNREACHABLE: &str = "the brokers could not be reached, or refused the connection or \
                               its credentials (the operator's log has the error)";

/// Why a request to the brokers failed, in two parts with different readers. A job names the
/// brokers' address, and the status and Events are the job owner's to read: were librdkafka's
/// connection errors shown there ("Connection refused", "timed out", a TLS handshake error),
/// any tenant could learn which ports answer on any address the operator reaches. So only an
/// answer of the brokers themselves is shown; everything else is [`UNREACHABLE`] there and in
/// full in the operator's log (docs/operator.md, "Trust model").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KafkaFailure {
    /// The brokers answered with an error (a Kafka protocol error code, such as
    /// `TopicAuthorizationFailed` or `InvalidReplicationFactor`). Only a Kafka broker gives one,
    /// so it says nothing of other addresses: the status may show it.
    Refused(String),
    /// The brokers could not be asked: connection refused or reset, timed out, a name that
    /// does not resolve, a TLS or SASL handshake, a client that could not be created.
    /// librdkafka's error, for the operator's log only.
    Unreachable(String),
}

impl KafkaFailure {
    /// What the status and Events may say: the brokers' answer, or [`UNREACHABLE`].
    pub fn shown(&self) -> &str {
        match self {
            KafkaFailure::Refused(answer) => answer,
            KafkaFailure::Unreachable(_) => UNREACHABLE,
        }
    }

    /// The whole error, for the operator's log.
    pub fn detail(&self) -> &str {
        match self {
            KafkaFailure::Refused(e) | KafkaFailure::Unreachable(e) => e,
        }
    }

    /// A per-topic error `code` of an admin request: the brokers' answer when it is a Kafka
    /// protocol error, else (librdkafka's own, "Local: ...") unreachable.
    fn of_code(context: String, code: rdkafka::error::RDKafkaErrorCode) -> Self {
        let text = format!("{context}: {code}");
        // librdkafka describes its own errors as "Local: ..." and the protocol's as
        // "Broker: ..."; an unknown code counts as its own (never shown).
        if code.to_string().contains("(Broker: ") {
            KafkaFailure::Refused(text)
        } else {
            KafkaFailure::Unreachable(text)
        }
    }
}

/// [`KafkaFailure::shown`]: formatting one never prints the detail by mistake.
impl fmt::Display for KafkaFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shown())
    }
}

/// [`KafkaClient`] over librdkafka: metadata for the partition count, `DescribeConfigs` for
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
pub struct RdKafkaClient {
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

impl fmt::Debug for RdKafkaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RdKafkaClient")
            .field("timeout", &self.timeout)
            .field("idle", &self.idle)
            .field("connections", &self.connections())
            .finish()
    }
}

impl Default for RdKafkaClient {
    fn default() -> Self {
        RdKafkaClient::new(Duration::from_secs(10))
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

impl RdKafkaClient {
    /// A client whose requests time out after `timeout`, with no client yet.
    pub fn new(timeout: Duration) -> Self {
        RdKafkaClient {
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
            Err(detail) => TopicObservation::BrokerUnreachable { detail },
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
impl KafkaClient for RdKafkaClient {
    async fn topic(&self, conn: &KafkaConnection, topic: &str) -> TopicObservation {
        let clients = match self.clients(conn) {
            Ok(c) => c,
            Err(detail) => return TopicObservation::BrokerUnreachable { detail },
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
            Err(detail) => TopicObservation::BrokerUnreachable { detail },
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

    async fn create_topic(
        &self,
        conn: &KafkaConnection,
        topic: &NewTopic,
    ) -> Result<(), KafkaFailure> {
        use rdkafka::admin::{AdminOptions, TopicReplication};
        use rdkafka::error::RDKafkaErrorCode;
        let clients = self.clients(conn).map_err(KafkaFailure::Unreachable)?;
        // -1: the brokers' default.replication.factor (KIP-464, Kafka 2.4).
        let replication = TopicReplication::Fixed(topic.replication_factor.unwrap_or(-1));
        let mut new = rdkafka::admin::NewTopic::new(&topic.name, topic.partitions, replication);
        for (k, v) in &topic.configs {
            new = new.set(k, v);
        }
        let opts = AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout));
        // An error of the request as a whole is librdkafka's (no broker answered in time).
        let results = clients
            .admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| {
                KafkaFailure::Unreachable(format!("creating topic {}: {e}", topic.name))
            })?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, e)) => return Err(KafkaFailure::of_code(format!("creating topic {t}"), e)),
            }
        }
        Ok(())
    }

    async fn delete_topic(&self, conn: &KafkaConnection, topic: &str) -> Result<(), KafkaFailure> {
        use rdkafka::admin::AdminOptions;
        use rdkafka::error::RDKafkaErrorCode;
        let clients = self.clients(conn).map_err(KafkaFailure::Unreachable)?;
        let opts = AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout));
        let results = clients
            .admin
            .delete_topics(&[topic], &opts)
            .await
            .map_err(|e| KafkaFailure::Unreachable(format!("deleting topic {topic}: {e}")))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((t, e)) => return Err(KafkaFailure::of_code(format!("deleting topic {t}"), e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::error::RDKafkaErrorCode as Code;

    use super::*;

    #[test]
    fn only_an_answer_of_the_brokers_is_shown() {
        for code in [
            Code::TopicAuthorizationFailed,
            Code::InvalidReplicationFactor,
        ] {
            let failure = KafkaFailure::of_code("creating topic t".to_string(), code);
            assert!(matches!(failure, KafkaFailure::Refused(_)), "{failure:?}");
            assert_eq!(failure.to_string(), failure.detail());
            assert!(failure.to_string().contains("(Broker: "), "{failure}");
        }
        for code in [
            Code::BrokerTransportFailure,
            Code::Resolve,
            Code::AllBrokersDown,
            Code::OperationTimedOut,
            Code::SSL,
            Code::Authentication,
        ] {
            let failure = KafkaFailure::of_code("creating topic t".to_string(), code);
            assert!(
                matches!(failure, KafkaFailure::Unreachable(_)),
                "{failure:?}"
            );
            assert_eq!(failure.to_string(), UNREACHABLE);
            assert!(
                failure.detail().contains("(Local: "),
                "{}",
                failure.detail()
            );
        }
    }
}
