//! Writes the StreamJob CRD YAML generated from the Rust types.
//!
//! `cargo run -p weir-crds --bin crdgen` rewrites `crds/streamjob.yaml` (the file the chart and
//! `kubectl apply` use); `--check` only compares and fails on drift; `--stdout` prints it.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let yaml = match weir_crds::crd_yaml() {
        Ok(y) => y,
        Err(e) => {
            eprintln!("crdgen: cannot serialise the CRD: {e}");
            return ExitCode::FAILURE;
        }
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("streamjob.yaml");
    match std::env::args().nth(1).as_deref() {
        Some("--stdout") => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Some("--check") => match std::fs::read_to_string(&path) {
            Ok(current) if current == yaml => ExitCode::SUCCESS,
            Ok(_) => {
                eprintln!(
                    "crdgen: {} is out of date; run `cargo run -p weir-crds --bin crdgen`",
                    path.display()
                );
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("crdgen: cannot read {}: {e}", path.display());
                ExitCode::FAILURE
            }
        },
        None => match std::fs::write(&path, yaml) {
            Ok(()) => {
                eprintln!("crdgen: wrote {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("crdgen: cannot write {}: {e}", path.display());
                ExitCode::FAILURE
            }
        },
        Some(other) => {
            eprintln!("crdgen: unknown argument {other:?}; use --check, --stdout or nothing");
            ExitCode::FAILURE
        }
    }
}
