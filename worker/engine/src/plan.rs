//! A StreamJob compiled for the record path: field paths resolved into a lookup tree, durations
//! in milliseconds, aggregations in output order. Built once per job; read-only afterwards.

use weir_crds::{AggregationFn, StreamJobSpec, TimeFormat, ValidationErrors, WindowType};

use crate::decode::FieldTree;
use crate::time;

/// How windows are laid out, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Windows `[k·slide, k·slide + size)`; tumbling windows have `slide == size`. State is kept
    /// per `pane` (the gcd of size and slide), so a record updates one accumulator row whatever
    /// the number of windows it belongs to.
    Aligned {
        /// Window length.
        size: i64,
        /// Distance between window starts.
        slide: i64,
        /// gcd(size, slide).
        pane: i64,
    },
    /// Sessions: records less than `gap` apart belong to one window `[first, last + gap)`.
    Session {
        /// Inactivity gap.
        gap: i64,
    },
}

/// Where a record's event time comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSource {
    /// The Kafka record timestamp.
    Kafka,
    /// A field (its slot in the decoded record) in a format.
    Field {
        /// Slot index in the decoded record.
        slot: usize,
        /// How the field is written.
        format: TimeFormat,
    },
}

/// One aggregation as the record path needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct AggPlan {
    /// Output name.
    pub name: String,
    /// Function.
    pub function: AggregationFn,
    /// Quantile for percentile.
    pub quantile: Option<f64>,
    /// Slot of the field it reads, if any.
    pub slot: Option<usize>,
}

/// A group-by component: the message key or a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupPart {
    /// The Kafka message key, output as `key`.
    Key,
    /// A field, output under its path.
    Field {
        /// Slot index in the decoded record.
        slot: usize,
    },
}

/// A StreamJob ready for the engine.
#[derive(Debug, Clone)]
pub struct JobPlan {
    /// Field paths to extract, and the slot each lands in.
    pub fields: FieldTree,
    /// Names of the slots, for error messages (`missing field payment.amount`).
    pub slot_names: Vec<String>,
    /// Group-by components in output order, with their output names.
    pub group: Vec<(String, GroupPart)>,
    /// Event-time source.
    pub time: TimeSource,
    /// Window layout.
    pub window: WindowKind,
    /// Allowed lateness in ms.
    pub lateness: i64,
    /// Idle timeout in ms (wall clock; used by the runtime, not the engine).
    pub idle_timeout: i64,
    /// Aggregations in output order.
    pub aggs: Vec<AggPlan>,
    /// The event times accepted, inclusive: every window of a record in this range starts and
    /// ends within years 1 to 9999, so results can be written as RFC 3339.
    pub time_range: (i64, i64),
    /// A record further ahead of the wall clock than this (ms) is refused as `future`.
    pub max_ahead_of_clock: i64,
    /// A record further ahead of its partition's largest event time than this (ms) is refused
    /// as `future`; `None`: no such check.
    pub max_ahead_of_partition: Option<i64>,
    /// The result texts' object keys, `"name":` as JSON (escaped once, not per result): of
    /// each group-by component, then of each aggregation.
    result_keys: (Vec<String>, Vec<String>),
}

/// A duration `validate()` has checked, in ms; a failure here would be a bug in it.
fn ms(d: &Option<weir_crds::Duration>, default: i64) -> i64 {
    d.as_ref()
        .and_then(|d| d.as_millis().ok())
        .unwrap_or(default)
}

/// The window layout of a spec's window.
fn window_kind(w: &weir_crds::Window) -> WindowKind {
    match w.kind {
        WindowType::Tumbling => {
            let size = ms(&w.size, 1).max(1);
            WindowKind::Aligned {
                size,
                slide: size,
                pane: size,
            }
        }
        WindowType::Hopping => {
            let size = ms(&w.size, 1).max(1);
            let slide = ms(&w.slide, size).clamp(1, size);
            WindowKind::Aligned {
                size,
                slide,
                pane: gcd(size, slide),
            }
        }
        WindowType::Session => WindowKind::Session {
            gap: ms(&w.gap, 1).max(1),
        },
    }
}

