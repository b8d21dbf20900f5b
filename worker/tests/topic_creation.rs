//! Against the real broker (nisshi, started here): no client a worker makes creates a topic.
//!
//! On a real cluster, workers that were still terminating after the operator deleted a
//! two-stage job's repartition topic made the broker create it again (issue 16, B3). Every
//! client now says `allow.auto.create.topics=false`; a missing sink, dead-letter or repartition
//! topic is an error naming it, and the worker waits for it (`weir_worker::topics`).
//!
//! The first test is the control: it shows that nisshi does create a topic on a metadata
//! request from a client that allows it, so the others prove something.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use support::broker::{free_port, kill_group, Broker};
use support::workers::http_get;
use weir_worker::kafka::{
    dead_letter_settings, repartition_settings, sink_settings, source_settings,
};
use weir_worker::topics::{find, Found};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// Every topic the broker has, asked by a client that cannot create one.
fn topics(bootstrap: &str) -> BTreeSet<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("client");
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    md.topics().iter().map(|t| t.name().to_string()).collect()
}

fn job_yaml(bootstrap: &str, sink: &str, dlq: &str) -> String {
    format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: nocreate}}
spec:
  source:
    kafka: {{bootstrapServers: "{bootstrap}", topic: in, startFrom: earliest}}
  groupBy: [merchant]
  window: {{type: tumbling, size: 10s}}
  aggregations: [{{name: n, fn: count}}]
  sink: {{kafka: {{topic: {sink}}}}}
  deadLetter: {{kafka: {{topic: {dlq}}}}}
  checkpoint: {{interval: 1s}}
"#
    )
}

fn job(bootstrap: &str, sink: &str, dlq: &str) -> weir_crds::StreamJob {
    weir_crds::parse_stream_job(&job_yaml(bootstrap, sink, dlq))
        .expect("job")
        .job
}

#[test]
fn nisshi_creates_a_topic_on_request_only_for_a_client_that_allows_it() {
    let broker = Broker::start();
    // librdkafka's producer default: allowed.
    let allowing: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .expect("producer");
    let _ = allowing
        .client()
        .fetch_metadata(Some("made-on-request"), Duration::from_secs(10));
    let refusing: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("producer");
    let _ = refusing
        .client()
        .fetch_metadata(Some("never-made"), Duration::from_secs(10));
    let now = topics(&broker.bootstrap);
    assert!(
        now.contains("made-on-request"),
        "nisshi does not create topics on request at all, so the other tests here prove \
         nothing: {now:?}"
    );
    assert!(
        !now.contains("never-made"),
        "nisshi ignored the flag: {now:?}"
    );
}

#[test]
fn no_client_of_a_worker_creates_a_missing_topic() {
    let broker = Broker::start();
    let job = job(&broker.bootstrap, "out-missing", "dlq-missing");
    let spec = &job.spec;

    // The source consumer asks for the topic's metadata.
    let consumer: BaseConsumer = source_settings(spec, "nocreate")
        .expect("settings")
        .config()
        .create()
        .expect("consumer");
    let _ = consumer.fetch_metadata(Some("in-missing"), Duration::from_secs(10));

    // Each producer sends to its missing topic, which makes librdkafka ask for it.
    let producers = [
        (
            sink_settings(spec, "nocreate").expect("sink"),
            "out-missing",
        ),
        (
            dead_letter_settings(spec, "nocreate")
                .expect("dead letters")
                .expect("configured"),
            "dlq-missing",
        ),
        (
            repartition_settings(spec, "nocreate", "repartition-missing").expect("repartition"),
            "repartition-missing",
        ),
    ];
    for (settings, topic) in &producers {
        let producer: BaseProducer = settings.config().create().expect("producer");
        producer
            .send(BaseRecord::to(topic).key("k").payload("v"))
            .map_err(|(e, _)| e)
            .expect("queued");
        // Long enough for librdkafka's metadata requests for the unknown topic; the delivery
        // itself is refused later (topic.metadata.propagation.max.ms).
        let _ = producer.flush(Duration::from_secs(3));
        // What the worker asks before it starts.
        assert_eq!(find(settings, topic), Found::Missing, "{topic}");
    }

    let now = topics(&broker.bootstrap);
    for topic in [
        "in-missing",
        "out-missing",
        "dlq-missing",
        "repartition-missing",
    ] {
        assert!(!now.contains(topic), "{topic} was created: {now:?}");
    }
}

fn create_topic(bootstrap: &str, topic: &str) {
    weir_worker::tools::create_topic(bootstrap, topic, 1).expect("create topic");
}

/// Lines of `rx` until one contains `want` (or the deadline), all of them returned.
fn read_until(rx: &mpsc::Receiver<String>, want: &str, seen: &mut String) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(want) {
                return true;
            }
        }
    }
    false
}

#[test]
fn a_worker_waits_for_its_missing_sink_topic_says_which_and_never_creates_it() {
    use std::os::unix::process::CommandExt;
    let broker = Broker::start();
    create_topic(&broker.bootstrap, "in");
    create_topic(&broker.bootstrap, "dlq");
    let dir = tempfile::tempdir().expect("tempdir");
    let job_file = dir.path().join("job.yaml");
    std::fs::write(&job_file, job_yaml(&broker.bootstrap, "out", "dlq")).expect("job file");
    let port = free_port();
    let mut worker = Command::new(WEIR)
        .arg("run")
        .arg(&job_file)
        .arg("--checkpoint-dir")
        .arg(dir.path().join("checkpoints"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--progress", "0"])
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("weir run");
    let stderr = worker.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let said = read_until(&rx, "the sink topic out does not exist", &mut seen);
    let metrics = http_get(port, "/metrics");
    let ready = http_get(port, "/readyz");
    let before = topics(&broker.bootstrap);
    create_topic(&broker.bootstrap, "out");
    let started = read_until(&rx, "every output topic exists", &mut seen);
    kill_group(&mut worker);

    assert!(said, "no log line names the missing topic:\n{seen}");
    assert!(!before.contains("out"), "the worker created its sink topic");
    let (_, metrics) = metrics.expect("/metrics answered");
    assert!(
        metrics.contains(r#"weir_output_topic_missing{topic="out",role="sink"} 1"#),
        "{metrics}"
    );
    let (code, ready) = ready.expect("/readyz answered");
    assert_eq!(code, 503, "{ready}");
    assert!(ready.contains("output topic missing"), "{ready}");
    assert!(
        started,
        "the worker did not start once the topic existed:\n{seen}"
    );
}
