//! `weir run` on every example with its sample input gives the committed, hand-checked output
//! (`examples/NAME.expected.jsonl`) and rejects (`examples/NAME.rejects.jsonl`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_example_runs_on_its_sample_and_gives_the_expected_results() {
    let dir = examples_dir();
    let mut jobs: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    jobs.sort();
    assert!(jobs.len() >= 3);
    for job in jobs {
        let stem = job.file_stem().and_then(|s| s.to_str()).expect("name");
        let input = read(&dir.join(format!("{stem}.jsonl")));
        let (stdout, rejects, stderr) = run_on(&job, input.as_bytes());
        assert_eq!(
            stdout,
            read(&dir.join(format!("{stem}.expected.jsonl"))),
            "{stem}: results differ"
        );
        assert_eq!(
            rejects,
            read(&dir.join(format!("{stem}.rejects.jsonl"))),
            "{stem}: rejects differ"
        );
        let results = stdout.lines().count();
        let rejected = rejects.lines().count();
        assert!(
            stderr.contains(&format!("{results} results out, {rejected} rejected")),
            "{stem}: summary: {stderr}"
        );
    }
}

#[test]
fn reads_stdin_and_prints_rejects_to_stderr() {
    use std::io::Write;
    let dir = examples_dir();
    let mut child = weir()
        .args(["run", "--input", "-"])
        .arg(dir.join("payments-per-merchant.yaml"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(read(&dir.join("payments-per-merchant.jsonl")).as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        read(&dir.join("payments-per-merchant.expected.jsonl"))
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"reason\":\"late\""), "{stderr}");
    assert!(
        stderr.contains("16 records in, 6 results out, 6 rejected"),
        "{stderr}"
    );
}

/// Run `weir run JOB --input -` on a job text that must be refused; its stderr.
fn refused(text: &str) -> String {
    let tmp = tempfile::tempdir().expect("tempdir");
    let job = tmp.path().join("bad.yaml");
    std::fs::write(&job, text).expect("write");
    let out = weir()
        .args([
            "run".as_ref(),
            job.as_os_str(),
            "--input".as_ref(),
            "-".as_ref(),
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "exit code");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_job_is_refused_with_every_problem_named() {
    let good = read(&examples_dir().join("payments-per-merchant.yaml"));
    let bad = good
        .replace("size: 1m", "size: 1m\n    slide: 10s")
        .replace("quantile: 0.99", "quantile: 1.5");

    // Unknown fields come with a suggestion, in the same run as the validation errors.
    let stderr = refused(&bad.replace("allowedLateness", "allowedLatness"));
    assert!(
        stderr.contains("spec.window.allowedLatness: unknown field; did you mean allowedLateness?"),
        "{stderr}"
    );
    assert!(
        stderr.contains("spec.window.slide: is only used by hopping windows"),
        "{stderr}"
    );

    // A typo in a required field's name is named, not only the missing field.
    let stderr = refused(&good.replace("  window:", "  windw:"));
    assert!(
        stderr.contains("spec.windw: unknown field; did you mean window?"),
        "{stderr}"
    );
    assert!(stderr.contains("missing field `window`"), "{stderr}");

    let stderr = refused(&bad);
    assert!(
        stderr.contains("spec.window.slide: is only used by hopping windows"),
        "{stderr}"
    );
    assert!(
        stderr.contains("spec.aggregations[3].quantile: must be strictly between 0 and 1"),
        "{stderr}"
    );

    let no_event_time = good.replace(
        "    eventTime:\n      field: ts\n      format: rfc3339\n",
        "",
    );
    assert_ne!(no_event_time, good);
    let stderr = refused(&no_event_time);
    assert!(stderr.contains("Kafka record timestamp"), "{stderr}");
}

/// `weir run JOB --input FILE` on `input`: (stdout, the rejects file, stderr).
fn run_on(job: &Path, input: &[u8]) -> (String, String, String) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("input.jsonl");
    let rejects = tmp.path().join("rejects.jsonl");
    std::fs::write(&file, input).expect("write");
    let out = weir()
        .args(["run".as_ref(), job.as_os_str(), "--input".as_ref()])
        .arg(&file)
        .arg("--rejects")
        .arg(&rejects)
        .output()
        .expect("weir runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (stdout, read(&rejects), stderr)
}

#[test]
fn a_byte_order_mark_at_the_start_of_the_input_is_skipped() {
    let dir = examples_dir();
    let job = dir.join("payments-per-merchant.yaml");
    let mut input = b"\xEF\xBB\xBF".to_vec();
    input.extend_from_slice(read(&dir.join("payments-per-merchant.jsonl")).as_bytes());
    let (stdout, rejects, _) = run_on(&job, &input);
    assert_eq!(
        stdout,
        read(&dir.join("payments-per-merchant.expected.jsonl"))
    );
    assert_eq!(
        rejects,
        read(&dir.join("payments-per-merchant.rejects.jsonl"))
    );
}

/// Hostile event times among the example's records: each is refused with its reason, and the
/// good records' results are exactly the example's.
#[test]
fn far_future_and_unwritable_event_times_are_refused_and_change_no_result() {
    let dir = examples_dir();
    let job = dir.join("payments-per-merchant.yaml");
    let good = read(&dir.join("payments-per-merchant.jsonl"));
    let lines: Vec<&str> = good.lines().collect();
    let hostile = [
        (
            r#"{"ts":"2030-01-01T00:00:00.000Z","merchant":"m1","customer":"c1","amount":1}"#,
            "future",
        ),
        (
            r#"{"ts":"9999-12-31T23:59:59.000Z","merchant":"m1","customer":"c1","amount":1}"#,
            "invalid_event_time",
        ),
        (
            r#"{"ts":"0001-01-01T00:00:00.000Z","merchant":"m1","customer":"c1","amount":1}"#,
            "invalid_event_time",
        ),
        (
            r#"{"ts":"2026-01-01T00:00:06.000Z","merchant":"m1","ts":"2030-01-01T00:00:00Z","customer":"c1","amount":1}"#,
            "duplicate_field",
        ),
    ];
    // The hostile records go after the second good one, before any window closes.
    let mut input = String::new();
    for (i, line) in lines.iter().enumerate() {
        input.push_str(line);
        input.push('\n');
        if i == 1 {
            for (h, _) in &hostile {
                input.push_str(h);
                input.push('\n');
            }
        }
    }
    let (stdout, rejects, stderr) = run_on(&job, input.as_bytes());
    assert_eq!(
        stdout,
        read(&dir.join("payments-per-merchant.expected.jsonl")),
        "{stderr}"
    );
    let reasons: Vec<String> = rejects
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            v["reason"].as_str().expect("reason").to_string()
        })
        .collect();
    for (_, reason) in &hostile {
        assert!(reasons.iter().any(|r| r == reason), "{reason}: {rejects}");
    }
    let expected_rejects = read(&dir.join("payments-per-merchant.rejects.jsonl"))
        .lines()
        .count();
    assert_eq!(reasons.len(), expected_rejects + hostile.len(), "{rejects}");
    assert!(rejects.contains("maxAheadOfClock"), "{rejects}");
}

/// `first` and `last` write a number exactly as it came (canonical: `-0` is `0`, as for group
/// values); `min` and `max` compute in f64 and write the nearest double.
#[test]
fn first_and_last_write_big_integers_exactly_min_and_max_as_doubles() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let job = tmp.path().join("ids.yaml");
    std::fs::write(
        &job,
        "apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {name: ids}
spec:
  source:
    kafka: {bootstrapServers: 'kafka:9092', topic: ids}
    eventTime: {field: ts, format: epochMillis}
  groupBy: [merchant]
  window: {type: tumbling, size: 1m}
  aggregations:
    - {name: firstId, fn: first, field: id}
    - {name: lastId, fn: last, field: id}
    - {name: minId, fn: min, field: id}
    - {name: maxId, fn: max, field: id}
  sink: {kafka: {topic: ids-per-merchant}}
",
    )
    .expect("write");
    let input = [
        r#"{"ts":1000,"merchant":"m1","id":12345678901234567890123}"#,
        r#"{"ts":2000,"merchant":"m1","id":12345678901234567890124}"#,
        r#"{"ts":1000,"merchant":"m2","id":-0}"#,
        r#"{"ts":2000,"merchant":"m2","id":0.1000000000000000000001}"#,
    ]
    .join("\n");
    let (stdout, rejects, stderr) = run_on(&job, input.as_bytes());
    assert_eq!(rejects, "", "{stderr}");
    let window =
        r#""window":{"start":"1970-01-01T00:00:00.000Z","end":"1970-01-01T00:01:00.000Z"}"#;
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            format!(
                r#"{{{window},"group":{{"merchant":"m1"}},"values":{{"firstId":12345678901234567890123,"lastId":12345678901234567890124,"minId":1.2345678901234568e+22,"maxId":1.2345678901234568e+22}}}}"#
            ),
            format!(
                r#"{{{window},"group":{{"merchant":"m2"}},"values":{{"firstId":0,"lastId":0.1000000000000000000001,"minId":0.0,"maxId":0.1}}}}"#
            ),
        ],
        "{stderr}"
    );
}
