//! The Helm chart (`charts/weir`) and the `Dockerfile` against the code they deploy.
//!
//! The chart is rendered by `charts/render.py` (Helm's Go SDK from PyPI `helm-python-sdk`,
//! installed by `scripts/deps`), with the same values schema check as `helm install`. The RBAC
//! it renders must grant exactly [`API_CALLS`] + [`GRANTED_TO_WORKERS`]: adding a verb to
//! `operator/src/rbac.rs` without the chart following fails here, and so does a chart rule the
//! operator does not need.

#[path = "support/render.rs"]
mod render;

use std::collections::BTreeSet;
use std::process::Command;

use render::{render, root};
use serde_json::Value;
use weir_operator::desired::WORKER_UID;
use weir_operator::rbac::{API_CALLS, GRANTED_TO_WORKERS};

use render::RELEASE_NS;
/// Leader election is the one call the operator makes in its own namespace only (the Lease in
/// `POD_NAMESPACE`); every other call is in the namespaces it watches.
const LEASES: (&str, &str) = ("coordination.k8s.io", "leases");

type Grant = (String, String, String);

fn kind<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

fn namespace(o: &Value) -> &str {
    o["metadata"]["namespace"].as_str().unwrap_or_default()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// (group, resource, verb) of every rule of a ClusterRole or Role. A rule with anything but
/// apiGroups/resources/verbs (resourceNames, nonResourceURLs) fails: the comparison below
/// would not mean what it says.
fn grants(role: &Value) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        let keys: BTreeSet<&str> = rule
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["apiGroups", "resources", "verbs"]),
            "{}: rule {rule}",
            name(role)
        );
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                for v in strings(&rule["verbs"]) {
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

fn expand(calls: &[(&str, &str, &[&str])]) -> BTreeSet<Grant> {
    calls
        .iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect()
}

/// What the operator must hold in each watched namespace, and in its own for the Lease.
fn expected() -> (BTreeSet<Grant>, BTreeSet<Grant>) {
    let all: BTreeSet<Grant> = expand(API_CALLS)
        .union(&expand(GRANTED_TO_WORKERS))
        .cloned()
        .collect();
    let (lease, watched) = all
        .into_iter()
        .partition(|(g, r, _)| (g.as_str(), r.as_str()) == LEASES);
    (watched, lease)
}

/// Asserts that `binding` binds the chart's ServiceAccount to `role_kind`/`role`.
fn assert_binds(binding: &Value, role_kind: &str, role: &Value, sa: &str) {
    assert_eq!(binding["roleRef"]["kind"], role_kind, "{binding}");
    assert_eq!(
        binding["roleRef"]["name"].as_str(),
        Some(name(role)),
        "{binding}"
    );
    let subjects = binding["subjects"].as_array().expect("subjects");
    assert_eq!(subjects.len(), 1, "{binding}");
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["name"].as_str(), Some(sa));
    assert_eq!(subjects[0]["namespace"].as_str(), Some(RELEASE_NS));
}

fn service_account(objs: &[Value]) -> String {
    let sas = kind(objs, "ServiceAccount");
    assert_eq!(sas.len(), 1);
    let deployment = kind(objs, "Deployment")[0];
    let pod_sa = deployment["spec"]["template"]["spec"]["serviceAccountName"].as_str();
    assert_eq!(
        pod_sa,
        Some(name(sas[0])),
        "the operator runs as the chart's SA"
    );
    name(sas[0]).to_string()
}

/// The leader-election Role and its binding: exactly the Lease calls, in the release namespace.
fn assert_lease_role(objs: &[Value], sa: &str, lease: &BTreeSet<Grant>) {
    let roles: Vec<_> = kind(objs, "Role")
        .into_iter()
        .filter(|r| namespace(r) == RELEASE_NS && grants(r).iter().any(|g| lease.contains(g)))
        .collect();
    assert_eq!(roles.len(), 1, "one Role holds the Lease calls");
    assert_eq!(&grants(roles[0]), lease, "leader-election Role");
    let bindings: Vec<_> = kind(objs, "RoleBinding")
        .into_iter()
        .filter(|b| {
            namespace(b) == RELEASE_NS && b["roleRef"]["name"].as_str() == Some(name(roles[0]))
        })
        .collect();
    assert_eq!(bindings.len(), 1);
    assert_binds(bindings[0], "Role", roles[0], sa);
}

