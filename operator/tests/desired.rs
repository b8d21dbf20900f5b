//! `desired`: a pure function from a StreamJob and observations to the objects that should
//! exist. These tests pin the assignment, the diff a spec change produces, RBAC, the pod's
//! security and the refusal of bad specs.

mod support;

use k8s_openapi::api::rbac::v1::PolicyRule;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use support::{cfg, found, job, job_with, ok, run};
use weir_crds::assignment::Assignment;
use weir_crds::names;
use weir_crds::topics::repartition_topic_in_use;
use weir_operator::desired::{desired, Child, Desired, DesiredResource, OperatorConfig};
use weir_operator::observation::{Observation, TopicObservation};

fn assignment_in_config_map(d: &Desired) -> Assignment {
    let w = d.workers.as_ref().expect("workers");
    let data = w.config_map.data.as_ref().expect("data");
    serde_json::from_str(&data[names::ASSIGNMENT_KEY]).expect("assignment.json")
}

fn replicas(d: &Desired) -> i32 {
    let w = d.workers.as_ref().expect("workers");
    w.stateful_set
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .expect("replicas")
}

/// The observation after `d` was applied: its assignment is now the previous one.
fn after(d: &Desired, partitions: i32) -> Observation {
    let mut obs = found(partitions);
    obs.previous_assignment = Some(assignment_in_config_map(d));
    obs
}

#[test]
fn every_partition_goes_to_exactly_one_worker_balanced_for_1_3_12_partitions() {
    for partitions in [1, 3, 12] {
        for parallelism in 1..=partitions + 2 {
            let j = job_with(&format!("parallelism: {parallelism}"));
            let d = ok(&j, &found(partitions));
            let want = parallelism.min(partitions);
            assert_eq!(replicas(&d), want, "p={partitions} par={parallelism}");
            let a = assignment_in_config_map(&d);
            assert_eq!(a, d.workers.as_ref().expect("workers").assignment);
            assert_eq!(a.workers.len(), want as usize);
            assert_eq!(a.epoch, 1, "a new job starts at epoch 1");
            let mut all: Vec<i32> = a.workers.iter().flatten().copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..partitions).collect::<Vec<_>>(), "{a:?}");
            let sizes: Vec<usize> = a.workers.iter().map(Vec::len).collect();
            let (min, max) = (sizes.iter().min(), sizes.iter().max());
            assert!(
                matches!((min, max), (Some(lo), Some(hi)) if hi - lo <= 1 && *lo >= 1),
                "unbalanced or idle worker: {sizes:?}"
            );
            // Deterministic: the same inputs give the same objects.
            assert_eq!(d, ok(&j, &found(partitions)));
        }
    }
}

#[test]
fn autoscaling_bounds_clamp_parallelism() {
    let j = job_with("parallelism: 9\nautoscaling: {minReplicas: 2, maxReplicas: 4}");
    assert_eq!(replicas(&ok(&j, &found(12))), 4);
    let j = job_with("parallelism: 1\nautoscaling: {minReplicas: 2, maxReplicas: 4}");
    assert_eq!(replicas(&ok(&j, &found(12))), 2);
}

#[test]
fn a_window_or_aggregation_change_rolls_pods_with_the_same_epoch() {
    let before = ok(&job(), &found(12));
    let obs = after(&before, 12);
    let steady = ok(&job(), &obs);
    assert_eq!(steady, before, "nothing changed, nothing differs");

    for change in [
        "window: {type: tumbling, size: 5m, allowedLateness: 10s}",
        "aggregations: [{name: payments, fn: count}, {name: total, fn: sum, field: amount}]",
    ] {
        let d = ok(&job_with(change), &obs);
        let (w0, w1) = (
            before.workers.as_ref().expect("workers"),
            d.workers.as_ref().expect("workers"),
        );
        assert_eq!(w1.assignment, w0.assignment, "{change}: same assignment");
        assert_eq!(w1.assignment.epoch, 1, "{change}: same epoch");
        assert_ne!(w1.config_hash, w0.config_hash, "{change}: pods must roll");
        let data0 = w0.config_map.data.as_ref().expect("data");
        let data1 = w1.config_map.data.as_ref().expect("data");
        assert_ne!(data1[names::JOB_KEY], data0[names::JOB_KEY]);
        assert_eq!(data1[names::ASSIGNMENT_KEY], data0[names::ASSIGNMENT_KEY]);
        let annotation = |w: &weir_operator::desired::Workers| {
            w.stateful_set
                .spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref())
                .map(|a| a[names::ANNOTATION_CONFIG_HASH].clone())
        };
        assert_eq!(annotation(w1).as_deref(), Some(w1.config_hash.as_str()));
        // The only difference in the StatefulSet is the annotation.
        let mut sts1 = w1.stateful_set.clone();
        if let Some(m) = sts1
            .spec
            .as_mut()
            .and_then(|s| s.template.metadata.as_mut())
        {
            m.annotations = w0
                .stateful_set
                .spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.annotations.clone());
        }
        assert_eq!(sts1, w0.stateful_set, "{change}");
        assert_eq!(d.role, before.role, "{change}");
        assert_eq!(d.service, before.service);
        assert_eq!(d.pod_disruption_budget, before.pod_disruption_budget);
    }
}

