//! The weir API: the `StreamJob` custom resource, shared by the operator and the workers.
//!
//! This crate only describes and checks data: serde + schemars + kube's derive, no client and no
//! async runtime. The CRD YAML in `crds/streamjob.yaml` is generated from these types by
//! `cargo run -p weir-crds --bin crdgen`, and a test fails when the committed file drifts.
//!
//! Every rule the API server enforces through the schema or a CEL rule is also checked by
//! [`StreamJobSpec::validate`], so a cluster without CEL, the operator and `weir run` on a laptop
//! all report a bad job the same way: a list of problems, each naming its field.
//! [`validate_documents`] (`weir validate`) adds the schema's own checks in front, so that a
//! file with type errors in several fields reports them all.
//!
//! It is also the contract between the operator and the workers, in one home: [`names`] (object
//! names and labels), [`topics`] (the repartition topic's name and ownership), [`pod`] (environment variables, mount paths, ports), [`assignment`] and
//! [`checkpoint`] (what the job ConfigMap and the checkpoints hold), and [`plan`] (how a job is
//! split into an assignment and stages, and the repartition topic it needs); [`exposition`] is
//! the text format of both binaries' `/metrics`.
#![deny(missing_docs)]

pub mod assignment;
pub mod checkpoint;
pub mod definition;
mod description;
pub mod documents;
mod duration;
pub mod exposition;
pub mod names;
pub mod plan;
pub mod pod;
pub mod properties;
mod schema;
mod suggest;
pub mod topics;
mod validate;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, LocalObjectReference, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use documents::{validate_documents, Document, Outcome};
pub use duration::{human_ms, Duration, DurationError};
pub use suggest::unknown_field_message;
pub use topics::repartition_topic;
pub use validate::{FieldError, ValidationErrors, MAX_DURATION_MS, MAX_WINDOWS_PER_RECORD};

/// API group of every weir resource.
pub const GROUP: &str = "weir.dev";
/// API version served by this crate.
pub const VERSION: &str = "v1alpha1";

/// A windowed aggregation over one Kafka topic, written to another topic.
///
/// The operator turns a StreamJob into worker pods that split the topic's partitions between
/// them; the workers compute one result per (group, window) and write it to the sink topic.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
// kube's printcolumn(...) entries repeat `type_ = ...` by design; clippy reads them as duplicates.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "StreamJob",
    plural = "streamjobs",
    shortname = "sj",
    category = "weir",
    namespaced,
    doc = "A StreamJob: windowed metrics from one Kafka topic, written to another.",
    status = "StreamJobStatus",
    scale(
        spec_replicas_path = ".spec.parallelism",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Topic",
        type_ = "string",
        json_path = ".spec.source.kafka.topic"
    ),
    printcolumn(name = "Window", type_ = "string", json_path = ".status.window"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "Lag", type_ = "integer", json_path = ".status.lag"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("self.sink.kafka.topic != self.source.kafka.topic || (has(self.sink.kafka.bootstrapServers) && self.sink.kafka.bootstrapServers != self.source.kafka.bootstrapServers)").message("sink.kafka.topic must differ from source.kafka.topic: results written to the source would be read again").field_path(".sink.kafka.topic"),
    validation = Rule::new("!has(self.deadLetter) || self.deadLetter.kafka.topic != self.source.kafka.topic || (has(self.deadLetter.kafka.bootstrapServers) && self.deadLetter.kafka.bootstrapServers != self.source.kafka.bootstrapServers)").message("deadLetter.kafka.topic must differ from source.kafka.topic").field_path(".deadLetter.kafka.topic"),
    validation = Rule::new("self.window.type != 'session' || (has(self.repartition) && has(self.repartition.coPartitioned) ? self.repartition.coPartitioned : (has(self.groupByKey) && self.groupByKey && (!has(self.groupBy) || size(self.groupBy) == 0)))").message("session windows need co-partitioned groups: group by the message key alone, or set repartition.coPartitioned: true").field_path(".repartition.coPartitioned"),
    validation = Rule::new("!(has(self.groupByKey) && self.groupByKey && has(self.groupBy) && self.groupBy.exists(p, p == 'key'))").message("groupBy must not name a field 'key' when groupByKey is true: both would be the output group field 'key'").field_path(".groupBy"),
)]
#[serde(rename_all = "camelCase")]
pub struct StreamJobSpec {
    /// Where records come from: the Kafka topic, how records are encoded, and where their event
    /// time is.
    pub source: Source,

    /// Field paths whose values form the group of a record (for example `merchant` or
    /// `payment.merchant.id`; segments are separated by dots). Each result carries the group
    /// values under the same names. Empty, and `groupByKey` false, means one global group.
    /// Each path at most once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub group_by: Vec<FieldPath>,

