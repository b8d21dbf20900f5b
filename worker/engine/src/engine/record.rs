//! What goes into the engine and what comes out: a [`Record`], the [`Rejection`] of a record
//! not counted (with a stable [`RejectReason`]), a [`WindowResult`] and its JSON forms, and the
//! progress and counters the runtime reads ([`PartitionState`], [`Stats`]).

use std::fmt;

use crate::agg::Output;
use crate::plan::JobPlan;
use crate::time;

/// One input record.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Source partition.
    pub partition: i32,
    /// Offset in the partition (line number for a file).
    pub offset: i64,
    /// Message key.
    pub key: Option<&'a [u8]>,
    /// Kafka timestamp in ms.
    pub timestamp: Option<i64>,
    /// Message value.
    pub value: &'a [u8],
}

/// Why a record was not counted. The names are stable: they label metrics and dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Not a JSON object.
    InvalidJson,
    /// A field the job reads is absent or null.
    MissingField,
    /// A field has a type the job cannot use (text where a number is needed, an object as a group).
    WrongType,
    /// The event time is in the wrong format, or outside the range results can be written in.
    InvalidEventTime,
    /// Every window the record belongs to has already closed.
    Late,
    /// The event time is further ahead of the wall clock (or of its partition's other records)
    /// than the job allows.
    Future,
    /// A key on the path to a field the job reads appears twice in one object.
    DuplicateField,
    /// Too large to write out: the record's group values and the values `first`/`last` keep of
    /// it take more than [`MAX_KEPT_BYTES`], or a result is over the sink's `message.max.bytes`.
    TooLarge,
    /// The worker holds as many open (group, window) rows as its bound allows, and the record
    /// would open another.
    StateFull,
}

impl RejectReason {
    /// All reasons, in a stable order.
    pub const ALL: [RejectReason; 9] = [
        RejectReason::InvalidJson,
        RejectReason::MissingField,
        RejectReason::WrongType,
        RejectReason::InvalidEventTime,
        RejectReason::Late,
        RejectReason::Future,
        RejectReason::DuplicateField,
        RejectReason::TooLarge,
        RejectReason::StateFull,
    ];

    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::MissingField => "missing_field",
            RejectReason::WrongType => "wrong_type",
            RejectReason::InvalidEventTime => "invalid_event_time",
            RejectReason::Late => "late",
            RejectReason::Future => "future",
            RejectReason::DuplicateField => "duplicate_field",
            RejectReason::TooLarge => "too_large",
            RejectReason::StateFull => "state_full",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected record: the reason, and details for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Machine-readable reason.
    pub reason: RejectReason,
    /// What exactly was wrong.
    pub detail: String,
}

/// The most bytes a [`Rejection`]'s detail takes (it becomes the dead letter's `weir.error`
/// header): a longer one is cut at a character boundary and ends with how long it was.
pub const MAX_DETAIL_BYTES: usize = 1024;

/// The most bytes one record may put into a result: its group values' JSON plus the JSON of the
/// values `first` and `last` keep of it. A record over it is rejected as `too_large`, so that a
/// result (group values in its key and value, kept values in its value) stays far below
/// Kafka's default `message.max.bytes` of 1,000,000.
pub const MAX_KEPT_BYTES: usize = 64 * 1024;

/// The most characters of an offending text a detail quotes.
const QUOTED_CHARS: usize = 64;

impl Rejection {
    pub(super) fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: bounded_detail(detail.into()),
        }
    }
}

/// `detail`, cut to at most [`MAX_DETAIL_BYTES`] with its full length said at the end.
fn bounded_detail(mut detail: String) -> String {
    if detail.len() <= MAX_DETAIL_BYTES {
        return detail;
    }
    let tail = format!("… (detail cut: {} bytes in all)", detail.len());
    let mut cut = MAX_DETAIL_BYTES - tail.len();
    while !detail.is_char_boundary(cut) {
        cut -= 1;
    }
    detail.truncate(cut);
    detail.push_str(&tail);
    detail
}

