//! A partial aggregate's message written and read without serde's derived code (issue 20; see
//! `agg::wire` for why and how). [`write_aggregate`] writes the bytes serde_json writes for
//! `Partial::Aggregate`; [`read_aggregate`] reads such a message back when it is exactly in
//! that form, and otherwise returns `None`, leaving the message to serde_json, which reads
//! every other form and gives every error its message. The repartition topic's format is
//! unchanged: a merge stage of an earlier version reads these messages, and this one reads
//! theirs.

use super::PartialAggregate;
use crate::agg::wire::{write_int, Cursor};
use crate::agg::Acc;

/// Append `p`'s message, `{"partial":{...}}`, as serde_json writes it.
pub(super) fn write_aggregate(p: &PartialAggregate, out: &mut Vec<u8>) -> serde_json::Result<()> {
    out.extend_from_slice(b"{\"partial\":{\"source\":");
    write_int(out, p.source);
    out.extend_from_slice(b",\"pane\":");
    write_int(out, p.pane);
    out.extend_from_slice(b",\"first\":");
    write_int(out, p.first);
    out.extend_from_slice(b",\"group\":");
    serde_json::to_writer(&mut *out, &p.group)?;
    out.extend_from_slice(b",\"accs\":[");
    for (i, acc) in p.accs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        acc.write_wire(out)?;
    }
    out.push(b']');
    if let Some(segment) = p.segment {
        out.extend_from_slice(b",\"segment\":");
        write_int(out, segment);
    }
    if let Some(tag) = &p.tag {
        out.extend_from_slice(b",\"tag\":");
        serde_json::to_writer(&mut *out, tag)?;
    }
    out.extend_from_slice(b"}}");
    Ok(())
}

