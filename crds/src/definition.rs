//! What shapes a job's results, as one fingerprint: the contract between the workers, which
//! record it in every checkpoint and tag every partial with it, and the operator, which compares
//! the checkpoints' fingerprint with the spec's to report an edit being taken up (DESIGN.md
//! invariant 8; docs/semantics.md, "Edits, resets and start times").
//!
//! A *definition* is every field that changes which records count toward which result, or what a
//! result holds: the source topic, the record format, the event time, the group-by, the window
//! (with its lateness and bounds), the aggregations. Everything else (brokers, Kafka properties,
//! credentials, sink, dead-letter topic, parallelism, autoscaling, checkpoints, repartition
//! settings, pod settings, `suspend`, `reset`) can change without changing any result.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::StreamJobSpec;

/// The fields of a spec that shape its results, in the order they are hashed.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Shape<'a> {
    topic: &'a crate::TopicName,
    format: &'a crate::Format,
    event_time: &'a Option<crate::EventTime>,
    group_by: &'a [crate::FieldPath],
    group_by_key: bool,
    window: &'a crate::Window,
    aggregations: &'a [crate::Aggregation],
}

/// The fingerprint of the spec's result definition: 16 hex digits of SHA-256 over the JSON of
/// the fields that shape results. Equal definitions, equal fingerprints; an edit of any of those
/// fields (even one that only renames an aggregation) gives another.
pub fn fingerprint(spec: &StreamJobSpec) -> String {
    let shape = Shape {
        topic: &spec.source.kafka.topic,
        format: &spec.source.format,
        event_time: &spec.source.event_time,
        group_by: &spec.group_by,
        group_by_key: spec.group_by_key,
        window: &spec.window,
        aggregations: &spec.aggregations,
    };
    // Serialising these plain types cannot fail; an empty text would still be hashed.
    let json = serde_json::to_vec(&shape).unwrap_or_default();
    hex16(&Sha256::digest(&json))
}

/// What a run of a definition is tagged with (partials and markers in the repartition topic):
/// the definition's fingerprint, and the reset it started from, if any. Two runs of one job share
/// a tag only if they compute the same results from the same starting point.
pub fn run_tag(spec: &StreamJobSpec) -> String {
    let reset = spec.reset.as_ref().map(crate::Reset::identity);
    run_tag_of(&fingerprint(spec), reset.as_deref())
}

/// The run tag of `definition` (a [`fingerprint`]) started from the reset of identity `reset`
/// (`None`: no reset): what a worker tags with after it applied the reset, also once the spec no
/// longer names it (a checkpoint keeps the reset it applied). Equal to [`run_tag`] of a spec with
/// that definition and reset.
pub fn run_tag_of(definition: &str, reset: Option<&str>) -> String {
    match reset {
        None => definition.to_owned(),
        Some(identity) => {
            let mut h = Sha256::new();
            h.update(definition.as_bytes());
            h.update([0u8]);
            h.update(identity.as_bytes());
            hex16(&h.finalize())
        }
    }
}

fn hex16(digest: &[u8]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_stream_job, Reset, StartFrom};

    fn spec(extra: &str) -> StreamJobSpec {
        let text = format!(
            r#"
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: payments}}
spec:
  source:
    kafka: {{bootstrapServers: "kafka:9092", topic: payments}}
    eventTime: {{field: ts}}
  groupBy: [merchant]
  window: {{type: tumbling, size: 1m}}
  aggregations: [{{name: payments, fn: count}}]
  sink: {{kafka: {{topic: out}}}}
{extra}"#
        );
        match parse_stream_job(&text) {
            Ok(p) => p.job.spec,
            Err(e) => panic!("test job does not parse: {e}"),
        }
    }

    #[test]
    fn fields_that_shape_results_change_the_fingerprint_and_others_do_not() {
        let base = fingerprint(&spec(""));
        assert_eq!(base.len(), 16);
        assert_eq!(base, fingerprint(&spec("")));

        let mut s = spec("");
        s.window.size = Some("2m".into());
        assert_ne!(fingerprint(&s), base, "window size");
        let mut s = spec("");
        s.group_by.push("customer".into());
        assert_ne!(fingerprint(&s), base, "group-by");
        let mut s = spec("");
        s.aggregations[0].name = "n".into();
        assert_ne!(fingerprint(&s), base, "an aggregation's name");

        for free in [
            "  parallelism: 4",
            "  suspend: true",
            "  deadLetter: {kafka: {topic: dlq}}",
            "  checkpoint: {interval: 30s}",
            "  reset: {to: earliest}",
        ] {
            assert_eq!(fingerprint(&spec(free)), base, "{free}");
        }
        let mut s = spec("");
        s.source.kafka.bootstrap_servers = "other:9092".into();
        s.sink.kafka.topic = crate::TopicName("elsewhere".into());
        assert_eq!(fingerprint(&s), base, "brokers and sink");
    }

    #[test]
    fn the_run_tag_is_the_fingerprint_until_a_reset_and_differs_per_reset() {
        let mut s = spec("");
        assert_eq!(run_tag(&s), fingerprint(&s));
        s.reset = Some(Reset {
            to: StartFrom::Earliest,
            id: None,
        });
        let first = run_tag(&s);
        assert_ne!(first, fingerprint(&s));
        s.reset = Some(Reset {
            to: StartFrom::Earliest,
            id: Some("again".into()),
        });
        assert_ne!(run_tag(&s), first);
        assert_eq!(fingerprint(&s), fingerprint(&spec("")));
        let identity = s.reset.as_ref().map(Reset::identity);
        assert_eq!(
            run_tag_of(&fingerprint(&s), identity.as_deref()),
            run_tag(&s)
        );
        assert_eq!(run_tag_of(&fingerprint(&s), None), fingerprint(&s));
    }
}

#[cfg(test)]
mod start_from_tests {
    use crate::StartFrom;

    #[test]
    fn start_from_reads_words_and_rfc3339_times_with_a_zone() {
        assert_eq!(StartFrom::parse("earliest"), Ok(StartFrom::Earliest));
        assert_eq!(StartFrom::parse("latest"), Ok(StartFrom::Latest));
        let z = StartFrom::parse("2026-12-01T08:00:00Z");
        assert_eq!(z, Ok(StartFrom::Time(1_796_112_000_000)));
        assert_eq!(StartFrom::parse("2026-12-01T10:00:00+02:00"), z);
        assert_eq!(StartFrom::parse("2026-12-01T07:30:00-00:30"), z);
        assert_eq!(
            StartFrom::parse("2026-12-01T08:00:00.250Z"),
            Ok(StartFrom::Time(1_796_112_000_250))
        );
        for bad in [
            "",
            "yesterday",
            "2026-12-01T08:00:00",
            "2026-13-01T08:00:00Z",
        ] {
            let e = StartFrom::parse(bad);
            assert!(e.is_err(), "{bad:?} gave {e:?}");
        }
        assert_eq!(
            StartFrom::Time(1_796_112_000_250).text(),
            "2026-12-01T08:00:00.250Z"
        );
    }
}