/// An offending text as a detail shows it: quoted whole when short, else its first
/// characters and its length (`the string "abc…" (900000 bytes)`), never the whole value.
pub(super) fn quoted(s: &str) -> String {
    match s.char_indices().nth(QUOTED_CHARS) {
        None => format!("the string {s:?}"),
        Some((cut, _)) => format!("the string {:?}… ({} bytes)", &s[..cut], s.len()),
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// The result of one (group, window).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowResult {
    /// Window start (inclusive), ms.
    pub start: i64,
    /// Window end (exclusive), ms.
    pub end: i64,
    /// The group's values as canonical JSON texts joined by NUL bytes (which JSON text never
    /// contains); empty for the global group. A `Vec`, so that a result taken, written and
    /// given back ([`crate::Engine::recycle_results`]) keeps its buffer for the next.
    pub group: Vec<u8>,
    /// One value per aggregation, in the job's order.
    pub values: Vec<Output>,
}

impl WindowResult {
    /// The group values' JSON texts, one per group-by component.
    pub fn group_texts(&self) -> impl Iterator<Item = &str> {
        let parts = if self.group.is_empty() {
            None
        } else {
            Some(self.group.split(|b| *b == 0))
        };
        parts
            .into_iter()
            .flatten()
            .map(|p| std::str::from_utf8(p).unwrap_or("null"))
    }

    /// The result record, one line of JSON:
    /// `{"window":{"start":..,"end":..},"group":{..},"values":{..}}`.
    pub fn to_json(&self, plan: &JobPlan) -> String {
        let mut out = String::with_capacity(128);
        self.write_value(
            plan,
            &time::format(self.start),
            &time::format(self.end),
            &mut out,
        );
        out
    }

    /// The sink message key: `{"group":{..},"start":"..","end":".."}`. Unique per (group,
    /// window) within a definition, since windows of one group that share a start are the same
    /// window (sessions never overlap). The end makes windows of different sizes different keys,
    /// so that the results of an edited definition never overwrite the old one's
    /// (docs/semantics.md, "Edits, resets and start times").
    pub fn key_json(&self, plan: &JobPlan) -> String {
        let mut out = String::with_capacity(96);
        self.write_key(
            plan,
            &time::format(self.start),
            &time::format(self.end),
            &mut out,
        );
        out
    }

    /// [`WindowResult::to_json`] appended to `out`, with the window's times already formatted.
    fn write_value(&self, plan: &JobPlan, start: &str, end: &str, out: &mut String) {
        out.push_str("{\"window\":{\"start\":\"");
        out.push_str(start);
        out.push_str("\",\"end\":\"");
        out.push_str(end);
        out.push_str("\"},\"group\":");
        self.push_group(plan, out);
        out.push_str(",\"values\":{");
        for (i, (key, v)) in plan.agg_keys().iter().zip(&self.values).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(key);
            v.write_to(out);
        }
        out.push_str("}}");
    }

    /// [`WindowResult::key_json`] appended to `out`, with the window's times already formatted.
    fn write_key(&self, plan: &JobPlan, start: &str, end: &str, out: &mut String) {
        out.push_str("{\"group\":");
        self.push_group(plan, out);
        out.push_str(",\"start\":\"");
        out.push_str(start);
        out.push_str("\",\"end\":\"");
        out.push_str(end);
        out.push_str("\"}");
    }

    fn push_group(&self, plan: &JobPlan, out: &mut String) {
        out.push('{');
        for (i, (key, text)) in plan.group_keys().iter().zip(self.group_texts()).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(key);
            out.push_str(text);
        }
        out.push('}');
    }
}

/// A result's sink key and value ([`WindowResult::key_json`], [`WindowResult::to_json`]),
/// written into buffers that keep their capacity from one result to the next, with the
/// window's times formatted once per window: when a job has about one result per record
/// (many groups, few records each), allocating these texts per result was a large part of
/// its output path (issue 20).
#[derive(Debug, Default)]
pub struct ResultText {
    /// The sink message key.
    pub key: String,
    /// The sink message value.
    pub value: String,
    /// The window whose times `start` and `end` hold.
    window: Option<(i64, i64)>,
    start: String,
    end: String,
}

impl ResultText {
    /// Write `r`'s key and value (replacing the previous result's).
    pub fn write(&mut self, plan: &JobPlan, r: &WindowResult) {
        if self.window != Some((r.start, r.end)) {
            self.start = time::format(r.start);
            self.end = time::format(r.end);
            self.window = Some((r.start, r.end));
        }
        self.key.clear();
        r.write_key(plan, &self.start, &self.end, &mut self.key);
        self.value.clear();
        r.write_value(plan, &self.start, &self.end, &mut self.value);
    }
}

