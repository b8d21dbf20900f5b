//! `StreamJobSpec::validate`: every rule of the CRD schema and its CEL rules, in Rust.
//!
//! The API server enforces the same rules at `kubectl apply` (see the `x_kube(validation)`
//! attributes in `lib.rs`); this twin exists for clusters without CEL, for the operator (which
//! must never act on a bad spec) and for `weir run` on a laptop. A test feeds the same bad specs to
//! both and checks that each rule is enforced by both. When you add a rule, add it in both places.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::properties::{self, Role};
use crate::{
    Aggregation, AggregationFn, Duration, FieldPath, KafkaSink, StreamJobSpec, TopicName, Window,
    WindowType,
};

/// One problem with a spec: the field it is about and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, such as `spec.window.slide` or `spec.aggregations[2].quantile`.
    pub path: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a spec (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// The longest duration a StreamJob accepts: 8760h, a year. Keeps every window computation far
/// from i64 overflow.
pub const MAX_DURATION_MS: i64 = 8760 * 3600 * 1000;

/// The most hopping windows one record may belong to (`size / slide`, rounded up). Each record
/// updates one pane row whatever this number, but every window is closed and written
/// separately, so the work per record grows with it: `size: 1h, slide: 1ms` (3.6 million
/// windows per record) does not finish three records in minutes. 10000 leaves room for any
/// sensible sliding window: a day every 10 s is 8640, an hour every second 3600.
pub const MAX_WINDOWS_PER_RECORD: i64 = 10_000;

struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn check(&mut self, ok: bool, path: impl Into<String>, message: impl Into<String>) {
        if !ok {
            self.fail(path, message);
        }
    }

    /// A duration's value in milliseconds, or a recorded error.
    fn duration(&mut self, path: &str, d: &Option<Duration>) -> Option<i64> {
        let d = d.as_ref()?;
        match d.as_millis() {
            Ok(ms) if ms > MAX_DURATION_MS => {
                self.fail(
                    path,
                    format!("{d} is longer than the maximum, 8760h (a year)"),
                );
                None
            }
            Ok(ms) => Some(ms),
            Err(e) => {
                self.fail(path, e.to_string());
                None
            }
        }
    }

    fn positive_duration(&mut self, path: &str, d: &Option<Duration>) -> Option<i64> {
        let ms = self.duration(path, d)?;
        self.check(ms > 0, path, "must be greater than 0");
        Some(ms)
    }

    fn text(&mut self, path: &str, s: &str, max: usize) {
        if s.is_empty() {
            self.fail(path, "must not be empty");
        } else if s.len() > max {
            self.fail(path, format!("must be at most {max} characters"));
        }
    }

    fn topic(&mut self, path: &str, t: &TopicName) {
        let s = t.0.as_str();
        if s.is_empty() || s.len() > 249 {
            self.fail(path, "a topic name has 1 to 249 characters");
        } else if !s
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        {
            self.fail(
                path,
                format!("{s:?} is not a Kafka topic name (letters, digits, '.', '_' and '-')"),
            );
        }
    }

    fn field_path(&mut self, path: &str, f: &FieldPath) {
        if f.0.is_empty() || f.0.len() > 256 || f.segments().any(str::is_empty) {
            self.fail(
                path,
                format!(
                    "{:?} is not a field path: write names separated by dots, such as payment.amount",
                    f.0
                ),
            );
        }
    }

    /// Every property a job may not set on a client of `role` (see [`properties`]).
    fn properties(&mut self, path: &str, props: &BTreeMap<String, String>, role: Role) {
        for name in props.keys() {
            if let Some(why) = properties::refusal(name, role) {
                self.fail(path, why);
            }
        }
    }

    fn sink(&mut self, path: &str, sink: &KafkaSink, spec: &StreamJobSpec) {
        self.topic(&format!("{path}.topic"), &sink.topic);
        self.properties(
            &format!("{path}.properties"),
            &sink.properties,
            Role::Producer,
        );
        if let Some(b) = &sink.bootstrap_servers {
            self.text(&format!("{path}.bootstrapServers"), b, 1024);
        }
        let same_cluster = sink
            .bootstrap_servers
            .as_ref()
            .is_none_or(|b| *b == spec.source.kafka.bootstrap_servers);
        self.check(
            !(same_cluster && sink.topic == spec.source.kafka.topic),
            format!("{path}.topic"),
            "must differ from spec.source.kafka.topic: records written to the source would be read again",
        );
    }

    fn window(&mut self, w: &Window) {
        let p = "spec.window";
        let hopping = w.kind == WindowType::Hopping;
        let session = w.kind == WindowType::Session;
        match (session, &w.size) {
            (false, None) => self.fail(
                format!("{p}.size"),
                "is required for tumbling and hopping windows",
            ),
            (true, Some(_)) => self.fail(
                format!("{p}.size"),
                "is not used by session windows; set gap",
            ),
            _ => {}
        }
        match (hopping, &w.slide) {
            (true, None) => self.fail(format!("{p}.slide"), "is required for hopping windows"),
            (false, Some(_)) => self.fail(format!("{p}.slide"), "is only used by hopping windows"),
            _ => {}
        }
        match (session, &w.gap) {
            (true, None) => self.fail(format!("{p}.gap"), "is required for session windows"),
            (false, Some(_)) => self.fail(format!("{p}.gap"), "is only used by session windows"),
            _ => {}
        }
        let size = self.positive_duration(&format!("{p}.size"), &w.size);
        let slide = self.positive_duration(&format!("{p}.slide"), &w.slide);
        self.positive_duration(&format!("{p}.gap"), &w.gap);
        self.duration(&format!("{p}.allowedLateness"), &w.allowed_lateness);
        self.positive_duration(&format!("{p}.idleTimeout"), &w.idle_timeout);
        self.positive_duration(&format!("{p}.maxAheadOfClock"), &w.max_ahead_of_clock);
        self.positive_duration(
            &format!("{p}.maxAheadOfPartition"),
            &w.max_ahead_of_partition,
        );
        if let (Some(size), Some(slide)) = (size, slide.filter(|s| *s > 0)) {
            let windows = (size + slide - 1) / slide;
            self.check(
                windows <= MAX_WINDOWS_PER_RECORD,
                format!("{p}.slide"),
                format!(
                    "is too short for size {}: each record would be in {windows} windows, at most \
                     {MAX_WINDOWS_PER_RECORD} are allowed (a slide of at least size / {MAX_WINDOWS_PER_RECORD})",
                    w.size.as_ref().map_or("", |d| d.0.as_str()),
                ),
            );
        }
        if let (Some(size), Some(slide)) = (size, slide) {
            self.check(
                slide <= size,
                format!("{p}.slide"),
                format!(
                    "must not be longer than size ({} > {})",
                    w.slide.as_ref().map_or("", |d| d.0.as_str()),
                    w.size.as_ref().map_or("", |d| d.0.as_str())
                ),
            );
        }
    }

    fn aggregation(&mut self, i: usize, a: &Aggregation) {
        let p = format!("spec.aggregations[{i}]");
        let name_ok = a.name.len() <= 128
            && a.name.chars().enumerate().all(|(j, c)| {
                c.is_ascii_alphabetic()
                    || c == '_'
                    || (j > 0 && (c.is_ascii_digit() || c == '.' || c == '-'))
            })
            && !a.name.is_empty();
        self.check(
            name_ok,
            format!("{p}.name"),
            format!(
                "{:?} is not an output name: start with a letter or '_', then letters, digits, '_', '.' or '-' (at most 128)",
                a.name
            ),
        );
        match (a.function, &a.field) {
            (AggregationFn::Count, Some(_)) => self.fail(
                format!("{p}.field"),
                "count takes no field: it counts records",
            ),
            (AggregationFn::Count, None) => {}
            (f, None) => self.fail(
                format!("{p}.field"),
                format!("is required for {}", fn_name(f)),
            ),
            (_, Some(field)) => self.field_path(&format!("{p}.field"), field),
        }
        match (a.function, a.quantile) {
            (AggregationFn::Percentile, None) => self.fail(
                format!("{p}.quantile"),
                "is required for percentile (for example 0.99)",
            ),
            (AggregationFn::Percentile, Some(q)) => self.check(
                q > 0.0 && q < 1.0,
                format!("{p}.quantile"),
                format!("must be strictly between 0 and 1, not {q}"),
            ),
            (_, Some(_)) => self.fail(format!("{p}.quantile"), "is only used by percentile"),
            (_, None) => {}
        }
    }
}

