//! Durations as people write them in a StreamJob: `10s`, `1m`, `1h30m`, `250ms`.
//!
//! The accepted form is the common subset of Go's `time.ParseDuration` (which the API server's
//! CEL `duration()` uses) and `humantime`: whole numbers with the units `ms`, `s`, `m` and `h`.
//! Keeping to that subset means the CEL rules and [`Duration::parse`] agree on every value.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pattern of a duration string, shared by the schema and the parser.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

/// A non-negative duration written like `10s`, `1m` or `1h30m` (units `ms`, `s`, `m`, `h`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(transparent)]
pub struct Duration(pub String);

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "maxLength": 32,
            "pattern": DURATION_PATTERN,
        })
    }
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError(String);

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a duration: write whole numbers with units ms, s, m or h, such as 10s, 1m or 1h30m",
            self.0
        )
    }
}

impl std::error::Error for DurationError {}

impl Duration {
    /// Parse the string.
    pub fn parse(&self) -> Result<std::time::Duration, DurationError> {
        let s = self.0.as_str();
        if s.is_empty() || s.len() > 32 || !matches_pattern(s) {
            return Err(DurationError(s.to_string()));
        }
        humantime::parse_duration(s).map_err(|_| DurationError(s.to_string()))
    }

    /// The duration in whole milliseconds (the engine's time unit).
    pub fn as_millis(&self) -> Result<i64, DurationError> {
        let d = self.parse()?;
        i64::try_from(d.as_millis()).map_err(|_| DurationError(self.0.clone()))
    }
}

impl From<&str> for Duration {
    fn from(s: &str) -> Self {
        Duration(s.to_string())
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Milliseconds as a short duration (`25h`, `1h30m`, `90s`, `250ms`).
pub fn human_ms(ms: i64) -> String {
    if ms <= 0 {
        return "0s".to_string();
    }
    let units = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    let mut rest = ms;
    let mut out = String::new();
    for (u, n) in units {
        if rest >= n {
            out.push_str(&format!("{}{u}", rest / n));
            rest %= n;
        }
    }
    out
}

/// `^([0-9]+(ms|s|m|h))+$` without a regex engine.
fn matches_pattern(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return false;
        }
        i += digits;
        let rest = &b[i..];
        let unit = if rest.starts_with(b"ms") {
            2
        } else if rest.starts_with(b"s") || rest.starts_with(b"m") || rest.starts_with(b"h") {
            1
        } else {
            return false;
        };
        i += unit;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let ms = |s: &str| Duration::from(s).as_millis();
        assert_eq!(ms("10s"), Ok(10_000));
        assert_eq!(ms("1m"), Ok(60_000));
        assert_eq!(ms("1h30m"), Ok(5_400_000));
        assert_eq!(ms("250ms"), Ok(250));
        assert_eq!(ms("1m30s500ms"), Ok(90_500));
        assert_eq!(ms("0s"), Ok(0));
    }

    #[test]
    fn refuses_what_cel_would_not_parse() {
        for bad in [
            "", "10", "1d", "1 m", "-1s", "1.5s", "1min", "s", "10S", "1h 30m",
        ] {
            assert!(Duration::from(bad).parse().is_err(), "{bad:?} accepted");
        }
    }
}
