//! (r) The floor of the worker's Kafka I/O, without the worker (issue 20): per partition, one
//! thread with a bare consumer and a producer built from the worker's own source and sink
//! settings (`kafka::source_settings`, `kafka::sink_settings`: idempotent, lz4, 100 ms linger,
//! bounded queues), that reads every record and writes one result-shaped message (a sink key
//! and a JSON value of the worker's layout and size) for as many records as the job has
//! results, spread evenly. No decoding, no windows, no checkpoints: what reading the records
//! and writing that many messages with librdkafka costs on this broker and machine. The worker
//! cannot be faster than this, so its ratio to (a) bounds what any change inside the worker
//! can reach.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use weir_crds::StreamJobSpec;
use weir_worker::kafka::{self, ClientSettings};

use crate::{ChildSetup, Measured, RUN_TIMEOUT};

/// Run (r) over every partition of `setup`, writing `results` messages in all.
pub(crate) fn relay(setup: &ChildSetup, spec: &StreamJobSpec, results: u64) -> Measured {
    let source = kafka::source_settings(spec, &setup.name).expect("source settings");
    let sink = kafka::sink_settings(spec, &setup.name).expect("sink settings");
    // Results per record, in millionths: a partition writes a message each time its running
    // sum passes a million.
    let per_million = results.saturating_mul(1_000_000) / setup.n.max(1);
    let t0 = Instant::now();
    let produced = std::thread::scope(|s| {
        let threads: Vec<_> = setup
            .sizes
            .iter()
            .enumerate()
            .map(|(p, n)| {
                let (source, sink) = (&source, &sink);
                s.spawn(move || {
                    let io = Io {
                        source,
                        sink,
                        topic: &setup.topic,
                        out: &setup.sink,
                    };
                    io.partition(p as i32, *n, per_million)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("relay thread"))
            .sum::<u64>()
    });
    Measured {
        seconds: t0.elapsed().as_secs_f64(),
        first_stage_seconds: t0.elapsed().as_secs_f64(),
        results: produced,
        ..Measured::default()
    }
}

struct Io<'a> {
    source: &'a ClientSettings,
    sink: &'a ClientSettings,
    topic: &'a str,
    out: &'a str,
}

impl Io<'_> {
    /// Read the `n` records of partition `p`, write a message per `1e6 / per_million` of them;
    /// returns the messages written (every one acknowledged: the producer is flushed).
    fn partition(&self, p: i32, n: u64, per_million: u64) -> u64 {
        let c: BaseConsumer = self.source.config().create().expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(self.topic, p, Offset::Beginning)
            .expect("offset");
        c.assign(&tpl).expect("assign");
        let producer: ThreadedProducer<DefaultProducerContext> =
            self.sink.config().create().expect("producer");
        let (mut key, mut value) = (String::with_capacity(128), String::with_capacity(256));
        let (mut count, mut due, mut produced) = (0u64, 0u64, 0u64);
        let started = Instant::now();
        while count < n {
            let m = match c.poll(Duration::from_millis(100)) {
                None => {
                    assert!(started.elapsed() < RUN_TIMEOUT, "relay stalled");
                    continue;
                }
                Some(Err(e)) => panic!("consuming: {e}"),
                Some(Ok(m)) => m,
            };
            count += 1;
            due += per_million;
            if due < 1_000_000 {
                continue;
            }
            due -= 1_000_000;
            let merchant = std::str::from_utf8(m.key().unwrap_or_default()).unwrap_or("?");
            let cents = m.offset().rem_euclid(100_000);
            let (start, end) = ("2026-01-01T00:01:00.000Z", "2026-01-01T00:02:00.000Z");
            key.clear();
            value.clear();
            let _ = write!(
                key,
                r#"{{"group":{{"merchant":"{merchant}"}},"start":"{start}","end":"{end}"}}"#
            );
            let _ = write!(
                value,
                r#"{{"window":{{"start":"{start}","end":"{end}"}},"group":{{"merchant":"{merchant}"}},"values":{{"n":1,"total":{}.{:02},"avg":{}.{:02}}}}}"#,
                cents / 100,
                cents % 100,
                cents / 100,
                cents % 100
            );
            let rec = BaseRecord::to(self.out)
                .key(key.as_bytes())
                .payload(value.as_bytes());
            kafka::send_when_room(&producer, rec).expect("producing");
            produced += 1;
        }
        producer.flush(Duration::from_secs(120)).expect("flush");
        produced
    }
}
