//! The two text formats of `/metrics`, for the operator and the workers alike: OpenMetrics
//! (what prometheus-client writes, and what Prometheus asks for) and the Prometheus text
//! format 0.0.4, for every other client (`curl`, `promtool check metrics`, older scrapers),
//! which does not know OpenMetrics' counter naming. Pure text, no I/O.

use std::fmt::Write as _;

/// Content type of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Content type of the Prometheus text format 0.0.4.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a request with these `Accept` header values gets OpenMetrics: only when it names
/// it (Prometheus does). Anything else (`text/plain`, `*/*`, no header) gets text 0.0.4.
pub fn wants_openmetrics<'a>(accept: impl IntoIterator<Item = &'a str>) -> bool {
    accept
        .into_iter()
        .any(|v| v.contains("application/openmetrics-text"))
}

/// Rewrite OpenMetrics text (as prometheus-client's encoder writes it: no exemplars, no `_created`) as
/// Prometheus text 0.0.4. The two differ, for what we expose, in three ways: a counter's `HELP`
/// and `TYPE` name the family without `_total` in OpenMetrics but the sample name with it in
/// 0.0.4; `# UNIT` lines and `# EOF` exist only in OpenMetrics.
pub fn openmetrics_to_prometheus_text(om: &str) -> String {
    let counters: Vec<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len() + 8 * counters.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = line
            .strip_prefix("# HELP ")
            .map(|rest| ("# HELP ", rest))
            .or_else(|| line.strip_prefix("# TYPE ").map(|rest| ("# TYPE ", rest)));
        if let Some((kind, rest)) = descriptor {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(&name) {
                let _ = writeln!(out, "{kind}{name}_total {tail}");
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OM: &str = "# HELP weir_records_in Records read.
# TYPE weir_records_in counter
weir_records_in_total{partition=\"0\"} 1
# HELP weir_lag_seconds Lag.
# TYPE weir_lag_seconds gauge
# UNIT weir_lag_seconds seconds
weir_lag_seconds 2
# EOF
";

    #[test]
    fn prometheus_text_names_counters_by_their_samples_without_unit_or_eof() {
        let text = openmetrics_to_prometheus_text(OM);
        assert_eq!(
            text,
            "# HELP weir_records_in_total Records read.
# TYPE weir_records_in_total counter
weir_records_in_total{partition=\"0\"} 1
# HELP weir_lag_seconds Lag.
# TYPE weir_lag_seconds gauge
weir_lag_seconds 2
"
        );
    }

    #[test]
    fn openmetrics_only_for_clients_that_ask_for_it() {
        let prometheus =
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics([prometheus]));
        assert!(!wants_openmetrics(["text/plain"]));
        assert!(!wants_openmetrics(["text/plain; version=0.0.4"]));
        assert!(!wants_openmetrics(["*/*"]));
        assert!(!wants_openmetrics([]));
    }
}
