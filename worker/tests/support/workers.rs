//! Worker processes and what they write, for the tests on the real broker: start, kill and
//! stop `weir worker` processes ([`Workers`]), read a topic from the beginning in a thread
//! ([`collect`]), and a result's key as the sink names it ([`result_key`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use weir_worker::contiguous::{step, Contiguous, Step};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// `weir run JOB --input` over `lines` (written to `dir/input.jsonl`), rejected records to
/// `rejects` if given: the result lines it printed, parsed. The reference the workers' results
/// are compared with.
pub fn weir_run_input<'a>(
    dir: &Path,
    job: &Path,
    lines: impl Iterator<Item = &'a str>,
    rejects: Option<&Path>,
) -> Vec<Value> {
    let input = dir.join("input.jsonl");
    let text: String = lines.map(|l| format!("{l}\n")).collect();
    std::fs::write(&input, text).unwrap();
    let mut cmd = Command::new(WEIR);
    cmd.arg("run").arg(job).arg("--input").arg(&input);
    if let Some(r) = rejects {
        cmd.arg("--rejects").arg(r);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "weir run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Key of a result: (group, window start, window end), as the sink's message key names it.
pub fn result_key(v: &Value) -> String {
    format!(
        r#"{{"group":{},"start":{},"end":{}}}"#,
        v["group"], v["window"]["start"], v["window"]["end"]
    )
}

/// Everything read from a topic so far: (key, value, headers).
pub type Seen = Arc<Mutex<Vec<(String, String, BTreeMap<String, String>)>>>;

/// Read `topic` from the beginning in a thread until `stop`.
pub fn collect(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    stop: Arc<AtomicBool>,
) -> (Seen, std::thread::JoinHandle<()>) {
    collect_at(bootstrap, topic, partitions, stop, Arc::default())
}

/// [`collect`], publishing the next offset it will read per partition in `at` (to tell a
/// reader that fell behind from a topic that never got the messages).
pub fn collect_at(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    stop: Arc<AtomicBool>,
    at: Arc<Mutex<Vec<i64>>>,
) -> (Seen, std::thread::JoinHandle<()>) {
    let seen: Seen = Arc::default();
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "e2e-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.queue.backoff.ms", "10")
        // librdkafka's default (latest) would silently skip to the end if a fetch were ever
        // refused as out of range, and the skipped results would look like windows the workers
        // never wrote: stop and say so instead (printed with the failure).
        .set("auto.offset.reset", "error")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let out = seen.clone();
    let topic = topic.to_string();
    let handle = std::thread::spawn(move || {
        let text = |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
        // Next offset to read, per partition.
        let mut next = vec![0i64; partitions as usize];
        // Several workers write each of these topics at once, and nisshi can answer a fetch
        // past a batch it has not stored yet (weir_worker::contiguous): seek back and read
        // again. The topics have no transactions or compaction, so a hole that stays is a bug.
        let mut holes = vec![Contiguous::new(200, Duration::from_millis(10)); partitions as usize];
        let mut rereads = 0;
        let mut read = |next: &mut Vec<i64>, m: rdkafka::message::BorrowedMessage<'_>| {
            let p = m.partition() as usize;
            match step(
                &c,
                &mut holes[p],
                &topic,
                m.partition(),
                next[p],
                m.offset(),
            ) {
                Ok(Step::Take) => {}
                Ok(Step::Duplicate) => return,
                Ok(Step::Reread { .. }) => {
                    rereads += 1;
                    return;
                }
                Ok(Step::Skip { from, to }) => {
                    panic!("reading {topic}: partition {p} has no offsets {from}..{to}")
                }
                Err(e) => panic!("reading {topic}: seeking back to {}: {e}", next[p]),
            }
            if let Ok(mut at) = at.lock() {
                at.resize(next.len(), 0);
                at[p] = m.offset() + 1;
            }
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), text(h.value)))
                        .collect()
                })
                .unwrap_or_default();
            next[p] = m.offset() + 1;
            out.lock()
                .unwrap()
                .push((text(m.key()), text(m.payload()), headers));
        };
        while !stop.load(Ordering::Relaxed) {
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => read(&mut next, m),
                Some(Err(e)) => eprintln!("reading {topic}: {e}"),
                None => {}
            }
        }
        // Stopped (the workers are): read what the topic holds now, however far behind this
        // reader is on a loaded machine, instead of what arrived within a fixed delay.
        let ends: Vec<i64> = (0..partitions)
            .map(|p| {
                c.fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .expect("high watermark")
                    .1
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let behind: Vec<(i64, i64)> = ends
                .iter()
                .zip(&next)
                .filter(|(end, n)| n < end)
                .map(|(end, n)| (*n, *end))
                .collect();
            if behind.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "reading {topic}: still at (next, end) {behind:?} after 60 s"
            );
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                read(&mut next, m);
            }
        }
        if rereads > 0 {
            println!("reading {topic}: {rereads} re-reads of holes the broker's answers skipped");
        }
    });
    (seen, handle)
}

