//! Reading a decoded record: its event time, its group key and each aggregation's input, or the
//! [`Rejection`] saying why it cannot be counted. Reads only: the engine's state is untouched
//! until all three have succeeded.

use super::record::{quoted, Record, RejectReason, Rejection};
use super::Engine;
use crate::agg::Input;
use crate::decode::{Fields, Scalar};
use crate::plan::{GroupPart, TimeSource};
use crate::time;

/// What one record contributes, decoded; the JSON texts live in a shared buffer.
#[derive(Clone, Copy)]
pub(super) enum Contribution {
    Unit,
    Number(f64),
    Json(usize, usize),
}

impl Contribution {
    /// The input it gives its aggregation, JSON texts read from `json` (the shared buffer).
    #[inline]
    pub(super) fn input(self, json: &[u8]) -> Input<'_> {
        match self {
            Contribution::Unit => Input::Unit,
            Contribution::Number(n) => Input::Number(n),
            Contribution::Json(a, b) => {
                Input::Json(std::str::from_utf8(&json[a..b]).unwrap_or("null"))
            }
        }
    }
}

impl Engine {
    #[inline]
    pub(super) fn event_time(
        &self,
        rec: &Record<'_>,
        fields: &Fields<'_>,
    ) -> Result<i64, Rejection> {
        let bad = |d: String| Rejection::new(RejectReason::InvalidEventTime, d);
        let t = match self.plan.time {
            TimeSource::Kafka => match rec.timestamp {
                Some(ms) => time::check_range(ms).map_err(bad)?,
                None => return Err(bad("the record has no Kafka timestamp".into())),
            },
            TimeSource::Field { slot, format } => match fields.values.get(slot) {
                Some(Some(v)) if *v != Scalar::Null => time::parse(v, format)
                    .map_err(|e| bad(format!("field {}: {e}", self.plan.slot_names[slot])))?,
                _ => {
                    return Err(Rejection::new(
                        RejectReason::MissingField,
                        format!("missing event time field {}", self.plan.slot_names[slot]),
                    ))
                }
            },
        };
        let (min, max) = self.plan.time_range;
        if t < min || t > max {
            return Err(bad(format!(
                "event time {} is outside {} to {}: its windows would start or end outside \
                 years 1 to 9999, which results cannot be written in",
                time::format(t),
                time::format(min),
                time::format(max)
            )));
        }
        Ok(t)
    }

    /// Build the group key into `key_buf`.
    #[inline]
    pub(super) fn group_key(
        &mut self,
        rec: &Record<'_>,
        fields: &Fields<'_>,
    ) -> Result<(), Rejection> {
        self.key_buf.clear();
        for (i, (name, part)) in self.plan.group.iter().enumerate() {
            if i > 0 {
                self.key_buf.push(0);
            }
            match part {
                GroupPart::Key => {
                    let key = rec.key.ok_or_else(|| {
                        Rejection::new(RejectReason::MissingField, "the record has no message key")
                    })?;
                    let key = std::str::from_utf8(key).map_err(|_| {
                        Rejection::new(RejectReason::WrongType, "the message key is not UTF-8 text")
                    })?;
                    Scalar::Str(key.into()).write_json(&mut self.key_buf);
                }
                GroupPart::Field { slot } => match fields.values.get(*slot) {
                    Some(Some(Scalar::Null)) | Some(None) | None => {
                        return Err(Rejection::new(
                            RejectReason::MissingField,
                            format!("missing group field {name}"),
                        ))
                    }
                    Some(Some(v)) => {
                        if !v.write_json(&mut self.key_buf) {
                            return Err(Rejection::new(
                                RejectReason::WrongType,
                                format!(
                                    "group field {name} must be a string, number or boolean, found {}",
                                    v.type_name()
                                ),
                            ));
                        }
                    }
                },
            }
        }
        Ok(())
    }

    /// Read each aggregation's input into `contributions` (JSON texts into `json_buf`).
    #[inline]
    pub(super) fn contributions(&mut self, fields: &Fields<'_>) -> Result<(), Rejection> {
        self.contributions.clear();
        self.json_buf.clear();
        for agg in &self.plan.aggs {
            let Some(slot) = agg.slot else {
                self.contributions.push(Contribution::Unit);
                continue;
            };
            let name = &self.plan.slot_names[slot];
            let value = match fields.values.get(slot) {
                Some(Some(v)) if *v != Scalar::Null => v,
                _ => {
                    return Err(Rejection::new(
                        RejectReason::MissingField,
                        format!("missing field {name}"),
                    ))
                }
            };
            if agg.function.is_numeric() {
                let n = value.as_number().ok_or_else(|| {
                    let shown = match value {
                        Scalar::Str(s) => quoted(s),
                        other => other.type_name().to_string(),
                    };
                    Rejection::new(
                        RejectReason::WrongType,
                        format!("field {name} must be a number, found {shown}"),
                    )
                })?;
                self.contributions.push(Contribution::Number(n));
            } else {
                let a = self.json_buf.len();
                if !value.write_json(&mut self.json_buf) {
                    return Err(Rejection::new(
                        RejectReason::WrongType,
                        format!(
                            "field {name} must be a string, number or boolean, found {}",
                            value.type_name()
                        ),
                    ));
                }
                self.contributions
                    .push(Contribution::Json(a, self.json_buf.len()));
            }
        }
        Ok(())
    }
}