/// Scaling moves partitions, not pods (DESIGN.md invariant 9): a new assignment under a new
/// epoch, the replica count, and nothing else of the StatefulSet; the running workers take the
/// new assignment from the job ConfigMap without a restart.
#[test]
fn a_parallelism_change_that_moves_partitions_takes_a_new_epoch_and_rolls_no_pod() {
    let before = ok(&job(), &found(12));
    let d = ok(&job_with("parallelism: 4"), &after(&before, 12));
    let (w0, w1) = (
        before.workers.as_ref().expect("workers"),
        d.workers.as_ref().expect("workers"),
    );
    assert_eq!(replicas(&d), 4);
    assert_ne!(w1.assignment.workers, w0.assignment.workers);
    assert_eq!(w1.assignment.epoch, 2);
    assert_eq!(
        w1.config_hash, w0.config_hash,
        "the pod template is unchanged"
    );
    let (mut s0, s1) = (w0.stateful_set.clone(), w1.stateful_set.clone());
    if let (Some(a), Some(b)) = (s0.spec.as_mut(), s1.spec.as_ref()) {
        a.replicas = b.replicas;
    }
    assert_eq!(s0, s1, "only the replica count differs");
    let data = |w: &weir_operator::desired::Workers| {
        w.config_map.data.clone().expect("data")[names::JOB_KEY].clone()
    };
    assert_eq!(data(w0), data(w1), "job.yaml is unchanged");

    // Scaling back returns to the old mapping, still with a newer epoch: epochs only grow.
    let back = ok(&job(), &after(&d, 12));
    let w2 = back.workers.as_ref().expect("workers");
    assert_eq!(w2.assignment.workers, w0.assignment.workers);
    assert_eq!(w2.assignment.epoch, 3);
}

#[test]
fn a_parallelism_change_above_the_partition_count_changes_nothing() {
    let j = job_with("parallelism: 5");
    let before = ok(&j, &found(3));
    let d = ok(&job_with("parallelism: 6"), &after(&before, 3));
    assert_eq!(d, before, "3 partitions run on 3 workers either way");
}

#[test]
fn suspend_sets_the_replicas_to_zero_and_changes_nothing_else() {
    let before = ok(&job(), &found(3));
    let d = ok(&job_with("suspend: true"), &after(&before, 3));
    assert_eq!(replicas(&before), 3);
    assert_eq!(replicas(&d), 0);
    let (w0, w1) = (
        before.workers.as_ref().expect("workers"),
        d.workers.as_ref().expect("workers"),
    );
    assert_eq!(w1.config_map, w0.config_map, "suspend is not in job.yaml");
    assert_eq!(w1.config_hash, w0.config_hash);
    assert_eq!(w1.assignment, w0.assignment);
    let template = |w: &weir_operator::desired::Workers| {
        w.stateful_set.spec.as_ref().map(|s| s.template.clone())
    };
    assert_eq!(template(w1), template(w0), "the pods do not roll on resume");
    assert_eq!(d.role, before.role);
    assert_eq!(d.pod_disruption_budget, before.pod_disruption_budget);
}

