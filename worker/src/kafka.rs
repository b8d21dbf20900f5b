//! Kafka client settings for a job: the spec's properties, the credentials mounted from a
//! Secret, and the settings weir itself needs. Builds configurations only; opens no connection.
//!
//! Credentials arrive as a directory with one file per librdkafka property (a Kubernetes
//! Secret mounted as a volume: the key is the file name, the value its content). Their values
//! are never logged: [`ClientSettings`] prints property names only.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseRecord, Partitioner, ProducerContext, ThreadedProducer};
use rdkafka::ClientConfig;
use weir_crds::properties::{self, Role};
use weir_crds::{KafkaSink, StreamJobSpec};

/// Environment variables naming the credential directories the operator mounts (defined with
/// the rest of the pod contract in `weir_crds::pod`).
pub const SOURCE_CREDENTIALS_ENV: &str = weir_crds::pod::env::SOURCE_CREDENTIALS_DIR;
/// See [`SOURCE_CREDENTIALS_ENV`].
pub const SINK_CREDENTIALS_ENV: &str = weir_crds::pod::env::SINK_CREDENTIALS_DIR;
/// See [`SOURCE_CREDENTIALS_ENV`].
pub const DEAD_LETTER_CREDENTIALS_ENV: &str = weir_crds::pod::env::DEAD_LETTER_CREDENTIALS_DIR;

/// librdkafka's switch for creating a topic on first use (metadata request, produce). weir
/// sets it to `false` on every client: a topic that does not exist is an error a person fixes,
/// never a topic made with the broker's defaults (or made again after the operator deleted
/// it). The producer's default is `true`.
pub const AUTO_CREATE_TOPICS: &str = "allow.auto.create.topics";

/// What librdkafka may buffer per client, weir's settings instead of librdkafka's defaults
/// (which suit a process with one client: a producer may queue 100,000 messages or 1 GB, a
/// consumer prefetches 100,000 messages per partition). A worker has one consumer and one to
/// three producers per partition it owns, so these bound its memory per partition
/// (docs/running.md, "Memory"). A job's `properties` may still set them.
pub mod queues {
    /// Records a consumer prefetches per partition (`queued.min.messages`): a few ms of
    /// reading at full speed. Each costs its bytes plus ~200 bytes of librdkafka's bookkeeping.
    pub const CONSUMER_MESSAGES: u32 = 5_000;
    /// The most record bytes a consumer prefetches per partition (`queued.max.messages.kbytes`;
    /// librdkafka may go over it by one fetch, [`CONSUMER_FETCH_BYTES`]).
    pub const CONSUMER_KBYTES: u32 = 2 * 1024;
    /// The most bytes one fetch asks of a partition (`fetch.message.max.bytes`; a larger record
    /// is still returned whole).
    pub const CONSUMER_FETCH_BYTES: u32 = 256 * 1024;
    /// The most key and value bytes a producer queues (`queue.buffering.max.kbytes`); when full,
    /// the partition waits for the broker (backpressure).
    pub const PRODUCER_KBYTES: u32 = 2 * 1024;
    /// The most bytes in one produce batch (`batch.size`): an eighth of the queue, so while
    /// some batches are in flight the partition goes on filling others. At librdkafka's 1 MB
    /// (and 10,000 messages, about 2 MB of results) one batch filled the queue, and the
    /// partition waited for each batch's acknowledgement before it could write the next: a
    /// job with about a result per record ran at 0.25× a bare consumer, 0.39–0.43× with this
    /// (docs/benchmarks.md, "Sparse results (issue 20)").
    pub const PRODUCER_BATCH_BYTES: u32 = PRODUCER_KBYTES * 1024 / 8;
    /// librdkafka's bookkeeping per queued message, beyond its key and value (measured order
    /// of magnitude; used to size the queue's message count).
    pub const PRODUCER_MESSAGE_OVERHEAD: usize = 200;
    /// Bounds of a producer's message count (`queue.buffering.max.messages`).
    pub const PRODUCER_MESSAGES: (usize, usize) = (1_000, 100_000);
    /// The worker's one repartition producer queues this many times a result producer's bytes
    /// and messages: it serves all the worker's source partitions, and a closing pane sends
    /// the partials of every group at once. With one result producer's queue, a dense
    /// two-stage job was slower than with a producer per source partition in 7 of 10 runs
    /// (docs/benchmarks.md, "One repartition producer per worker").
    pub const REPARTITION_QUEUE_FACTOR: u32 = 4;
}

