//! `weir`: the worker binary, and the command a person uses to try a StreamJob locally.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weir_worker::logging::{self, LogFormat};

mod run;

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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match cli.command {
        Command::Run {
            job,
            input,
            rejects,
        } => run::main(&job, input.as_deref(), rejects.as_deref()),
    }
}
