//! Writes the StreamJob CRD YAML generated from the Rust types.
//!
//! `cargo run -p weir-crds --bin crdgen` rewrites `crds/streamjob.yaml` (what `kubectl apply`
//! uses) and `charts/weir/crds/streamjob.yaml` (the Helm chart's copy, byte-identical);
//! `--check` only compares both and fails on drift; `--stdout` prints it.

use std::path::PathBuf;
use std::process::ExitCode;

/// Every committed copy of the generated CRD, relative to the workspace root.
const TARGETS: &[&str] = &["crds/streamjob.yaml", "charts/weir/crds/streamjob.yaml"];

fn main() -> ExitCode {
    let yaml = match weir_crds::crd_yaml() {
        Ok(y) => y,
        Err(e) => {
            eprintln!("crdgen: cannot serialise the CRD: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The crate sits in <workspace>/crds.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let paths = TARGETS.iter().map(|t| (*t, root.join(t)));
    match std::env::args().nth(1).as_deref() {
        Some("--stdout") => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Some("--check") => {
            let mut ok = true;
            for (name, path) in paths {
                match std::fs::read_to_string(&path) {
                    Ok(current) if current == yaml => {}
                    Ok(_) => {
                        eprintln!(
                            "crdgen: {name} is out of date; run `cargo run -p weir-crds --bin crdgen`"
                        );
                        ok = false;
                    }
                    Err(e) => {
                        eprintln!("crdgen: cannot read {name}: {e}");
                        ok = false;
                    }
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        None => {
            for (name, path) in paths {
                if let Err(e) = std::fs::write(&path, &yaml) {
                    eprintln!("crdgen: cannot write {name}: {e}");
                    return ExitCode::FAILURE;
                }
                eprintln!("crdgen: wrote {name}");
            }
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("crdgen: unknown argument {other:?}; use --check, --stdout or nothing");
            ExitCode::FAILURE
        }
    }
}