#[test]
fn a_suspended_job_goes_to_zero_replicas_even_when_the_partition_count_is_unknown() {
    let before = ok(&job(), &found(3));
    for topic in [
        TopicObservation::NotFound,
        TopicObservation::BrokerUnreachable {
            detail: "timeout".to_string(),
        },
    ] {
        let mut obs = Observation::new(topic.clone());
        obs.previous_assignment = Some(assignment_in_config_map(&before));
        let d = ok(&job_with("suspend: true"), &obs);
        assert_eq!(replicas(&d), 0, "{topic:?}");
        let (w0, w1) = (
            before.workers.as_ref().expect("workers"),
            d.workers.as_ref().expect("workers"),
        );
        assert_eq!(
            w1.config_map, w0.config_map,
            "{topic:?}: the assignment as it was"
        );
        assert_eq!(w1.config_hash, w0.config_hash);
        assert_eq!(w1.checkpoint_config_maps, w0.checkpoint_config_maps);
        assert_eq!(w1.repartition_topic, None, "nothing is created");
        // Not suspended: left alone, as before.
        assert!(ok(&job(), &obs).workers.is_none(), "{topic:?}");
    }
    // Without a previous assignment there is nothing to scale down.
    let d = ok(
        &job_with("suspend: true"),
        &Observation::new(TopicObservation::NotFound),
    );
    assert!(d.workers.is_none());
}

#[test]
fn a_reset_is_in_job_yaml_so_the_workers_get_it() {
    let before = ok(&job(), &found(3));
    let d = ok(
        &job_with("reset: {to: '2026-12-01T08:00:00Z', id: incident-42}"),
        &after(&before, 3),
    );
    let w = d.workers.as_ref().expect("workers");
    let yaml = &w.config_map.data.as_ref().expect("data")[names::JOB_KEY];
    assert!(yaml.contains("incident-42"), "{yaml}");
    assert_ne!(
        w.config_hash,
        before.workers.as_ref().expect("workers").config_hash
    );
}

#[test]
fn pod_settings_change_the_pods_but_not_job_yaml_or_the_epoch() {
    let before = ok(&job(), &found(3));
    let d = ok(
        &job_with("worker: {image: 'weir:other', env: [{name: RUST_LOG, value: debug}]}"),
        &after(&before, 3),
    );
    let (w0, w1) = (
        before.workers.as_ref().expect("workers"),
        d.workers.as_ref().expect("workers"),
    );
    assert_eq!(w1.config_map, w0.config_map);
    assert_eq!(w1.config_hash, w0.config_hash);
    assert_ne!(w1.stateful_set, w0.stateful_set);
}

#[test]
fn the_epoch_passes_any_epoch_found_in_the_checkpoints() {
    // A job recreated under the same name: no job ConfigMap, checkpoints at epoch 7.
    let mut obs = found(3);
    obs.max_checkpoint_epoch = Some(7);
    let d = ok(&job(), &obs);
    assert_eq!(d.workers.as_ref().expect("workers").assignment.epoch, 8);
    // And once published, it is stable.
    let mut obs = after(&d, 3);
    obs.max_checkpoint_epoch = Some(8);
    assert_eq!(
        ok(&job(), &obs)
            .workers
            .as_ref()
            .expect("workers")
            .assignment
            .epoch,
        8
    );
}

#[test]
fn job_yaml_is_what_the_worker_parses_without_the_pod_settings() {
    let j = job_with(
        "parallelism: 7\nautoscaling: {minReplicas: 1, maxReplicas: 9}\nworker: {image: 'x:y'}",
    );
    let d = ok(&j, &found(4));
    let data = d
        .workers
        .as_ref()
        .and_then(|w| w.config_map.data.as_ref())
        .expect("data");
    let parsed = weir_crds::parse_stream_job(&data[names::JOB_KEY]).expect("worker parses it");
    assert!(
        parsed.unknown_fields.is_empty(),
        "{:?}",
        parsed.unknown_fields
    );
    assert_eq!(parsed.job.metadata.name.as_deref(), Some("payments"));
    assert_eq!(parsed.job.metadata.namespace.as_deref(), Some("shop"));
    // Who reads what is the assignment's to say.
    assert_eq!(parsed.job.spec.parallelism, 1);
    assert_eq!(parsed.job.spec.autoscaling, None);
    assert_eq!(parsed.job.spec.worker, Default::default());
    assert_eq!(parsed.job.spec.window, j.spec.window);
    assert_eq!(parsed.job.spec.aggregations, j.spec.aggregations);
    assert_eq!(parsed.job.status, None);
}

fn rule(resource: &str, names: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec![resource.to_string()]),
        resource_names: Some(names.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..PolicyRule::default()
    }
}

