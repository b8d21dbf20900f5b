//! `promtool check metrics` (Debian package `prometheus`), found via `WEIR_PROMTOOL` or `PATH`;
//! a missing promtool fails the test with the command that installs it.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("WEIR_PROMTOOL") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool not found (set WEIR_PROMTOOL or put it on PATH): \
                 run `apt-get install prometheus` to install it"
            )
        })
}

/// `promtool check metrics` on `text`: its output, which is empty when it found no problem.
pub fn check(text: &str) -> String {
    let tool = promtool();
    let mut child = Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run `apt-get install prometheus` to install promtool)",
                tool.display()
            )
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{said}\non:\n{text}",
        out.status
    );
    said
}
