//! Starts a real Kafka-protocol broker (nisshi 0.8.1, in-memory storage) on a free loopback
//! port for one test, and stops it when dropped. The binary comes from `WEIR_NISSHI`, `PATH`,
//! or the cache `scripts/deps` installs it into; if it is missing the test fails.

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

pub struct Broker {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub bootstrap: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn nisshi_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WEIR_NISSHI") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "WEIR_NISSHI={} is not a file: run scripts/deps (CI does)",
            path.display()
        );
        return path;
    }
    let cache = std::env::var_os("WEIR_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/weir")));
    let candidates = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("nisshi"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain(cache.map(|c| c.join("nisshi/bin/nisshi")));
    for c in candidates {
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "the Kafka-protocol broker `nisshi` was not found (WEIR_NISSHI, PATH, ~/.cache/weir/nisshi/bin): \
         run scripts/deps, which installs nisshi 0.8.1 (about 14 minutes the first time; CI does it)"
    )
}

/// A port nobody listens on now, for a server a test starts next (a broker, a worker's
/// metrics). Picked at random below the kernel's ephemeral range (`ip_local_port_range`, from
/// 32768 by default): `bind(0)` would give one inside it, where the outgoing connections of
/// the tests running meanwhile (their brokers, workers and clients make many) get their local
/// ports, so one could take it before the server binds it.
pub fn free_port() -> u16 {
    free_port_where(|_| true)
}

/// [`free_port`], for which `also` holds too. Where the ephemeral range starts low (below
/// 20000) or nothing below it is free, a port `bind(0)` gives.
pub fn free_port_where(also: impl Fn(u16) -> bool) -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let low = ephemeral_low();
    if low >= 20_000 {
        for _ in 0..1_000 {
            // A new RandomState has new keys: its hash of nothing is a new random number.
            let random = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            let port = 10_000 + (random % u64::from(low - 10_000)) as u16;
            if is_free(port) && also(port) {
                return port;
            }
        }
    }
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if also(port) {
            return port;
        }
    }
}

/// Whether nothing listens on `port` of 127.0.0.1 now.
pub fn is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The lowest port of the kernel's ephemeral range.
pub fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

impl Broker {
    pub fn start() -> Broker {
        let binary = nisshi_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("nisshi.log");
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args([
                "--storage-engine",
                "memory://nisshi/",
                "--group-initial-rebalance-delay",
                "0s",
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let mut broker = Broker {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        broker.wait_ready();
        broker
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("client");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nisshi exited with {status}:\n{}", self.log_text());
            }
            if consumer
                .fetch_metadata(None, Duration::from_millis(500))
                .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nisshi not ready after 30 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// Stop a server started in its own process group, and everything it started.
pub fn kill_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// Create `topic` with `partitions` partitions on `bootstrap` with `weir kafka create-topic`
/// (`weir`: the binary's path).
pub fn create_topic(weir: &str, bootstrap: &str, topic: &str, partitions: i32) {
    let out = std::process::Command::new(weir)
        .args(["kafka", "create-topic", "--bootstrap", bootstrap, topic])
        .arg("--partitions")
        .arg(partitions.to_string())
        .output()
        .expect("running weir kafka create-topic");
    assert!(
        out.status.success(),
        "create {topic}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
