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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
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
        let producer = result_producer(self.sink);
        let mut out = ResultText::default();
        let produced = self.each_due(p, n, per_million, |m, group| {
            out.write(group, m.offset());
            out.send(&producer, self.out);
        });
        producer.flush(Duration::from_secs(120)).expect("flush");
        produced
    }

    /// Read the `n` records of partition `p` and call `f` with one in `1e6 / per_million` of
    /// them and its merchant as a JSON string; returns how many `f` was called with.
    fn each_due(
        &self,
        p: i32,
        n: u64,
        per_million: u64,
        mut f: impl FnMut(&BorrowedMessage<'_>, &str),
    ) -> u64 {
        let c = self.consumer(p);
        let mut group = String::with_capacity(32);
        let (mut count, mut due, mut called) = (0u64, 0u64, 0u64);
        let started = Instant::now();
        while count < n {
            let Some(m) = poll(&c, started) else { continue };
            count += 1;
            due += per_million;
            if due < 1_000_000 {
                continue;
            }
            due -= 1_000_000;
            let merchant = std::str::from_utf8(m.key().unwrap_or_default()).unwrap_or("?");
            group.clear();
            let _ = write!(group, r#""{merchant}""#);
            f(&m, &group);
            called += 1;
        }
        called
    }
}

/// A producer of results, as the worker's: its settings, and its partitioner.
type ResultProducer = ThreadedProducer<kafka::PartitionedContext, kafka::ConsistentRandom>;

fn result_producer(settings: &ClientSettings) -> ResultProducer {
    let (config, partitioner) = kafka::producer_config(settings);
    config
        .create_with_context(kafka::PartitionedContext(partitioner))
        .expect("producer")
}

/// A result-shaped sink message: the worker's key and value layout for the benchmark's job,
/// with an amount taken from the offset.
#[derive(Default)]
struct ResultText {
    key: String,
    value: String,
}

impl ResultText {
    /// The message of `group` (a JSON string).
    fn write(&mut self, group: &str, offset: i64) {
        let cents = offset.rem_euclid(100_000);
        let (start, end) = ("2026-01-01T00:01:00.000Z", "2026-01-01T00:02:00.000Z");
        self.key.clear();
        self.value.clear();
        let _ = write!(
            self.key,
            r#"{{"group":{{"merchant":{group}}},"start":"{start}","end":"{end}"}}"#
        );
        let _ = write!(
            self.value,
            r#"{{"window":{{"start":"{start}","end":"{end}"}},"group":{{"merchant":{group}}},"values":{{"n":1,"total":{}.{:02},"avg":{}.{:02}}}}}"#,
            cents / 100,
            cents % 100,
            cents / 100,
            cents % 100
        );
    }

    fn send(&self, producer: &ResultProducer, topic: &str) {
        let rec = BaseRecord::to(topic)
            .key(self.key.as_bytes())
            .payload(self.value.as_bytes());
        kafka::send_when_room(producer, rec).expect("producing");
    }
}

/// (r2) The floor of a two-stage job's Kafka I/O, without the worker: the first hop as (r),
/// but writing a partial-shaped message (the worker's partial layout and size, keyed by its
/// group, to the partition of the repartition topic the worker routes it to) through one
/// producer shared by the four threads, as a worker's first stage does; then a thread per
/// partition of that topic reading them and writing a result-shaped message for each, as the
/// merge stage does. No decoding, no windows, no merging, no markers, no checkpoints. Timed,
/// like (c), until the last result is handed to its producer (every producer is flushed
/// after). Two stages cannot be faster than this; with `pack` above 1, partials go `pack` to a
/// message (lines of group and partial, no key), what packing partials could at most buy.
pub(crate) fn relay_two_hops(
    setup: &ChildSetup,
    spec: &StreamJobSpec,
    results: u64,
    (partitions, pack): (i32, usize),
) -> Measured {
    let topic = format!("{}-repartition", setup.name);
    weir_worker::tools::create_topic(&setup.bootstrap, &topic, partitions)
        .expect("create the repartition topic");
    let source = kafka::source_settings(spec, &setup.name).expect("source settings");
    let sink = kafka::sink_settings(spec, &setup.name).expect("sink settings");
    let repartition =
        kafka::repartition_settings(spec, &setup.name, &topic).expect("repartition settings");
    let per_million = results.saturating_mul(1_000_000) / setup.n.max(1);
    // Partials sent (known once every first-hop thread has ended: `u64::MAX` until then),
    // and relayed as results.
    let (sent, merged) = (AtomicU64::new(u64::MAX), AtomicU64::new(0));
    let exchanged = AtomicU64::new(0);
    let shared: ThreadedProducer<DefaultProducerContext> =
        repartition.config().create().expect("repartition producer");
    let t0 = Instant::now();
    let (first, last) = std::thread::scope(|s| {
        let firsts: Vec<_> = setup
            .sizes
            .iter()
            .enumerate()
            .map(|(p, n)| {
                let (source, shared, topic) = (&source, &shared, topic.as_str());
                let io = Io {
                    source,
                    sink: &sink,
                    topic: &setup.topic,
                    out: topic,
                };
                s.spawn(move || io.first_hop(shared, p as i32, (*n, per_million), partitions, pack))
            })
            .collect();
        let seconds: Vec<_> = (0..partitions)
            .map(|p| {
                let (source, sink, sent, merged) = (&source, &sink, &sent, &merged);
                let io = Io {
                    source,
                    sink,
                    topic: &topic,
                    out: &setup.sink,
                };
                s.spawn(move || io.second_hop(p, (sent, merged), t0))
            })
            .collect();
        let (partials, messages) = firsts
            .into_iter()
            .map(|t| t.join().expect("first hop thread"))
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
        sent.store(partials, Ordering::Relaxed);
        exchanged.store(messages, Ordering::Relaxed);
        let first = t0.elapsed();
        let last = seconds
            .into_iter()
            .map(|t| t.join().expect("second hop thread"))
            .fold(Duration::ZERO, Duration::max);
        (first, last)
    });
    shared.flush(Duration::from_secs(120)).expect("flush");
    Measured {
        seconds: last.as_secs_f64(),
        first_stage_seconds: first.as_secs_f64(),
        drained_seconds: last.as_secs_f64(),
        results: merged.load(Ordering::Relaxed),
        exchanged: exchanged.load(Ordering::Relaxed),
        ..Measured::default()
    }
}

impl Io<'_> {
    /// The first hop of (r2): read the `n` records of partition `p`, write a partial-shaped
    /// message per `1e6 / per_million` of them through `shared`, or `pack` of them to a
    /// message; returns the partials and the messages written.
    fn first_hop(
        &self,
        shared: &ThreadedProducer<DefaultProducerContext>,
        p: i32,
        (n, per_million): (u64, u64),
        partitions: i32,
        pack: usize,
    ) -> (u64, u64) {
        let mut packs = Packs {
            out: self.out,
            producer: shared,
            open: (0..partitions).map(|_| (String::new(), 0)).collect(),
            messages: 0,
        };
        let mut value = String::with_capacity(256);
        let partials = self.each_due(p, n, per_million, |m, group| {
            let cents = m.offset().rem_euclid(100_000);
            value.clear();
            let _ = write!(
                value,
                r#"{{"partial":{{"source":{p},"pane":60000,"first":60000,"group":"\"{}\"","accs":[{{"count":1}},{{"sum":[{}.{:02},0.0]}},{{"mean":[{}.{:02},0.0,1]}}],"tag":"r-1"}}}}"#,
                group.trim_matches('"'),
                cents / 100,
                cents % 100,
                cents / 100,
                cents % 100
            );
            let to = weir_engine::protocol::route(group.as_bytes(), partitions);
            if pack > 1 {
                packs.add(to, group, &value, pack);
            } else {
                packs.send(to, group, &value);
            }
        });
        for to in 0..partitions {
            packs.close(to);
        }
        (partials, packs.messages)
    }

    /// The second hop of (r2): read partition `p` of the repartition topic, write a
    /// result-shaped message for each message, until `merged` (all threads') reaches `sent`
    /// (the first hop's, once it has ended); returns when, after `t0`, this thread handed its
    /// last result to its producer.
    fn second_hop(
        &self,
        p: i32,
        (sent, merged): (&AtomicU64, &AtomicU64),
        t0: Instant,
    ) -> Duration {
        let c = self.consumer(p);
        let producer = result_producer(self.sink);
        let mut out = ResultText::default();
        let mut last = Duration::ZERO;
        let started = Instant::now();
        while merged.load(Ordering::Relaxed) < sent.load(Ordering::Relaxed) {
            let Some(m) = poll(&c, started) else { continue };
            // A pack (no key): `group\tpartial` lines.
            let groups: Box<dyn Iterator<Item = &str>> = match m.key() {
                Some(key) if !key.is_empty() => {
                    Box::new(std::iter::once(std::str::from_utf8(key).unwrap_or("\"?\"")))
                }
                _ => Box::new(
                    std::str::from_utf8(m.payload().unwrap_or_default())
                        .unwrap_or_default()
                        .lines()
                        .map(|line| line.split_once('\t').map_or("\"?\"", |(group, _)| group)),
                ),
            };
            for group in groups {
                out.write(group, m.offset());
                out.send(&producer, self.out);
                merged.fetch_add(1, Ordering::Relaxed);
            }
            last = t0.elapsed();
        }
        producer.flush(Duration::from_secs(120)).expect("flush");
        last
    }

    /// A consumer of partition `p` of `self.topic`, from its beginning.
    fn consumer(&self, p: i32) -> BaseConsumer {
        let c: BaseConsumer = self.source.config().create().expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(self.topic, p, Offset::Beginning)
            .expect("offset");
        c.assign(&tpl).expect("assign");
        c
    }
}

