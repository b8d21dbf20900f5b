//! The chart's observability (`charts/weir`: the worker PodMonitor, the PrometheusRule, the
//! Grafana dashboard) against the code it observes: every metric an alert or a dashboard query
//! uses is one the worker's or the operator's registry really exposes (both are built and
//! encoded here, never listed by hand), and the PodMonitor selects the pods and port the
//! operator creates for workers. The alerts' behaviour is `promtool test rules` in
//! `charts/check.py`; both `/metrics` pass `promtool check metrics` here (a missing promtool
//! fails the test with the command that installs it).

// The workers' promtool helper: one way to find and run promtool for both crates' tests.
#[path = "../../worker/tests/support/promtool.rs"]
mod promtool;
#[path = "support/render.rs"]
mod render;

use std::collections::BTreeSet;
use std::time::Duration;

use prometheus_client::registry::Registry;
use render::render;
use serde_json::Value;
use weir_crds::names;
use weir_operator::desired::METRICS_PORT_NAME;
use weir_operator::metrics::{exposition, CategoryLabel, Metrics as OperatorMetrics};
use weir_worker::metrics::Metrics as WorkerMetrics;

/// Series Prometheus adds to every scrape target itself: not in any `/metrics`, and the only
/// ones besides weir's that the alerts and the dashboard may use.
const SCRAPE_SERIES: &[&str] = &["up"];

const OBSERVABILITY_ON: &[&str] = &[
    "metrics.workerPodMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "metrics.grafanaDashboard.enabled=true",
    "metrics.serviceMonitor.enabled=true",
];

fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objs.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} expected");
    found[0]
}

/// Names of the samples in a text exposition (Prometheus 0.0.4 or OpenMetrics): what a query
/// can select, `_total`, `_bucket`, `_sum` and `_count` included.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// The `/metrics` text of a worker and of the operator as a client sending `accept` gets it.
/// A family shows in the exposition only once it has a series, so each is given one, as a
/// running worker and operator would.
fn expositions(accept: &str) -> [(&'static str, String); 2] {
    let worker = WorkerMetrics::new();
    let p = worker.partition("payments", 0);
    p.set_watermark_ms(1_700_000_000_000);
    p.checkpoint_written(Duration::from_millis(3), 100);
    let worker_text = if weir_crds::exposition::wants_openmetrics([accept]) {
        worker.encode()
    } else {
        worker.encode_prometheus_text()
    };

    let mut registry = Registry::default();
    let operator = OperatorMetrics::register(&mut registry);
    operator
        .failures
        .get_or_create(&CategoryLabel {
            category: "kube".to_string(),
        })
        .inc();
    operator.reconciles.inc();
    operator.duration.observe(0.02);
    let (_, operator_text) = exposition(&registry, [accept]).expect("encodes");
    [("worker", worker_text), ("operator", operator_text)]
}

/// Every series name the worker and the operator expose.
fn exposed() -> BTreeSet<String> {
    expositions("text/plain")
        .iter()
        .flat_map(|(_, text)| sample_names(text))
        .collect()
}

/// What `curl`, `promtool` and every scraper but Prometheus get: the text format 0.0.4, which
/// `promtool check metrics` accepts (it exits 3 on OpenMetrics' counter naming).
#[test]
fn plain_text_metrics_of_the_operator_and_the_workers_pass_promtool() {
    for (who, text) in expositions("text/plain") {
        assert!(!text.contains("# EOF"), "{who}: OpenMetrics for text/plain");
        assert!(text.contains("_total counter\n"), "{who}: {text}");
        let said = promtool::check(&text);
        assert!(
            said.trim().is_empty(),
            "{who}: promtool said:\n{said}\non:\n{text}"
        );
    }
    let prometheus = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    for (who, text) in expositions(prometheus) {
        assert!(
            text.ends_with("# EOF\n"),
            "{who}: Prometheus asked for OpenMetrics"
        );
    }
    let registry = Registry::default();
    let (plain, _) = exposition(&registry, ["text/plain"]).expect("encodes");
    assert_eq!(plain, "text/plain; version=0.0.4; charset=utf-8");
}

/// Words PromQL reserves: aggregations, binary and modifier keywords. An identifier that is none
/// of these, not a function call and not a label list is a metric name.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Index just past the `close` matching the `open` at `chars[start]`, skipping quoted strings.
fn skip_balanced(chars: &[char], start: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    chars.len()
}

/// Index just past the string literal starting at `chars[start]`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric names a PromQL expression selects. Label matchers (`{...}`), ranges (`[...]`),
/// strings, numbers and durations, Grafana variables (`$x`), function names, keywords and
/// label lists (`by (...)`) are skipped; every other identifier is a metric name.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_balanced(&chars, i, '{', '}');
        } else if c == '[' {
            i = skip_balanced(&chars, i, '[', ']');
        } else if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
        } else if c == '$' || c.is_ascii_digit() {
            i += 1;
            while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) {
                if call {
                    i = skip_balanced(&chars, next, '(', ')');
                }
            } else if !call && !KEYWORDS.contains(&word.as_str()) {
                out.insert(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// A Grafana variable query: `label_values(selector, label)` selects `selector`'s metric.
fn grafana_query(query: &str) -> String {
    let q = query.trim();
    match q
        .strip_prefix("label_values(")
        .and_then(|rest| rest.rsplit_once(','))
    {
        Some((selector, _label)) => selector.to_string(),
        None => q.to_string(),
    }
}

/// Every PromQL expression of the PrometheusRule and of the dashboard, with where it is.
fn queries(objs: &[Value]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let rule = one(objs, "PrometheusRule");
    for group in rule["spec"]["groups"].as_array().into_iter().flatten() {
        for r in group["rules"].as_array().into_iter().flatten() {
            let expr = r["expr"].as_str().expect("every rule has an expr");
            out.push((format!("alert {}", r["alert"]), expr.to_string()));
        }
    }
    let dash = dashboard(objs);
    let mut panels: Vec<&Value> = dash["panels"].as_array().into_iter().flatten().collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("every target has an expr");
            out.push((format!("panel {}", panel["title"]), expr.to_string()));
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .expect("a query variable has a query");
            out.push((format!("variable {}", v["name"]), grafana_query(q)));
        }
    }
    out
}

