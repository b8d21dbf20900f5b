//! The `first` and `last` states: the [`Pick`] of an accumulator and the [`PickSlot`] of a
//! column row, both keeping the input with the smallest (first) or largest (last) order, ties
//! broken by the JSON text so that merges commute.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use super::{Order, Output};

/// The record picked by `first` or `last`: its order and the value's canonical JSON text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pick {
    pub(super) order: Order,
    pub(super) json: String,
}

impl Pick {
    /// The picked record's order.
    pub fn order(&self) -> Order {
        self.order
    }

    /// The picked value's canonical JSON text.
    pub fn json(&self) -> &str {
        &self.json
    }
}

/// Replaces the pick when `(order, text)` compares `want` (Less for first, Greater for last)
/// to the current one, reusing the string's buffer.
#[inline]
pub(super) fn offer(slot: &mut Option<Pick>, order: Order, text: &str, want: Ordering) {
    match slot {
        None => {
            *slot = Some(Pick {
                order,
                json: text.to_owned(),
            })
        }
        Some(pick) => {
            if order.cmp(&pick.order).then_with(|| text.cmp(&pick.json)) == want {
                pick.order = order;
                pick.json.clear();
                pick.json.push_str(text);
            }
        }
    }
}

/// A `first` or `last` row of a [`Column`]: an `Option<Pick>` whose text buffer outlives it being
/// emptied, so that a reused row does not allocate again.
#[derive(Clone, Debug, Default)]
pub struct PickSlot {
    pub(super) order: Option<Order>,
    pub(super) json: String,
}

impl PickSlot {
    /// [`offer`] for a slot.
    #[inline]
    pub(super) fn offer(&mut self, order: Order, text: &str, want: Ordering) {
        let better = match self.order {
            None => true,
            Some(cur) => order.cmp(&cur).then_with(|| text.cmp(&self.json)) == want,
        };
        if better {
            self.order = Some(order);
            self.json.clear();
            self.json.push_str(text);
        }
    }

    pub(super) fn clear(&mut self) {
        self.order = None;
        self.json.clear();
    }

    pub(super) fn pick(&self) -> Option<Pick> {
        self.order.map(|order| Pick {
            order,
            json: self.json.clone(),
        })
    }

    pub(super) fn result(&self) -> Output {
        match self.order {
            Some(_) => json_output(&self.json),
            None => Output::NULL,
        }
    }
}

/// The result of a picked `text`: the text itself, written as it is, so that a number keeps
/// its exact value (the engine gives canonical text: `-0` is `0`, an integer beyond 64 bits
/// stays itself; see `decode::write_number`); `null` if it is not one JSON value (a pick read
/// from a checkpoint or a partial is not trusted blindly). A string without escapes (the common
/// case for first/last) is taken without running the parser.
pub(super) fn json_output(text: &str) -> Output {
    let plain_string = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .is_some_and(|t| t.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\'));
    if plain_string || serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
        Output::Json(text.trim().into())
    } else {
        Output::NULL
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use weir_crds::AggregationFn;

    use crate::agg::testkit::*;
    use crate::agg::*;

    #[test]
    fn first_last_ties_broken_by_seq() {
        let items = [
            (Input::Json("\"b\""), ord(10, 5)),
            (Input::Json("\"a\""), ord(10, 2)),
            (Input::Json("\"late\""), ord(11, 0)),
            (Input::Json("\"early\""), ord(9, 9)),
            (Input::Json("\"c\""), ord(11, 1)),
        ];
        for perm in [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]] {
            let mut first = Acc::new(AggregationFn::First, None);
            let mut last = Acc::new(AggregationFn::Last, None);
            for i in perm {
                first.update(items[i].0, items[i].1);
                last.update(items[i].0, items[i].1);
            }
            assert_eq!(first.result().to_value(), Value::from("early"));
            assert_eq!(last.result().to_value(), Value::from("c"));
        }
        // Same event time, seq decides.
        let same_time = [(Input::Json("1"), ord(5, 7)), (Input::Json("2"), ord(5, 3))];
        assert_eq!(
            feed(AggregationFn::First, None, &same_time)
                .result()
                .to_value(),
            Value::from(2)
        );
        assert_eq!(
            feed(AggregationFn::Last, None, &same_time)
                .result()
                .to_value(),
            Value::from(1)
        );
        // Identical orders: the JSON text decides, whatever the arrival or merge order.
        let same = [
            (Input::Json("{\"x\":1}"), ord(5, 3)),
            (Input::Json("[1]"), ord(5, 3)),
        ];
        let rev = [same[1], same[0]];
        for items in [&same, &rev] {
            assert_eq!(
                feed(AggregationFn::First, None, items).result().to_value(),
                serde_json::json!([1])
            );
            assert_eq!(
                feed(AggregationFn::Last, None, items).result().to_value(),
                serde_json::json!({"x": 1})
            );
        }
        // Structured values and invalid JSON text.
        let obj = feed(
            AggregationFn::Last,
            None,
            &[(Input::Json("{\"a\":[1,true,null]}"), ord(0, 0))],
        );
        assert_eq!(
            obj.result().to_value(),
            serde_json::json!({"a": [1, true, null]})
        );
        let bad = feed(
            AggregationFn::First,
            None,
            &[(Input::Json("{oops"), ord(0, 0))],
        );
        assert_eq!(bad.result().to_value(), Value::Null);
    }

    /// A picked number is written as the text it came as (canonical: the decoder writes an
    /// exact slot's number so), through every form a pick takes: the accumulator, a column row,
    /// a merge, a checkpoint or partial (serde). A serde_json value would give the nearest f64.
    #[test]
    fn first_last_write_numbers_exactly() {
        let big = "12345678901234567890123";
        let bigger = "12345678901234567890124";
        let fine = "0.1000000000000000000001";
        let items = [
            (Input::Json(bigger), ord(2, 0)),
            (Input::Json(big), ord(1, 0)),
            (Input::Json(fine), ord(3, 0)),
        ];
        for (f, want) in [(AggregationFn::First, big), (AggregationFn::Last, fine)] {
            let acc = feed(f, None, &items);
            assert_eq!(acc.result(), Output::Json(want.into()), "{f:?}");
            assert_eq!(acc.result().to_string(), want);
            assert_eq!(roundtrip(&acc).result().to_string(), want);
            assert_eq!(Column::from_acc(&acc).result(0).to_string(), want);
            let mut merged = Acc::new(f, None);
            for item in &items {
                merged.merge(&feed(f, None, std::slice::from_ref(item)));
            }
            assert_eq!(merged.result().to_string(), want);
        }
        // The two big integers are one f64: only the text tells them apart.
        let last = feed(AggregationFn::Last, None, &items[..2]);
        assert_eq!(last.result().to_string(), bigger);
        assert_eq!(
            last.result().to_value(),
            serde_json::json!(1.2345678901234568e22)
        );
        // Strings as serde_json writes them; text that is not one JSON value is null.
        let s = feed(
            AggregationFn::First,
            None,
            &[(Input::Json("\"a\\\"b\""), ord(0, 0))],
        );
        assert_eq!(s.result().to_string(), "\"a\\\"b\"");
        for bad in ["{oops", "1 2", "", "\"open"] {
            let acc = feed(AggregationFn::Last, None, &[(Input::Json(bad), ord(0, 0))]);
            assert_eq!(acc.result(), Output::NULL, "{bad:?}");
        }
    }
}