    /// Also group by the Kafka message key (as a UTF-8 string, in the output group field
    /// `key`). When the key is the only group field, each group lives in one partition and the
    /// workers never need to exchange partial results.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub group_by_key: bool,

    /// The event-time window each record is counted in, and how long to wait for late records.
    pub window: Window,

    /// What to compute per (group, window). Output names must be unique.
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub aggregations: Vec<Aggregation>,

    /// Where results go: one JSON record per (group, window), keyed by group and window start.
    pub sink: Sink,

    /// Where records that cannot be used go (bad JSON, a missing or mistyped field, an
    /// unparseable event time, or arriving after their windows closed), with the reason in a
    /// header. Absent: such records are counted in the worker metrics and dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetter>,

    /// Number of worker pods. The source partitions are split between them; more workers than
    /// partitions leaves the extra ones idle, so the operator runs at most one per partition.
    /// `kubectl scale streamjob/NAME --replicas=N` sets this field.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 1024))]
    pub parallelism: i32,

    /// Scale the workers between bounds on consumer lag instead of a fixed `parallelism`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// How often and where progress is checkpointed.
    #[serde(default)]
    pub checkpoint: Checkpoint,

    /// Whether each group's records share one source partition, and if not, the internal topic
    /// through which workers exchange partial aggregates so that every result is exact.
    #[serde(default, skip_serializing_if = "Repartition::is_default")]
    pub repartition: Repartition,

    /// Settings of the worker pods.
    #[serde(default, skip_serializing_if = "WorkerTemplate::is_empty")]
    pub worker: WorkerTemplate,

    /// Stop the workers (each after a final checkpoint) and keep them stopped; `false` again
    /// resumes exactly where they stopped. Like `spec.suspend` of a CronJob or Job.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// Start every partition again from a point in the source topic, once per `(to, id)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<Reset>,
}

fn default_parallelism() -> i32 {
    1
}

/// A dotted path to a field of a JSON record, such as `amount` or `payment.merchant.id`.
#[derive(
    JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(transparent)]
pub struct FieldPath(
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^[^.]+(\.[^.]+)*$"))] pub String,
);

impl FieldPath {
    /// The path's segments, outermost first.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for FieldPath {
    fn from(s: &str) -> Self {
        FieldPath(s.to_string())
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where records come from.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// The Kafka topic to read.
    pub kafka: KafkaSource,

    /// How record values are encoded. Only `json` (one JSON object per record) for now.
    #[serde(default)]
    pub format: Format,

    /// Where a record's event time comes from. Absent: the Kafka record timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<EventTime>,
}

/// A Kafka topic to read, and how to connect.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.properties) || !['plugin.library.paths', 'sasl.kerberos.kinit.cmd', 'ssl.engine.location', 'enable.auto.commit', 'enable.auto.offset.store', 'enable.partition.eof', 'allow.auto.create.topics'].exists(k, k in self.properties)").message("properties must not set plugin.library.paths, sasl.kerberos.kinit.cmd or ssl.engine.location (they load code or run a command), nor enable.auto.commit, enable.auto.offset.store, enable.partition.eof or allow.auto.create.topics (set by weir)").field_path(".properties"))]
#[serde(rename_all = "camelCase")]
pub struct KafkaSource {
    /// Comma-separated `host:port` list of brokers to bootstrap from.
    #[schemars(length(min = 1, max = 1024))]
    pub bootstrap_servers: String,

    /// Topic to read. Its partitions are split between the workers.
    pub topic: TopicName,

    /// Where to start when the job has no checkpoint yet: `earliest` (the oldest retained record),
    /// `latest` (only records produced from now on), or an RFC 3339 time (the first record whose
    /// Kafka timestamp is at or after it; results start at the first window starting at or after
    /// it). With a checkpoint, the job always resumes where it left off; `reset` starts it again.
    #[serde(default)]
    pub start_from: StartFrom,

    /// Extra librdkafka properties for the consumer (for example `security.protocol: SASL_SSL`,
    /// `sasl.mechanism: SCRAM-SHA-512`). Secrets belong in `credentials`, not here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,

    /// A Secret whose keys are librdkafka properties with secret values (for example
    /// `sasl.username`, `sasl.password`, `ssl.key.password`, or inline PEM in `ssl.ca.pem`,
    /// `ssl.certificate.pem`, `ssl.key.pem`). They are mounted into the workers and never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SecretReference>,
}

/// A Kafka topic name.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(transparent)]
pub struct TopicName(
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))] pub String,
);