#[test]
fn rbac_is_exactly_the_jobs_configmaps_and_secrets() {
    let j = job_with(
        "deadLetter: {kafka: {topic: payments-dlq, credentials: {secretName: dlq-creds}}}",
    );
    let d = ok(&j, &found(3));
    let role = &d.role;
    assert_eq!(
        role.rules.as_deref(),
        Some(
            &[
                rule(
                    "configmaps",
                    &[
                        "payments-checkpoint-0",
                        "payments-checkpoint-1",
                        "payments-checkpoint-2"
                    ],
                    &["get", "update"]
                ),
                rule("configmaps", &["payments-config"], &["get"]),
                rule("secrets", &["dlq-creds", "kafka-creds"], &["get"]),
            ][..]
        )
    );
    assert_eq!(role.metadata.name.as_deref(), Some("payments-worker"));
    let rb = &d.role_binding;
    assert_eq!(rb.role_ref.kind, "Role");
    assert_eq!(rb.role_ref.name, "payments-worker");
    let subjects = rb.subjects.as_ref().expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, "payments-worker");
    assert_eq!(subjects[0].namespace.as_deref(), Some("shop"));
}

#[test]
fn rbac_with_an_object_store_and_no_secrets_names_only_the_job_configmap() {
    let j = job_with(
        "source: {kafka: {bootstrapServers: 'kafka:9092', topic: payments}}
checkpoint: {store: {objectStore: {url: 's3://bucket/weir', credentials: {secretName: s3-creds}}}}",
    );
    let d = ok(&j, &found(3));
    let w = d.workers.as_ref().expect("workers");
    assert_eq!(
        d.role.rules.as_deref(),
        Some(
            &[
                rule("configmaps", &["payments-config"], &["get"]),
                rule("secrets", &["s3-creds"], &["get"]),
            ][..]
        )
    );
    assert!(w.checkpoint_config_maps.is_empty());

    let j = job_with("source: {kafka: {bootstrapServers: 'kafka:9092', topic: payments}}");
    let d = ok(&j, &found(2));
    let rules = d.role.rules.clone();
    // No rule without resourceNames: that would grant every Secret of the namespace.
    for r in rules.iter().flatten() {
        assert!(
            r.resource_names.as_ref().is_some_and(|n| !n.is_empty()),
            "{r:?}"
        );
        assert_ne!(r.resources.as_deref(), Some(&["secrets".to_string()][..]));
    }
}

