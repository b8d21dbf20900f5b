//! Against the real broker (nisshi, started here): a running job's progress shows in Kafka's
//! own view of lag. Each source partition's checkpointed offset is committed to the consumer
//! group `weir.<namespace>.<job>` (never joined), which is what `kafka-consumer-groups`, Burrow
//! and KEDA's Kafka scaler read (issue 19).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use support::broker::{create_topic, kill_group, Broker};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
const PARTITIONS: i32 = 3;
const RECORDS: u64 = 3_000;

/// The group's committed offset of each partition of `topic` (`None`: nothing committed).
fn committed(bootstrap: &str, group: &str, topic: &str) -> Vec<Option<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("client");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let Ok(got) = consumer.committed_offsets(tpl, Duration::from_secs(10)) else {
        return vec![None; PARTITIONS as usize];
    };
    (0..PARTITIONS)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect()
}

fn high_watermarks(bootstrap: &str, topic: &str) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("client");
    (0..PARTITIONS)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .collect()
}

#[test]
fn a_running_job_commits_its_checkpointed_offsets_to_its_consumer_group() {
    use std::os::unix::process::CommandExt;
    let broker = Broker::start();
    let bootstrap = broker.bootstrap.clone();
    create_topic(WEIR, &bootstrap, "payments", PARTITIONS);
    create_topic(WEIR, &bootstrap, "out", 1);
    let produced = weir_worker::tools::produce_payments(&bootstrap, "payments", 0, RECORDS, 50)
        .expect("produce");
    assert_eq!(produced, RECORDS);
    let high = high_watermarks(&bootstrap, "payments");
    assert_eq!(high.iter().sum::<i64>(), RECORDS as i64, "{high:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    let job = dir.path().join("job.yaml");
    std::fs::write(
        &job,
        format!(
            r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: lagged, namespace: shop}}
spec:
  source:
    kafka: {{bootstrapServers: "{bootstrap}", topic: payments, startFrom: earliest}}
    eventTime: {{field: ts}}
  groupByKey: true
  window: {{type: tumbling, size: 1m}}
  aggregations: [{{name: n, fn: count}}]
  sink: {{kafka: {{topic: out}}}}
  checkpoint: {{interval: 1s}}
"#
        ),
    )
    .expect("job file");
    assert!(
        committed(&bootstrap, "weir.shop.lagged", "payments")
            .iter()
            .all(Option::is_none),
        "a group nobody used has offsets"
    );
    let mut worker = Command::new(WEIR)
        .arg("run")
        .arg(&job)
        .arg("--checkpoint-dir")
        .arg(dir.path().join("checkpoints"))
        .args(["--progress", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("weir run");

    // Every record is read within seconds; the group must then show each partition's end
    // (the checkpoint interval is 1 s, commits follow within 5 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        seen = committed(&bootstrap, "weir.shop.lagged", "payments");
        if seen.iter().zip(&high).all(|(c, h)| *c == Some(*h)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    kill_group(&mut worker);
    let expected: Vec<Option<i64>> = high.iter().map(|h| Some(*h)).collect();
    assert_eq!(
        seen, expected,
        "the consumer group weir.shop.lagged does not show the job's progress"
    );
    // Only the job's own group: the librdkafka group id every consumer must carry is unused.
    assert!(
        committed(&bootstrap, "weir-lagged", "payments")
            .iter()
            .all(Option::is_none),
        "offsets were committed to the consumers' own group id"
    );
}