fn fn_name(f: AggregationFn) -> String {
    serde_json::to_value(f)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{f:?}"))
}

impl StreamJobSpec {
    /// Check every rule of the API; `Err` lists all problems, each naming its field.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut c = Checker { errors: Vec::new() };
        let k = &self.source.kafka;
        c.text(
            "spec.source.kafka.bootstrapServers",
            &k.bootstrap_servers,
            1024,
        );
        c.topic("spec.source.kafka.topic", &k.topic);
        c.properties(
            "spec.source.kafka.properties",
            &k.properties,
            Role::Consumer,
        );
        if let Some(et) = &self.source.event_time {
            c.field_path("spec.source.eventTime.field", &et.field);
        }

        c.check(
            self.group_by.len() <= 16,
            "spec.groupBy",
            "at most 16 group fields",
        );
        let mut seen = BTreeSet::new();
        for (i, f) in self.group_by.iter().enumerate() {
            c.field_path(&format!("spec.groupBy[{i}]"), f);
            c.check(
                seen.insert(f.as_str()),
                format!("spec.groupBy[{i}]"),
                format!("{:?} is listed twice: each group field at most once", f.0),
            );
        }
        c.check(
            !(self.group_by_key && self.group_by.iter().any(|f| f.0 == "key")),
            "spec.groupBy",
            "must not name a field 'key' when groupByKey is true: both would be the output group field 'key'",
        );