/// Per-partition progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    /// Largest event time taken: of the records accepted, and of those refused as `state_full`
    /// (see `Engine::admit`).
    pub max_time: i64,
    /// `max_time - allowedLateness`.
    pub watermark: i64,
    /// Reported idle by the runtime, and no record since.
    pub idle: bool,
    /// Records in a row refused for being too far ahead of `max_time` (`maxAheadOfPartition`).
    pub ahead_in_a_row: u32,
}

/// Counters the runtime exports as metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records accepted.
    pub accepted: u64,
    /// Records rejected, by reason (indexed like [`RejectReason::ALL`]).
    pub rejected: [u64; RejectReason::ALL.len()],
    /// Results emitted (partials, in stage 1 of a two-stage job).
    pub results: u64,
    /// The merge stage: partials skipped because they were merged before (a replay of stage 1).
    pub duplicate_partials: u64,
    /// The merge stage: partials dropped because their windows had closed (their source was idle).
    pub late_partials: u64,
}

impl PartitionState {
    pub(super) fn new() -> Self {
        PartitionState {
            max_time: i64::MIN,
            watermark: i64::MIN,
            idle: false,
            ahead_in_a_row: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_part_plan() -> JobPlan {
        let yaml = r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {name: t}
spec:
  source:
    kafka: {bootstrapServers: "k:9092", topic: in}
  groupBy: [merchant, country]
  window: {type: tumbling, size: 1m}
  aggregations:
    - {name: n, fn: count}
    - {name: total, fn: sum, field: amount}
    - {name: avg, fn: mean, field: amount}
  sink:
    kafka: {topic: out}
"#;
        let job = weir_crds::parse_stream_job(yaml).expect("yaml").job;
        JobPlan::new(&job.spec).expect("plan")
    }

    #[test]
    fn reused_texts_are_the_results_json_byte_for_byte() {
        let plan = two_part_plan();
        let result = |start: i64, group: &str, n: u64| WindowResult {
            start,
            end: start + 60_000,
            group: group.as_bytes().into(),
            values: vec![
                serde_json::Value::from(n).into(),
                serde_json::json!(12.5).into(),
                Output::NULL,
            ],
        };
        let first = result(1_767_225_600_000, "\"m1\"\0\"fr\"", 3);
        assert_eq!(
            first.to_json(&plan),
            r#"{"window":{"start":"2026-01-01T00:00:00.000Z","end":"2026-01-01T00:01:00.000Z"},"group":{"merchant":"m1","country":"fr"},"values":{"n":3,"total":12.5,"avg":null}}"#
        );
        assert_eq!(
            first.key_json(&plan),
            r#"{"group":{"merchant":"m1","country":"fr"},"start":"2026-01-01T00:00:00.000Z","end":"2026-01-01T00:01:00.000Z"}"#
        );
        let mut text = ResultText::default();
        // Same window twice (the times are reused), then another window, then back.
        for r in [
            first.clone(),
            result(1_767_225_600_000, "\"m22222\"\0null", 1),
            result(1_767_225_660_000, "\"m3\"\0\"de\"", 7),
            first,
        ] {
            text.write(&plan, &r);
            assert_eq!(text.key, r.key_json(&plan));
            assert_eq!(text.value, r.to_json(&plan));
        }
    }

    #[test]
    fn details_are_bounded_and_say_how_long_they_were() {
        let long = format!("field amount must be a number, found {}", "é".repeat(5000));
        let r = Rejection::new(RejectReason::WrongType, long.clone());
        assert!(r.detail.len() <= MAX_DETAIL_BYTES, "{}", r.detail.len());
        assert!(r.detail.starts_with("field amount must be a number"));
        assert!(r
            .detail
            .ends_with(&format!("cut: {} bytes in all)", long.len())));
        let short = Rejection::new(RejectReason::WrongType, "short");
        assert_eq!(short.detail, "short");
    }

    #[test]
    fn a_long_text_is_quoted_by_its_start_and_length() {
        assert_eq!(quoted("abc"), "the string \"abc\"");
        let shown = quoted(&"x".repeat(900_000));
        assert!(shown.len() < 100, "{shown}");
        assert!(shown.ends_with("… (900000 bytes)"), "{shown}");
    }
}