#[test]
fn the_pod_is_restricted_and_runs_weir_worker_with_its_config_and_credentials() {
    let j = job_with(
        "sink: {kafka: {topic: out, bootstrapServers: 'other:9092', credentials: {secretName: sink-creds}}}
worker: {resources: {limits: {memory: 512Mi}}, nodeSelector: {pool: stream}, imagePullSecrets: [{name: regcred}]}",
    );
    let d = ok(&j, &found(3));
    let w = d.workers.as_ref().expect("workers");
    let spec = w.stateful_set.spec.as_ref().expect("spec");
    assert_eq!(spec.service_name.as_deref(), Some("payments-worker"));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(
        spec.selector.match_labels.as_ref(),
        Some(&names::selector_labels("payments"))
    );
    let pod = spec.template.spec.as_ref().expect("pod");
    assert!(pod
        .termination_grace_period_seconds
        .is_some_and(|g| g >= 60 + 10));
    assert_eq!(pod.service_account_name.as_deref(), Some("payments-worker"));
    assert_eq!(pod.automount_service_account_token, Some(true));
    let psc = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(65532));
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    assert_eq!(
        pod.node_selector.as_ref().map(|n| n["pool"].as_str()),
        Some("stream")
    );
    assert_eq!(pod.image_pull_secrets.as_ref().map(Vec::len), Some(1));

    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("weir:test"));
    assert_eq!(c.args.as_deref(), Some(&["worker".to_string()][..]));
    let sc = c
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    assert!(c.resources.as_ref().is_some_and(|r| r.limits.is_some()));
    let port = &c.ports.as_ref().expect("ports")[0];
    assert_eq!(
        (port.container_port, port.name.as_deref()),
        (8080, Some("metrics"))
    );
    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));

    let env = c.env.as_ref().expect("env");
    let value = |n: &str| {
        env.iter()
            .find(|e| e.name == n)
            .and_then(|e| e.value.clone())
    };
    let ns = env
        .iter()
        .find(|e| e.name == "WEIR_NAMESPACE")
        .expect("WEIR_NAMESPACE");
    assert_eq!(
        ns.value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("metadata.namespace")
    );
    assert_eq!(value("WEIR_JOB").as_deref(), Some("/etc/weir/job.yaml"));
    assert_eq!(
        value("WEIR_ASSIGNMENT").as_deref(),
        Some("/etc/weir/assignment.json")
    );
    let source_dir = value("WEIR_SOURCE_CREDENTIALS_DIR").expect("source credentials");
    let sink_dir = value("WEIR_SINK_CREDENTIALS_DIR").expect("sink credentials");
    assert_eq!(value("WEIR_DEAD_LETTER_CREDENTIALS_DIR"), None);

    let mounts = c.volume_mounts.as_ref().expect("mounts");
    let volumes = pod.volumes.as_ref().expect("volumes");
    let volume_at = |dir: &str| {
        let m = mounts.iter().find(|m| m.mount_path == dir).expect(dir);
        assert_eq!(m.read_only, Some(true), "{dir}");
        volumes.iter().find(|v| v.name == m.name).expect("volume")
    };
    assert_eq!(
        volume_at("/etc/weir")
            .config_map
            .as_ref()
            .map(|c| c.name.as_str()),
        Some("payments-config")
    );
    let secret = |dir: &str| {
        volume_at(dir)
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.clone())
    };
    assert_eq!(secret(&source_dir).as_deref(), Some("kafka-creds"));
    assert_eq!(secret(&sink_dir).as_deref(), Some("sink-creds"));
    let tmp = mounts
        .iter()
        .find(|m| m.mount_path == "/tmp")
        .expect("/tmp");
    assert!(volumes
        .iter()
        .any(|v| v.name == tmp.name && v.empty_dir.is_some()));
}

#[test]
fn object_store_credentials_are_env_from_their_secret() {
    let j = job_with(
        "checkpoint: {store: {objectStore: {url: 's3://bucket/weir', credentials: {secretName: s3-creds}}}}",
    );
    let d = ok(&j, &found(3));
    let pod = d
        .workers
        .as_ref()
        .and_then(|w| w.stateful_set.spec.as_ref())
        .and_then(|s| s.template.spec.clone())
        .expect("pod");
    let c = &pod.containers[0];
    let from = c.env_from.as_ref().expect("envFrom");
    assert_eq!(
        from[0].secret_ref.as_ref().map(|s| s.name.as_str()),
        Some("s3-creds")
    );
    assert_eq!(pod.automount_service_account_token, Some(false));
}

#[test]
fn the_service_is_headless_and_the_pdb_allows_one_down() {
    let d = ok(&job(), &found(3));
    let svc = d.service.spec.as_ref().expect("spec");
    assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
    assert_eq!(
        svc.selector.as_ref(),
        Some(&names::selector_labels("payments"))
    );
    let port = &svc.ports.as_ref().expect("ports")[0];
    assert_eq!((port.port, port.name.as_deref()), (8080, Some("metrics")));
    let pdb = d.pod_disruption_budget.spec.as_ref().expect("spec");
    assert_eq!(
        pdb.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    assert_eq!(
        pdb.selector.as_ref().and_then(|s| s.match_labels.as_ref()),
        Some(&names::selector_labels("payments"))
    );
}

#[test]
fn every_applied_object_is_owned_by_the_job_labelled_and_namespaced() {
    let j = job();
    let d = ok(&j, &found(3));
    let want = OwnerReference {
        api_version: "weir.dev/v1alpha1".to_string(),
        kind: "StreamJob".to_string(),
        name: "payments".to_string(),
        uid: j.metadata.uid.clone().expect("uid"),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let children = d.apply_order();
    assert_eq!(children.len(), 7);
    let mut kinds = Vec::new();
    for child in children {
        let (kind, meta) = match child {
            Child::ServiceAccount(o) => ("ServiceAccount", &o.metadata),
            Child::Role(o) => ("Role", &o.metadata),
            Child::RoleBinding(o) => ("RoleBinding", &o.metadata),
            Child::ConfigMap(o) => ("ConfigMap", &o.metadata),
            Child::Service(o) => ("Service", &o.metadata),
            Child::StatefulSet(o) => ("StatefulSet", &o.metadata),
            Child::PodDisruptionBudget(o) => ("PodDisruptionBudget", &o.metadata),
        };
        kinds.push(kind);
        assert_eq!(
            meta.owner_references.as_deref(),
            Some(&[want.clone()][..]),
            "{kind}"
        );
        assert_eq!(meta.namespace.as_deref(), Some("shop"), "{kind}");
        assert_eq!(
            meta.labels.as_ref(),
            Some(&names::labels("payments")),
            "{kind}"
        );
    }
    // The job ConfigMap before the StatefulSet: new pods must mount the new assignment.
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Service",
            "StatefulSet",
            "PodDisruptionBudget"
        ]
    );
    let labels = names::labels("payments");
    for (k, v) in [
        ("app.kubernetes.io/name", "weir-worker"),
        ("app.kubernetes.io/instance", "payments"),
        ("app.kubernetes.io/managed-by", "weir-operator"),
        ("app.kubernetes.io/component", "worker"),
        ("weir.dev/job", "payments"),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "{k}");
    }
}

