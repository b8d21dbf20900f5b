//! `weir`: the worker binary, and the command a person uses to try a StreamJob locally.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use weir_crds::pod;
use weir_worker::job::{self, RunOptions};
use weir_worker::logging::{self, LogFormat};
use weir_worker::supervise::AssignmentFile;

mod file_input;
mod validate;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Windowed metrics from Kafka, as one Kubernetes object"
)]
struct Cli {
    /// How log lines on stderr are written; filter them with RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, env = "WEIR_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a StreamJob file on this machine.
    ///
    /// Without --input (local mode), the job reads the Kafka topic named in the spec, every
    /// partition in this process, writes results to the sink topic and prints them to stdout,
    /// checkpoints in .weir/checkpoints (or --checkpoint-dir, or the spec's object store), and
    /// prints progress to stderr. Ctrl-C stops it after a final checkpoint; running it again
    /// resumes where it stopped.
    ///
    /// With --input, the job reads JSON lines from a file (or - for stdin) as if they were one
    /// Kafka partition in file order, prints a result line to stdout as each window closes, and
    /// the remaining windows at the end of the input. Rejected lines go to stderr (or --rejects)
    /// with the reason; a summary ends on stderr.
    Run {
        /// The StreamJob YAML file, as you would `kubectl apply` it.
        job: PathBuf,
        /// JSON lines to read instead of Kafka; `-` for stdin.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Write rejected records (JSON lines with the reason) here instead of stderr.
        #[arg(long)]
        rejects: Option<PathBuf>,
        /// Local mode: keep checkpoints under this directory (default .weir/checkpoints).
        #[arg(long, conflicts_with = "input")]
        checkpoint_dir: Option<PathBuf>,
        /// Local mode: serve /metrics, /healthz and /readyz on this address.
        #[arg(long, conflicts_with = "input")]
        listen: Option<SocketAddr>,
        /// Local mode: use these brokers instead of the spec's bootstrapServers (source, sink
        /// and dead-letter topics alike).
        #[arg(long, env = "WEIR_BOOTSTRAP", conflicts_with = "input")]
        bootstrap: Option<String>,
        /// Local mode: seconds between progress lines on stderr (0: none).
        #[arg(long, default_value_t = 5, conflicts_with = "input")]
        progress: u64,
        /// Bound on open (group, window) rows for this process, shared by all its partitions
        /// (both stages: a partition may use what the others leave); records (merge stage:
        /// partials) that would open more are dead-lettered as state_full. Default:
        /// half the container's memory limit (cgroup) at 1,200 bytes a row; none without a limit.
        #[arg(long, conflicts_with = "input")]
        max_open_rows: Option<usize>,
    },
    /// Check StreamJob files as the API server and the operator would, for CI and GitOps.
    ///
    /// Every problem of every StreamJob is printed, one line each (PATH[#doc N] (name): field:
    /// message), then a summary. A directory stands for every *.yaml and *.yml file under it;
    /// documents of other kinds are skipped. Exit status: 0 all valid, 1 any invalid, 2 a path
    /// that cannot be read.
    Validate {
        /// StreamJob files, directories, or - for stdin.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// `text`: a line per problem and a summary; `json`: one JSON object.
        #[arg(long, value_enum, default_value_t = validate::Format::Text)]
        format: validate::Format,
    },
    /// Small Kafka tools: create a topic, produce records, print a topic.
    #[command(subcommand)]
    Kafka(KafkaCommand),
    /// Run this worker's share of a job: what a worker pod runs.
    ///
    /// The operator mounts the job ConfigMap (job.yaml and assignment.json); the pod's ordinal
    /// comes from its StatefulSet name (HOSTNAME) unless --ordinal is given.
    Worker {
        /// The StreamJob (the job ConfigMap's job.yaml).
        #[arg(long, env = pod::env::JOB, default_value = pod::JOB_FILE)]
        job: PathBuf,
        /// The partition assignment (the job ConfigMap's assignment.json).
        #[arg(long, env = pod::env::ASSIGNMENT, default_value = pod::ASSIGNMENT_FILE)]
        assignment: PathBuf,
        /// This worker's ordinal in the assignment; default: the number at the end of HOSTNAME.
        #[arg(long, env = pod::env::ORDINAL)]
        ordinal: Option<usize>,
        /// Keep checkpoints in this directory instead of the spec's store (tests, single hosts).
        #[arg(long, env = pod::env::CHECKPOINT_DIR)]
        checkpoint_dir: Option<PathBuf>,
        /// Serve /metrics, /healthz and /readyz here.
        #[arg(long, env = pod::env::LISTEN, default_value = pod::LISTEN)]
        listen: SocketAddr,
        /// Bound on open (group, window) rows for this process, shared by all its partitions
        /// (both stages: a partition may use what the others leave); records (merge stage:
        /// partials) that would open more are dead-lettered as state_full. Default:
        /// half the container's memory limit (cgroup) at 1,200 bytes a row; none without a limit.
        #[arg(long)]
        max_open_rows: Option<usize>,
        /// Seconds a partition the assignment gives this worker waits for its previous owner
        /// to write its final checkpoint and release it, before taking it from the last
        /// checkpoint anyway (the previous owner is gone, or has not seen the new assignment).
        /// Covers the kubelet's delay in updating a mounted ConfigMap (about a minute).
        #[arg(long, default_value_t = 90)]
        handoff_timeout: u64,
    },
}

