//! `weir run JOB --input FILE`: a StreamJob over a file of JSON lines, as one partition (offsets
//! are line numbers, starting at 0), with no checkpoint and no Kafka. Without `--input` the job
//! reads Kafka (local mode, in `weir_worker::job`).

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use weir_engine::{Engine, JobPlan, Record, RejectReason};

/// Why reading the input or writing the output failed (the message includes the cause).
#[derive(Debug, thiserror::Error)]
enum FileInputError {
    #[error("cannot open {}: {error}", path.display())]
    Open { path: PathBuf, error: io::Error },
    #[error("cannot create {}: {error}", path.display())]
    Create { path: PathBuf, error: io::Error },
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error(transparent)]
    Write(#[from] io::Error),
}

/// The UTF-8 byte-order mark, skipped at the start of an input file.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Exit code for a job or an invocation that cannot run (bad spec, unreadable file).
pub const EXIT_USAGE: u8 = 2;

pub fn main(job: &Path, input: &Path, rejects: Option<&Path>) -> ExitCode {
    let plan = match weir_worker::job::load_job(job) {
        Ok((_, plan)) => plan,
        Err(problems) => {
            for p in problems {
                eprintln!("error: {p}");
            }
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if plan.needs_key() || plan.needs_kafka_timestamp() {
        eprintln!(
            "error: {}: this job reads the Kafka {}, which --input lines do not have; \
             set spec.source.eventTime and group by record fields to try it on a file",
            job.display(),
            if plan.needs_key() {
                "message key"
            } else {
                "record timestamp"
            }
        );
        return ExitCode::from(EXIT_USAGE);
    }
    match aggregate_file(plan, input, rejects) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn aggregate_file(
    plan: JobPlan,
    input: &Path,
    rejects: Option<&Path>,
) -> Result<(), FileInputError> {
    let reader: Box<dyn BufRead> = if input == Path::new("-") {
        Box::new(BufReader::new(io::stdin().lock()))
    } else {
        let f = File::open(input).map_err(|error| FileInputError::Open {
            path: input.to_path_buf(),
            error,
        })?;
        Box::new(BufReader::with_capacity(1 << 16, f))
    };
    let mut rejects_out: Box<dyn Write> = match rejects {
        Some(p) => Box::new(BufWriter::new(File::create(p).map_err(|error| {
            FileInputError::Create {
                path: p.to_path_buf(),
                error,
            }
        })?)),
        None => Box::new(io::stderr().lock()),
    };
    let stdout = io::stdout().lock();
    let mut out = BufWriter::new(stdout);

    let mut engine = Engine::new(plan, [0]);
    // Read for a line only when it is far ahead of the last reading (the future-skew guard).
    engine.read_wall_clock_with(weir_worker::runtime::now_ms);
    let mut lines_in = 0u64;
    let mut results_out = 0u64;
    for (n, line) in reader.split(b'\n').enumerate() {
        let mut line = line.map_err(|error| FileInputError::Read {
            path: input.to_path_buf(),
            error,
        })?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if n == 0 && line.starts_with(UTF8_BOM) {
            // Editors on Windows start UTF-8 files with a byte-order mark; it is not JSON.
            line.drain(..UTF8_BOM.len());
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        lines_in += 1;
        let record = Record {
            partition: 0,
            offset: n as i64,
            key: None,
            timestamp: None,
            value: &line,
        };
        if let Err(r) = engine.process(&record) {
            let rejected = serde_json::json!({
                "line": n + 1,
                "reason": r.reason.as_str(),
                "detail": r.detail,
                "record": String::from_utf8_lossy(&line),
            });
            writeln!(rejects_out, "{rejected}")?;
        }
        let results = engine.take_results();
        if !results.is_empty() {
            for r in &results {
                writeln!(out, "{}", r.to_json(engine.plan()))?;
            }
            results_out += results.len() as u64;
            // Results appear as windows close, also when reading a live pipe.
            out.flush()?;
        }
    }
    engine.finish();
    for r in engine.take_results() {
        writeln!(out, "{}", r.to_json(engine.plan()))?;
        results_out += 1;
    }
    out.flush()?;
    rejects_out.flush()?;

    let stats = engine.stats();
    let rejected: u64 = stats.rejected.iter().sum();
    let by_reason: Vec<String> = RejectReason::ALL
        .iter()
        .zip(stats.rejected)
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    let by_reason = if by_reason.is_empty() {
        String::new()
    } else {
        format!(" ({})", by_reason.join(", "))
    };
    eprintln!(
        "weir run: {lines_in} records in, {results_out} results out, {rejected} rejected{by_reason}"
    );
    Ok(())
}