/// A result's key and value bytes estimated from the job: the JSON frame and the window's
/// times, each group field's name and a value of 24 bytes (in both key and value), each
/// aggregation's name and a value of 24 bytes. Kept values (`first`, `last`, string groups)
/// may be longer: the byte bound ([`queues::PRODUCER_KBYTES`]) still holds.
pub fn result_bytes_estimate(spec: &StreamJobSpec) -> usize {
    let group: usize = spec
        .group_by
        .iter()
        .map(|f| f.0.len() + 28)
        .chain(spec.group_by_key.then_some(3 + 28))
        .sum();
    let values: usize = spec.aggregations.iter().map(|a| a.name.len() + 28).sum();
    160 + 2 * group + values
}

/// `queue.buffering.max.messages` for a producer of `spec`'s results: as many as fill
/// [`queues::PRODUCER_KBYTES`] at the estimated size, so both bounds bind together and the
/// bookkeeping per message stays bounded too.
pub fn producer_queue_messages(spec: &StreamJobSpec) -> usize {
    let (min, max) = queues::PRODUCER_MESSAGES;
    (queues::PRODUCER_KBYTES as usize * 1024 / result_bytes_estimate(spec)).clamp(min, max)
}

/// Failure to put a client configuration together.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A credential file could not be read.
    #[error("reading Kafka credentials from {dir}: {source}")]
    ReadCredentials {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The spec or a credentials Secret sets a property a job may not set
    /// (`weir_crds::properties`: it loads code, runs a command, or weir sets it itself).
    #[error("{why}{}", from_secret.as_ref().map(|d| format!(" (a key of the credentials mounted at {})", d.display())).unwrap_or_default())]
    Refused {
        /// Why, naming the property.
        why: String,
        /// The credentials directory it came from, when not from the spec.
        from_secret: Option<PathBuf>,
    },
}

/// One client's librdkafka properties, with secret values kept apart so they never print.
#[derive(Clone, Default)]
pub struct ClientSettings {
    props: BTreeMap<String, String>,
    secrets: BTreeMap<String, String>,
}

impl fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSettings")
            .field("props", &self.props)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ClientSettings {
    /// Set a property (later calls win).
    pub fn set(&mut self, k: &str, v: impl Into<String>) -> &mut Self {
        self.props.insert(k.to_string(), v.into());
        self
    }

    /// A property's value, secrets excluded.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.props.get(k).map(String::as_str)
    }

    /// The librdkafka configuration.
    pub fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in self.props.iter().chain(&self.secrets) {
            c.set(k, v);
        }
        c
    }

    fn with_secrets_from(mut self, dir: Option<&Path>, role: Role) -> Result<Self, SettingsError> {
        if let Some(dir) = dir {
            self.secrets = read_credentials(dir)?;
            if let Some((_, why)) = properties::first_refused(self.secrets.keys(), role) {
                return Err(SettingsError::Refused {
                    why,
                    from_secret: Some(dir.to_path_buf()),
                });
            }
        }
        Ok(self)
    }
}

/// Read a mounted Secret: every regular file whose name looks like a librdkafka property.
/// Kubernetes' `..data` symlink farm and dotfiles are skipped.
pub fn read_credentials(dir: &Path) -> Result<BTreeMap<String, String>, SettingsError> {
    let err = |source| SettingsError::ReadCredentials {
        dir: dir.to_path_buf(),
        source,
    };
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().is_file() {
            continue;
        }
        let value = std::fs::read_to_string(entry.path()).map_err(err)?;
        // Secrets written by hand often end with a newline; PEM values keep theirs.
        let value = if name.ends_with(".pem") {
            value
        } else {
            value.trim_end_matches(['\n', '\r']).to_string()
        };
        out.insert(name, value);
    }
    Ok(out)
}

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// A spec's properties refused for a client of `role` (the API server and `validate()` refuse
/// them too; this guards a job that reached the worker some other way).
fn check_properties(props: &BTreeMap<String, String>, role: Role) -> Result<(), SettingsError> {
    match properties::first_refused(props.keys(), role) {
        Some((_, why)) => Err(SettingsError::Refused {
            why,
            from_secret: None,
        }),
        None => Ok(()),
    }
}

