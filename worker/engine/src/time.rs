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
            Scalar::Str(s) => {
                let text = s.trim();
                match utc_millis(text) {
                    Some(ms) => ms,
                    None => DateTime::parse_from_rfc3339(text)
                        .map(|t| t.timestamp_millis())
                        .map_err(|e| format!("{s:?} is not an RFC 3339 timestamp ({e})"))?,
                }
            }
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

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` in ms, read without chrono: the form weir writes and most
/// producers do. Reading it took chrono about 9% of a dense job's partition threads, 34–50 ns a
/// time on the 2-core development machine; this takes 17–25 ns (docs/benchmarks.md). `None`
/// for anything else, which chrono reads, or says why not: other offsets, lower-case or space
/// separators, leap seconds, fractions of more than 9 digits, dates that do not exist.
/// Truncates toward the past, as chrono's `timestamp_millis` does.
fn utc_millis(s: &str) -> Option<i64> {
    let (b'Z', body) = s.as_bytes().split_last()? else {
        return None;
    };
    let (head, fraction) = body.split_at_checked(19)?;
    let &[y0, y1, y2, y3, b'-', mo0, mo1, b'-', d0, d1, b'T', h0, h1, b':', mi0, mi1, b':', s0, s1] =
        head
    else {
        return None;
    };
    let digits = [y0, y1, y2, y3, mo0, mo1, d0, d1, h0, h1, mi0, mi1, s0, s1];
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = |c: u8| i64::from(c - b'0');
    let year = n(y0) * 1000 + n(y1) * 100 + n(y2) * 10 + n(y3);
    let month = n(mo0) * 10 + n(mo1);
    let day = n(d0) * 10 + n(d1);
    let hour = n(h0) * 10 + n(h1);
    let minute = n(mi0) * 10 + n(mi1);
    let second = n(s0) * 10 + n(s1);
    let millis = match fraction {
        [] => 0,
        [b'.', ds @ ..] if (1..=9).contains(&ds.len()) && ds.iter().all(u8::is_ascii_digit) => {
            // The first three digits; the rest is below a millisecond.
            let d = |i: usize| ds.get(i).map_or(0, |c| n(*c));
            d(0) * 100 + d(1) * 10 + d(2)
        }
        _ => return None,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if !(1..=month_days).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let seconds = ((days_from_civil(year, month, day) * 24 + hour) * 60 + minute) * 60 + second;
    Some(seconds * 1000 + millis)
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (Howard Hinnant's
/// `days_from_civil`), for years 0 to 9999.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
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

    /// What chrono reads `s` as, in ms.
    fn chrono_millis(s: &str) -> Option<i64> {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    #[test]
    fn the_fast_rfc3339_path_reads_what_chrono_reads() {
        for s in [
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.9999Z",
            "0000-01-01T00:00:00Z",
            "0001-01-01T00:00:00.000Z",
            "9999-12-31T23:59:59.999999999Z",
            "2000-02-29T12:00:00.5Z",
            "2026-01-01T00:00:00.250Z",
        ] {
            assert_eq!(utc_millis(s), chrono_millis(s), "{s}");
            assert!(utc_millis(s).is_some(), "{s}");
        }
        // Left to chrono: it reads them, or says why not.
        for s in [
            "2026-01-01T01:00:00+01:00",
            "2026-01-01t00:00:00z",
            "2026-01-01 00:00:00Z",
            "2016-12-31T23:59:60Z",
            "2026-01-01T00:00:00.1234567891Z",
            "2026-01-01T00:00:00.Z",
            "2026-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-01-00T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:60:00Z",
            "+2026-01-01T00:00:00Z",
            "2026-1-01T00:00:00Z",
            "2026-01-01T00:00:00",
        ] {
            assert_eq!(utc_millis(s), None, "{s}");
        }
    }

    proptest::proptest! {
        /// On any text of the form's shape, with any digits (dates that do not exist, hours
        /// past 23, ...) and any fraction, the fast path reads what chrono reads or leaves it.
        #[test]
        fn the_fast_rfc3339_path_agrees_with_chrono(
            digits in proptest::collection::vec(0u8..10, 14),
            fraction in proptest::option::of("[0-9]{0,11}"),
        ) {
            // The first digit of month, day, hour, minute and second kept near its range.
            let d = |i: usize, m: u8| char::from(b'0' + digits[i] % m);
            let mut s = format!(
                "{}{}{}{}-{}{}-{}{}T{}{}:{}{}:{}{}",
                d(0, 10), d(1, 10), d(2, 10), d(3, 10), d(4, 2), d(5, 10), d(6, 4), d(7, 10),
                d(8, 3), d(9, 10), d(10, 7), d(11, 10), d(12, 7), d(13, 10)
            );
            if let Some(f) = &fraction {
                s.push('.');
                s.push_str(f);
            }
            s.push('Z');
            match utc_millis(&s) {
                Some(ms) => proptest::prop_assert_eq!(Some(ms), chrono_millis(&s), "{}", s),
                None => {
                    // Left to chrono only when it is not the common form of a real time.
                    let common = chrono_millis(&s).is_some()
                        && !s.contains(":60")
                        && fraction.as_ref().is_none_or(|f| (1..=9).contains(&f.len()));
                    proptest::prop_assert!(!common, "{} left to chrono", s);
                }
            }
        }
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
