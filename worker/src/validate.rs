//! `weir validate PATH...`: the StreamJobs in files, directories and stdin, checked by
//! [`weir_crds::validate_documents`] (the API server's schema and CEL rules, the operator's
//! name rules), for CI and GitOps pre-merge checks. This module only reads the paths and prints:
//! one line per problem, then a summary, and the exit status (0 all valid, 1 any invalid, 2 a
//! path that cannot be read).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;
use weir_crds::{Document, Outcome};

use crate::file_input::EXIT_USAGE;

/// How the result is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per problem (`PATH[#doc N] (name): field: message`), then a summary.
    Text,
    /// One JSON object: counts, every document and every error.
    Json,
}

/// A file read, with the name it is shown under.
struct File {
    shown: String,
    documents: Vec<Document>,
}

pub fn main(paths: &[PathBuf], format: Format) -> ExitCode {
    let (texts, unreadable) = read_all(paths);
    let files: Vec<File> = texts
        .into_iter()
        .map(|(shown, text)| File {
            documents: weir_crds::validate_documents(&text),
            shown,
        })
        .collect();
    for problem in &unreadable {
        eprintln!("error: {problem}");
    }
    let counts = Counts::of(&files);
    match format {
        Format::Text => {
            for file in &files {
                let several = file.documents.iter().any(|d| d.index > 1);
                for doc in &file.documents {
                    for e in doc.errors() {
                        let mut line = file.shown.clone();
                        if several {
                            line.push_str(&format!("#doc {}", doc.index));
                        }
                        if let Some(name) = &doc.name {
                            line.push_str(&format!(" ({name})"));
                        }
                        if !e.path.is_empty() {
                            line.push_str(&format!(": {}", e.path));
                        }
                        println!("{line}: {}", e.message);
                    }
                }
            }
            println!("{}", counts.summary());
        }
        Format::Json => println!("{}", to_json(&files, &counts, &unreadable)),
    }
    if !unreadable.is_empty() {
        ExitCode::from(EXIT_USAGE)
    } else if counts.invalid > 0 || counts.not_yaml > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The text of every file to check, and what could not be read. A directory stands for every
/// `*.yaml` and `*.yml` file under it (hidden entries such as `.git` left out), in sorted
/// order; `-` is stdin.
fn read_all(paths: &[PathBuf]) -> (Vec<(String, String)>, Vec<String>) {
    let mut texts = Vec::new();
    let mut unreadable = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            match std::io::stdin().read_to_string(&mut text) {
                Ok(_) => texts.push(("<stdin>".to_string(), text)),
                Err(e) => unreadable.push(format!("<stdin>: {e}")),
            }
            continue;
        }
        let files = if path.is_dir() {
            let mut files = Vec::new();
            if let Err(e) = yaml_files(path, &mut files) {
                unreadable.push(format!("{}: {e}", path.display()));
                continue;
            }
            if files.is_empty() {
                unreadable.push(format!("{}: no .yaml or .yml file in it", path.display()));
            }
            files.sort();
            files
        } else {
            vec![path.clone()]
        };
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => texts.push((file.display().to_string(), text)),
                Err(e) => unreadable.push(format!("{}: {e}", file.display())),
            }
        }
    }
    (texts, unreadable)
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        // Symbolic links to directories are not followed (no loops); to files, they are read.
        if entry.file_type()?.is_dir() {
            yaml_files(&path, out)?;
        } else if path.is_file() && path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}

#[derive(Default)]
struct Counts {
    files: usize,
    valid: usize,
    invalid: usize,
    skipped: usize,
    not_yaml: usize,
    errors: usize,
}

impl Counts {
    fn of(files: &[File]) -> Counts {
        let mut c = Counts {
            files: files.len(),
            ..Counts::default()
        };
        for doc in files.iter().flat_map(|f| &f.documents) {
            match &doc.outcome {
                Outcome::Valid => c.valid += 1,
                Outcome::Invalid(errors) => {
                    c.invalid += 1;
                    c.errors += errors.len();
                }
                Outcome::Skipped => c.skipped += 1,
                Outcome::NotYaml(_) => c.not_yaml += 1,
            }
        }
        c
    }

    /// `3 files, 5 StreamJobs: 4 valid, 1 invalid (2 errors); 2 other documents skipped` (the
    /// errors are the StreamJobs'; a file that is not YAML is counted apart).
    fn summary(&self) -> String {
        let jobs = self.valid + self.invalid;
        let mut s = format!(
            "{}, {}: {} valid, {} invalid ({})",
            plural(self.files, "file", "files"),
            plural(jobs, "StreamJob", "StreamJobs"),
            self.valid,
            self.invalid,
            plural(self.errors, "error", "errors"),
        );
        if self.not_yaml > 0 {
            s.push_str(&format!(
                "; {} not valid YAML",
                plural(self.not_yaml, "file", "files")
            ));
        }
        if self.skipped > 0 {
            s.push_str(&format!(
                "; {} skipped",
                plural(self.skipped, "other document", "other documents")
            ));
        }
        s
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn to_json(files: &[File], counts: &Counts, unreadable: &[String]) -> serde_json::Value {
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        for doc in &file.documents {
            let result = match doc.outcome {
                Outcome::Valid => "valid",
                Outcome::Invalid(_) => "invalid",
                Outcome::Skipped => "skipped",
                Outcome::NotYaml(_) => "notYaml",
            };
            documents.push(json!({
                "file": file.shown,
                "document": doc.index,
                "apiVersion": doc.api_version,
                "kind": doc.kind,
                "name": doc.name,
                "result": result,
            }));
            for e in doc.errors() {
                errors.push(json!({
                    "file": file.shown,
                    "document": doc.index,
                    "name": doc.name,
                    "field": e.path,
                    "message": e.message,
                }));
            }
        }
    }
    json!({
        "files": counts.files,
        "streamJobs": counts.valid + counts.invalid,
        "valid": counts.valid,
        "invalid": counts.invalid,
        "skipped": counts.skipped,
        "notYaml": counts.not_yaml,
        "documents": documents,
        "errors": errors,
        "unreadable": unreadable,
    })
}