        c.window(&self.window);
        if let Some(id) = self.reset.as_ref().and_then(|r| r.id.as_ref()) {
            c.check(
                !id.is_empty() && id.chars().count() <= 63,
                "spec.reset.id",
                "must be 1 to 63 characters",
            );
        }
        c.check(
            self.window.kind != WindowType::Session || self.co_partitioned(),
            "spec.repartition.coPartitioned",
            "session windows need co-partitioned groups: group by the message key alone \
             (groupByKey: true, no groupBy), or set repartition.coPartitioned: true when the \
             producer puts all records of a group in one partition",
        );
        if let Some(n) = self.repartition.partitions {
            c.check(
                (1..=10000).contains(&n),
                "spec.repartition.partitions",
                "must be between 1 and 10000",
            );
        }

        c.check(
            !self.aggregations.is_empty(),
            "spec.aggregations",
            "at least one aggregation is required",
        );
        c.check(
            self.aggregations.len() <= 64,
            "spec.aggregations",
            "at most 64 aggregations",
        );
        let mut names = BTreeSet::new();
        for (i, a) in self.aggregations.iter().enumerate() {
            c.aggregation(i, a);
            c.check(
                names.insert(a.name.as_str()),
                format!("spec.aggregations[{i}].name"),
                format!("duplicate output name {:?}", a.name),
            );
        }

        c.sink("spec.sink.kafka", &self.sink.kafka, self);
        if let Some(dl) = &self.dead_letter {
            c.sink("spec.deadLetter.kafka", &dl.kafka, self);
        }

        c.check(
            (1..=1024).contains(&self.parallelism),
            "spec.parallelism",
            format!("must be between 1 and 1024, not {}", self.parallelism),
        );
        if let Some(a) = &self.autoscaling {
            c.check(
                (1..=1024).contains(&a.min_replicas),
                "spec.autoscaling.minReplicas",
                "must be between 1 and 1024",
            );
            c.check(
                (1..=1024).contains(&a.max_replicas),
                "spec.autoscaling.maxReplicas",
                "must be between 1 and 1024",
            );
            c.check(
                a.min_replicas <= a.max_replicas,
                "spec.autoscaling.minReplicas",
                format!(
                    "must not be greater than maxReplicas ({} > {})",
                    a.min_replicas, a.max_replicas
                ),
            );
            c.check(
                a.target_lag_per_replica.is_none_or(|t| t >= 1),
                "spec.autoscaling.targetLagPerReplica",
                "must be at least 1",
            );
        }

        let cp = &self.checkpoint;
        c.positive_duration("spec.checkpoint.interval", &cp.interval);
        c.check(
            cp.store.config_map.is_some() != cp.store.object_store.is_some(),
            "spec.checkpoint.store",
            "set exactly one of configMap or objectStore",
        );
        if let Some(os) = &cp.store.object_store {
            let scheme_ok = ["s3://", "gs://", "az://"]
                .iter()
                .any(|s| os.url.starts_with(s) && os.url.len() > s.len());
            let hint = if os.url.starts_with("file:") {
                ": a local directory cannot fence a stale worker's writes (no conditional \
                 updates); weir run keeps checkpoints in a directory with --checkpoint-dir DIR"
            } else {
                ""
            };
            c.check(
                scheme_ok && os.url.len() <= 1024,
                "spec.checkpoint.store.objectStore.url",
                format!(
                    "{:?} is not an object-store URL: use s3://bucket/prefix, gs://bucket/prefix \
                     or az://container/prefix{hint}",
                    os.url
                ),
            );
        }
        c.check(
            self.worker.env.len() <= 256,
            "spec.worker.env",
            "at most 256 variables",
        );
        let mut env_names = BTreeSet::new();
        for (i, e) in self.worker.env.iter().enumerate() {
            c.check(
                !e.name.starts_with("WEIR_"),
                "spec.worker.env",
                format!(
                    "env[{i}] {} is reserved: the operator sets WEIR_* variables for the worker",
                    e.name
                ),
            );
            c.check(
                env_names.insert(e.name.as_str()),
                "spec.worker.env",
                format!("env[{i}]: duplicate name {}", e.name),
            );
        }
        if let Some(p) = &self.worker.image_pull_policy {
            c.check(
                matches!(p.as_str(), "Always" | "IfNotPresent" | "Never"),
                "spec.worker.imagePullPolicy",
                "must be Always, IfNotPresent or Never",
            );
        }

        if c.errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(c.errors))
        }
    }
}
