//! [`RdKafkaClient`] against a real Kafka-protocol broker (nisshi, as in the worker's tests;
//! `scripts/deps` installs it): partition count, retention, a missing topic, an unreachable
//! broker, high watermarks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use weir_crds::plan::NewTopic;
use weir_operator::kafka::{KafkaClient, RdKafkaClient};
use weir_operator::observation::KafkaConnection;
use weir_operator::observation::TopicObservation;

// The worker's broker harness: one way to find, start and stop nisshi.
#[path = "../../worker/tests/support/broker.rs"]
mod broker;
use broker::Broker;
mod support;

fn conn(broker: &Broker) -> KafkaConnection {
    KafkaConnection {
        bootstrap_servers: broker.bootstrap.clone(),
        properties: BTreeMap::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observes_partitions_retention_missing_topic_and_watermarks() {
    let broker = Broker::start();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .expect("admin");
    let topic = rdkafka::admin::NewTopic::new("payments", 3, TopicReplication::Fixed(1))
        .set("retention.ms", "3600000");
    for r in admin
        .create_topics(&[topic], &AdminOptions::new())
        .await
        .expect("create topic")
    {
        r.expect("topic created");
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .expect("producer");
    for (partition, n) in [(0, 5), (2, 2)] {
        for i in 0..n {
            producer
                .send(
                    FutureRecord::<str, str>::to("payments")
                        .partition(partition)
                        .payload(&format!("{i}")),
                    Duration::from_secs(5),
                )
                .await
                .expect("produce");
        }
    }

    let observer = RdKafkaClient::new(Duration::from_secs(5));
    let conn = conn(&broker);
    assert_eq!(
        observer.topic(&conn, "payments").await,
        TopicObservation::Found {
            partitions: 3,
            retention_ms: Some(3_600_000)
        }
    );
    assert_eq!(
        observer.topic(&conn, "missing").await,
        TopicObservation::NotFound
    );
    // Observing never creates the topic it looks for.
    assert_eq!(
        observer.topic(&conn, "missing").await,
        TopicObservation::NotFound
    );
    assert_eq!(
        observer.high_watermarks(&conn, "payments", 3).await,
        Ok(vec![5, 0, 2])
    );
    // Every read above went through one connection's clients.
    assert_eq!(observer.connections(), 1);
}

/// Clients are kept per connection (brokers and properties, credentials included) and closed
/// once unused for `idle`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_shared_per_connection_and_closed_when_idle() {
    let broker = Broker::start();
    let mut observer = RdKafkaClient::new(Duration::from_secs(5));
    observer.idle = Duration::from_millis(500);
    let a = conn(&broker);
    let mut b = conn(&broker);
    b.properties
        .insert("client.id".to_string(), "rotated".to_string());
    for _ in 0..3 {
        assert_eq!(
            observer.topic(&a, "missing").await,
            TopicObservation::NotFound
        );
    }
    assert_eq!(observer.connections(), 1);
    assert_eq!(
        observer.topic(&b, "missing").await,
        TopicObservation::NotFound
    );
    assert_eq!(observer.connections(), 2);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Asking for `a` again closes `b`'s (and `a`'s old) clients, idle too long.
    assert_eq!(
        observer.topic(&a, "missing").await,
        TopicObservation::NotFound
    );
    assert_eq!(observer.connections(), 1);
}

/// The repartition topic of a two-stage job: created with its partitions and configs (the
/// replication factor left to the broker), a second create is success (another operator replica
/// was first), deleted, and a second delete is success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_and_deletes_a_repartition_topic() {
    let broker = Broker::start();
    let observer = RdKafkaClient::new(Duration::from_secs(5));
    let conn = conn(&broker);
    let topic = NewTopic {
        name: "weir-shop-payments-repartition".to_string(),
        partitions: 6,
        replication_factor: None,
        configs: BTreeMap::from([
            ("cleanup.policy".to_string(), "delete".to_string()),
            ("retention.ms".to_string(), "86400000".to_string()),
        ]),
    };
    assert_eq!(
        observer.topic(&conn, &topic.name).await,
        TopicObservation::NotFound
    );
    observer.create_topic(&conn, &topic).await.expect("created");
    assert_eq!(
        observer.topic(&conn, &topic.name).await,
        TopicObservation::Found {
            partitions: 6,
            retention_ms: Some(86_400_000)
        }
    );
    // The repartition topic's read asks for partitions only (no DescribeConfigs).
    assert_eq!(
        observer.topic_partitions(&conn, &topic.name).await,
        TopicObservation::Found {
            partitions: 6,
            retention_ms: None
        }
    );
    assert_eq!(
        observer.topic_partitions(&conn, "missing").await,
        TopicObservation::NotFound
    );
    observer
        .create_topic(&conn, &topic)
        .await
        .expect("creating an existing topic is success");
    observer
        .delete_topic(&conn, &topic.name)
        .await
        .expect("deleted");
    // Deletion completes asynchronously on some brokers: wait for it, with a bound.
    let start = Instant::now();
    while observer.topic(&conn, &topic.name).await != TopicObservation::NotFound {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "topic still there"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    observer
        .delete_topic(&conn, &topic.name)
        .await
        .expect("deleting a missing topic is success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_reported_not_waited_on_forever() {
    let observer = RdKafkaClient::new(Duration::from_secs(2));
    let conn = KafkaConnection {
        bootstrap_servers: format!("127.0.0.1:{}", broker::free_port()),
        properties: BTreeMap::new(),
    };
    let start = Instant::now();
    match observer.topic(&conn, "payments").await {
        TopicObservation::BrokerUnreachable { detail } => assert!(!detail.is_empty()),
        other => panic!("expected BrokerUnreachable, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// Real sockets: a closed port, a port that accepts and never answers, and a name that does
/// not resolve fail with different librdkafka errors, and give byte-identical statuses (the
/// address is the job's choice: the difference would make the operator a port scanner).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_silent_and_unresolvable_brokers_give_the_same_status() {
    use weir_operator::observation::Observation;
    use weir_operator::outcome::Outcome;
    // Accepted by the kernel, never read: librdkafka connects and waits for an answer.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let addresses = [
        format!("127.0.0.1:{}", broker::free_port()),
        format!("127.0.0.1:{}", silent.local_addr().expect("addr").port()),
        "no-such-broker.invalid:9092".to_string(),
    ];
    let observer = RdKafkaClient::new(Duration::from_secs(2));
    let job = support::job();
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    );
    let mut details = Vec::new();
    let mut statuses = Vec::new();
    for address in &addresses {
        let conn = KafkaConnection {
            bootstrap_servers: address.clone(),
            properties: BTreeMap::new(),
        };
        let observed = observer.topic(&conn, "payments").await;
        match &observed {
            TopicObservation::BrokerUnreachable { detail } => details.push(detail.clone()),
            other => panic!("expected BrokerUnreachable from {address}, got {other:?}"),
        }
        let obs = Observation::new(observed);
        let built = support::run(&job, &obs);
        let status =
            weir_operator::status::compute(&job, &Outcome::from(built.as_ref()), &obs, None, &now);
        statuses.push(serde_json::to_string(&status).expect("status"));
    }
    eprintln!("librdkafka's errors (operator log only): {details:#?}");
    assert!(statuses.iter().all(|s| *s == statuses[0]), "{statuses:#?}");
    for (detail, address) in details.iter().zip(&addresses) {
        assert!(!statuses[0].contains(detail.as_str()), "{detail}");
        assert!(!statuses[0].contains(address.as_str()), "{address}");
    }
    drop(silent);
}

/// (VmRSS, VmHWM) of this process, kB.
fn memory_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A measurement, not a check (the reconcile benchmark fakes Kafka): how much RSS the real
/// observer adds when 16 reconciles (`WEIR_MAX_CONCURRENT_RECONCILES=16`, twice the default) read their topics at
/// once (metadata, DescribeConfigs, watermarks of 64 partitions). First with one observer, as
/// the operator runs (its clients shared by every read), then with a new observer per read —
/// new librdkafka clients for every read, what the operator did before it kept them. VmHWM only
/// grows, so the second phase shows what it adds on top of the first.
/// `cargo test -p weir-operator --release --test kafka -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it with --ignored --nocapture"]
async fn memory_of_concurrent_topic_reads() {
    let broker = Broker::start();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .expect("admin");
    let topics: Vec<rdkafka::admin::NewTopic> = (0..16)
        .map(|i| {
            rdkafka::admin::NewTopic::new(
                Box::leak(format!("t-{i}").into_boxed_str()),
                64,
                TopicReplication::Fixed(1),
            )
        })
        .collect();
    for r in admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .expect("create topics")
    {
        r.expect("topic created");
    }
    let shared = std::sync::Arc::new(RdKafkaClient::default());
    let conn = conn(&broker);
    let before = memory_kb();
    for round in 0..10 {
        let per_read = round >= 5;
        let started = Instant::now();
        let reads = (0..16).map(|i| {
            let observer = if per_read {
                std::sync::Arc::new(RdKafkaClient::default())
            } else {
                shared.clone()
            };
            let conn = conn.clone();
            tokio::spawn(async move {
                let topic = format!("t-{i}");
                let found = observer.topic(&conn, &topic).await;
                assert_eq!(found.partitions(), Some(64), "{found:?}");
                observer
                    .high_watermarks(&conn, &topic, 64)
                    .await
                    .expect("watermarks");
            })
        });
        for r in futures::future::join_all(reads).await {
            r.expect("read");
        }
        let now = memory_kb();
        println!(
            "round {round} ({}): 16 concurrent topic reads in {:.0} ms: VmRSS {:.1} MB (+{:.1}), VmHWM {:.1} MB (+{:.1})",
            if per_read { "clients per read" } else { "shared clients" },
            started.elapsed().as_secs_f64() * 1e3,
            now.0 as f64 / 1024.0,
            (now.0 as f64 - before.0 as f64) / 1024.0,
            now.1 as f64 / 1024.0,
            (now.1 as f64 - before.1 as f64) / 1024.0,
        );
    }
}
