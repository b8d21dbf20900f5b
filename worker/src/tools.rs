//! `weir kafka ...`: small Kafka tools for trying jobs and for tests (create a topic, produce
//! lines or synthetic payments, print a topic), so no other Kafka client is needed.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::contiguous::{step, Contiguous, Step};

/// Why a Kafka tool failed. The message names what was being done; the cause follows as the
/// error's source.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The async runtime for the admin client could not start.
    #[error("starting the async runtime")]
    StartRuntime(#[source] std::io::Error),
    /// A Kafka client could not be created.
    #[error("creating {what}")]
    CreateClient {
        /// "an admin client", "a producer", "a consumer".
        what: &'static str,
        /// Cause.
        #[source]
        source: KafkaError,
    },
    /// The create-topics request failed.
    #[error("creating topic {topic}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// Cause.
        #[source]
        source: KafkaError,
    },
    /// The broker refused to create a topic.
    #[error("creating topic {topic}: {code}")]
    TopicRefused {
        /// The topic.
        topic: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
    /// The topic's configs could not be read.
    #[error("reading the configs of topic {topic}")]
    DescribeConfigs {
        /// The topic.
        topic: String,
        /// Cause.
        #[source]
        source: KafkaError,
    },
    /// A message could not be queued.
    #[error("producing to {topic}")]
    Produce {
        /// The topic.
        topic: String,
        /// Cause.
        #[source]
        source: KafkaError,
    },
    /// Queued messages were not all acknowledged.
    #[error("flushing")]
    Flush(#[source] KafkaError),
    /// Topic metadata could not be read.
    #[error("reading metadata")]
    ReadMetadata(#[source] KafkaError),
    /// The topic does not exist.
    #[error("topic {0} not found")]
    TopicNotFound(String),
    /// A partition's offsets could not be read.
    #[error("reading the offsets of partition {partition}")]
    ReadOffsets {
        /// The partition.
        partition: i32,
        /// Cause.
        #[source]
        source: KafkaError,
    },
    /// Reading the topic failed.
    #[error("consuming {topic}: {error}")]
    Consume {
        /// The topic.
        topic: String,
        /// librdkafka's error.
        error: KafkaError,
    },
    /// Another Kafka call failed (assigning partitions, seeking).
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// Reading the input or writing the output failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

/// Create `topic` with `partitions` partitions; an existing topic is fine.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<(), ToolError> {
    create_topic_on(config(bootstrap), topic, partitions, 1, &[])
}

/// [`create_topic`] with a job's client settings (brokers, TLS, SASL) and replication factor
/// (`None`: the brokers' `default.replication.factor`): the repartition topic of a two-stage
/// job in local mode.
pub fn create_topic_with(
    settings: &crate::kafka::ClientSettings,
    topic: &weir_crds::plan::NewTopic,
) -> Result<(), ToolError> {
    let configs: Vec<(&str, &str)> = topic
        .configs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    create_topic_on(
        settings.config(),
        &topic.name,
        topic.partitions,
        topic.replication_factor.unwrap_or(-1),
        &configs,
    )
}

/// The admin client of `config` and a runtime to drive it.
fn admin(
    config: ClientConfig,
) -> Result<(tokio::runtime::Runtime, AdminClient<DefaultClientContext>), ToolError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ToolError::StartRuntime)?;
    let admin = config.create().map_err(|source| ToolError::CreateClient {
        what: "an admin client",
        source,
    })?;
    Ok((rt, admin))
}

/// The `retention.ms` of `topic` (`None`: infinite, or not reported).
pub fn topic_retention_ms(
    settings: &crate::kafka::ClientSettings,
    topic: &str,
) -> Result<Option<i64>, ToolError> {
    let (rt, admin) = admin(settings.config())?;
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let results = rt
        .block_on(admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &opts))
        .map_err(|source| ToolError::DescribeConfigs {
            topic: topic.to_string(),
            source,
        })?;
    for resource in results.into_iter().flatten() {
        if let Some(entry) = resource.get("retention.ms") {
            let ms = entry.value.as_deref().and_then(|v| v.parse::<i64>().ok());
            return Ok(ms.filter(|ms| *ms > 0));
        }
    }
    Ok(None)
}

fn create_topic_on(
    config: ClientConfig,
    topic: &str,
    partitions: i32,
    replication_factor: i32,
    configs: &[(&str, &str)],
) -> Result<(), ToolError> {
    let (rt, admin) = admin(config)?;
    // -1: the brokers' default.replication.factor (KIP-464, Kafka 2.4).
    let mut new = NewTopic::new(
        topic,
        partitions,
        TopicReplication::Fixed(replication_factor),
    );
    for (k, v) in configs {
        new = new.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = rt
        .block_on(admin.create_topics([&new], &opts))
        .map_err(|source| ToolError::CreateTopic {
            topic: topic.to_string(),
            source,
        })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(ToolError::TopicRefused { topic, code }),
        }
    }
    Ok(())
}

