//! The Helm chart rendered offline (`charts/render.py`, Helm's Go SDK from PyPI), for the tests
//! that check what the chart installs. Included by path, so a test that needs only this does
//! not compile the other support modules.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The namespace the tests install the release into.
pub const RELEASE_NS: &str = "weir-system";

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The objects the chart renders with these `--set` expressions.
pub fn render(sets: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("charts/render.py"))
        .args(["--json", "--namespace", RELEASE_NS]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd
        .output()
        .expect("python3 runs (install it, then scripts/deps for helm-python-sdk)");
    assert!(
        out.status.success(),
        "charts/render.py {sets:?} failed (scripts/deps installs helm-python-sdk): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("render.py --json prints a JSON list")
}