impl std::fmt::Display for TopicName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A reference to a Secret in the job's namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of the Secret, in the StreamJob's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// Where to start reading when there is no checkpoint (`startFrom`), or where a reset starts
/// (`reset.to`): `earliest`, `latest`, or an RFC 3339 time.
///
/// A time is found through each partition's Kafka timestamp index (ListOffsets): the first
/// record whose Kafka timestamp is at or after it. Results then start at the first window that
/// starts at or after the time, so every window emitted is complete (docs/semantics.md,
/// "Edits, resets and start times").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The oldest record still retained in each partition.
    #[default]
    Earliest,
    /// The end of each partition: only records produced after the job starts.
    Latest,
    /// The first record whose Kafka timestamp is at or after this time, ms since the Unix epoch.
    Time(i64),
}

/// The pattern the API server checks `startFrom` and `reset.to` against; [`StartFrom::parse`]
/// then checks that the time exists.
pub const START_FROM_PATTERN: &str = r"^(earliest|latest|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2}))$";

impl StartFrom {
    /// Read `earliest`, `latest` or an RFC 3339 time with a time zone.
    pub fn parse(s: &str) -> Result<StartFrom, String> {
        match s {
            "earliest" => Ok(StartFrom::Earliest),
            "latest" => Ok(StartFrom::Latest),
            _ => {
                let t = humantime::parse_rfc3339_weak(s)
                    .ok()
                    .filter(|_| s.ends_with(['Z', 'z']) || has_offset(s))
                    .or_else(|| parse_with_offset(s))
                    .ok_or_else(|| {
                        format!(
                            "{s:?} is not earliest, latest or an RFC 3339 time with a time zone \
                             (such as 2026-12-01T08:00:00Z)"
                        )
                    })?;
                let ms = match t.duration_since(std::time::UNIX_EPOCH) {
                    Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
                    Err(_) => return Err(format!("{s:?} is before 1970-01-01T00:00:00Z")),
                };
                Ok(StartFrom::Time(ms))
            }
        }
    }

    /// The text form: `earliest`, `latest`, or the time in RFC 3339, UTC, with milliseconds.
    pub fn text(&self) -> String {
        match self {
            StartFrom::Earliest => "earliest".to_string(),
            StartFrom::Latest => "latest".to_string(),
            StartFrom::Time(ms) => {
                let t = std::time::UNIX_EPOCH
                    + std::time::Duration::from_millis(u64::try_from(*ms).unwrap_or(0));
                humantime::format_rfc3339_millis(t).to_string()
            }
        }
    }
}

fn has_offset(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() > 6 && matches!(b[b.len() - 6], b'+' | b'-') && b[b.len() - 3] == b':'
}

/// An RFC 3339 time with a numeric offset (`+02:00`), which humantime does not read.
fn parse_with_offset(s: &str) -> Option<std::time::SystemTime> {
    if !has_offset(s) {
        return None;
    }
    let (local, offset) = s.split_at(s.len() - 6);
    let sign: i64 = if offset.starts_with('-') { -1 } else { 1 };
    let hours: u64 = offset.get(1..3)?.parse().ok()?;
    let minutes: u64 = offset.get(4..6)?.parse().ok()?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    let t = humantime::parse_rfc3339_weak(local).ok()?;
    let shift = std::time::Duration::from_secs(hours * 3600 + minutes * 60);
    // 10:00+02:00 is 08:00Z.
    if sign > 0 {
        t.checked_sub(shift)
    } else {
        t.checked_add(shift)
    }
}

impl std::fmt::Display for StartFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

impl Serialize for StartFrom {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text())
    }
}

impl<'de> Deserialize<'de> for StartFrom {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        StartFrom::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for StartFrom {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StartFrom".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": START_FROM_PATTERN,
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

/// A reset of a running job to a point in the source topic: its checkpoints are set aside, and
/// every partition starts again from `to` as a new job would (docs/operator.md, "Resetting a
/// job"). Acted on once per `(to, id)`: the checkpoints remember the reset they applied, so the
/// field may stay in a GitOps repository; change `id` (or `to`) to reset again.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Reset {
    /// Where to start again: `earliest`, `latest`, or an RFC 3339 time.
    pub to: StartFrom,

    /// Any text that names this reset (for example a date or a ticket); change it to reset
    /// to the same `to` again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub id: Option<String>,
}

impl Reset {
    /// What a checkpoint records of the reset it applied: `to`, and `#id` when set.
    pub fn identity(&self) -> String {
        match &self.id {
            Some(id) => format!("{}#{id}", self.to.text()),
            None => self.to.text(),
        }
    }
}

/// Encoding of record values.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum Format {
    /// One JSON object per record value.
    #[default]
    Json,
}