/// A running `weir worker` process and its ordinal.
pub struct Worker {
    pub ordinal: usize,
    pub child: Child,
}

/// The worker processes of one job: started with the job file, the assignment and (unless on
/// object storage) `--checkpoint-dir`; each start logs to `<dir>/worker-<ordinal>-<n>.log`.
pub struct Workers {
    pub dir: PathBuf,
    pub job: PathBuf,
    pub assignment: PathBuf,
    pub env: Vec<(String, String)>,
    pub checkpoint_dir: Option<PathBuf>,
    pub running: Vec<Worker>,
    pub starts: usize,
    /// Where worker 0 serves /metrics.
    pub metrics_port: u16,
}

impl Workers {
    pub fn start(&mut self, ordinal: usize) {
        let port = (ordinal == 0).then_some(self.metrics_port);
        self.start_with(ordinal, port, &[]);
    }

    /// Start the worker of `ordinal`, serving /metrics on `port` (`None`: any free port), with
    /// `extra` arguments.
    pub fn start_with(&mut self, ordinal: usize, port: Option<u16>, extra: &[&str]) {
        self.starts += 1;
        let log = std::fs::File::create(
            self.dir
                .join(format!("worker-{ordinal}-{}.log", self.starts)),
        )
        .unwrap();
        let mut cmd = Command::new(WEIR);
        cmd.args(["worker", "--job"])
            .arg(&self.job)
            .arg("--assignment")
            .arg(&self.assignment)
            .args(["--ordinal", &ordinal.to_string(), "--listen"])
            .arg(format!("127.0.0.1:{}", port.unwrap_or(0)))
            .args(extra)
            // WEIR_E2E_WORKER_LOG=info (or debug) to see more of the workers on a failure.
            .env(
                "RUST_LOG",
                std::env::var("WEIR_E2E_WORKER_LOG").unwrap_or_else(|_| "warn".to_string()),
            )
            // Each its own owner name, as pods are (a HOSTNAME exported by the test's own
            // environment would otherwise name every worker alike).
            .env("HOSTNAME", format!("e2e-worker-{ordinal}"))
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(d) = &self.checkpoint_dir {
            cmd.arg("--checkpoint-dir").arg(d);
        }
        let child = cmd.spawn().unwrap();
        self.running.push(Worker { ordinal, child });
    }

    pub fn kill(&mut self, i: usize) -> usize {
        let mut w = self.running.remove(i);
        w.child.kill().unwrap(); // SIGKILL
        w.child.wait().unwrap();
        w.ordinal
    }

    /// Whether each running worker process is still alive (a worker that exited leaves its
    /// partitions unread: no test step restarts it unless it kills it).
    pub fn alive(&mut self) -> Vec<(usize, String)> {
        self.running
            .iter_mut()
            .map(|w| {
                let state = match w.child.try_wait() {
                    Ok(None) => "running".to_string(),
                    Ok(Some(status)) => format!("exited: {status}"),
                    Err(e) => format!("unknown: {e}"),
                };
                (w.ordinal, state)
            })
            .collect()
    }

    /// Wait until `done`, at most `timeout`; panics with the workers' logs if a worker exits
    /// first or the time runs out.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Workers) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            let alive = self.alive();
            assert!(
                alive.iter().all(|(_, s)| s == "running"),
                "a worker exited: {alive:?}\n{}",
                self.logs()
            );
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("worker-") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                out.push_str(&format!(
                    "--- {name}\n{}\n",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
        }
        out
    }

    /// SIGTERM the worker of `ordinal` and wait (a rolling update, one pod at a time).
    pub fn stop_one(&mut self, ordinal: usize) {
        let (mut one, rest): (Vec<Worker>, Vec<Worker>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|w| w.ordinal == ordinal);
        std::mem::swap(&mut self.running, &mut one);
        self.stop();
        self.running = rest;
    }

    /// SIGTERM everything and wait: a graceful stop writes final checkpoints.
    pub fn stop(&mut self) {
        for w in &self.running {
            let _ = Command::new("kill")
                .args(["-TERM", &w.child.id().to_string()])
                .status();
        }
        for w in &mut self.running {
            let deadline = Instant::now() + Duration::from_secs(30);
            while w.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
        self.running.clear();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.running {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
}

/// `GET path` on 127.0.0.1:`port`: the status code and the body (`None`: no answer).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// The value of the series `series` (name and labels as written, e.g.
/// `weir_records_in_total{topic="in",partition="0"}`) in the /metrics text `text`.
pub fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// A port for a server a test starts ([`super::broker::free_port`]).
pub fn free_port() -> u16 {
    super::broker::free_port()
}