/// The consumer of the source topic: `assign()` only, never a consumer group, no commits
/// (the checkpoint store holds the offsets).
pub fn source_settings(spec: &StreamJobSpec, job: &str) -> Result<ClientSettings, SettingsError> {
    let src = &spec.source.kafka;
    check_properties(&src.properties, Role::Consumer)?;
    let mut s = ClientSettings::default();
    s.set("bootstrap.servers", &src.bootstrap_servers)
        // A group id is required by librdkafka even for assign(); it is never joined.
        .set("group.id", format!("weir-{job}"))
        .set("client.id", format!("weir-{job}"))
        // Small fetch backoff: librdkafka otherwise stalls for a second when its queue fills.
        .set("fetch.queue.backoff.ms", "10")
        .set("queued.min.messages", queues::CONSUMER_MESSAGES.to_string())
        .set(
            "fetch.message.max.bytes",
            queues::CONSUMER_FETCH_BYTES.to_string(),
        )
        .set(
            "queued.max.messages.kbytes",
            queues::CONSUMER_KBYTES.to_string(),
        )
        // If a replay point was already deleted by retention, go on from the oldest record still
        // there: librdkafka's default (latest) would silently skip everything in between.
        .set("auto.offset.reset", "earliest");
    for (k, v) in &src.properties {
        s.set(k, v);
    }
    s.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set(AUTO_CREATE_TOPICS, "false");
    s.with_secrets_from(env_dir(SOURCE_CREDENTIALS_ENV).as_deref(), Role::Consumer)
}

fn producer_settings(
    spec: &StreamJobSpec,
    job: &str,
    target: &KafkaSink,
    credentials_env: &str,
) -> Result<ClientSettings, SettingsError> {
    check_properties(&target.properties, Role::Producer)?;
    let own_cluster = target.bootstrap_servers.is_some();
    let mut s = ClientSettings::default();
    match &target.bootstrap_servers {
        Some(b) => s.set("bootstrap.servers", b),
        None => {
            // Same cluster as the source: the source's connection properties apply.
            let src = &spec.source.kafka;
            s.set("bootstrap.servers", &src.bootstrap_servers);
            for (k, v) in &src.properties {
                if is_connection_property(k) {
                    s.set(k, v);
                }
            }
            &mut s
        }
    };
    // Batches of up to 100 ms: a checkpoint flushes at once anyway, and a job with about a
    // result per record spent much of its time waking the producer's threads (issue 20).
    s.set("client.id", format!("weir-{job}"))
        .set("linger.ms", "100")
        .set("compression.type", "lz4")
        // Failed deliveries are all the producer counts: no report, no wake-up per success.
        .set("delivery.report.only.error", "true")
        .set(
            "queue.buffering.max.kbytes",
            queues::PRODUCER_KBYTES.to_string(),
        )
        .set(
            "queue.buffering.max.messages",
            producer_queue_messages(spec).to_string(),
        )
        .set("batch.size", queues::PRODUCER_BATCH_BYTES.to_string());
    for (k, v) in &target.properties {
        s.set(k, v);
    }
    // Idempotence: retries never duplicate or reorder a partition's results.
    s.set("enable.idempotence", "true")
        .set(AUTO_CREATE_TOPICS, "false");
    let dir = if own_cluster || target.credentials.is_some() {
        env_dir(credentials_env)
    } else {
        env_dir(SOURCE_CREDENTIALS_ENV)
    };
    s.with_secrets_from(dir.as_deref(), Role::Producer)
}

/// Properties about reaching and authenticating to a cluster (shared by every client of it).
fn is_connection_property(k: &str) -> bool {
    k.starts_with("security.")
        || k.starts_with("sasl.")
        || k.starts_with("ssl.")
        || k.starts_with("ssl_")
        || k == "client.dns.lookup"
        || k == "broker.address.family"
}

/// The producer of result records.
pub fn sink_settings(spec: &StreamJobSpec, job: &str) -> Result<ClientSettings, SettingsError> {
    producer_settings(spec, job, &spec.sink.kafka, SINK_CREDENTIALS_ENV)
}

/// The producer of partial aggregates and watermarks into the repartition topic (two-stage
/// jobs), on the source's cluster with the source's connection properties and credentials.
pub fn repartition_settings(
    spec: &StreamJobSpec,
    job: &str,
    topic: &str,
) -> Result<ClientSettings, SettingsError> {
    let target = KafkaSink {
        topic: weir_crds::TopicName(topic.to_string()),
        bootstrap_servers: None,
        properties: BTreeMap::new(),
        credentials: None,
    };
    let mut s = producer_settings(spec, job, &target, SOURCE_CREDENTIALS_ENV)?;
    // Partials are sent when a pane closes, in bursts, and wait for a marker anyway.
    s.set("linger.ms", "100")
        .set(
            "queue.buffering.max.kbytes",
            (queues::PRODUCER_KBYTES * queues::REPARTITION_QUEUE_FACTOR).to_string(),
        )
        .set(
            "queue.buffering.max.messages",
            (producer_queue_messages(spec) * queues::REPARTITION_QUEUE_FACTOR as usize).to_string(),
        );
    Ok(s)
}