#[test]
fn cluster_role_grants_exactly_the_api_calls() {
    let objs = render(&[]);
    let (watched, lease) = expected();
    let sa = service_account(&objs);

    let roles = kind(&objs, "ClusterRole");
    assert_eq!(roles.len(), 1, "watching every namespace: one ClusterRole");
    let cluster_role = roles[0];
    let granted = grants(cluster_role);
    let missing: Vec<_> = watched.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&watched).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "ClusterRole vs operator/src/rbac.rs: missing {missing:?}, not needed {extra:?}"
    );
    let bindings = kind(&objs, "ClusterRoleBinding");
    assert_eq!(bindings.len(), 1);
    assert_binds(bindings[0], "ClusterRole", cluster_role, &sa);

    assert_lease_role(&objs, &sa, &lease);
    assert_eq!(kind(&objs, "Role").len(), 1, "no other Role");
}

#[test]
fn watched_namespaces_get_roles_with_exactly_the_api_calls() {
    let objs = render(&["watchNamespaces={team-a,team-b}"]);
    let (watched, lease) = expected();
    let sa = service_account(&objs);
    assert!(
        kind(&objs, "ClusterRole").is_empty(),
        "no cluster-wide grant"
    );
    assert!(kind(&objs, "ClusterRoleBinding").is_empty());
    for ns in ["team-a", "team-b"] {
        let roles: Vec<_> = kind(&objs, "Role")
            .into_iter()
            .filter(|r| namespace(r) == ns)
            .collect();
        assert_eq!(roles.len(), 1, "one Role in {ns}");
        assert_eq!(
            grants(roles[0]),
            watched,
            "Role in {ns} vs operator/src/rbac.rs"
        );
        let bindings: Vec<_> = kind(&objs, "RoleBinding")
            .into_iter()
            .filter(|b| namespace(b) == ns)
            .collect();
        assert_eq!(bindings.len(), 1, "one RoleBinding in {ns}");
        assert_binds(bindings[0], "Role", roles[0], &sa);
    }
    assert_lease_role(&objs, &sa, &lease);
    assert_eq!(kind(&objs, "Role").len(), 3);
}

#[test]
fn without_leader_election_no_lease_is_granted() {
    let objs = render(&["leaderElection.enabled=false"]);
    let (watched, _) = expected();
    let all: BTreeSet<Grant> = kind(&objs, "ClusterRole")
        .into_iter()
        .chain(kind(&objs, "Role"))
        .flat_map(grants)
        .collect();
    assert_eq!(all, watched, "everything but the Lease");
}

/// The Dockerfile's instructions in order, as (keyword, rest), continuation lines joined and
/// comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let (keyword, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((keyword.to_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

/// `cargo metadata` of the workspace: (package, bin targets, rust-version) of each member.
fn workspace_bins() -> Vec<(String, Vec<String>, String)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let bins = p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| strings(&t["kind"]).iter().any(|k| k == "bin"))
                .filter_map(|t| t["name"].as_str().map(str::to_string))
                .collect();
            let rust_version = p["rust_version"].as_str().unwrap_or("0").to_string();
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                bins,
                rust_version,
            )
        })
        .collect()
}

