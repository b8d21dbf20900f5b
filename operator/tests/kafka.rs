//! [`RdKafkaObserver`] against a real Kafka-protocol broker (nisshi, as in the worker's tests;
//! `scripts/deps` installs it): partition count, retention, a missing topic, an unreachable
//! broker, high watermarks.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use weir_operator::observe::{KafkaConnection, KafkaObserver, RdKafkaObserver};
use weir_operator::observed::TopicObservation;

struct Broker {
    child: Child,
    bootstrap: String,
}

fn nisshi() -> PathBuf {
    if let Some(p) = std::env::var_os("WEIR_NISSHI") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("WEIR_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/weir")));
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nisshi"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain(cache.map(|c| c.join("nisshi/bin/nisshi")))
        .find(|c| c.is_file())
        .expect("the broker `nisshi` (run scripts/deps, which installs it; CI does)")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Broker {
    fn start() -> Broker {
        let url = format!("tcp://127.0.0.1:{}", free_port());
        let child = Command::new(nisshi())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://nisshi/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start nisshi");
        let broker = Broker {
            child,
            bootstrap: url.trim_start_matches("tcp://").to_string(),
        };
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &broker.bootstrap)
            .create()
            .expect("client");
        let deadline = Instant::now() + Duration::from_secs(30);
        while consumer
            .fetch_metadata(None, Duration::from_millis(500))
            .is_err()
        {
            assert!(Instant::now() < deadline, "nisshi not ready after 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        broker
    }

    fn conn(&self) -> KafkaConnection {
        KafkaConnection {
            bootstrap_servers: self.bootstrap.clone(),
            properties: BTreeMap::new(),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observes_partitions_retention_missing_topic_and_watermarks() {
    let broker = Broker::start();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .expect("admin");
    let topic =
        NewTopic::new("payments", 3, TopicReplication::Fixed(1)).set("retention.ms", "3600000");
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

    let observer = RdKafkaObserver {
        timeout: Duration::from_secs(5),
    };
    let conn = broker.conn();
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_reported_not_waited_on_forever() {
    let observer = RdKafkaObserver {
        timeout: Duration::from_secs(2),
    };
    let conn = KafkaConnection {
        bootstrap_servers: format!("127.0.0.1:{}", free_port()),
        properties: BTreeMap::new(),
    };
    let start = Instant::now();
    match observer.topic(&conn, "payments").await {
        TopicObservation::BrokerUnreachable { message } => assert!(!message.is_empty()),
        other => panic!("expected BrokerUnreachable, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(10));
}