/// The producer of dead letters, if the job has a dead-letter topic.
pub fn dead_letter_settings(
    spec: &StreamJobSpec,
    job: &str,
) -> Result<Option<ClientSettings>, SettingsError> {
    spec.dead_letter
        .as_ref()
        .map(|d| producer_settings(spec, job, &d.kafka, DEAD_LETTER_CREDENTIALS_ENV))
        .transpose()
}

/// librdkafka's default partitioner, `consistent_random`, computed by weir: the CRC-32 of the
/// key modulo the partition count, and for an empty or missing key the next partition in turn
/// (where librdkafka picks one at random). librdkafka computes that CRC-32 with zlib a byte at
/// a time: about 140 ns for a result's 80-byte key, 4% of a sparse two-stage job's merge
/// threads (issue 20); `crc32fast` computes the same CRC-32 several bytes at a time.
/// `the_partitioner_places_keys_as_librdkafka_does` checks the partitions against
/// librdkafka's own.
#[derive(Debug, Default)]
pub struct ConsistentRandom {
    next: AtomicU32,
}

impl Partitioner for ConsistentRandom {
    fn partition(
        &self,
        _topic: &str,
        key: Option<&[u8]>,
        partition_cnt: i32,
        _is_partition_available: impl Fn(i32) -> bool,
    ) -> i32 {
        let Some(count) = u32::try_from(partition_cnt).ok().filter(|c| *c > 0) else {
            // librdkafka's "unassigned": it fails the message as it would without partitions.
            return rdkafka::producer::PARTITION_UA;
        };
        let at = match key {
            Some(key) if !key.is_empty() => crc32fast::hash(key),
            _ => self.next.fetch_add(1, Ordering::Relaxed),
        };
        // Below `count`, which came from an i32.
        i32::try_from(at % count).unwrap_or(0)
    }
}

/// The configuration of a producer from `settings`, and its partitioner for the context's
/// `get_custom_partitioner`: [`ConsistentRandom`], or `None` when the settings name another
/// partitioner than librdkafka's default (a sink's `partitioner` property), which librdkafka
/// then applies itself.
pub fn producer_config(settings: &ClientSettings) -> (ClientConfig, Option<ConsistentRandom>) {
    let mut config = settings.config();
    let partitioner = match settings.get("partitioner").map(str::trim) {
        None | Some("consistent_random") => {
            // rust-rdkafka 0.39 installs a custom partitioner in the configuration's default
            // topic configuration, which librdkafka creates only once a topic property is set;
            // without one, creating the producer dereferences a null pointer (SIGSEGV, seen in
            // `the_partitioner_places_keys_as_librdkafka_does`). This topic property, naming
            // the partitioner librdkafka would use anyway, creates it.
            config.set("partitioner", "consistent_random");
            Some(ConsistentRandom::default())
        }
        Some(_) => None,
    };
    (config, partitioner)
}

/// The context of a producer that has nothing to do with its delivery reports, with
/// [`ConsistentRandom`] as its partitioner unless `None`.
#[derive(Debug, Default)]
pub struct PartitionedContext(pub Option<ConsistentRandom>);

impl rdkafka::ClientContext for PartitionedContext {}

impl ProducerContext<ConsistentRandom> for PartitionedContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}

    fn get_custom_partitioner(&self) -> Option<&ConsistentRandom> {
        self.0.as_ref()
    }
}

/// Queue `record`, waiting while librdkafka's queue is full: backpressure, so a slow broker
/// slows the caller instead of growing a buffer. Other errors are returned.
pub fn send_when_room<C, Part, K, P>(
    producer: &ThreadedProducer<C, Part>,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> Result<(), KafkaError>
where
    Part: Partitioner + 'static,
    C: ProducerContext<Part> + 'static,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> StreamJobSpec {
        let yaml = format!(
            r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: t}}