/// Where a record's event time is read from.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventTime {
    /// Field path holding the event time.
    pub field: FieldPath,

    /// How the field is written: `rfc3339` (a string such as `2026-01-01T00:00:00.250Z`),
    /// `epochMillis` or `epochSeconds` (a number, or a string holding one; seconds may have a
    /// fraction).
    #[serde(default)]
    pub format: TimeFormat,
}

/// Encoding of an event-time field.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum TimeFormat {
    /// An RFC 3339 timestamp string with a time zone, such as `2026-01-01T12:00:00Z`.
    #[default]
    Rfc3339,
    /// Milliseconds since the Unix epoch.
    EpochMillis,
    /// Seconds since the Unix epoch, possibly with a fraction.
    EpochSeconds,
}

/// An event-time window. Windows are aligned to the Unix epoch.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.type == 'session' || has(self.size)").message("size is required for tumbling and hopping windows").field_path(".size"),
    validation = Rule::new("self.type != 'session' || !has(self.size)").message("size is not used by session windows; set gap").field_path(".size"),
    validation = Rule::new("self.type == 'hopping' || !has(self.slide)").message("slide is only used by hopping windows").field_path(".slide"),
    validation = Rule::new("self.type != 'hopping' || has(self.slide)").message("slide is required for hopping windows").field_path(".slide"),
    validation = Rule::new("!has(self.slide) || !has(self.size) || duration(self.slide) <= duration(self.size)").message("slide must not be longer than size").field_path(".slide"),
    validation = Rule::new("self.type == 'session' || !has(self.gap)").message("gap is only used by session windows").field_path(".gap"),
    validation = Rule::new("self.type != 'session' || has(self.gap)").message("gap is required for session windows").field_path(".gap"),
    validation = Rule::new("!has(self.size) || duration(self.size) > duration('0s')").message("size must be greater than 0").field_path(".size"),
    validation = Rule::new("!has(self.slide) || duration(self.slide) > duration('0s')").message("slide must be greater than 0").field_path(".slide"),
    validation = Rule::new("!has(self.gap) || duration(self.gap) > duration('0s')").message("gap must be greater than 0").field_path(".gap"),
    validation = Rule::new("!has(self.idleTimeout) || duration(self.idleTimeout) > duration('0s')").message("idleTimeout must be greater than 0").field_path(".idleTimeout"),
    validation = Rule::new("!has(self.size) || duration(self.size) <= duration('8760h')").message("size must be at most 8760h (a year)").field_path(".size"),
    validation = Rule::new("!has(self.gap) || duration(self.gap) <= duration('8760h')").message("gap must be at most 8760h (a year)").field_path(".gap"),
    validation = Rule::new("!has(self.allowedLateness) || duration(self.allowedLateness) <= duration('8760h')").message("allowedLateness must be at most 8760h (a year)").field_path(".allowedLateness"),
    validation = Rule::new("!has(self.idleTimeout) || duration(self.idleTimeout) <= duration('8760h')").message("idleTimeout must be at most 8760h (a year)").field_path(".idleTimeout"),
    validation = Rule::new("!has(self.slide) || !has(self.size) || duration(self.slide) >= duration('24h') || duration(self.size) <= duration(string(duration(self.slide).getMilliseconds() * 10000) + 'ms')").message("size / slide must be at most 10000: a record is in that many hopping windows").field_path(".slide"),
    validation = Rule::new("!has(self.maxAheadOfClock) || duration(self.maxAheadOfClock) > duration('0s')").message("maxAheadOfClock must be greater than 0").field_path(".maxAheadOfClock"),
    validation = Rule::new("!has(self.maxAheadOfClock) || duration(self.maxAheadOfClock) <= duration('8760h')").message("maxAheadOfClock must be at most 8760h (a year)").field_path(".maxAheadOfClock"),
    validation = Rule::new("!has(self.maxAheadOfPartition) || duration(self.maxAheadOfPartition) > duration('0s')").message("maxAheadOfPartition must be greater than 0").field_path(".maxAheadOfPartition"),
    validation = Rule::new("!has(self.maxAheadOfPartition) || duration(self.maxAheadOfPartition) <= duration('8760h')").message("maxAheadOfPartition must be at most 8760h (a year)").field_path(".maxAheadOfPartition"),
)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    /// `tumbling` (fixed, non-overlapping windows of `size`), `hopping` (windows of `size`
    /// starting every `slide`; a record is in every window that contains it) or `session`
    /// (activity separated by at least `gap` of event time).
    #[serde(rename = "type")]
    pub kind: WindowType,

    /// Length of a tumbling or hopping window, such as `1m` or `1h30m`. At most `8760h`, like
    /// every duration of a StreamJob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Duration>,

    /// Hopping windows only: how far apart consecutive windows start. At most `size`, and at
    /// least `size / 10000` (a record is in `size / slide` windows); it need not divide `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slide: Option<Duration>,

    /// Session windows only: a session ends when no record arrives within this much event time
    /// of its latest one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<Duration>,

    /// How far behind the largest event time seen in a partition a record may be and still be
    /// counted. A window is closed, and its result written, once the partition watermark (largest
    /// event time minus this) reaches its end. Default `0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_lateness: Option<Duration>,

    /// A partition that has had no record for this long (wall-clock time) stops holding back the
    /// windows of the others. Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,

    /// A record whose event time is further ahead of the worker's wall clock than this is
    /// refused (dead letter `future`) and does not move the watermark: one record with a typo in
    /// its year would otherwise close every open window early and make the records after it
    /// late. Default `24h`, more than any time-zone mistake (at most 14h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ahead_of_clock: Option<Duration>,

    /// Also refuse (dead letter `future`) a record further ahead of its partition's largest
    /// event time so far than this: catches an outlier while replaying history, when every
    /// record is far behind the wall clock. Absent: off. When a partition's records really jump
    /// ahead by more than this (a gap in the data), the first 99 after the jump are refused and
    /// the 100th in a row is taken as the partition's new time: choose it larger than the gaps
    /// in your data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ahead_of_partition: Option<Duration>,
}

