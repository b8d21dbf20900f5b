//! Event time: reading it from a field, and writing it in results. The engine's unit is the
//! millisecond since the Unix epoch (i64); finer precision is truncated toward the past.

use chrono::{DateTime, SecondsFormat, Utc};
use weir_crds::TimeFormat;

use crate::decode::Scalar;

/// Earliest event time accepted: 0001-01-01T00:00:00Z.
pub const MIN_TIME: i64 = -62_135_596_800_000;
/// Latest event time accepted: 9999-12-31T23:59:59.999Z.
pub const MAX_TIME: i64 = 253_402_300_799_999;

/// Read an event time; `Err` says why, for the rejected record.
pub fn parse(value: &Scalar<'_>, format: TimeFormat) -> Result<i64, String> {
    let ms = match format {
        TimeFormat::Rfc3339 => match value {
            Scalar::Str(s) => DateTime::parse_from_rfc3339(s.trim())
                .map(|t| t.timestamp_millis())
                .map_err(|e| format!("{s:?} is not an RFC 3339 timestamp ({e})"))?,
            other => {
                return Err(format!(
                    "expected an RFC 3339 timestamp string, found {}",
                    other.type_name()
                ))
            }
        },
        TimeFormat::EpochMillis => match value {
            Scalar::Int(i) => *i,
            other => {
                let f = other.as_number().ok_or_else(|| {
                    format!("expected epoch milliseconds, found {}", other.type_name())
                })?;
                from_float(f, 1.0)?
            }
        },
        TimeFormat::EpochSeconds => match value {
            Scalar::Int(i) => i.checked_mul(1000).ok_or("epoch seconds out of range")?,
            other => {
                let f = other.as_number().ok_or_else(|| {
                    format!("expected epoch seconds, found {}", other.type_name())
                })?;
                from_float(f, 1000.0)?
            }
        },
    };
    check_range(ms)
}

/// A float count of `unit` milliseconds, to whole milliseconds. Rounds to the microsecond first
/// so that decimal inputs such as `0.3` seconds give 300 ms, not 299.
fn from_float(f: f64, unit_ms: f64) -> Result<i64, String> {
    let micros = (f * unit_ms * 1000.0).round();
    if !micros.is_finite() || micros.abs() > 1e18 {
        return Err(format!("event time {f} out of range"));
    }
    Ok((micros as i64).div_euclid(1000))
}

/// Accept only times that can be written back as RFC 3339.
pub fn check_range(ms: i64) -> Result<i64, String> {
    if (MIN_TIME..=MAX_TIME).contains(&ms) {
        Ok(ms)
    } else {
        Err(format!("event time {ms} ms is outside years 1 to 9999"))
    }
}

/// RFC 3339 UTC with milliseconds: `2026-01-01T00:00:00.000Z`.
pub fn format(ms: i64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        // Unreachable for times within [MIN_TIME, MAX_TIME + window]; keep the number visible.
        None => ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Scalar<'_> {
        Scalar::Str(v.into())
    }

    #[test]
    fn rfc3339_with_offsets_and_fractions() {
        let p = |v| parse(&s(v), TimeFormat::Rfc3339);
        assert_eq!(p("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(p("2026-01-01T00:00:00.250Z"), Ok(1_767_225_600_250));
        assert_eq!(p("2026-01-01T01:00:00.250+01:00"), Ok(1_767_225_600_250));
        assert_eq!(
            p("1969-12-31T23:59:59.9999Z"),
            Ok(-1),
            "truncates toward the past"
        );
        assert!(p("2026-01-01").is_err());
        assert!(p("yesterday").is_err());
        assert!(parse(&Scalar::Int(5), TimeFormat::Rfc3339).is_err());
    }

    #[test]
    fn epoch_numbers_and_strings() {
        assert_eq!(parse(&Scalar::Int(1500), TimeFormat::EpochMillis), Ok(1500));
        assert_eq!(parse(&s("1500"), TimeFormat::EpochMillis), Ok(1500));
        assert_eq!(
            parse(&Scalar::Number(1500.7, "1500.7"), TimeFormat::EpochMillis),
            Ok(1500)
        );
        assert_eq!(parse(&Scalar::Int(2), TimeFormat::EpochSeconds), Ok(2000));
        assert_eq!(
            parse(&Scalar::Number(0.3, "0.3"), TimeFormat::EpochSeconds),
            Ok(300)
        );
        assert_eq!(
            parse(
                &Scalar::Number(1767225600.25, "1767225600.25"),
                TimeFormat::EpochSeconds
            ),
            Ok(1_767_225_600_250)
        );
        assert_eq!(
            parse(
                &Scalar::Number(-0.0005, "-0.0005"),
                TimeFormat::EpochSeconds
            ),
            Ok(-1)
        );
        assert!(parse(&Scalar::Number(1e300, "1e300"), TimeFormat::EpochSeconds).is_err());
        assert!(parse(&Scalar::Int(i64::MAX), TimeFormat::EpochSeconds).is_err());
        assert!(parse(&Scalar::Int(i64::MAX), TimeFormat::EpochMillis).is_err());
        assert!(parse(&Scalar::Bool(true), TimeFormat::EpochMillis).is_err());
        assert!(parse(&Scalar::Null, TimeFormat::EpochMillis).is_err());
    }

    #[test]
    fn formats_with_milliseconds_in_utc() {
        assert_eq!(format(1_767_225_600_000), "2026-01-01T00:00:00.000Z");
        assert_eq!(format(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format(MAX_TIME), "9999-12-31T23:59:59.999Z");
    }
}