fn version_tuple(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

#[test]
fn dockerfile_names_real_binaries_and_the_pods_user() {
    let steps = dockerfile();
    let packages = workspace_bins();

    // The build stage: cargo builds each copied binary from the package that owns it, with a
    // toolchain no older than the workspace's rust-version.
    let arg = steps
        .iter()
        .find(|(k, rest)| k == "ARG" && rest.starts_with("RUST_VERSION="))
        .expect("ARG RUST_VERSION=...");
    let rust = arg.1.trim_start_matches("RUST_VERSION=");
    for (package, _, min) in &packages {
        assert!(
            version_tuple(rust) >= version_tuple(min),
            "Dockerfile Rust {rust} is older than {package}'s rust-version {min}"
        );
    }
    let froms: Vec<_> = steps.iter().filter(|(k, _)| k == "FROM").collect();
    assert_eq!(froms.len(), 2, "two stages: build and runtime");
    assert!(froms[0].1.ends_with(" AS build"), "{:?}", froms[0]);
    let build_end = steps
        .iter()
        .position(|s| s == froms[1])
        .expect("runtime stage");
    let build = &steps[..build_end];
    let runtime = &steps[build_end..];
    assert!(build.contains(&("WORKDIR".to_string(), "/src".to_string())));
    let cargo_build = build
        .iter()
        .find(|(k, rest)| k == "RUN" && rest.contains("cargo build"))
        .expect("RUN ... cargo build");
    let words: Vec<&str> = cargo_build.1.split_whitespace().collect();
    assert!(words.contains(&"--release") && words.contains(&"--locked"));
    let flag_values = |flag: &str| -> Vec<String> {
        words
            .windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].to_string())
            .collect()
    };
    let built_packages = flag_values("-p");
    let built_bins = flag_values("--bin");

    // What librdkafka needs to build, per scripts/deps, is installed in the build stage.
    let deps = std::fs::read_to_string(root().join("scripts/deps")).expect("scripts/deps");
    let apt_line = deps
        .lines()
        .find(|l| l.starts_with("apt_install build-essential"))
        .expect("scripts/deps installs the C toolchain for librdkafka");
    let build_text: String = build
        .iter()
        .map(|(_, r)| r.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    for pkg in apt_line.split_whitespace().skip(1) {
        assert!(
            build_text.contains(pkg),
            "the build stage lacks {pkg} (scripts/deps installs it)"
        );
    }

    // The runtime stage: every copied binary is a bin target of a package that is built.
    let mut copied = Vec::new();
    for (_, rest) in runtime
        .iter()
        .filter(|(k, rest)| k == "COPY" && rest.contains("/src/target/"))
    {
        let parts: Vec<&str> = rest.split_whitespace().collect();
        assert_eq!(parts[0], "--from=build");
        let (dest, sources) = parts[1..].split_last().expect("COPY SRC... DEST");
        assert_eq!(*dest, "/usr/local/bin/");
        for src in sources {
            let bin = src
                .strip_prefix("/src/target/release/")
                .unwrap_or_else(|| panic!("{src} is not a release binary"));
            let owner = packages
                .iter()
                .find(|(_, bins, _)| bins.iter().any(|b| b == bin))
                .unwrap_or_else(|| panic!("{bin} is no bin target of the workspace"));
            assert!(
                built_packages.contains(&owner.0),
                "{} is not built (-p)",
                owner.0
            );
            assert!(
                built_bins.iter().any(|b| b == bin),
                "{bin} is not built (--bin)"
            );
            copied.push(format!("/usr/local/bin/{bin}"));
        }
    }
    for (package, bin) in [("weir-worker", "weir"), ("weir-operator", "weir-operator")] {
        assert!(
            copied.contains(&format!("/usr/local/bin/{bin}")),
            "the image lacks {bin} ({package})"
        );
    }

    // The entrypoint is the worker binary: the operator's worker pods set only `args`.
    let entrypoint = runtime
        .iter()
        .find(|(k, _)| k == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    assert_eq!(entrypoint.1, r#"["/usr/local/bin/weir"]"#);

    // The user is the one the workers (desired.rs) and the chart's operator pod run as.
    let user = runtime
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .expect("USER");
    assert_eq!(user.1, format!("{WORKER_UID}:{WORKER_UID}"));
    let objs = render(&[]);
    let pod = &kind(&objs, "Deployment")[0]["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"]["runAsUser"].as_i64(),
        Some(WORKER_UID)
    );
    assert_eq!(
        pod["securityContext"]["runAsGroup"].as_i64(),
        Some(WORKER_UID)
    );
    let command = strings(&pod["containers"][0]["command"]);
    assert_eq!(command.len(), 1);
    assert!(
        copied.contains(&command[0]),
        "the chart runs {command:?}, not in the image"
    );
    assert!(command[0].ends_with("/weir-operator"));
}

#[test]
fn chart_app_version_is_the_crate_version() {
    let chart = std::fs::read_to_string(root().join("charts/weir/Chart.yaml")).expect("Chart.yaml");
    let chart: Value = serde_norway::from_str(&chart).expect("Chart.yaml is YAML");
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(chart["version"].as_str(), Some(env!("CARGO_PKG_VERSION")));
}
