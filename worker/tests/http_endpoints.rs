//! The worker's HTTP endpoints over a real socket: statuses of the probes, both metrics
//! formats, and `promtool check metrics` on what a plain scrape returns.
//!
//! promtool comes from Debian's `prometheus` package; `WEIR_PROMTOOL` names another binary.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weir_engine::RejectReason;
use weir_worker::http::{serve, Health};
use weir_worker::metrics::Metrics;

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 GET on a fresh connection, read to its close.
async fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> Reply {
    let exchange = async {
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).await.expect("receive");
        String::from_utf8(raw).expect("UTF-8 reply")
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no reply within 10 s"));
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let reply = Reply {
        status,
        headers,
        body: body.to_owned(),
    };
    assert!(
        reply.header("transfer-encoding").is_none(),
        "this tiny client reads only length-delimited bodies"
    );
    reply
}

#[tokio::test]
async fn endpoints_answer_over_http_and_metrics_pass_promtool() {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(Duration::from_secs(30)));
    let p0 = metrics.partition("orders", 0);
    let p1 = metrics.partition("orders", 1);
    p0.record_in(120);
    p0.rejected(RejectReason::MissingField);
    p0.result_emitted(80);
    p0.set_lag(50, 42);
    p0.set_watermark_ms(1_700_000_000_000);
    p0.set_open(3, 12);
    p0.checkpoint_written(Duration::from_millis(7), 300);
    p1.checkpoint_failed(Duration::from_millis(2));
    metrics.partitions_owned.set(2);

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, metrics.clone(), health.clone(), async {
        let _ = stopped.await;
    }));

    // Not ready before the runtime says so; live from the start.
    let r = get(addr, "/readyz", None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("starting"), "{}", r.body);
    let r = get(addr, "/healthz", None).await;
    assert_eq!((r.status, r.body.trim()), (200, "ok"));

    health.beat();
    health.set_ready();
    let r = get(addr, "/readyz", None).await;
    assert_eq!((r.status, r.body.trim()), (200, "ready"));

    // What Prometheus asks for.
    let om = get(
        addr,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    )
    .await;
    assert_eq!(om.status, 200);
    assert_eq!(
        om.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);
    assert!(om.body.contains("# TYPE weir_records_in counter\n"));
    assert!(om
        .body
        .contains(r#"weir_records_in_total{topic="orders",partition="0"} 1"#));

    // What a client asking for plain text gets, and curl (no Accept), and so a person piping
    // to promtool.
    let asked = get(addr, "/metrics", Some("text/plain")).await;
    assert_eq!(
        asked.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let plain = get(addr, "/metrics", None).await;
    assert_eq!(asked.body, plain.body);
    assert_eq!(plain.status, 200);
    assert_eq!(
        plain.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    for want in [
        r#"weir_records_rejected_total{topic="orders",partition="0",reason="missing_field"} 1"#,
        r#"weir_consumer_lag_records{topic="orders",partition="0"} 8"#,
        r#"weir_checkpoint_failures_total{topic="orders",partition="1"} 1"#,
        "weir_partitions_owned 2",
    ] {
        assert!(
            plain.body.lines().any(|l| l == want),
            "missing {want} in:\n{}",
            plain.body
        );
    }
    let said = support::promtool::check(&plain.body);
    assert!(
        said.trim().is_empty(),
        "promtool found problems:\n{said}\nin:\n{}",
        plain.body
    );

    let r = get(addr, "/nothing-here", None).await;
    assert_eq!(r.status, 404);

    stop.send(()).expect("server still running");
    let ended = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops after the shutdown future completes")
        .expect("server task");
    ended.expect("serve returns Ok");
}

#[tokio::test]
async fn a_stalled_main_loop_fails_both_probes() {
    let health = Arc::new(Health::new(Duration::ZERO));
    health.set_ready();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, Arc::new(Metrics::new()), health, async {
        let _ = stopped.await;
    }));
    // With a zero timeout, the creation "beat" is stale as soon as a millisecond passes.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let r = get(addr, "/healthz", None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    let r = get(addr, "/readyz", None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("stalled"), "{}", r.body);
    stop.send(()).expect("server still running");
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
}
