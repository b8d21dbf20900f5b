//! weir operator: reconciles StreamJobs into worker pods. Built in issue 5; this binary only
//! reserves the name so the workspace layout is final.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "weir-operator: not built yet (issue 5). Use `weir run JOB.yaml --input FILE` to run a \
         StreamJob locally."
    );
    ExitCode::from(2)
}