/// The kind of window.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum WindowType {
    /// Fixed-size, non-overlapping windows.
    Tumbling,
    /// Fixed-size windows that start every `slide`, so they overlap when slide < size.
    Hopping,
    /// Windows of activity separated by a gap of inactivity.
    Session,
}

/// One value computed per (group, window).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.fn == 'count' || has(self.field)").message("field is required for every aggregation but count").field_path(".field"),
    validation = Rule::new("self.fn != 'count' || !has(self.field)").message("count takes no field: it counts records").field_path(".field"),
    validation = Rule::new("self.fn != 'percentile' || has(self.quantile)").message("quantile is required for percentile").field_path(".quantile"),
    validation = Rule::new("self.fn == 'percentile' || !has(self.quantile)").message("quantile is only used by percentile").field_path(".quantile"),
    validation = Rule::new("!has(self.quantile) || (self.quantile > 0.0 && self.quantile < 1.0)").message("quantile must be strictly between 0 and 1").field_path(".quantile"),
)]
#[serde(rename_all = "camelCase")]
pub struct Aggregation {
    /// Name of the value in each result's `values` object. Unique within the job.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.-]*$")
    )]
    pub name: String,

    /// The function: `count` (records), `sum`, `min`, `max`, `mean`, `stddev` and `variance`
    /// (sample, n-1; null below two values), `countDistinct` (HyperLogLog, about 0.8% standard
    /// error; exact for small counts), `percentile` (with `quantile`; within 1% relative error),
    /// `first` and `last` (the field's value in the earliest and latest record by event time).
    #[serde(rename = "fn")]
    pub function: AggregationFn,

    /// Field path the function reads. Required by every function but `count`. Numeric functions
    /// accept JSON numbers and strings holding a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<FieldPath>,

    /// `percentile` only: the quantile, strictly between 0 and 1 (0.99 for p99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantile: Option<f64>,
}

/// An aggregation function.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum AggregationFn {
    /// Number of records.
    Count,
    /// Sum of a numeric field.
    Sum,
    /// Smallest value of a numeric field.
    Min,
    /// Largest value of a numeric field.
    Max,
    /// Arithmetic mean of a numeric field.
    Mean,
    /// Sample standard deviation (n-1) of a numeric field.
    Stddev,
    /// Sample variance (n-1) of a numeric field.
    Variance,
    /// Approximate number of distinct values of a field.
    CountDistinct,
    /// Approximate quantile of a numeric field.
    Percentile,
    /// Value of the field in the record with the earliest event time.
    First,
    /// Value of the field in the record with the latest event time.
    Last,
}

impl AggregationFn {
    /// Whether the function reads a numeric field.
    pub fn is_numeric(self) -> bool {
        !matches!(
            self,
            AggregationFn::Count
                | AggregationFn::CountDistinct
                | AggregationFn::First
                | AggregationFn::Last
        )
    }
}

/// Where results are written.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Sink {
    /// The Kafka topic for results.
    pub kafka: KafkaSink,
}