#[test]
fn checkpoint_configmaps_are_empty_labelled_and_not_owned() {
    let d = ok(&job(), &found(3));
    let cms = &d.workers.as_ref().expect("workers").checkpoint_config_maps;
    let names_: Vec<_> = cms.iter().filter_map(|c| c.metadata.name.clone()).collect();
    assert_eq!(
        names_,
        [
            "payments-checkpoint-0",
            "payments-checkpoint-1",
            "payments-checkpoint-2"
        ]
    );
    for cm in cms {
        assert_eq!(cm.data, None);
        assert_eq!(cm.binary_data, None);
        assert_eq!(cm.metadata.namespace.as_deref(), Some("shop"));
        // Retained when the job is deleted (unless deleteOnJobDeletion, via the finalizer).
        assert_eq!(cm.metadata.owner_references, None);
        let labels = cm.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "weir");
        assert_eq!(labels["weir.dev/job"], "payments");
    }
    assert!(!d.finalizer);
    let d = ok(
        &job_with("checkpoint: {deleteOnJobDeletion: true}"),
        &found(3),
    );
    assert!(d.finalizer);
}

#[test]
fn an_unknown_partition_count_leaves_the_workers_alone() {
    for topic in [
        TopicObservation::NotFound,
        TopicObservation::BrokerUnreachable {
            detail: "timeout".to_string(),
        },
        TopicObservation::Found {
            partitions: 0,
            retention_ms: None,
        },
    ] {
        let d = ok(&job(), &Observation::new(topic.clone()));
        assert!(d.workers.is_none(), "{topic:?}");
        let kinds: Vec<_> = d
            .apply_order()
            .iter()
            .map(|c| match c {
                Child::ServiceAccount(_) => "ServiceAccount",
                Child::Role(_) => "Role",
                Child::RoleBinding(_) => "RoleBinding",
                Child::Service(_) => "Service",
                Child::PodDisruptionBudget(_) => "PodDisruptionBudget",
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        // The Role before its binding: the API server refuses a binding to a missing Role.
        assert_eq!(
            kinds,
            [
                "ServiceAccount",
                "Role",
                "RoleBinding",
                "Service",
                "PodDisruptionBudget"
            ]
        );
        // A new job: the rules known so far (its job ConfigMap and Secret), no checkpoint.
        let names: Vec<String> = d
            .role
            .rules
            .iter()
            .flatten()
            .flat_map(|r| r.resource_names.clone().unwrap_or_default())
            .collect();
        assert_eq!(names, ["payments-config", "kafka-creds"], "{topic:?}");
    }
}

/// While Kafka cannot be seen, running workers keep the permissions of the assignment they run:
/// the Role keeps their checkpoint rules.
#[test]
fn an_unknown_partition_count_keeps_the_running_workers_role() {
    let running = ok(&job(), &found(3));
    let mut obs = after(&running, 3);
    obs.topic = TopicObservation::BrokerUnreachable {
        detail: "timeout".to_string(),
    };
    let d = ok(&job(), &obs);
    assert!(d.workers.is_none());
    assert_eq!(d.role, running.role);
}

#[test]
fn a_bad_spec_is_refused_naming_the_field() {
    let cases = [
        ("window: {type: hopping, size: 1m}", "spec.window.slide"),
        (
            "aggregations: [{name: p, fn: percentile, field: amount}]",
            "spec.aggregations[0].quantile",
        ),
        (
            "worker: {env: [{name: WEIR_NAMESPACE, value: x}]}",
            "spec.worker.env",
        ),
        (
            "worker: {env: [{name: A, value: x}, {name: A, value: y}]}",
            "spec.worker.env",
        ),
        (
            "checkpoint: {store: {objectStore: {url: 's3://bucket/weir'}}}",
            "spec.checkpoint.store.objectStore.credentials",
        ),
    ];
    for (extra, path) in cases {
        let err = run(&job_with(extra), &found(3)).expect_err(extra);
        assert!(err.errors.iter().any(|e| e.path == path), "{extra}: {err}");
        assert!(err.to_string().contains(path), "{err}");
    }
    // An object store without credentials only when the operator may use its own identity.
    let own = OperatorConfig {
        object_store_operator_identity: true,
        ..cfg()
    };
    let no_creds = job_with("checkpoint: {store: {objectStore: {url: 's3://bucket/weir'}}}");
    assert!(desired(&no_creds, &found(3), &own).is_ok());
    let mut j = job();
    j.metadata.uid = None;
    let err = run(&j, &found(3)).expect_err("no uid");
    assert_eq!(err.errors[0].path, "metadata.uid");
    let mut j = job();
    j.metadata.name = Some("n".repeat(245));
    let err = run(&j, &found(3)).expect_err("too long for checkpoint names");
    assert_eq!(err.errors[0].path, "metadata.name");
}

/// Groups that span partitions: the second stage's repartition partitions are assigned to the
/// same workers, its checkpoint ConfigMaps exist and are the workers' to update, and a change
/// of the second stage alone takes a new epoch.
#[test]
fn a_two_stage_job_assigns_the_repartition_topic_and_its_checkpoints() {
    let j = job_with("  groupBy: [merchant]");
    let d = ok(&j, &found(3));
    let a = assignment_in_config_map(&d);
    let merge = a.merge.clone().expect("a second stage");
    assert_eq!(merge.topic, "weir.shop.payments.repartition");
    assert_eq!(merge.sources, 3);
    assert_eq!(
        merge.workers, a.workers,
        "repartition partitions spread like the source"
    );
    let w = d.workers.as_ref().expect("workers");
    let created: Vec<&str> = w
        .checkpoint_config_maps
        .iter()
        .filter_map(|c| c.metadata.name.as_deref())
        .collect();
    let rules = d.role.rules.as_deref().unwrap_or_default();
    let verbs = |name: &str| -> Vec<String> {
        rules
            .iter()
            .filter(|r| {
                r.resource_names
                    .as_ref()
                    .is_some_and(|n| n.iter().any(|x| x == name))
            })
            .flat_map(|r| r.verbs.clone())
            .collect()
    };
    for name in [
        "payments-checkpoint-2",
        "payments-checkpoint-merge-0",
        "payments-checkpoint-merge-2",
    ] {
        assert!(created.contains(&name), "{name} not created: {created:?}");
        assert_eq!(verbs(name), ["get", "update"], "{name}");
    }
    // The merge stage's names before this version: read to resume from, never created nor
    // written (the job `payments-merge` may have the same names for its stage 1).
    for legacy in ["payments-merge-checkpoint-0", "payments-merge-checkpoint-2"] {
        assert!(!created.contains(&legacy), "{legacy} created: {created:?}");
        assert_eq!(verbs(legacy), ["get"], "{legacy}");
    }
    // Unchanged: same epoch. More repartition partitions while the topic does not exist yet:
    // a new assignment, a new epoch, and the topic to create has 6.
    let again = ok(&j, &after(&d, 3));
    assert_eq!(assignment_in_config_map(&again), a);
    let wider = job_with("  groupBy: [merchant]\n  repartition: {partitions: 6}");
    let mut missing = after(&d, 3);
    missing.repartition = Some(TopicObservation::NotFound);
    let changed = ok(&wider, &missing);
    let b = assignment_in_config_map(&changed);
    let merge_partitions = |a: &weir_crds::assignment::Assignment| {
        a.merge.as_ref().map(|m| m.workers.iter().flatten().count())
    };
    assert_eq!(merge_partitions(&b), Some(6));
    assert!(b.epoch > a.epoch, "{} then {}", a.epoch, b.epoch);
    let create = changed
        .workers
        .as_ref()
        .and_then(|w| w.repartition_topic.clone());
    assert_eq!(
        create.map(|t| (t.name, t.partitions)),
        Some((merge.topic.clone(), 6))
    );
    // Once the topic exists, its count is the one used, whatever the spec says: no new epoch,
    // nothing to create.
    let mut exists = after(&d, 3);
    exists.repartition = Some(TopicObservation::Found {
        partitions: 3,
        retention_ms: None,
    });
    let kept = ok(&wider, &exists);
    assert_eq!(assignment_in_config_map(&kept), a);
    assert_eq!(
        kept.workers
            .as_ref()
            .and_then(|w| w.repartition_topic.clone()),
        None
    );
    // Kafka unreachable for the topic alone: the running workers' count.
    let mut unknown = after(&d, 3);
    unknown.repartition = Some(TopicObservation::BrokerUnreachable {
        detail: "timed out".to_string(),
    });
    let kept = ok(&wider, &unknown);
    assert_eq!(merge_partitions(&assignment_in_config_map(&kept)), Some(3));
    assert_eq!(
        kept.workers
            .as_ref()
            .and_then(|w| w.repartition_topic.clone()),
        None
    );
    // A name too long for a Kafka topic (249 characters) gets a shortened topic name with a
    // hash (weir_crds::topics), not an invalid spec.
    let mut long = job_with("  groupBy: [merchant]");
    long.metadata.name = Some("n".repeat(230));
    let topic = assignment_in_config_map(&ok(&long, &found(3)))
        .merge
        .expect("a second stage")
        .topic;
    assert!(topic.len() <= 249 && topic.contains("-H"), "{topic}");
    // Co-partitioned (the key alone): one stage.
    let one = ok(&job(), &found(3));
    assert_eq!(assignment_in_config_map(&one).merge, None);
}

/// A repartition topic that exists and that nothing of the job's claims (neither its own
/// assignment nor its checkpoints) is another's: no job ConfigMap naming it, no StatefulSet
/// reading it, nothing to create. Claimed by the job's assignment, the same topic is used.
#[test]
fn a_repartition_topic_nothing_of_the_job_claims_is_not_used() {
    let j = job_with("  groupBy: [merchant]");
    let mut obs = found(3);
    obs.repartition_topic = Some(repartition_topic_in_use(Some("shop"), "payments", None, []));
    obs.repartition = Some(TopicObservation::Found {
        partitions: 3,
        retention_ms: None,
    });
    assert_eq!(
        obs.repartition_conflict(),
        Some("weir.shop.payments.repartition")
    );
    let d = ok(&j, &obs);
    assert!(d.workers.is_none());
    assert!(!d
        .apply_order()
        .iter()
        .any(|c| matches!(c, Child::ConfigMap(_) | Child::StatefulSet(_))));
    assert!(!d
        .resources()
        .iter()
        .any(|r| matches!(r, DesiredResource::Topic(_))));

    let assigned = Some("weir.shop.payments.repartition");
    obs.repartition_topic = Some(repartition_topic_in_use(
        Some("shop"),
        "payments",
        assigned,
        [],
    ));
    assert_eq!(obs.repartition_conflict(), None);
    let merge = assignment_in_config_map(&ok(&j, &obs))
        .merge
        .expect("two stages");
    assert_eq!(merge.topic, "weir.shop.payments.repartition");
}

/// The job ConfigMap, whose assignment names the repartition topic and so claims it, is
/// applied before the topic is created; the workers after both.
#[test]
fn the_job_config_map_claims_a_new_topic_before_it_is_created() {
    let j = job_with("  groupBy: [merchant]");
    let mut obs = found(3);
    obs.repartition_topic = Some(repartition_topic_in_use(Some("shop"), "payments", None, []));
    obs.repartition = Some(TopicObservation::NotFound);
    let d = ok(&j, &obs);
    let order: Vec<&str> = d
        .resources()
        .iter()
        .filter_map(|r| match r {
            DesiredResource::Apply(Child::ConfigMap(_)) => Some("job ConfigMap"),
            DesiredResource::Topic(_) => Some("topic"),
            DesiredResource::Apply(Child::StatefulSet(_)) => Some("workers"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["job ConfigMap", "topic", "workers"]);
}
