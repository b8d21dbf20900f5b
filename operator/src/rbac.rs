//! The Kubernetes API calls the operator makes, for its own ClusterRole (the Helm chart derives
//! it from [`API_CALLS`] and [`GRANTED_TO_WORKERS`]).
//!
//! KEEP IN STEP WITH THE CODE: every `Api` call in `controller.rs`, `observe/`, `apply.rs`,
//! `secrets.rs`, `leader.rs` and kube-runtime's helpers used there (watchers, finalizer, event recorder) must be listed,
//! and nothing else. A server-side apply that creates an object is authorised as both `patch`
//! and `create`.

/// (API group, resource, verbs) of every call the operator makes.
pub const API_CALLS: &[(&str, &str, &[&str])] = &[
    // Controller watch; finalizer added/removed by JSON patch.
    ("weir.dev", "streamjobs", &["get", "list", "watch", "patch"]),
    // Status, by server-side apply.
    ("weir.dev", "streamjobs/status", &["patch"]),
    // Job ConfigMap: get (previous assignment), apply; checkpoint ConfigMaps: list by label,
    // create if absent, deletecollection on cleanup (after a merge patch of the label of a
    // legacy merge name holding another job's record); `.owns` watch.
    (
        "",
        "configmaps",
        &[
            "get",
            "list",
            "watch",
            "create",
            "patch",
            "deletecollection",
        ],
    ),
    // The source credentials Secret (librdkafka properties) and the object-store one.
    ("", "secrets", &["get"]),
    // The children: `get` (metadata) of one not known as the job's own before its first apply
    // (apply.rs, name_conflicts), the `.owns` watch, server-side apply.
    (
        "",
        "serviceaccounts",
        &["get", "list", "watch", "create", "patch"],
    ),
    ("", "services", &["get", "list", "watch", "create", "patch"]),
    // Deleted first when a job with deleteOnJobDeletion goes (controller.rs, stop_workers).
    (
        "apps",
        "statefulsets",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    // Listed (metadata) until a deleted job's workers are gone, before its checkpoints go.
    ("", "pods", &["list"]),
    (
        "policy",
        "poddisruptionbudgets",
        &["get", "list", "watch", "create", "patch"],
    ),
    (
        "rbac.authorization.k8s.io",
        "roles",
        &["get", "list", "watch", "create", "patch"],
    ),
    (
        "rbac.authorization.k8s.io",
        "rolebindings",
        &["get", "list", "watch", "create", "patch"],
    ),
    // kube-runtime's Recorder: create, and patch for a repeated event (series).
    ("events.k8s.io", "events", &["create", "patch"]),
    // Leader election.
    (
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update"],
    ),
];

/// Permissions the operator never uses itself but must hold, because Kubernetes lets a
/// subject create a Role only with permissions it has (no privilege escalation): the workers'
/// Role grants `get`/`update` on their checkpoint ConfigMaps and `get` on Secrets. (The
/// alternative, the `escalate` and `bind` verbs on roles, would grant far more.)
pub const GRANTED_TO_WORKERS: &[(&str, &str, &[&str])] = &[
    ("", "configmaps", &["get", "update"]),
    ("", "secrets", &["get"]),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_resource_is_listed_once_with_known_verbs() {
        let known = [
            "get",
            "list",
            "watch",
            "create",
            "update",
            "patch",
            "delete",
            "deletecollection",
        ];
        for (_, resource, verbs) in API_CALLS.iter().chain(GRANTED_TO_WORKERS) {
            assert!(
                verbs.iter().all(|v| known.contains(v)),
                "{resource}: {verbs:?}"
            );
        }
        let mut once = std::collections::BTreeSet::new();
        for (group, resource, _) in API_CALLS {
            assert!(
                once.insert((group, resource)),
                "{group}/{resource} listed twice"
            );
        }
    }
}