fn producer(bootstrap: &str) -> Result<ThreadedProducer<DefaultProducerContext>, ToolError> {
    config(bootstrap)
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .create()
        .map_err(|source| ToolError::CreateClient {
            what: "a producer",
            source,
        })
}

fn send(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: Option<&[u8]>,
    partition: Option<i32>,
    value: &[u8],
) -> Result<(), ToolError> {
    let mut rec = BaseRecord::<[u8], [u8]>::to(topic).payload(value);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    if let Some(p) = partition {
        rec = rec.partition(p);
    }
    crate::kafka::send_when_room(p, rec).map_err(|source| ToolError::Produce {
        topic: topic.to_string(),
        source,
    })
}

/// Produce JSON lines from a reader; the key is the string value of `key_field` if given.
pub fn produce_lines(
    bootstrap: &str,
    topic: &str,
    key_field: Option<&str>,
    input: impl BufRead,
) -> Result<u64, ToolError> {
    let p = producer(bootstrap)?;
    let mut n = 0;
    for line in input.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let key = key_field.and_then(|f| {
            serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| {
                    v.get(f)
                        .map(|k| k.as_str().map(str::to_string).unwrap_or(k.to_string()))
                })
        });
        send(
            &p,
            topic,
            key.as_deref().map(str::as_bytes),
            None,
            line.as_bytes(),
        )?;
        n += 1;
    }
    p.flush(Duration::from_secs(60)).map_err(ToolError::Flush)?;
    Ok(n)
}

/// Synthetic payments, `rate` per second (0: as fast as possible), until `count` (0: forever).
/// Event times follow the wall clock with a few seconds of disorder; merchant is the key.
pub fn produce_payments(
    bootstrap: &str,
    topic: &str,
    rate: u64,
    count: u64,
    merchants: u32,
) -> Result<u64, ToolError> {
    let p = producer(bootstrap)?;
    let started = Instant::now();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut n = 0u64;
    while count == 0 || n < count {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let ts = now_ms - (next() % 3000) as i64;
        let merchant = format!("m{}", next() % u64::from(merchants.max(1)));
        let amount = (next() % 20_000) as f64 / 100.0;
        let customer = format!("c{}", next() % 5000);
        let value = serde_json::json!({
            "ts": weir_engine::time::format(ts),
            "merchant": merchant,
            "amount": amount,
            "customer": customer,
        })
        .to_string();
        send(&p, topic, Some(merchant.as_bytes()), None, value.as_bytes())?;
        n += 1;
        if rate > 0 {
            let due = Duration::from_secs_f64(n as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    p.flush(Duration::from_secs(60)).map_err(ToolError::Flush)?;
    Ok(n)
}

/// Print every message of `topic` as a JSON line (`partition`, `offset`, `key`, `value`,
/// `headers`), from the beginning, until no message arrives for `idle`.
pub fn consume(
    bootstrap: &str,
    topic: &str,
    idle: Duration,
    out: &mut impl Write,
) -> Result<u64, ToolError> {
    let c: BaseConsumer = config(bootstrap)
        .set("group.id", "weir-tools")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|source| ToolError::CreateClient {
            what: "a consumer",
            source,
        })?;
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .map_err(ToolError::ReadMetadata)?;
    let partitions = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    if partitions == 0 {
        return Err(ToolError::TopicNotFound(topic.to_string()));
    }
    let mut tpl = TopicPartitionList::new();
    // Next offset per partition, and re-reads of holes: a broker may answer past a batch other
    // producers are still writing (crate::contiguous).
    let mut next = Vec::with_capacity(partitions);
    for p in 0..partitions as i32 {
        let (low, _) = c
            .fetch_watermarks(topic, p, Duration::from_secs(30))
            .map_err(|source| ToolError::ReadOffsets {
                partition: p,
                source,
            })?;
        tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
        next.push(low);
    }
    c.assign(&tpl)?;
    let mut holes = vec![Contiguous::rereading(); partitions];
    let mut last = Instant::now();
    let mut n = 0;
    while last.elapsed() < idle {
        match c.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(error)) => {
                return Err(ToolError::Consume {
                    topic: topic.to_string(),
                    error,
                })
            }
            Some(Ok(m)) => {
                let p = m.partition() as usize;
                let (expected, got) = (next[p], m.offset());
                match step(&c, &mut holes[p], topic, m.partition(), expected, got)? {
                    Step::Duplicate | Step::Reread { .. } => continue,
                    Step::Take | Step::Skip { .. } => next[p] = got + 1,
                }
                let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
                let headers: serde_json::Map<String, serde_json::Value> = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), text(h.value).into()))
                            .collect()
                    })
                    .unwrap_or_default();
                let line = serde_json::json!({
                    "partition": m.partition(),
                    "offset": m.offset(),
                    "key": text(m.key()),
                    "value": text(m.payload()),
                    "headers": headers,
                });
                writeln!(out, "{line}")?;
                n += 1;
                last = Instant::now();
            }
        }
    }
    Ok(n)
}
