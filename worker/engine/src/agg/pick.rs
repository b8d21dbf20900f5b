//! The `first` and `last` states: the [`Pick`] of an accumulator and the [`PickSlot`] of a
//! column row, both keeping the input with the smallest (first) or largest (last) order, ties
//! broken by the JSON text so that merges commute.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Order;

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

    pub(super) fn result(&self) -> Value {
        match self.order {
            Some(_) => json_value(&self.json),
            None => Value::Null,
        }
    }
}

/// The JSON value of `text`, `null` if it is not JSON. A string without escapes (the common case
/// for first/last) is taken as it is, without running the parser.
pub(super) fn json_value(text: &str) -> Value {
    if let Some(inner) = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|t| t.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\'))
    {
        return Value::String(inner.to_owned());
    }
    serde_json::from_str(text).unwrap_or(Value::Null)
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
            assert_eq!(first.result(), Value::from("early"));
            assert_eq!(last.result(), Value::from("c"));
        }
        // Same event time, seq decides.
        let same_time = [(Input::Json("1"), ord(5, 7)), (Input::Json("2"), ord(5, 3))];
        assert_eq!(
            feed(AggregationFn::First, None, &same_time).result(),
            Value::from(2)
        );
        assert_eq!(
            feed(AggregationFn::Last, None, &same_time).result(),
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
                feed(AggregationFn::First, None, items).result(),
                serde_json::json!([1])
            );
            assert_eq!(
                feed(AggregationFn::Last, None, items).result(),
                serde_json::json!({"x": 1})
            );
        }
        // Structured values and invalid JSON text.
        let obj = feed(
            AggregationFn::Last,
            None,
            &[(Input::Json("{\"a\":[1,true,null]}"), ord(0, 0))],
        );
        assert_eq!(obj.result(), serde_json::json!({"a": [1, true, null]}));
        let bad = feed(
            AggregationFn::First,
            None,
            &[(Input::Json("{oops"), ord(0, 0))],
        );
        assert_eq!(bad.result(), Value::Null);
    }
}