/// The next message of `c`, or `None` after a poll that timed out.
fn poll(c: &BaseConsumer, started: Instant) -> Option<BorrowedMessage<'_>> {
    match c.poll(Duration::from_millis(100)) {
        None => {
            assert!(started.elapsed() < RUN_TIMEOUT, "relay stalled");
            None
        }
        Some(Err(e)) => panic!("consuming: {e}"),
        Some(Ok(m)) => Some(m),
    }
}

/// (r2)'s partial-shaped messages to the repartition topic: one per partial, or packed.
struct Packs<'a> {
    out: &'a str,
    producer: &'a ThreadedProducer<DefaultProducerContext>,
    /// Per repartition partition, the open pack's lines and how many.
    open: Vec<(String, usize)>,
    /// Messages sent.
    messages: u64,
}

impl Packs<'_> {
    /// `value` keyed by `group`, alone, to partition `to`.
    fn send(&mut self, to: i32, group: &str, value: &str) {
        let rec = BaseRecord::to(self.out)
            .key(group.as_bytes())
            .payload(value.as_bytes())
            .partition(to);
        kafka::send_when_room(self.producer, rec).expect("producing a partial");
        self.messages += 1;
    }

    /// `value` added to partition `to`'s pack, sent once it has `pack` partials.
    fn add(&mut self, to: i32, group: &str, value: &str, pack: usize) {
        let Some((lines, n)) = self.open.get_mut(to as usize) else {
            return;
        };
        let _ = writeln!(lines, "{group}\t{value}");
        *n += 1;
        if *n >= pack {
            self.close(to);
        }
    }

    /// Send partition `to`'s pack, if it has any partial.
    fn close(&mut self, to: i32) {
        let Some((lines, n)) = self.open.get_mut(to as usize) else {
            return;
        };
        if *n == 0 {
            return;
        }
        let rec = BaseRecord::to(self.out)
            .key("")
            .payload(lines.as_bytes())
            .partition(to);
        kafka::send_when_room(self.producer, rec).expect("producing a pack");
        lines.clear();
        *n = 0;
        self.messages += 1;
    }
}
