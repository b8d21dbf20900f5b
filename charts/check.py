#!/usr/bin/env python3
"""CI check of charts/weir, offline (.ci/run calls it; `python3 charts/check.py` by hand).

1. Chart.yaml's version and appVersion are the workspace crate version.
2. charts/weir/crds/streamjob.yaml is byte-identical to crds/streamjob.yaml (crdgen --check
   compares both with the CRD generated from the types).
3. `helm lint --strict` (Helm's Go SDK through PyPI helm-python-sdk) with every value set
   below, for Kubernetes 1.29 and 1.32.
4. Renders every value set and validates every manifest (and the CRD) with
   kubernetes-validate --strict for Kubernetes 1.29 and 1.32. The ServiceMonitor, PodMonitor
   and PrometheusRule are Prometheus Operator CRDs that kubernetes-validate has no schema for:
   they are skipped, with a note, and checked only by the assertions of step 5. Any other kind
   without a schema fails.
5. What each value set must produce (watch-namespace env and Roles, leader election, ...).
   The PrometheusRule's groups pass `promtool check rules` (rule syntax, PromQL, annotation
   templates) and, with the default thresholds, `promtool test rules` with
   charts/tests/alerts.yaml (each alert fires on the series it is for, and only on those); the
   Grafana dashboard parses and every panel queries the data source variable.
   operator/tests/observability.rs checks that every metric the alerts and the dashboard use
   is exposed by the worker's or the operator's registry.
6. Values the schema must refuse, each refused with a message naming the key.
7. The StreamJob in NOTES.txt is valid against the CRD's schema.
8. docs/install.md: every YAML example parses, every values example renders, and its Argo CD
   health check (Lua) gives the expected health for sample StreamJob statuses, run in Lua 5.1
   as Argo CD's gopher-lua.

The RBAC rules themselves are checked against operator/src/rbac.rs by operator/tests/chart.rs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render as r  # noqa: E402  (charts/render.py, beside this file)

try:
    import jsonschema
    import kubernetes_validate.utils as kv
    import lupa.lua51 as lua51
except ImportError as e:
    sys.exit(f"charts/check.py needs the PyPI packages kubernetes-validate and lupa: run scripts/deps ({e})")

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "weir"
KUBE_VERSIONS = ["1.29", "1.32"]
NS = "weir-system"
# Kinds that kubernetes-validate has no schema for, and why that is acceptable.
NO_SCHEMA = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "a Prometheus Operator CRD, unknown to kubernetes-validate",
    ("monitoring.coreos.com/v1", "PodMonitor"): "a Prometheus Operator CRD, unknown to kubernetes-validate",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "a Prometheus Operator CRD, unknown to kubernetes-validate",
}
# The alerts of templates/prometheusrule.yaml, by group, all on with the default values.
ALERTS = {
    "weir-streamjobs": [
        "WeirJobNotReady",
        "WeirJobLagGrowing",
        "WeirJobDeadLettersHigh",
        "WeirJobStateFull",
        "WeirJobDeadLetterWritesFailing",
        "WeirJobCheckpointsFailing",
        "WeirJobCheckpointStale",
        "WeirJobPartitionsFailing",
    ],
    "weir-operator": ["WeirOperatorReconcileFailing"],
}
# What the operator puts on worker pods (operator/src/names.rs `labels`, desired.rs
# METRICS_PORT_NAME); operator/tests/observability.rs checks the chart against the code.
WORKER_POD_LABELS = {
    "app.kubernetes.io/name": "weir-worker",
    "app.kubernetes.io/component": "worker",
    "app.kubernetes.io/managed-by": "weir-operator",
}
DASHBOARD_KEY = "weir-streamjobs.json"

Objs = list[dict[str, Any]]


def find(objs: Objs, kind: str, name: str | None = None, namespace: str | None = None) -> Objs:
    return [
        o
        for o in objs
        if o["kind"] == kind
        and (name is None or o["metadata"]["name"] == name)
        and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]


def one(objs: Objs, kind: str, name: str | None = None, namespace: str | None = None) -> dict[str, Any]:
    found = find(objs, kind, name, namespace)
    assert len(found) == 1, f"expected one {kind} {name or ''} {namespace or ''}, found {len(found)}"
    return found[0]


def container(objs: Objs) -> dict[str, Any]:
    return one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def env(objs: Objs) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(objs)["env"]}


def expect_common(objs: Objs) -> None:
    dep = one(objs, "Deployment", "weir", NS)
    pod = dep["spec"]["template"]["spec"]
    c = container(objs)
    psc, csc = pod["securityContext"], c["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"]["type"] == "RuntimeDefault", psc
    assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"]["drop"] == ["ALL"], csc
    assert csc["readOnlyRootFilesystem"] is True, csc
    for probe in ("livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz" and get["port"] == "http", (probe, get)
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in c["ports"], c["ports"]
    e = env(objs)
    assert e["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}, e
    assert e["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}, e
    assert pod["serviceAccountName"] == one(objs, "ServiceAccount", namespace=NS)["metadata"]["name"]
    labels = dep["spec"]["selector"]["matchLabels"]
    assert labels["app.kubernetes.io/name"] != "weir-worker", "must never select worker pods"


def expect_defaults(objs: Objs) -> None:
    expect_common(objs)
    assert one(objs, "Deployment")["spec"]["replicas"] == 1
    e = env(objs)
    assert "WEIR_WATCH_NAMESPACE" not in e, "defaults watch every namespace"
    assert e["WEIR_LEADER_ELECTION"] == "true", e
    one(objs, "ClusterRole", "weir")
    crb = one(objs, "ClusterRoleBinding", "weir")
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": "weir", "namespace": NS}], crb
    one(objs, "Role", "weir-leader-election", NS)
    assert not find(objs, "ServiceMonitor") and not find(objs, "NetworkPolicy")
    assert not find(objs, "PodMonitor") and not find(objs, "PrometheusRule"), "need the Prometheus Operator"
    assert not find(objs, "ConfigMap"), "no dashboard by default"
    assert container(objs)["image"] == "ghcr.io/weir-dev/weir:" + chart_meta()["appVersion"]
    assert e["WEIR_WORKER_IMAGE"] == container(objs)["image"], "workers default to the operator's image"


def expect_two_namespaces(objs: Objs) -> None:
    expect_common(objs)
    assert env(objs)["WEIR_WATCH_NAMESPACE"] == "team-a,team-b", env(objs)
    assert not find(objs, "ClusterRole") and not find(objs, "ClusterRoleBinding"), "no cluster-wide grant"
    for ns in ("team-a", "team-b"):
        one(objs, "Role", "weir", ns)
        rb = one(objs, "RoleBinding", "weir", ns)
        assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "weir"}
        assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "weir", "namespace": NS}], rb
    one(objs, "Role", "weir-leader-election", NS)


def expect_service_monitor(objs: Objs) -> None:
    expect_common(objs)
    sm = one(objs, "ServiceMonitor", "weir", NS)
    svc = one(objs, "Service", "weir-metrics", NS)
    labels = svc["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()), (sm, labels)
    assert sm["spec"]["endpoints"][0]["port"] in [p["name"] for p in svc["spec"]["ports"]]
    assert sm["metadata"]["labels"]["release"] == "prometheus", "serviceMonitor.labels applied"


def expect_replicas_2(objs: Objs) -> None:
    expect_common(objs)
    dep = one(objs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    assert "strategy" not in dep["spec"], "rolling update: leader election keeps one reconciler"
    assert env(objs)["WEIR_LEADER_ELECTION"] == "true"
    role = one(objs, "Role", "weir-leader-election", NS)
    assert role["rules"][0]["resources"] == ["leases"]


def expect_everything(objs: Objs) -> None:
    expect_common(objs)
    dep = one(objs, "Deployment", "weir", NS)
    assert dep["spec"]["strategy"] == {"type": "Recreate"}, "one replica without a Lease: no overlap"
    assert env(objs)["WEIR_LEADER_ELECTION"] == "false"
    assert not find(objs, "Role", "weir-leader-election"), "no Lease permission without election"
    c = container(objs)
    assert c["image"] == "registry.example/weir:dev@sha256:" + "a" * 64, c["image"]
    assert env(objs)["WEIR_WORKER_IMAGE"] == "registry.example/weir-worker:dev"
    np = one(objs, "NetworkPolicy", "weir", NS)
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"], np
    assert np["spec"]["ingress"][0]["from"] == [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]


def promtool() -> str:
    found = os.environ.get("WEIR_PROMTOOL") or shutil.which("promtool")
    assert found, "promtool not found (scripts/deps installs Debian's prometheus package; or set WEIR_PROMTOOL)"
    return found


def run_promtool(*args: str, cwd: Path) -> str:
    out = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True)
    text = (out.stdout + out.stderr).strip()
    assert out.returncode == 0, f"promtool {' '.join(args)} failed:\n{text}"
    return text


def check_rules(rule: dict[str, Any], unit_tests: bool) -> None:
    """`promtool check rules` on the PrometheusRule's groups; with `unit_tests`, also
    `promtool test rules` with charts/tests/alerts.yaml on the same groups without annotations."""
    import yaml

    groups = rule["spec"]["groups"]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        out = run_promtool("check", "rules", "rules.yaml", cwd=d)
        print(f"ok   promtool check rules: {' '.join(out.split())}")
        if unit_tests:
            bare = json.loads(json.dumps(groups))
            for g in bare:
                for r_ in g["rules"]:
                    r_.pop("annotations", None)
            (d / "rules.yaml").write_text(yaml.safe_dump({"groups": bare}, sort_keys=False))
            tests = yaml.safe_load((ROOT / "charts" / "tests" / "alerts.yaml").read_text())
            tested = {a["alertname"] for t in tests["tests"] for a in t["alert_rule_test"] if a["exp_alerts"]}
            untested = {r_["alert"] for g in groups for r_ in g["rules"]} - tested
            assert not untested, f"charts/tests/alerts.yaml never sees these alerts fire: {sorted(untested)}"
            shutil.copy(ROOT / "charts" / "tests" / "alerts.yaml", d / "alerts.yaml")
            out = run_promtool("test", "rules", "alerts.yaml", cwd=d)
            print(f"ok   promtool test rules charts/tests/alerts.yaml: {' '.join(out.split())}")


def alerts(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r_["alert"]: r_ for g in rule["spec"]["groups"] for r_ in g["rules"]}


def expect_pod_monitor(objs: Objs, namespaces: list[str] | None) -> dict[str, Any]:
    pm = one(objs, "PodMonitor", "weir-workers", NS)
    assert pm["spec"]["selector"] == {"matchLabels": WORKER_POD_LABELS}, pm["spec"]["selector"]
    if namespaces:
        assert pm["spec"]["namespaceSelector"] == {"matchNames": namespaces}, pm["spec"]
    else:
        assert pm["spec"]["namespaceSelector"] == {"any": True}, pm["spec"]
    [ep] = pm["spec"]["podMetricsEndpoints"]
    assert ep["port"] == "metrics" and ep["path"] == "/metrics", ep
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_weir_dev_job"], "targetLabel": "streamjob"} in ep[
        "relabelings"
    ], ep
    return pm


def expect_rule_shape(rule: dict[str, Any]) -> None:
    names = [g["name"] for g in rule["spec"]["groups"]]
    assert names == [g for g in ALERTS if g in names], names
    for name, a in alerts(rule).items():
        assert a["expr"].strip() and a["for"], (name, a)
        assert a["labels"]["severity"], (name, a)
        ann = a["annotations"]
        assert ann["summary"] and len(ann["description"]) > 150, f"{name}: a description a person can act on"
        if name.startswith("WeirJob"):
            assert 'streamjob!=""' in a["expr"] and "streamjob" in ann["summary"], (name, a)


def expect_dashboard(objs: Objs, namespace: str, label: str = "1") -> dict[str, Any]:
    cm = one(objs, "ConfigMap", "weir-dashboard", namespace)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == label, cm["metadata"]
    dash = json.loads(cm["data"][DASHBOARD_KEY])
    assert dash["uid"] == "weir-streamjobs" and dash["title"], dash.get("uid")
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "streamjob"} <= set(variables), variables
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    titles = {p["title"] for p in panels}
    for want in ("Input", "Lag", "Watermark delay", "Results", "Rejected by reason", "Checkpoint age", "Workers"):
        assert want in titles, f"the dashboard has a {want} panel: {titles}"
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        for t in p["targets"]:
            if "weir_operator_" not in t["expr"]:
                assert '$namespace' in t["expr"] and "$streamjob" in t["expr"], (p["title"], t["expr"])
    return dash


def expect_observability(objs: Objs) -> None:
    expect_common(objs)
    expect_pod_monitor(objs, None)
    rule = one(objs, "PrometheusRule", "weir", NS)
    expect_rule_shape(rule)
    assert {g: [r_["alert"] for r_ in rs] for g, rs in
            ((g["name"], g["rules"]) for g in rule["spec"]["groups"])} == ALERTS
    a = alerts(rule)
    assert "> 1\n" in a["WeirJobDeadLettersHigh"]["expr"] + "\n", a["WeirJobDeadLettersHigh"]["expr"]
    assert "> 3 * 10" in a["WeirJobCheckpointStale"]["expr"], a["WeirJobCheckpointStale"]["expr"]
    assert a["WeirJobNotReady"]["for"] == "5m" and a["WeirJobLagGrowing"]["for"] == "10m"
    assert all("runbook_url" not in x["annotations"] for x in a.values())
    check_rules(rule, unit_tests=True)
    expect_dashboard(objs, NS)
    one(objs, "ServiceMonitor", "weir", NS)


def expect_observability_tuned(objs: Objs) -> None:
    expect_common(objs)
    pm = expect_pod_monitor(objs, ["team-a", "team-b"])
    assert pm["metadata"]["labels"]["release"] == "prometheus", pm["metadata"]
    assert pm["spec"]["podMetricsEndpoints"][0]["interval"] == "15s"
    rule = one(objs, "PrometheusRule", "weir", NS)
    expect_rule_shape(rule)
    assert rule["metadata"]["labels"]["release"] == "prometheus", rule["metadata"]
    a = alerts(rule)
    assert "WeirJobNotReady" not in a and "WeirOperatorReconcileFailing" not in a, list(a)
    assert [g["name"] for g in rule["spec"]["groups"]] == ["weir-streamjobs"], "no group without rules"
    assert "> 5" in a["WeirJobDeadLettersHigh"]["expr"], a["WeirJobDeadLettersHigh"]["expr"]
    assert "> 4 * 60" in a["WeirJobCheckpointStale"]["expr"], a["WeirJobCheckpointStale"]["expr"]
    assert "> 50000" in a["WeirJobLagGrowing"]["expr"] and a["WeirJobLagGrowing"]["for"] == "30m"
    assert a["WeirJobLagGrowing"]["labels"] == {"severity": "critical", "team": "data"}
    for name, x in a.items():
        assert x["labels"]["team"] == "data", x
        assert x["annotations"]["runbook_url"] == "https://wiki.example/weir#" + name.lower(), x
    check_rules(rule, unit_tests=False)
    dash = one(objs, "ConfigMap", "weir-dashboard", "monitoring")
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "yes", dash["metadata"]
    assert dash["metadata"]["annotations"] == {"grafana_folder": "Streaming"}, dash["metadata"]
    expect_dashboard(objs, "monitoring", label="yes")


# (name, values, expectations) rendered, linted and validated.
VALUE_SETS: list[tuple[str, dict[str, Any], Callable[[Objs], None]]] = [
    ("defaults", {}, expect_defaults),
    ("two watch namespaces", {"watchNamespaces": ["team-a", "team-b"]}, expect_two_namespaces),
    (
        "ServiceMonitor on",
        {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}}},
        expect_service_monitor,
    ),
    ("replicas 2", {"replicaCount": 2}, expect_replicas_2),
    (
        "observability on",
        {
            "metrics": {
                "serviceMonitor": {"enabled": True},
                "workerPodMonitor": {"enabled": True},
                "prometheusRule": {"enabled": True},
                "grafanaDashboard": {"enabled": True},
            }
        },
        expect_observability,
    ),
    (
        "observability tuned",
        {
            "watchNamespaces": ["team-a", "team-b"],
            "metrics": {
                "workerPodMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prometheus"}},
                "prometheusRule": {
                    "enabled": True,
                    "labels": {"release": "prometheus"},
                    "alertLabels": {"team": "data"},
                    "runbookBaseUrl": "https://wiki.example/weir",
                    "jobNotReady": {"enabled": False},
                    "lagGrowing": {"for": "30m", "minRecords": 50000, "severity": "critical"},
                    "deadLetters": {"perSecond": 5},
                    "checkpointStale": {"intervalSeconds": 60, "intervals": 4},
                    "operatorReconcileFailures": {"enabled": False},
                },
                "grafanaDashboard": {
                    "enabled": True,
                    "namespace": "monitoring",
                    "labels": {"grafana_dashboard": "yes"},
                    "annotations": {"grafana_folder": "Streaming"},
                },
            },
        },
        expect_observability_tuned,
    ),
    (
        "everything else",
        {
            "leaderElection": {"enabled": False},
            "image": {"repository": "registry.example/weir", "tag": "dev", "digest": "sha256:" + "a" * 64},
            "workerImage": "registry.example/weir-worker:dev",
            "imagePullSecrets": [{"name": "regcred"}],
            "logFormat": "text",
            "logLevel": "weir_operator=debug,info",
            "serviceAccount": {"annotations": {"example.com/role": "weir"}},
            "podAnnotations": {"example.com/a": "b"},
            "podLabels": {"team": "data"},
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "weir", "effect": "NoSchedule"}],
            "priorityClassName": "system-cluster-critical",
            "metrics": {"service": {"enabled": False}},
            "networkPolicy": {
                "enabled": True,
                "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
                "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}],
            },
        },
        expect_everything,
    ),
]

# Values the schema must refuse, with the key its message must name.
BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"replicaCount": "two"}, "replicaCount"),
    ({"replicaCount": -1}, "replicaCount"),
    ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "leaderElection"),
    ({"replicas": 2}, "replicas"),
    ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"image": {"digest": "latest"}}, "digest"),
    ({"watchNamespaces": "team-a"}, "watchNamespaces"),
    ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
    ({"logFormat": "xml"}, "logFormat"),
    ({"leaderElection": {"enabled": "yes"}}, "enabled"),
    ({"resources": {"limits": {"memory": "lots"}}}, "memory"),
    ({"metrics": {"serviceMonitor": {"enabled": True, "interval": "often"}}}, "interval"),
    ({"networkPolicy": {"enabled": True, "metricsFrom": "prometheus"}}, "metricsFrom"),
    ({"metrics": {"workerPodMonitor": {"enabled": "true"}}}, "enabled"),
    ({"metrics": {"workerPodMonitor": {"enabled": True, "interval": "often"}}}, "interval"),
    ({"metrics": {"workerPodMonitor": {"enabled": True, "port": "http"}}}, "port"),
    ({"metrics": {"prometheusRule": {"enabled": True, "lagGrowing": {"for": "ten minutes"}}}}, "for"),
    ({"metrics": {"prometheusRule": {"enabled": True, "lagGrowing": {"for": "1.5m"}}}}, "for"),
    ({"metrics": {"prometheusRule": {"enabled": True, "lagGrowing": {"minRecords": -1}}}}, "minRecords"),
    ({"metrics": {"prometheusRule": {"enabled": True, "deadLetters": {"perSecond": 0}}}}, "perSecond"),
    ({"metrics": {"prometheusRule": {"enabled": True, "deadLetters": {"perSecond": "1"}}}}, "perSecond"),
    ({"metrics": {"prometheusRule": {"enabled": True, "checkpointStale": {"intervals": 0}}}}, "intervals"),
    ({"metrics": {"prometheusRule": {"enabled": True, "checkpointStale": {"intervalSeconds": "10s"}}}}, "intervalSeconds"),
    ({"metrics": {"prometheusRule": {"enabled": True, "jobNotReady": {"severity": "very high"}}}}, "severity"),
    ({"metrics": {"prometheusRule": {"enabled": True, "alertLabels": {"team-name": "data"}}}}, "team-name"),
    ({"metrics": {"prometheusRule": {"enabled": True, "runbookBaseUrl": "docs/install.md"}}}, "runbookBaseUrl"),
    ({"metrics": {"prometheusRule": {"enabled": True, "lagGrowng": {"for": "5m"}}}}, "lagGrowng"),
    ({"metrics": {"grafanaDashboard": {"enabled": True, "namespace": "Monitoring"}}}, "namespace"),
    ({"metrics": {"grafanaDashboard": {"enabled": True, "labels": {"grafana_dashboard": 1}}}}, "grafana_dashboard"),
]


def chart_meta() -> dict[str, Any]:
    import yaml

    return yaml.safe_load((CHART / "Chart.yaml").read_text())


def check_versions() -> None:
    crate = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    meta = chart_meta()
    for key in ("version", "appVersion"):
        assert meta[key] == crate, f"Chart.yaml {key} {meta[key]!r} != crate version {crate!r}"
    print(f"ok   Chart.yaml version and appVersion = crate version {crate}")


def check_crd_copy() -> None:
    generated = (ROOT / "crds" / "streamjob.yaml").read_bytes()
    chart_copy = (CHART / "crds" / "streamjob.yaml").read_bytes()
    assert chart_copy == generated, (
        "charts/weir/crds/streamjob.yaml differs from crds/streamjob.yaml: "
        "run `cargo run -p weir-crds --bin crdgen` (it writes both)"
    )
    assert [p.name for p in (CHART / "crds").iterdir()] == ["streamjob.yaml"], "one CRD file only"
    print("ok   charts/weir/crds/streamjob.yaml = crds/streamjob.yaml (byte-identical)")


def lint(name: str, values: dict[str, Any]) -> None:
    for version in KUBE_VERSIONS:
        report = r.helm.lint(CHART, values, strict=True, namespace=NS, kube_version=f"v{version}.0")
        # Severity 1 is info ("icon is recommended"); warnings and errors fail under --strict.
        bad = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not bad, f"helm lint ({name}, {version}): {bad}"


def validate(name: str, objs: list[tuple[str, dict[str, Any]]]) -> tuple[int, int]:
    validated = skipped = 0
    for source, obj in objs:
        key = (obj["apiVersion"], obj["kind"])
        for version in KUBE_VERSIONS:
            try:
                kv.validate(obj, version, strict=True)
                validated += 1
            except kv.SchemaNotFoundError as e:
                if key not in NO_SCHEMA:
                    raise AssertionError(f"{name}: {source}: {e.message}") from None
                print(f"note {name}: {obj['kind']} {obj['metadata']['name']} not validated "
                      f"for {version}: {NO_SCHEMA[key]}")
                skipped += 1
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                raise AssertionError(
                    f"{name}: {source}: {obj['kind']} {obj['metadata']['name']} invalid for "
                    f"Kubernetes {version}: {path}: {e.message}"
                ) from None
    return validated, skipped


def check_notes_streamjob(notes: str) -> None:
    import yaml

    lines = notes.splitlines()
    start = next(i for i, line in enumerate(lines) if line.rstrip().endswith("<<'YAML'"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == "YAML")
    job = yaml.safe_load("\n".join(line[2:] for line in lines[start + 1 : end]))
    crd = yaml.safe_load((CHART / "crds" / "streamjob.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == job["apiVersion"].split("/")[1])
    # The structural schema is OpenAPI v3, close enough to JSON Schema for the fields used here
    # (the CEL rules are checked by crds/tests/api.rs, not here).
    jsonschema.validate(job, version["schema"]["openAPIV3Schema"])
    assert job["kind"] == crd["spec"]["names"]["kind"]
    print("ok   the StreamJob in NOTES.txt is valid against the CRD's schema")


def cond(kind: str, status: str, reason: str, message: str = "") -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


def job(conditions: list[dict[str, str]] | None, generation: int = 1, observed: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": "j", "generation": generation}}
    if conditions is not None:
        obj["status"] = {"observedGeneration": observed, "conditions": conditions}
    return obj


# (StreamJob, Argo CD health status, text the message must hold).
HEALTH_CASES: list[tuple[dict[str, Any], str, str]] = [
    (job(None), "Progressing", "Waiting"),
    (job([cond("Ready", "True", "Running")], generation=2, observed=1), "Progressing", "generation 2"),
    (
        job([cond("Ready", "True", "Running", "3 of 3 workers ready"), cond("Progressing", "False", "UpToDate"),
             cond("Degraded", "False", "Healthy")]),
        "Healthy", "3 of 3",
    ),
    (
        job([cond("Ready", "False", "WorkersNotReady", "1 of 3 ready"), cond("Progressing", "True", "RollingOut", "rolling"),
             cond("Degraded", "False", "Healthy")]),
        "Progressing", "RollingOut",
    ),
    (
        job([cond("Ready", "False", "InvalidSpec", "spec.window.size: must be positive"),
             cond("Progressing", "False", "InvalidSpec"), cond("Degraded", "True", "InvalidSpec", "spec.window.size: must be positive")]),
        "Degraded", "spec.window.size",
    ),
    (
        job([cond("Ready", "True", "Running"), cond("Progressing", "False", "UpToDate"),
             cond("Degraded", "True", "RetentionShorterThanWindow", "retention 1h < window")]),
        "Degraded", "RetentionShorterThanWindow",
    ),
    (
        job([cond("Ready", "False", "TopicNotFound", "no topic payments"), cond("Progressing", "False", "TopicNotFound")]),
        "Degraded", "no topic payments",
    ),
    (
        job([cond("Ready", "False", "Suspended"), cond("Progressing", "True", "Suspending", "2 worker pods stopping"),
             cond("Degraded", "False", "Healthy"), cond("Suspended", "True", "Suspended")]),
        "Progressing", "2 worker pods stopping",
    ),
    (
        job([cond("Ready", "False", "Suspended"), cond("Progressing", "False", "Suspended"),
             cond("Degraded", "False", "Healthy"), cond("Suspended", "True", "Suspended", "spec.suspend is true")]),
        "Suspended", "spec.suspend is true",
    ),
]


def check_install_docs() -> None:
    import yaml

    docs = (ROOT / "docs" / "install.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", docs, re.S)
    docs_objs = [d for b in blocks for d in yaml.safe_load_all(b) if d]
    cm = next(d for d in docs_objs if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == "argocd-cm")
    script = cm["data"]["resource.customizations.health.weir.dev_StreamJob"]
    lua = lua51.LuaRuntime()
    health = lua.execute("return function(obj)\n" + script + "\nend")
    for obj, want, text in HEALTH_CASES:
        hs = health(lua.table_from(obj, recursive=True))
        got = {"status": hs["status"], "message": hs["message"] or ""}
        assert got["status"] == want and text in got["message"], (
            f"Argo CD health of {json.dumps(obj.get('status'))}: {got}, want {want} with {text!r}"
        )
    # Values files (no `kind`): accepted by the schema, and they render.
    values_examples = [d for d in docs_objs if "kind" not in d]
    assert values_examples, "docs/install.md has a values example"
    for values in values_examples:
        r.render(values, namespace=NS)
    print(f"ok   docs/install.md: {len(docs_objs)} YAML examples parse ({len(values_examples)} values "
          f"files render); the Argo CD health check gives the expected health for "
          f"{len(HEALTH_CASES)} StreamJob statuses")


def main() -> int:
    check_versions()
    check_crd_copy()
    total_validated = total_skipped = 0
    notes = ""
    for name, values, expect in VALUE_SETS:
        lint(name, values)
        rendered = r.render(values, namespace=NS, include_crds=True)
        objs = r.objects(rendered)
        validated, skipped = validate(name, objs)
        expect([o for _, o in objs])
        total_validated += validated
        total_skipped += skipped
        notes = notes or r.notes(rendered)
        kinds = sorted({o["kind"] for _, o in objs})
        note = f", {skipped // len(KUBE_VERSIONS)} without a schema" if skipped else ""
        print(f"ok   {name}: lint clean; {len(objs)} manifests{note}, valid for Kubernetes "
              f"{' and '.join(KUBE_VERSIONS)} ({', '.join(kinds)})")
    check_notes_streamjob(notes)
    check_install_docs()
    for values, key in BAD_VALUES:
        try:
            r.render(values, namespace=NS)
        except r.helm.HelmValuesError as e:
            assert key in str(e), f"{json.dumps(values)} refused, but the message does not name {key}: {e}"
            continue
        raise AssertionError(f"the schema accepted bad values {json.dumps(values)}")
    print(f"ok   {len(BAD_VALUES)} bad value sets refused by values.schema.json, each naming its key")
    print(f"chart check: {len(VALUE_SETS)} value sets, {total_validated} manifest validations "
          f"passed ({'/'.join(KUBE_VERSIONS)}), {total_skipped} skipped (Prometheus Operator kinds: no schema), "
          f"{len(BAD_VALUES)} bad value sets refused")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as e:
        print(f"FAIL {e}", file=sys.stderr)
        sys.exit(1)
