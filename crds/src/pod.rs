//! What the operator gives a worker pod and `weir worker` reads back: the environment variables
//! it sets, where it mounts the job ConfigMap and the credentials Secrets, and the port it
//! probes. One definition for both binaries, so a rename cannot leave one side behind.

/// The environment variables the operator sets on the worker container.
pub mod env {
    /// The pod's namespace (from the downward API): where the checkpoint ConfigMaps live.
    pub const NAMESPACE: &str = "WEIR_NAMESPACE";
    /// Path of the StreamJob file (`weir worker --job`).
    pub const JOB: &str = "WEIR_JOB";
    /// Path of the assignment file (`weir worker --assignment`).
    pub const ASSIGNMENT: &str = "WEIR_ASSIGNMENT";
    /// Address of `/metrics`, `/healthz` and `/readyz` (`weir worker --listen`).
    pub const LISTEN: &str = "WEIR_LISTEN";
    /// The worker's ordinal (`weir worker --ordinal`); by default from the pod's hostname.
    /// Never set by the operator, but reserved: a user's value would break ownership.
    pub const ORDINAL: &str = "WEIR_ORDINAL";
    /// A local checkpoint directory (`weir worker --checkpoint-dir`). Reserved: in a cluster the
    /// checkpoints must be where every pod (and the operator) finds them.
    pub const CHECKPOINT_DIR: &str = "WEIR_CHECKPOINT_DIR";
    /// Directory of the source's credentials Secret.
    pub const SOURCE_CREDENTIALS_DIR: &str = "WEIR_SOURCE_CREDENTIALS_DIR";
    /// Directory of the sink's credentials Secret.
    pub const SINK_CREDENTIALS_DIR: &str = "WEIR_SINK_CREDENTIALS_DIR";
    /// Directory of the dead-letter topic's credentials Secret.
    pub const DEAD_LETTER_CREDENTIALS_DIR: &str = "WEIR_DEAD_LETTER_CREDENTIALS_DIR";
}

/// Where the job ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/weir";
/// The StreamJob file in a worker pod: [`CONFIG_DIR`]/[`crate::names::JOB_KEY`] (`weir worker --job`'s
/// default).
pub const JOB_FILE: &str = "/etc/weir/job.yaml";
/// The assignment file in a worker pod: [`CONFIG_DIR`]/[`crate::names::ASSIGNMENT_KEY`]
/// (`weir worker --assignment`'s default).
pub const ASSIGNMENT_FILE: &str = "/etc/weir/assignment.json";
/// Under which each credentials Secret gets its own directory (not under [`CONFIG_DIR`]: a
/// ConfigMap volume is read-only, so mount points cannot be created inside it).
pub const CREDENTIALS_DIR: &str = "/etc/weir-credentials";
/// Port of `/metrics`, `/healthz` and `/readyz`.
pub const METRICS_PORT: i32 = 8080;
/// What the worker listens on ([`env::LISTEN`], `weir worker --listen`'s default).
pub const LISTEN: &str = "0.0.0.0:8080";

/// A credentials Secret mounted into the worker: its directory's name under
/// [`CREDENTIALS_DIR`] and the variable that tells the worker where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CredentialsMount {
    /// `source`, `sink` or `dead-letter`.
    pub role: &'static str,
    /// The variable naming the directory.
    pub env: &'static str,
}

impl CredentialsMount {
    /// The source's credentials.
    pub const SOURCE: CredentialsMount = CredentialsMount {
        role: "source",
        env: env::SOURCE_CREDENTIALS_DIR,
    };
    /// The sink's credentials.
    pub const SINK: CredentialsMount = CredentialsMount {
        role: "sink",
        env: env::SINK_CREDENTIALS_DIR,
    };
    /// The dead-letter topic's credentials.
    pub const DEAD_LETTER: CredentialsMount = CredentialsMount {
        role: "dead-letter",
        env: env::DEAD_LETTER_CREDENTIALS_DIR,
    };

    /// The directory the Secret is mounted at.
    pub fn dir(&self) -> String {
        format!("{CREDENTIALS_DIR}/{}", self.role)
    }
}

/// The file a job ConfigMap key is mounted as.
pub fn mounted_file(key: &str) -> String {
    format!("{CONFIG_DIR}/{key}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{ASSIGNMENT_KEY, JOB_KEY};

    #[test]
    fn file_constants_are_the_mounted_keys() {
        assert_eq!(JOB_FILE, mounted_file(JOB_KEY));
        assert_eq!(ASSIGNMENT_FILE, mounted_file(ASSIGNMENT_KEY));
        assert_eq!(LISTEN, format!("0.0.0.0:{METRICS_PORT}"));
        assert_eq!(
            CredentialsMount::SOURCE.dir(),
            "/etc/weir-credentials/source"
        );
    }
}