/// [`JobPlan::group_keys`] and [`JobPlan::agg_keys`].
fn result_keys(group: &[(String, GroupPart)], aggs: &[AggPlan]) -> (Vec<String>, Vec<String>) {
    let key = |name: &str| format!("{}:", serde_json::Value::from(name));
    (
        group.iter().map(|(name, _)| key(name)).collect(),
        aggs.iter().map(|a| key(&a.name)).collect(),
    )
}

/// Idle timeout when the spec sets none.
pub const DEFAULT_IDLE_TIMEOUT_MS: i64 = 30_000;

/// `maxAheadOfClock` when the spec sets none: a day. More than any time-zone mistake (offsets
/// reach 14h) or a producer's clock that is off by hours, so live data is never refused; far
/// less than a typo in the year or the month.
pub const DEFAULT_MAX_AHEAD_OF_CLOCK_MS: i64 = 24 * 3600 * 1000;

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl JobPlan {
    /// Compile a spec. Fails with the same field errors as `StreamJobSpec::validate`.
    pub fn new(spec: &StreamJobSpec) -> Result<JobPlan, ValidationErrors> {
        spec.validate()?;
        let mut fields = FieldTree::default();
        let mut slot_names = Vec::new();
        // Exact slots keep a number's exact value: group values and values compared as JSON
        // (countDistinct, first, last); the event time and numeric aggregations need an f64.
        let mut slot_of = |path: &weir_crds::FieldPath, exact: bool| {
            let slot = if exact {
                fields.insert_exact(path.segments())
            } else {
                fields.insert(path.segments())
            };
            if slot == slot_names.len() {
                slot_names.push(path.as_str().to_string());
            }
            slot
        };

        let mut group = Vec::new();
        if spec.group_by_key {
            group.push(("key".to_string(), GroupPart::Key));
        }
        for path in &spec.group_by {
            let slot = slot_of(path, true);
            group.push((path.as_str().to_string(), GroupPart::Field { slot }));
        }

        let time = match &spec.source.event_time {
            None => TimeSource::Kafka,
            Some(et) => TimeSource::Field {
                slot: slot_of(&et.field, false),
                format: et.format,
            },
        };

        let aggs: Vec<AggPlan> = spec
            .aggregations
            .iter()
            .map(|a| AggPlan {
                name: a.name.clone(),
                function: a.function,
                quantile: a.quantile,
                slot: a
                    .field
                    .as_ref()
                    .map(|f| slot_of(f, !a.function.is_numeric())),
            })
            .collect();

        let w = &spec.window;
        let window = window_kind(w);
        // The longest a window reaches from one of its records, either way.
        let reach = match window {
            WindowKind::Aligned { size, .. } => size,
            WindowKind::Session { gap } => gap,
        };
        Ok(JobPlan {
            result_keys: result_keys(&group, &aggs),
            fields,
            slot_names,
            group,
            time,
            window,
            lateness: ms(&w.allowed_lateness, 0).max(0),
            idle_timeout: ms(&w.idle_timeout, DEFAULT_IDLE_TIMEOUT_MS),
            aggs,
            time_range: (time::MIN_TIME + reach, time::MAX_TIME - reach),
            max_ahead_of_clock: ms(&w.max_ahead_of_clock, DEFAULT_MAX_AHEAD_OF_CLOCK_MS),
            max_ahead_of_partition: w
                .max_ahead_of_partition
                .as_ref()
                .and_then(|d| d.as_millis().ok()),
        })
    }

    /// `"name":` of each group-by component, in output order.
    pub(crate) fn group_keys(&self) -> &[String] {
        &self.result_keys.0
    }

    /// `"name":` of each aggregation, in output order.
    pub(crate) fn agg_keys(&self) -> &[String] {
        &self.result_keys.1
    }

    /// Whether groups need the message key.
    pub fn needs_key(&self) -> bool {
        self.group.iter().any(|(_, p)| *p == GroupPart::Key)
    }

    /// Whether event time needs the Kafka timestamp.
    pub fn needs_kafka_timestamp(&self) -> bool {
        self.time == TimeSource::Kafka
    }
}
