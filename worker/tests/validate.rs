//! `weir validate` as CI runs it: every example is valid; a bad file gets every problem on its
//! own line and exit status 1; other kinds are skipped; directories are searched; an
//! unreadable path is exit status 2.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Runs `weir validate ARGS`: (exit code, stdout, stderr).
fn validate(args: &[&Path]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("validate")
        .args(args)
        .output()
        .expect("weir runs");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
}

/// A valid job named `name`.
fn job(name: &str) -> String {
    format!(
        "apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata:
  name: {name}
spec:
  source:
    kafka: {{bootstrapServers: kafka:9092, topic: payments}}
    eventTime: {{field: ts}}
  groupBy: [merchant]
  window: {{type: tumbling, size: 1m}}
  aggregations:
    - {{name: payments, fn: count}}
  sink:
    kafka: {{topic: {name}}}
"
    )
}

/// A job with five problems in five fields: two mistyped values, an unknown function, a
/// typo'd field name, and a cross-field rule (slide on a tumbling window).
const BROKEN: &str = "apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata:
  name: broken
spec:
  source:
    kafka: {bootstrapServers: kafka:9092, topic: payments}
  window: {type: tumbling, size: 1m, slide: 10s, allowedLatness: 10s}
  aggregations:
    - {name: payments, fn: count}
    - {name: total, fn: summ, field: amount}
  sink:
    kafka: {topic: out}
  parallelism: three
  checkpoint: {interval: 10}
";

#[test]
fn every_example_is_valid() {
    let mut examples: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 3);
    for example in &examples {
        let (code, stdout, stderr) = validate(&[example]);
        assert_eq!(code, 0, "{}: {stdout}{stderr}", example.display());
        assert_eq!(
            stdout,
            "1 file, 1 StreamJob: 1 valid, 0 invalid (0 errors)\n",
            "{}",
            example.display()
        );
    }
    // The directory as a whole: every example, and nothing else (the .jsonl files are not
    // YAML files).
    let (code, stdout, _) = validate(&[&examples_dir()]);
    assert_eq!(code, 0, "{stdout}");
    let n = examples.len();
    assert_eq!(
        stdout,
        format!("{n} files, {n} StreamJobs: {n} valid, 0 invalid (0 errors)\n")
    );
}

#[test]
fn every_problem_of_a_file_is_reported_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("broken.yaml");
    write(&file, BROKEN);
    let (code, stdout, stderr) = validate(&[&file]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let shown = file.display();
    let lines: Vec<&str> = stdout.lines().collect();
    let expected = [
        format!("{shown} (broken): spec.aggregations[1].fn: must be one of"),
        format!("{shown} (broken): spec.checkpoint.interval: must be a string, not 10"),
        format!("{shown} (broken): spec.parallelism: must be an integer, not \"three\""),
        format!(
            "{shown} (broken): spec.window.allowedLatness: unknown field; did you mean allowedLateness?"
        ),
        format!("{shown} (broken): spec.window.slide: is only used by hopping windows"),
    ];
    for want in &expected {
        assert!(
            lines.iter().any(|l| l.starts_with(want.as_str())),
            "missing {want:?} in:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("not \"summ\" (did you mean sum?)"),
        "{stdout}"
    );
    assert_eq!(lines.len(), expected.len() + 1, "{stdout}");
    assert_eq!(
        lines.last().copied(),
        Some("1 file, 1 StreamJob: 0 valid, 1 invalid (5 errors)")
    );
}

#[test]
fn other_kinds_are_skipped_and_documents_are_numbered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("app.yaml");
    let config_map = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: b}\n";
    let wrong_version = job("old").replace("weir.dev/v1alpha1", "weir.dev/v1");
    write(
        &file,
        &format!(
            "{}---\n{config_map}---\n{}---\n{wrong_version}",
            job("good"),
            job("bad").replace("size: 1m", "size: 1d")
        ),
    );
    let (code, stdout, _) = validate(&[&file]);
    assert_eq!(code, 1, "{stdout}");
    let shown = file.display();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with(&format!(
            "{shown}#doc 3 (bad): spec.window.size: \"1d\" is not a duration"
        )),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{shown}#doc 4 (old): apiVersion: must be weir.dev/v1alpha1"
        )),
        "{stdout}"
    );
    assert_eq!(
        lines[2],
        "1 file, 3 StreamJobs: 1 valid, 2 invalid (2 errors); 1 other document skipped"
    );
}

#[test]
fn a_directory_is_searched_for_yaml_files_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(&root.join("b/job.yml"), &job("b-job"));
    write(&root.join("a.yaml"), &job("a-job"));
    write(
        &root.join("c/deeper/broken.yaml"),
        &BROKEN.replace("name: broken", "name: c-job"),
    );
    write(&root.join("README.md"), "not YAML: [");
    write(&root.join(".git/config.yaml"), "not: [valid");
    write(
        &root.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [a.yaml]\n",
    );
    let (code, stdout, stderr) = validate(&[root]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let files: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split(" (").next())
        .collect();
    assert!(
        files
            .iter()
            .take(5)
            .all(|f| *f == root.join("c/deeper/broken.yaml").display().to_string()),
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().last(),
        Some("4 files, 3 StreamJobs: 2 valid, 1 invalid (5 errors); 1 other document skipped")
    );

    // JSON for machines: the same counts, every document in path order, every error.
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["validate", "--format", "json"])
        .arg(root)
        .output()
        .expect("weir runs");
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["files"], 4);
    assert_eq!(report["streamJobs"], 3);
    assert_eq!(report["invalid"], 1);
    let names: Vec<&str> = report["documents"]
        .as_array()
        .expect("documents")
        .iter()
        .map(|d| d["name"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(names, ["a-job", "b-job", "c-job", "-"]);
    let errors = report["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 5);
    assert!(errors
        .iter()
        .any(|e| e["field"] == "spec.parallelism" && e["name"] == "c-job"));
}

#[test]
fn a_typo_gets_a_suggestion_and_stdin_is_read() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["validate", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(job("typo").replace("groupBy:", "groupby:").as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(
        stdout,
        "<stdin> (typo): spec.groupby: unknown field; did you mean groupBy?\n\
         1 file, 1 StreamJob: 0 valid, 1 invalid (1 error)\n"
    );
}

#[test]
fn an_unreadable_path_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.yaml");
    write(&good, &job("good"));
    let missing = dir.path().join("missing.yaml");
    let (code, stdout, stderr) = validate(&[&good, &missing]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("missing.yaml"), "{stderr}");
    // The readable file is still checked.
    assert_eq!(
        stdout,
        "1 file, 1 StreamJob: 1 valid, 0 invalid (0 errors)\n"
    );

    let empty = tempfile::tempdir().expect("tempdir");
    let (code, _, stderr) = validate(&[empty.path()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("no .yaml or .yml file"), "{stderr}");
}

#[test]
fn a_file_that_is_not_yaml_fails_the_check_after_its_valid_documents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("half.yaml");
    write(&file, &format!("{}---\nspec: [unclosed\n", job("first")));
    let (code, stdout, _) = validate(&[&file]);
    assert_eq!(code, 1, "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with(&format!("{}#doc 2: not valid YAML: ", file.display())),
        "{stdout}"
    );
    // Lines are counted in the file, not in the document.
    assert!(lines[0].contains("line 16"), "{stdout}");
    assert_eq!(
        lines[1],
        "1 file, 1 StreamJob: 1 valid, 0 invalid (0 errors); 1 file not valid YAML"
    );
}