fn dashboard(objs: &[Value]) -> Value {
    let cm = one(objs, "ConfigMap");
    let json = cm["data"]["weir-streamjobs.json"]
        .as_str()
        .expect("the dashboard ConfigMap holds weir-streamjobs.json");
    serde_json::from_str(json).expect("the dashboard is JSON")
}

#[test]
fn metric_names_are_read_from_promql() {
    let expr = r#"histogram_quantile(0.99, sum by (namespace, le) (rate(a_bucket{x=~"$ns", y!="}"}[$__rate_interval])))
        / on (pod) group_left (node) b_total offset 5m > 3 * 10 and time() - c_seconds unless count(up)"#;
    let want: BTreeSet<String> = ["a_bucket", "b_total", "c_seconds", "up"]
        .map(str::to_string)
        .into();
    assert_eq!(metric_names(expr), want);
    assert_eq!(
        grafana_query(r#"label_values(weir_build_info{namespace=~"$namespace"}, streamjob)"#),
        r#"weir_build_info{namespace=~"$namespace"}"#
    );
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_use_is_exposed() {
    let exposed = exposed();
    let objs = render(OBSERVABILITY_ON);
    let queries = queries(&objs);
    assert!(queries.len() >= 20, "alerts and panels found: {queries:?}");
    let mut used = BTreeSet::new();
    for (place, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{place}: no metric in {expr}");
        for name in names {
            assert!(
                exposed.contains(&name) || SCRAPE_SERIES.contains(&name.as_str()),
                "{place} uses {name}, which neither the worker nor the operator exposes:\n{expr}\n\
                 exposed: {exposed:?}"
            );
            used.insert(name);
        }
    }
    // The descriptions quote queries for a person to run: their metrics must exist too.
    let rule_text = one(&objs, "PrometheusRule").to_string();
    for word in rule_text.split(|c: char| !is_ident(c)) {
        if word.starts_with("weir_") {
            assert!(exposed.contains(word), "the PrometheusRule mentions {word}");
        }
    }
    // The signals the issue asks for, each used somewhere.
    for want in [
        "weir_records_in_total",
        "weir_consumer_lag_records",
        "weir_watermark_seconds",
        "weir_results_emitted_total",
        "weir_records_rejected_total",
        "weir_last_checkpoint_timestamp_seconds",
        "weir_checkpoint_failures_total",
        "weir_partitions_owned",
        "weir_operator_reconcile_failures_total",
    ] {
        assert!(used.contains(want), "{want} is not used: {used:?}");
    }
}

#[test]
fn the_pod_monitor_selects_the_worker_pods_and_their_metrics_port() {
    let objs = render(OBSERVABILITY_ON);
    let pm = one(&objs, "PodMonitor");
    let pod_labels = names::labels("payments");
    let selector = pm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(
            pod_labels.get(k).map(String::as_str),
            v.as_str(),
            "the PodMonitor selects {k}={v}, which worker pods do not carry: {pod_labels:?}"
        );
    }
    // It must not select the operator's own pods (the ServiceMonitor scrapes those).
    let deployment = one(&objs, "Deployment");
    let operator_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert!(selector
        .iter()
        .any(|(k, v)| &operator_labels[k.as_str()] != v));

    let endpoint = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], METRICS_PORT_NAME);
    // Prometheus exposes a pod label as __meta_kubernetes_pod_label_<name, non-alphanumerics
    // as _>: the job label must come from the label the operator sets.
    let job_label: String = names::LABEL_JOB
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let relabel = endpoint["relabelings"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["targetLabel"] == "streamjob")
        .expect("a relabeling sets streamjob");
    assert_eq!(
        relabel["sourceLabels"],
        serde_json::json!([format!("__meta_kubernetes_pod_label_{job_label}")])
    );
    assert!(pod_labels.contains_key(names::LABEL_JOB));
}