/// A Kafka topic to write to.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.properties) || !['plugin.library.paths', 'sasl.kerberos.kinit.cmd', 'ssl.engine.location', 'enable.idempotence', 'allow.auto.create.topics'].exists(k, k in self.properties)").message("properties must not set plugin.library.paths, sasl.kerberos.kinit.cmd or ssl.engine.location (they load code or run a command), nor enable.idempotence or allow.auto.create.topics (set by weir)").field_path(".properties"))]
#[serde(rename_all = "camelCase")]
pub struct KafkaSink {
    /// Topic to write to. A compacted topic keeps exactly one result per (group, window).
    pub topic: TopicName,

    /// Brokers of the target cluster, when it is not the source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub bootstrap_servers: Option<String>,

    /// Extra librdkafka properties for the producer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,

    /// A Secret whose keys are librdkafka properties with secret values, used when the target
    /// cluster is not the source's. Absent: the source's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SecretReference>,
}

/// Where records that cannot be used go.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The dead-letter Kafka topic. Each record keeps its original key and value, with headers
    /// naming the reason and the source topic, partition and offset.
    pub kafka: KafkaSink,
}

/// Bounds for lag-based autoscaling of the workers.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not be greater than maxReplicas").field_path(".minReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Fewest workers.
    #[schemars(range(min = 1, max = 1024))]
    pub min_replicas: i32,

    /// Most workers (more than the partition count is never useful).
    #[schemars(range(min = 1, max = 1024))]
    pub max_replicas: i32,

    /// Consumer lag (records) one worker is expected to absorb; more lag per worker scales up.
    /// Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_lag_per_replica: Option<i64>,
}

/// How progress is checkpointed.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.interval) || duration(self.interval) > duration('0s')").message("interval must be greater than 0").field_path(".interval"),
    validation = Rule::new("!has(self.interval) || duration(self.interval) <= duration('8760h')").message("interval must be at most 8760h (a year)").field_path(".interval"),
)]
pub struct Checkpoint {
    /// Time between checkpoints of each partition's progress. Default `10s`. After a crash, at
    /// most this much work is read again (never counted twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,

    /// Where checkpoints are stored. Default: ConfigMaps next to the job.
    #[serde(default)]
    pub store: CheckpointStore,

    /// Delete the checkpoints (and a two-stage job's repartition topic) when the StreamJob is
    /// deleted, once its workers have stopped. Default false: recreating a job of the same name
    /// resumes where it stopped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_on_job_deletion: bool,
}

impl Checkpoint {
    /// The default of [`Checkpoint::interval`].
    pub const DEFAULT_INTERVAL_MS: i64 = 10_000;

    /// The time between checkpoints, ms: [`Checkpoint::interval`], or its default of 10 s (also
    /// when it does not parse, which validation refuses), at least 1 ms.
    pub fn interval_ms(&self) -> i64 {
        self.interval
            .as_ref()
            .and_then(|d| d.as_millis().ok())
            .unwrap_or(Self::DEFAULT_INTERVAL_MS)
            .max(1)
    }
}

/// A checkpoint store: exactly one of `configMap` or `objectStore`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.configMap) != has(self.objectStore)").message("set exactly one of configMap or objectStore"))]
pub struct CheckpointStore {
    /// Store checkpoints in ConfigMaps in the job's namespace (written with optimistic
    /// concurrency, so a worker that lost a partition cannot overwrite its new owner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapStore>,

    /// Store checkpoints in object storage (S3, GCS or Azure Blob), written with conditional
    /// puts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_store: Option<ObjectStore>,
}

impl Default for CheckpointStore {
    fn default() -> Self {
        CheckpointStore {
            config_map: Some(ConfigMapStore {}),
            object_store: None,
        }
    }
}

/// ConfigMap checkpoint store. No settings yet.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
pub struct ConfigMapStore {}

/// Object-storage checkpoint store.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStore {
    /// Location: `s3://bucket/prefix`, `gs://bucket/prefix` or `az://container/prefix`. A
    /// local directory (`file://`) is not an object store weir can fence writes in; `weir run`
    /// keeps checkpoints in a directory with `--checkpoint-dir`.
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^(s3|gs|az)://.+$"))]
    pub url: String,

    /// Endpoint of an S3-compatible service (MinIO, SeaweedFS, ...). Absent: the provider's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub endpoint: Option<String>,

    /// Region of the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,

    /// A Secret with the store's credentials as environment variables understood by the
    /// provider (for S3: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`). Absent: the pod's
    /// ambient identity (IRSA, workload identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SecretReference>,
}