#[derive(Subcommand)]
enum KafkaCommand {
    /// Create a topic (an existing one is left alone).
    CreateTopic {
        /// Brokers, host:port[,host:port...].
        #[arg(long, env = "WEIR_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        /// Topic name.
        topic: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
    /// Produce JSON lines from stdin, or synthetic payments with --payments.
    Produce {
        /// Brokers, host:port[,host:port...].
        #[arg(long, env = "WEIR_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        /// Topic name.
        topic: String,
        /// Use this field's value as the message key (lines from stdin).
        #[arg(long)]
        key_field: Option<String>,
        /// Synthetic payments {ts, merchant, amount, customer}, keyed by merchant, event
        /// times near now.
        #[arg(long)]
        payments: bool,
        /// Payments per second (0: as fast as possible).
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// Stop after this many payments (0: never).
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// Number of distinct merchants.
        #[arg(long, default_value_t = 20)]
        merchants: u32,
    },
    /// Print a topic's messages as JSON lines, from the beginning, until it is quiet.
    Consume {
        /// Brokers, host:port[,host:port...].
        #[arg(long, env = "WEIR_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        /// Topic name.
        topic: String,
        /// Stop after this long without a message, e.g. 5s.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        idle: Duration,
    },
}

fn kafka_tool(cmd: KafkaCommand) -> ExitCode {
    use weir_worker::tools;
    let result = match cmd {
        KafkaCommand::CreateTopic {
            bootstrap,
            topic,
            partitions,
        } => tools::create_topic(&bootstrap, &topic, partitions).map(|()| {
            eprintln!("topic {topic}: {partitions} partitions");
        }),
        KafkaCommand::Produce {
            bootstrap,
            topic,
            key_field,
            payments,
            rate,
            count,
            merchants,
        } => if payments {
            tools::produce_payments(&bootstrap, &topic, rate, count, merchants)
        } else {
            tools::produce_lines(
                &bootstrap,
                &topic,
                key_field.as_deref(),
                std::io::stdin().lock(),
            )
        }
        .map(|n| eprintln!("produced {n} records to {topic}")),
        KafkaCommand::Consume {
            bootstrap,
            topic,
            idle,
        } => tools::consume(&bootstrap, &topic, idle, &mut std::io::stdout().lock()).map(|_| ()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // anyhow's alternate form prints the cause chain: "what was done: why".
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match cli.command {
        Command::Run {
            job,
            input: Some(input),
            rejects,
            ..
        } => file_input::main(&job, &input, rejects.as_deref()),
        Command::Run {
            job,
            input: None,
            checkpoint_dir,
            listen,
            progress,
            bootstrap,
            max_open_rows,
            ..
        } => {
            let opts = RunOptions {
                bootstrap,
                checkpoint_dir,
                listen,
                echo: true,
                progress_every: (progress > 0).then(|| Duration::from_secs(progress)),
                max_open_rows: max_open_rows.or_else(job::default_max_open_rows),
                handoff_timeout: Duration::ZERO,
            };
            with_job(&job, |job, plan| job::local(job, plan, &opts))
        }
        Command::Kafka(cmd) => kafka_tool(cmd),
        Command::Validate { paths, format } => validate::main(&paths, format),
        Command::Worker {
            job,
            assignment,
            ordinal,
            checkpoint_dir,
            listen,
            max_open_rows,
            handoff_timeout,
        } => {
            let opts = RunOptions {
                bootstrap: None,
                checkpoint_dir,
                listen: Some(listen),
                echo: false,
                progress_every: None,
                max_open_rows: max_open_rows.or_else(job::default_max_open_rows),
                handoff_timeout: Duration::from_secs(handoff_timeout),
            };
            let host = std::env::var("HOSTNAME").unwrap_or_default();
            let Some(ordinal) = ordinal.or_else(|| job::ordinal_from_hostname(&host)) else {
                eprintln!(
                    "error: no --ordinal, and HOSTNAME {host:?} does not end in one (name-N)"
                );
                return ExitCode::from(file_input::EXIT_USAGE);
            };
            let assignment = match AssignmentFile::open(&assignment) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("error: {}: {e}", assignment.display());
                    return ExitCode::from(file_input::EXIT_USAGE);
                }
            };
            let owner = if host.is_empty() {
                format!("worker-{ordinal}")
            } else {
                host
            };
            with_job(&job, |job, plan| {
                job::worker(job, plan, assignment, ordinal, owner, &opts)
            })
        }
    }
}

/// Load and validate the job, then run `f`; errors become messages and exit codes.
fn with_job(
    path: &std::path::Path,
    f: impl FnOnce(&weir_crds::StreamJob, weir_engine::JobPlan) -> Result<(), job::JobError>,
) -> ExitCode {
    let (job, plan) = match job::load_job(path) {
        Ok(x) => x,
        Err(problems) => {
            for p in problems {
                eprintln!("error: {p}");
            }
            return ExitCode::from(file_input::EXIT_USAGE);
        }
    };
    match f(&job, plan) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}