spec:
  source:
    kafka:
      bootstrapServers: "a:9092"
      topic: in
      properties: {{security.protocol: SASL_SSL, fetch.min.bytes: "1"{extra}}}
  window: {{type: tumbling, size: 1m}}
  aggregations: [{{name: n, fn: count}}]
  sink: {{kafka: {{topic: out}}}}
  deadLetter: {{kafka: {{topic: dlq, bootstrapServers: "b:9092"}}}}
"#
        );
        weir_crds::parse_stream_job(&yaml)
            .expect("valid job")
            .job
            .spec
    }

    #[test]
    fn consumer_keeps_spec_properties_but_not_the_reserved_ones() {
        let s = source_settings(&spec(""), "j").expect("settings");
        assert_eq!(s.get("bootstrap.servers"), Some("a:9092"));
        assert_eq!(s.get("fetch.min.bytes"), Some("1"));
        assert_eq!(s.get("enable.auto.commit"), Some("false"));
        assert_eq!(s.get("auto.offset.reset"), Some("earliest"));
        let err =
            source_settings(&spec(", enable.auto.commit: \"true\""), "j").expect_err("reserved");
        assert!(err.to_string().contains("enable.auto.commit"), "{err}");
    }

    #[test]
    fn sink_on_the_source_cluster_shares_its_connection_properties_only() {
        let s = sink_settings(&spec(""), "j").expect("settings");
        assert_eq!(s.get("bootstrap.servers"), Some("a:9092"));
        assert_eq!(s.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(s.get("fetch.min.bytes"), None);
        assert_eq!(s.get("enable.idempotence"), Some("true"));
        let d = dead_letter_settings(&spec(""), "j")
            .expect("settings")
            .expect("configured");
        assert_eq!(d.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(d.get("security.protocol"), None);
    }

    #[test]
    fn queues_are_bounded_by_weir_unless_the_job_says_otherwise() {
        let job = spec("");
        let c = source_settings(&job, "j").expect("consumer");
        assert_eq!(c.get("queued.min.messages"), Some("5000"));
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("2048"));
        assert_eq!(c.get("fetch.message.max.bytes"), Some("262144"));
        let p = sink_settings(&job, "j").expect("sink");
        assert_eq!(p.get("queue.buffering.max.kbytes"), Some("2048"));
        // Several batches fit in the queue, so one in flight does not stop the partition.
        assert_eq!(p.get("batch.size"), Some("262144"));
        // One group-less aggregation `n`: 160 + 29 bytes a result.
        assert_eq!(result_bytes_estimate(&job), 189);
        assert_eq!(
            p.get("queue.buffering.max.messages"),
            Some((2048 * 1024 / 189).to_string().as_str())
        );
        // The worker's one repartition producer, shared by its source partitions: four
        // result producers' room, in batches of the same size.
        let r = repartition_settings(&job, "j", "weir-j-repartition").expect("repartition");
        assert_eq!(r.get("queue.buffering.max.kbytes"), Some("8192"));
        assert_eq!(r.get("batch.size"), Some("262144"));
        assert_eq!(
            r.get("queue.buffering.max.messages"),
            Some((4 * (2048 * 1024 / 189)).to_string().as_str())
        );
        let c = source_settings(&spec(", queued.min.messages: \"500\""), "j").expect("consumer");
        assert_eq!(c.get("queued.min.messages"), Some("500"));
    }

    #[test]
    fn no_client_creates_a_topic_and_no_spec_can_make_it() {
        let job = spec("");
        let clients = [
            source_settings(&job, "j").expect("consumer"),
            sink_settings(&job, "j").expect("sink"),
            dead_letter_settings(&job, "j")
                .expect("dead letters")
                .expect("configured"),
            repartition_settings(&job, "j", "weir-j-repartition").expect("repartition"),
        ];
        for s in &clients {
            assert_eq!(s.get(AUTO_CREATE_TOPICS), Some("false"), "{s:?}");
        }
        let err = source_settings(&spec(", allow.auto.create.topics: \"true\""), "j")
            .expect_err("reserved");
        assert!(err.to_string().contains(AUTO_CREATE_TOPICS), "{err}");
    }

    #[test]
    fn credentials_are_read_from_files_and_never_printed() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("sasl.password"), "hunter2\n").expect("write");
        std::fs::write(dir.path().join("ssl.ca.pem"), "-----BEGIN-----\n").expect("write");
        std::fs::write(dir.path().join(".hidden"), "x").expect("write");
        let creds = read_credentials(dir.path()).expect("read");
        assert_eq!(creds["sasl.password"], "hunter2");
        assert_eq!(creds["ssl.ca.pem"], "-----BEGIN-----\n");
        assert!(!creds.contains_key(".hidden"));
        let s = ClientSettings {
            secrets: creds,
            ..ClientSettings::default()
        };
        let shown = format!("{s:?}");
        assert!(
            shown.contains("sasl.password") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn a_credentials_key_that_loads_code_is_refused_naming_it_and_the_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("sasl.password"), "hunter2").expect("write");
        std::fs::write(dir.path().join("plugin.library.paths"), "/tmp/x.so").expect("write");
        let err = ClientSettings::default()
            .with_secrets_from(Some(dir.path()), Role::Consumer)
            .expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("plugin.library.paths"), "{text}");
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    /// The context of a test producer: where each message was placed, by its index.
    struct Placed(
        std::sync::Mutex<Vec<(usize, i32)>>,
        Option<ConsistentRandom>,
    );

    impl rdkafka::ClientContext for Placed {}

    impl ProducerContext<ConsistentRandom> for Placed {
        type DeliveryOpaque = Box<usize>;

        fn delivery(&self, r: &rdkafka::producer::DeliveryResult<'_>, i: Box<usize>) {
            use rdkafka::Message as _;
            if let (Ok(m), Ok(mut placed)) = (r, self.0.lock()) {
                placed.push((*i, m.partition()));
            }
        }

        fn get_custom_partitioner(&self) -> Option<&ConsistentRandom> {
            self.1.as_ref()
        }
    }

    /// The partitions of `keys` in a 7-partition topic, with weir's partitioner or librdkafka's.
    fn placed(bootstrap: &str, keys: &[Vec<u8>], ours: bool) -> Vec<(usize, i32)> {
        use rdkafka::producer::{BaseProducer, Producer as _};
        let mut settings = ClientSettings::default();
        settings.set("bootstrap.servers", bootstrap);
        let (config, partitioner) = if ours {
            producer_config(&settings)
        } else {
            (settings.config(), None)
        };
        let producer: BaseProducer<Placed, ConsistentRandom> = config
            .create_with_context(Placed(Default::default(), partitioner))
            .expect("producer");
        for (i, key) in keys.iter().enumerate() {
            producer
                .send(
                    BaseRecord::with_opaque_to("out", Box::new(i))
                        .key(key)
                        .payload("x"),
                )
                .map_err(|(e, _)| e)
                .expect("queued");
        }
        producer
            .flush(std::time::Duration::from_secs(30))
            .expect("delivered");
        let mut placed = producer.context().0.lock().expect("lock").clone();
        placed.sort_unstable();
        placed
    }

    #[test]
    fn the_partitioner_places_keys_as_librdkafka_does() {
        let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("out", 7, 1).expect("topic");
        // Keys of 1 to 199 bytes (a result's is about 80), every byte value.
        let keys: Vec<Vec<u8>> = (0..500u32)
            .map(|i| {
                (0..1 + i * 7919 % 199)
                    .map(|j| (i.wrapping_mul(31) ^ j.wrapping_mul(17)) as u8)
                    .collect()
            })
            .collect();
        let theirs = placed(cluster.bootstrap_servers().as_str(), &keys, false);
        let ours = placed(cluster.bootstrap_servers().as_str(), &keys, true);
        assert_eq!(theirs.len(), keys.len());
        assert_eq!(ours, theirs);
        let used: std::collections::BTreeSet<i32> = ours.iter().map(|(_, p)| *p).collect();
        assert_eq!(used.len(), 7, "{used:?}");
    }

    #[test]
    fn another_partitioner_named_in_the_settings_is_librdkafkas_to_apply() {
        let mut s = ClientSettings::default();
        assert!(producer_config(&s).1.is_some());
        s.set("partitioner", "consistent_random");
        assert!(producer_config(&s).1.is_some());
        s.set("partitioner", "murmur2_random");
        let (config, partitioner) = producer_config(&s);
        assert!(partitioner.is_none());
        assert_eq!(config.get("partitioner"), Some("murmur2_random"));
        // Keys that are missing or empty go round the partitions (librdkafka's are random).
        let p = ConsistentRandom::default();
        let turns: Vec<i32> = (0..4)
            .map(|_| p.partition("t", None, 3, |_| true))
            .collect();
        assert_eq!(turns, [0, 1, 2, 0]);
        assert_eq!(p.partition("t", Some(b""), 3, |_| true), 1);
        assert_eq!(p.partition("t", Some(b"k"), 0, |_| true), -1);
    }
}