/// How the records of one group are spread over the source partitions.
///
/// When every record of a group is in one partition (groups are *co-partitioned*, as when the
/// group is the message key), each worker computes its groups' results alone. Otherwise results
/// are computed in two stages: each source partition pre-aggregates its records, the partial
/// aggregates go by group through an internal repartition topic, and a second stage merges them
/// and closes a window only when every source partition's watermark has passed it. Results are
/// the same either way; the second stage costs a topic and some latency.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Repartition {
    /// `true`: every record of a group is in one source partition (for example, the producer
    /// keys records by the group field), so no second stage runs. Absent: inferred, true only
    /// when the group is the message key alone (`groupByKey: true` and no `groupBy`). Session
    /// windows need co-partitioned groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub co_partitioned: Option<bool>,

    /// Partitions of the repartition topic (the second stage's parallelism). Default: as many as
    /// the source topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub partitions: Option<i32>,

    /// Replication factor of the repartition topic when the operator creates it. Default: the
    /// brokers' `default.replication.factor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: Option<i32>,
}

impl Repartition {
    fn is_default(&self) -> bool {
        self == &Repartition::default()
    }
}

impl StreamJobSpec {
    /// Whether the job runs in one stage: its groups are co-partitioned, declared or inferred
    /// (see [`Repartition::co_partitioned`]).
    pub fn co_partitioned(&self) -> bool {
        self.repartition
            .co_partitioned
            .unwrap_or(self.group_by_key && self.group_by.is_empty())
    }
}

/// Settings of the worker pods.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("!has(self.env) || self.env.all(e, !e.name.startsWith('WEIR_'))").message("env must not set WEIR_* variables: the operator sets them for the worker").field_path(".env"))]
#[serde(rename_all = "camelCase")]
pub struct WorkerTemplate {
    /// Worker container image. Absent: the operator's default, the same version as the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,

    /// Image pull policy: `Always`, `IfNotPresent` or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(Always|IfNotPresent|Never)$"))]
    pub image_pull_policy: Option<String>,

    /// Secrets for pulling the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// CPU and memory requests and limits of each worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels a worker pod's node must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints the worker pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Extra environment variables of the worker container (at most 256, each name once). Names
    /// starting with `WEIR_` are reserved: the operator sets them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])
    )]
    pub env: Vec<EnvVar>,
}

impl WorkerTemplate {
    fn is_empty(&self) -> bool {
        self == &WorkerTemplate::default()
    }
}

/// What the operator last observed of a StreamJob.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StreamJobStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready` (results are flowing), `Progressing` (a change is rolling out) and `Degraded`
    /// (something needs attention), each with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Worker pods that exist.
    #[serde(default)]
    pub replicas: i32,

    /// Worker pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Label selector of the worker pods, for the scale subresource (HPA, KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// A short description of the window, such as `tumbling 1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,

    /// Partitions of the source topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,

    /// Version of the partition assignment; it changes only when the assignment does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_epoch: Option<i64>,

    /// Records in the source topic not yet checkpointed, summed over partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,

    /// Two-stage jobs: partial aggregates in the repartition topic not yet checkpointed by the
    /// second stage, summed over its partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repartition_lag: Option<i64>,

    /// Time of the oldest of the partitions' latest checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint_time: Option<Time>,

    /// The result definition of the spec (what shapes results: source, event time, group-by,
    /// window, aggregations) and how far the workers took it up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<DefinitionStatus>,

    /// The last `spec.reset` the operator saw, and how far the workers applied it. Kept when
    /// `spec.reset` is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<ResetStatus>,

    /// Jobs with `spec.autoscaling`: the autoscaler's state and last decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,
}

/// The lag autoscaler's state (docs/operator.md, "Autoscaling").
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// Workers the autoscaler wants.
    pub desired_replicas: i32,

    /// Workers running when it decided.
    pub current_replicas: i32,

    /// Why: `LagGrowing` (scaled up), `LagLow` (scaled down after the stabilisation window),
    /// `LagDraining`, `WithinTarget`, `Stabilizing`, `Cooldown`, `Warming`, `RollingOut`,
    /// `Suspended` or `Bounds`.
    pub reason: String,

    /// The numbers behind the reason (lag, target, rates), as they were when it last changed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,

    /// When the autoscaler last changed the number of workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
}

/// `status.definition`: the spec's result definition and the source partitions that still
/// compute a previous one.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DefinitionStatus {
    /// The fingerprint of the spec's result definition: 16 hex digits (the same the workers
    /// record in every checkpoint).
    pub fingerprint: String,

    /// Source partitions whose checkpoint still holds a previous definition: the workers have
    /// not taken the edit up there yet. 0 once every partition computes this definition.
    #[serde(default)]
    pub previous_partitions: i32,

    /// Once every partition took this definition up: the start of its first window (the
    /// latest over the partitions). Results of windows starting earlier are the previous
    /// definition's (or were not computed). Absent while partitions still run a previous
    /// definition, and when every window is computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_from: Option<Time>,
}