/// The partial aggregate of a message [`write_aggregate`] wrote; `None` for any other text
/// (a marker, another version's form, an error), which serde_json then reads.
pub(super) fn read_aggregate(text: &str) -> Option<PartialAggregate> {
    let mut c = Cursor::new(text);
    c.lit("{\"partial\":{\"source\":")?;
    let source = c.i32()?;
    c.lit(",\"pane\":")?;
    let pane = c.i64()?;
    c.lit(",\"first\":")?;
    let first = c.i64()?;
    c.lit(",\"group\":")?;
    let group = c.string()?;
    c.lit(",\"accs\":[")?;
    let mut accs = Vec::new();
    if !c.eat("]") {
        loop {
            accs.push(Acc::read_wire(&mut c)?);
            if c.eat("]") {
                break;
            }
            c.lit(",")?;
        }
    }
    let segment = if c.eat(",\"segment\":") {
        Some(c.i64()?)
    } else {
        None
    };
    let tag = if c.eat(",\"tag\":") {
        Some(c.string()?)
    } else {
        None
    };
    c.lit("}}")?;
    c.at_end().then_some(PartialAggregate {
        source,
        pane,
        first,
        group,
        accs,
        segment,
        tag,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use weir_crds::AggregationFn;

    use super::*;
    use crate::agg::{Input, Order};
    use crate::engine::Partial;

    /// What serde_json reads from `text`, in Debug form (so `-0.0` and `0.0` differ).
    fn by_serde(text: &str) -> String {
        format!("{:?}", serde_json::from_str::<Partial>(text))
    }

    /// Whatever the hand reader reads from `text`, serde_json reads alike.
    fn agree(text: &str) -> bool {
        match read_aggregate(text) {
            Some(p) => {
                let ours = format!("{:?}", Ok::<_, serde_json::Error>(Partial::Aggregate(p)));
                assert_eq!(ours, by_serde(text), "{text}");
                true
            }
            None => false,
        }
    }

    /// Every aggregation function.
    const FUNCTIONS: [AggregationFn; 11] = crate::agg::testkit::ALL;

    /// Whether the hand writer writes this accumulator itself (and so the hand reader reads it).
    fn by_hand(acc: &Acc) -> bool {
        let mut json = Vec::new();
        let written = acc.write_wire(&mut json).is_ok();
        match acc {
            Acc::Count(_) | Acc::Min(_) | Acc::Max(_) => written,
            // An overflowed sum is written `null`, which the hand reader leaves to serde_json.
            Acc::Sum(_) | Acc::Mean(_) => written && !json.windows(4).any(|w| w == b"null"),
            _ => false,
        }
    }

    /// Floats of every kind: any bit pattern (subnormals, huge, NaN, infinities), and the
    /// values of prices and counters.
    fn float() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<u64>().prop_map(f64::from_bits),
            (-1_000_000i64..1_000_000).prop_map(|c| c as f64 / 100.0),
            Just(0.0),
            Just(-0.0),
            Just(f64::MAX),
            Just(f64::MIN_POSITIVE),
        ]
    }

    /// An accumulator of any function, fed any floats (a sum overflows with huge ones) and
    /// JSON texts; or a sum/mean/min read from a text with arbitrary float bits in it.
    fn acc() -> impl Strategy<Value = Acc> {
        let fed = (
            0..FUNCTIONS.len(),
            prop::collection::vec((float(), "[a-z\"é\\\\]{0,6}"), 0..4),
        )
            .prop_map(|(f, inputs)| {
                let mut acc = Acc::new(FUNCTIONS[f], Some(0.9));
                for (i, (x, text)) in inputs.iter().enumerate() {
                    let order = Order {
                        event_time: i as i64,
                        seq: 0,
                    };
                    let json = serde_json::to_string(text).unwrap_or_default();
                    let input = match FUNCTIONS[f] {
                        AggregationFn::Count => Input::Unit,
                        AggregationFn::CountDistinct
                        | AggregationFn::First
                        | AggregationFn::Last => Input::Json(&json),
                        _ => Input::Number(*x),
                    };
                    acc.update(input, order);
                }
                acc
            });
        let read = (0..4usize, float(), float(), any::<u64>()).prop_filter_map(
            "finite parts",
            |(kind, hi, lo, n)| {
                let f = |x: f64| serde_json::to_string(&x).ok();
                let text = match kind {
                    0 => format!("{{\"sum\":[{},{}]}}", f(hi)?, f(lo)?),
                    1 => format!("{{\"mean\":{{\"n\":{n},\"sum\":[{},{}]}}}}", f(hi)?, f(lo)?),
                    2 => format!("{{\"min\":{}}}", f(hi)?),
                    _ => format!("{{\"count\":{n}}}"),
                };
                serde_json::from_str::<Acc>(&text).ok()
            },
        );
        prop_oneof![fed, read]
    }

    fn partial() -> impl Strategy<Value = PartialAggregate> {
        (
            any::<i32>(),
            any::<i64>(),
            any::<i64>(),
            prop_oneof![
                any::<String>(),
                "\"[a-z0-9]{1,8}\"",
                "[\"\\\\\u{0}-\u{1f}é😀]{0,6}"
            ],
            prop::collection::vec(acc(), 0..4),
            any::<Option<i64>>(),
            prop::option::of(prop_oneof![any::<String>(), "[a-z0-9-]{1,12}"]),
        )
            .prop_map(|(source, pane, first, group, accs, segment, tag)| {
                PartialAggregate {
                    source,
                    pane,
                    first,
                    group,
                    accs,
                    segment,
                    tag,
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// The hand writer writes serde_json's bytes; the hand reader reads them back as
        /// serde_json does, and reads every message whose accumulators it writes itself.
        #[test]
        fn the_wire_writer_writes_what_serde_writes(p in partial()) {
            let mut ours = Vec::new();
            write_aggregate(&p, &mut ours).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let theirs = serde_json::to_vec(&Partial::Aggregate(p.clone()))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&ours, &theirs);
            let text = std::str::from_utf8(&ours).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let read = agree(text);
            // Surrogates are never in a Rust string, so only the accumulators decide.
            prop_assert_eq!(read, p.accs.iter().all(by_hand), "{}", text);
        }

        /// A message broken at one place: what the hand reader still reads, serde_json reads
        /// alike (the rest is serde_json's to read or refuse).
        #[test]
        fn the_wire_reader_reads_what_serde_reads(p in partial(), cut in any::<prop::sample::Index>(), edit in 0usize..3, ch in "[ -~é]|\\\\u[0-9a-fA-F]{4}|[0-9.eE+-]{1,3}") {
            let mut buf = Vec::new();
            p.write_message(&mut buf);
            let text = String::from_utf8(buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
            if let Some(broken) = crate::testkit::broken_at(&text, cut, edit, &ch) {
                agree(&broken);
            }
        }
    }

    /// Numbers at the edges, in every slot: read as serde_json reads them, or left to it.
    #[test]
    fn the_wire_reader_reads_edge_numbers_as_serde_does() {
        let floats = [
            "0.0",
            "-0.0",
            "1e-400",
            "-1e-400",
            "1e400",
            "1.7976931348623157e308",
            "1.7976931348623159e308",
            "5e-324",
            "2.4703282292062328e-324",
            "2.4703282292062327e-324",
            "9007199254740993.0",
            "1E5",
            "1e+5",
            "1e-5",
            "00.5",
            "1.",
            ".5",
            "-",
            "1.5e",
            "0e0",
            "123456789012345678901234567890.0",
            "1.00000000000000000000000000001",
            "1",
            "-1",
            "0",
            "-0",
            "123456789012345678901234567890",
        ];
        let ints = [
            "0",
            "-0",
            "01",
            "2147483647",
            "2147483648",
            "-2147483648",
            "-2147483649",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "18446744073709551615",
            "18446744073709551616",
            "1.0",
            "1e3",
        ];
        let mut read = 0;
        for x in floats {
            for text in [
                format!(
                    r#"{{"partial":{{"source":0,"pane":0,"first":0,"group":"g","accs":[{{"sum":[{x},0.0]}}]}}}}"#
                ),
                format!(
                    r#"{{"partial":{{"source":0,"pane":0,"first":0,"group":"g","accs":[{{"max":{x}}}]}}}}"#
                ),
            ] {
                read += usize::from(agree(&text));
            }
        }
        for n in ints {
            for text in [
                format!(
                    r#"{{"partial":{{"source":{n},"pane":0,"first":0,"group":"g","accs":[]}}}}"#
                ),
                format!(
                    r#"{{"partial":{{"source":0,"pane":{n},"first":{n},"group":"g","accs":[],"segment":{n}}}}}"#
                ),
                format!(
                    r#"{{"partial":{{"source":0,"pane":0,"first":0,"group":"g","accs":[{{"count":{n}}},{{"mean":{{"n":{n},"sum":[1.0,0.0]}}}}]}}}}"#
                ),
            ] {
                read += usize::from(agree(&text));
            }
        }
        // Most of them are plain enough for the hand reader.
        assert!(read > 40, "{read}");
    }

    /// Strings with every escape serde_json reads, and what the hand reader leaves to it.
    #[test]
    fn the_wire_reader_reads_escapes_as_serde_does() {
        for (group, by_hand) in [
            (r#""\"m1\"""#, true),
            (r#""a\\b\/c\b\f\n\r\t""#, true),
            (r#""\u0000\u001f\u00e9\u20AC""#, true),
            (r#""\ud83d\ude00""#, false),
            (r#""\ud83d""#, false),
            (r#""\x""#, false),
            (r#""\u12""#, false),
            ("\"tab\there\"", false),
            (r#""é😀""#, true),
        ] {
            let text = format!(
                r#"{{"partial":{{"source":0,"pane":0,"first":0,"group":{group},"accs":[],"tag":{group}}}}}"#
            );
            assert_eq!(agree(&text), by_hand, "{text}");
        }
        // Another form of the same partial: white space, fields in another order, a marker.
        for text in [
            r#"{ "partial":{"source":0,"pane":0,"first":0,"group":"g","accs":[]}}"#,
            r#"{"partial":{"pane":0,"source":0,"first":0,"group":"g","accs":[]}}"#,
            r#"{"partial":{"source":0,"pane":0,"first":0,"group":"g","accs":[]}} "#,
            r#"{"partial":{"source":0,"pane":0,"first":0,"group":"g","accs":[],"segment":null}}"#,
            r#"{"watermark":{"source":1,"watermark":5,"idle":false}}"#,
        ] {
            assert!(read_aggregate(text).is_none(), "{text}");
        }
    }
}