/// `status.reset`: a `spec.reset` and how far it was applied.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResetStatus {
    /// The reset's identity, as the checkpoints record it: `to`, and `#id` when an id is set.
    pub id: String,

    /// Where the partitions start again: `earliest`, `latest` or an RFC 3339 time.
    pub to: String,

    /// Source partitions whose checkpoint shows the reset applied.
    #[serde(default)]
    pub applied_partitions: i32,

    /// Source partitions.
    #[serde(default)]
    pub partitions: i32,

    /// When the operator saw every partition apply it; absent until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// A StreamJob file that could not be read as a StreamJob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Path of the offending field (`spec.window.size`), empty when the text is not YAML at all.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// Fields the API does not know, met before parsing stopped (a typo such as `windw` is
    /// often why a required field is missing).
    pub unknown_fields: Vec<String>,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() || self.path == "." {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ParseError {}

/// A parsed StreamJob file, with the fields the API does not know (typos such as
/// `allowedLatness`), which the API server would prune or refuse.
#[derive(Debug, Clone)]
pub struct ParsedJob {
    /// The job.
    pub job: StreamJob,
    /// Paths of fields that were ignored because the API has no such field.
    pub unknown_fields: Vec<String>,
}

/// Parse one StreamJob from YAML (or JSON), as written in a file for `kubectl apply`. Errors
/// name the field; unknown fields are reported, not silently dropped.
pub fn parse_stream_job(text: &str) -> Result<ParsedJob, ParseError> {
    let value: serde_norway::Value = serde_norway::from_str(text).map_err(|e| ParseError {
        path: String::new(),
        message: format!("not valid YAML: {e}"),
        unknown_fields: Vec::new(),
    })?;
    let field = |k: &str| {
        value
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    if api_version != format!("{GROUP}/{VERSION}") || kind != "StreamJob" {
        return Err(ParseError {
            path: String::new(),
            message: format!(
                "expected apiVersion: {GROUP}/{VERSION} and kind: StreamJob, found {api_version:?} and {kind:?}"
            ),
            unknown_fields: Vec::new(),
        });
    }
    let mut unknown_fields = Vec::new();
    let mut on_unknown = |path: serde_ignored::Path<'_>| {
        let path = suggest::field_path(&path);
        // The typed object keeps neither; both were checked above.
        if path != "apiVersion" && path != "kind" {
            unknown_fields.push(path)
        }
    };
    let de = serde_ignored::Deserializer::new(value, &mut on_unknown);
    let parsed: Result<StreamJob, _> = serde_path_to_error::deserialize(de);
    match parsed {
        Ok(job) => Ok(ParsedJob {
            job,
            unknown_fields,
        }),
        Err(e) => Err(ParseError {
            path: e.path().to_string(),
            message: e.inner().to_string(),
            unknown_fields,
        }),
    }
}

/// Every problem of a StreamJob file in one list, as `weir run` reports them: its unknown
/// fields, each with the field it probably meant; then the error that stopped parsing, or else
/// every problem [`StreamJobSpec::validate`] finds. Each entry starts with the field's path.
pub fn check_stream_job(text: &str) -> Result<StreamJob, Vec<String>> {
    let unknown = |fields: &[String]| -> Vec<String> {
        fields
            .iter()
            .map(|f| format!("{f}: {}", unknown_field_message(f)))
            .collect()
    };
    match parse_stream_job(text) {
        Err(e) => {
            let mut problems = unknown(&e.unknown_fields);
            problems.push(e.to_string());
            Err(problems)
        }
        Ok(parsed) => {
            let mut problems = unknown(&parsed.unknown_fields);
            if let Err(errors) = parsed.job.spec.validate() {
                problems.extend(errors.0.iter().map(ToString::to_string));
            }
            if problems.is_empty() {
                Ok(parsed.job)
            } else {
                Err(problems)
            }
        }
    }
}

/// The CRD YAML exactly as committed in `crds/streamjob.yaml`.
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    use kube::CustomResourceExt;
    let mut crd = StreamJob::crd();
    // `kubectl explain` wraps text itself: the doc comments' line breaks would make it ragged.
    description::unwrap_all(&mut crd);
    let body = serde_norway::to_string(&crd)?;
    Ok(format!(
        "# Generated by `cargo run -p weir-crds --bin crdgen` from crds/src/lib.rs. Do not edit.\n{body}"
    ))
}
