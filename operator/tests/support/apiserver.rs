//! A stateful fake Kubernetes API server: it keeps what it is sent and answers reads with it,
//! for the part of the API the operator uses. Server-side apply (the object as applied, plus
//! what the API server adds: `uid`, `resourceVersion`, `generation`, `creationTimestamp` and a
//! `managedFields` entry per manager, as large as the applied fields); the `status`
//! subresource; the `scale` subresource of custom resources, mapped through the CRD's
//! `specReplicasPath`, `statusReplicasPath` and `labelSelectorPath` exactly as the API server
//! maps it; creates (409 when the name exists); gets, full or metadata-only
//! (`PartialObjectMetadata`, as `Api::get_metadata` asks), 404 naming the object when missing;
//! lists by equality label selector, paginated
//! with `limit`/`continue` (unless `resourceVersion=0`, which the API server serves whole from
//! its cache), full or metadata-only (`PartialObjectMetadataList`); merge patches with a
//! `resourceVersion` precondition; delete-collection; and a log of watch events with their
//! resource versions: every write that changes an object is one, status writes included (so a
//! reconcile storm shows up). A no-op apply changes nothing and makes no event, as on a real
//! server. A RoleBinding to a missing Role is refused with 404, as the API server's RBAC
//! escalation check refuses it to a writer without the `bind` verb.
//! An instant StatefulSet controller reports every applied StatefulSet as rolled out and ready;
//! its pods exist only after [`FakeApiServer::run_statefulset_controller`].
//!
//! Deletion as the real server does it: a DELETE of one object (background propagation, uid
//! precondition) removes it, or only marks it (`deletionTimestamp`) while finalizers hold it; a
//! pod is never removed at once but terminates for its grace period, until
//! [`FakeApiServer::end_grace_periods`]. The garbage collector then deletes (or, for pods,
//! terminates) every object none of whose owners exists any more — only once the owner is gone,
//! never while it is merely being deleted.
//!
//! It answers [`Call`]s; transport is the caller's: in-process through `api::serve` (the
//! `/scale` wiring test, `tests/scale.rs`) or over HTTP in a separate process (the reconcile
//! benchmark, `benches/reconcile.rs`, which also streams the watch events).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use http::StatusCode;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{json, Map, Value};

use crate::api::{status_body, Call};

// Deletion, the garbage collector and the pods of StatefulSets.
#[path = "apiserver_deletion.rs"]
mod deletion;

/// Time of every write: the fake has no clock, so that repeating a write changes nothing.
pub const TIME: &str = "2026-01-01T00:00:00Z";

/// What a request path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The collection across namespaces: `/api/v1/configmaps`, `/apis/apps/v1/statefulsets`.
    pub collection: String,
    /// `apiVersion` of its objects: `v1`, `apps/v1`.
    pub api_version: String,
    /// The namespace, if the path names one.
    pub namespace: Option<String>,
    /// The object's name, if the path names one.
    pub name: Option<String>,
    /// The subresource (`status`, `scale`), if any.
    pub sub: Option<String>,
}

impl Target {
    /// The resource: `configmaps`, `statefulsets`.
    pub fn resource(&self) -> &str {
        resource_of(&self.collection)
    }
}

/// The last segment of a collection path: its resource.
fn resource_of(collection: &str) -> &str {
    collection.rsplit('/').next().unwrap_or_default()
}

/// Parses `/api/v1[/namespaces/NS]/RES[/NAME[/SUB]]` and the `/apis/GROUP/VERSION/...` form.
pub fn target(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (gv, api_version, rest) = match *parts.first()? {
        "api" => {
            let v = parts.get(1)?;
            (format!("/api/{v}"), v.to_string(), &parts[2..])
        }
        "apis" => {
            let (g, v) = (parts.get(1)?, parts.get(2)?);
            (format!("/apis/{g}/{v}"), format!("{g}/{v}"), &parts[3..])
        }
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let resource = rest.first()?;
    Some(Target {
        collection: format!("{gv}/{resource}"),
        api_version,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    })
}

/// Percent-decodes a query value (`+` is a space).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded value of query parameter `key`.
pub fn query(call: &Call, key: &str) -> Option<String> {
    call.query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| decode(v))
    })
}

/// Whether `labels` match an equality-based selector (`a=b,c!=d`; the only kind the operator
/// sends). Panics on anything else, so that a new kind of selector is noticed.
pub fn selects(selector: &str, labels: &Value) -> bool {
    selector.split(',').filter(|r| !r.is_empty()).all(|req| {
        if let Some((k, v)) = req.split_once("!=") {
            labels[k].as_str() != Some(v)
        } else if let Some((k, v)) = req.split_once('=') {
            labels[k].as_str() == Some(v.trim_start_matches('='))
        } else {
            panic!("the fake API server only knows equality selectors, not {req:?}")
        }
    })
}

/// `managedFields[].fieldsV1` of an applied object, built like the API server's field sets:
/// `f:<field>` for map keys, `k:{"name":...}` for list items keyed by name, `v:<value>` for
/// set items, `i:<index>` otherwise. Its size is what matters here: watch caches hold it.
pub fn fields_v1(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (format!("f:{k}"), fields_v1(v)))
                .collect(),
        ),
        Value::Array(items) => {
            let mut out = Map::new();
            for (i, item) in items.iter().enumerate() {
                let key = match item {
                    Value::Object(o) if o.contains_key("name") => {
                        format!("k:{}", json!({"name": o["name"]}))
                    }
                    Value::Object(o) if o.contains_key("uid") => {
                        format!("k:{}", json!({"uid": o["uid"]}))
                    }
                    Value::Object(_) | Value::Array(_) => format!("i:{i}"),
                    scalar => format!("v:{scalar}"),
                };
                let mut inner = fields_v1(item);
                if let Value::Object(m) = &mut inner {
                    m.insert(".".to_string(), json!({}));
                }
                out.insert(key, inner);
            }
            Value::Object(out)
        }
        _ => json!({}),
    }
}

/// The fields a manager sets with `body`: everything but the identity of the object.
fn applied_fields(body: &Value) -> Value {
    let mut b = body.clone();
    if let Some(m) = b.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("name");
            meta.remove("namespace");
            meta.remove("resourceVersion");
            meta.remove("managedFields");
        }
        if m.get("metadata")
            .is_some_and(|v| v.as_object().is_some_and(Map::is_empty))
        {
            m.remove("metadata");
        }
    }
    fields_v1(&b)
}

/// Sets (replaces) the `managedFields` entry of (manager, operation, subresource).
fn manage(obj: &mut Value, manager: &str, operation: &str, sub: Option<&str>, fields: Value) {
    let mut entry = json!({
        "manager": manager, "operation": operation, "apiVersion": obj["apiVersion"],
        "time": TIME, "fieldsType": "FieldsV1", "fieldsV1": fields,
    });
    if let Some(sub) = sub {
        entry["subresource"] = json!(sub);
    }
    let list = &mut obj["metadata"]["managedFields"];
    if !list.is_array() {
        *list = json!([]);
    }
    let list = list.as_array_mut().expect("an array");
    let same = |e: &Value| {
        e["manager"] == json!(manager)
            && e["operation"] == json!(operation)
            && e.get("subresource").and_then(Value::as_str) == sub
    };
    match list.iter_mut().find(|e| same(e)) {
        Some(e) => *e = entry,
        None => list.push(entry),
    }
}

/// The value at a CRD JSON path such as `.spec.parallelism`.
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.trim_start_matches('.')
        .split('.')
        .try_fold(v, |v, k| v.get(k))
}

fn set_at(v: &mut Value, path: &str, x: Value) {
    let mut cur = v;
    for k in path.trim_start_matches('.').split('.') {
        if !cur.is_object() {
            *cur = json!({});
        }
        cur = &mut cur[k];
    }
    *cur = x;
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// The location a JSON pointer (`/metadata/finalizers/0`) names: its parent and last token.
fn pointer_parent<'a>(
    target: &'a mut Value,
    pointer: &str,
) -> Result<(&'a mut Value, String), String> {
    let tokens: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let (last, parents) = tokens.split_last().ok_or("empty pointer")?;
    let mut cur = target;
    for t in parents {
        cur = match cur {
            Value::Object(m) => m.get_mut(t).ok_or(format!("no {t} in {pointer}"))?,
            Value::Array(a) => {
                let i: usize = t.parse().map_err(|_| format!("bad index {t}"))?;
                a.get_mut(i).ok_or(format!("no index {i} in {pointer}"))?
            }
            _ => return Err(format!("{pointer} goes through a scalar")),
        };
    }
    Ok((cur, last.clone()))
}

/// RFC 6902 JSON patch: `test`, `add`, `remove` and `replace`, the operations kube's finalizer
/// helper sends. An error is what the API server answers 422 for.
fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    for op in ops.as_array().ok_or("a JSON patch is a list")? {
        let path = op["path"].as_str().ok_or("op without path")?;
        let (parent, last) = pointer_parent(target, path)?;
        let kind = op["op"].as_str().unwrap_or_default();
        match (kind, parent) {
            ("test", p) => {
                let here = match p {
                    Value::Object(m) => m.get(&last).cloned(),
                    Value::Array(a) => last.parse::<usize>().ok().and_then(|i| a.get(i).cloned()),
                    _ => None,
                };
                // A missing member tests equal to null, as on the API server (kube's finalizer
                // helper tests `/metadata/finalizers` against null before adding the first).
                if here.as_ref().unwrap_or(&Value::Null) != &op["value"] {
                    return Err(format!("test of {path} failed"));
                }
            }
            ("add" | "replace", Value::Object(m)) => {
                m.insert(last, op["value"].clone());
            }
            ("add", Value::Array(a)) => {
                let i = if last == "-" {
                    a.len()
                } else {
                    last.parse().map_err(|_| "bad index")?
                };
                if i > a.len() {
                    return Err(format!("index {i} out of {path}"));
                }
                a.insert(i, op["value"].clone());
            }
            ("replace", Value::Array(a)) => {
                let i: usize = last.parse().map_err(|_| "bad index")?;
                *a.get_mut(i).ok_or(format!("no {path}"))? = op["value"].clone();
            }
            ("remove", Value::Object(m)) => {
                m.remove(&last).ok_or(format!("no {path}"))?;
            }
            ("remove", Value::Array(a)) => {
                let i: usize = last.parse().map_err(|_| "bad index")?;
                if i >= a.len() {
                    return Err(format!("no {path}"));
                }
                a.remove(i);
            }
            (other, _) => return Err(format!("unsupported op {other:?} on {path}")),
        }
    }
    Ok(())
}

/// The `kind` of the objects of a resource the operator touches.
fn kind_of(collection: &str) -> &'static str {
    match resource_of(collection) {
        "configmaps" => "ConfigMap",
        "secrets" => "Secret",
        "services" => "Service",
        "serviceaccounts" => "ServiceAccount",
        "statefulsets" => "StatefulSet",
        "poddisruptionbudgets" => "PodDisruptionBudget",
        "roles" => "Role",
        "rolebindings" => "RoleBinding",
        "streamjobs" => "StreamJob",
        "pods" => "Pod",
        "leases" => "Lease",
        "events" => "Event",
        other => panic!("the fake API server does not know the resource {other:?}"),
    }
}

/// Whether the API server keeps `metadata.generation` for this kind (bumped on spec changes).
fn has_generation(collection: &str) -> bool {
    ["statefulsets", "poddisruptionbudgets", "streamjobs"]
        .iter()
        .any(|r| collection.ends_with(&format!("/{r}")))
}

/// The scale subresource of a custom resource, from its CRD.
#[derive(Clone, Debug)]
struct ScalePaths {
    spec_replicas: String,
    status_replicas: String,
    selector: Option<String>,
}

/// One watch event, as the log keeps it.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub collection: String,
    pub namespace: String,
    pub type_: &'static str,
    pub object: Value,
}

/// What a watch receives: its collection, namespace, selector and representation.
#[derive(Clone, Debug)]
pub struct WatchFilter {
    pub collection: String,
    pub namespace: Option<String>,
    pub selector: String,
    pub metadata_only: bool,
}

impl WatchFilter {
    fn matches(&self, e: &Event) -> bool {
        e.collection == self.collection
            && self.namespace.as_ref().is_none_or(|ns| *ns == e.namespace)
            && selects(&self.selector, &e.object["metadata"]["labels"])
    }
}

type Key = (String, String, String);

/// The fake API server's state. See the module doc.
#[derive(Default)]
pub struct FakeApiServer {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    uids: u64,
    events: Vec<Arc<Event>>,
    scale: BTreeMap<String, ScalePaths>,
    /// Requests since the last [`FakeApiServer::take_counts`], by kind.
    counts: BTreeMap<String, usize>,
    /// Worker pods that never become ready (an image that cannot be pulled, a crash loop): the
    /// instant StatefulSet controller then reports no ready replica.
    pub pods_not_ready: bool,
}

fn key(t: &Target) -> Key {
    (
        t.collection.clone(),
        t.namespace.clone().unwrap_or_default(),
        t.name.clone().unwrap_or_default(),
    )
}

/// The 404 of a read of the object `t` names, as the API server words it.
fn not_found(t: &Target) -> Value {
    let name = t.name.clone().unwrap_or_default();
    let resource = t.resource();
    let group = t.api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let qualified = if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    };
    let mut body = status_body(404, "NotFound");
    body["message"] = json!(format!("{qualified} \"{name}\" not found"));
    body["details"] = json!({"name": name, "group": group, "kind": resource});
    body
}

fn metadata_only(obj: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
           "metadata": obj["metadata"]})
}

impl FakeApiServer {
    /// An empty API server serving the custom resources of `crds` (their `status` and `scale`
    /// subresources as declared).
    pub fn new(crds: &[CustomResourceDefinition]) -> Self {
        let mut s = FakeApiServer::default();
        for crd in crds {
            for v in &crd.spec.versions {
                let collection = format!(
                    "/apis/{}/{}/{}",
                    crd.spec.group, v.name, crd.spec.names.plural
                );
                if let Some(scale) = v.subresources.as_ref().and_then(|s| s.scale.as_ref()) {
                    s.scale.insert(
                        collection,
                        ScalePaths {
                            spec_replicas: scale.spec_replicas_path.clone(),
                            status_replicas: scale.status_replicas_path.clone(),
                            selector: scale.label_selector_path.clone(),
                        },
                    );
                }
            }
        }
        s
    }

    /// The object at `path` (`/api/v1/namespaces/NS/configmaps/NAME`), if stored.
    pub fn get(&self, path: &str) -> Option<&Value> {
        self.objects.get(&key(&target(path)?))
    }

    /// Every stored object of a collection (`/apis/apps/v1/statefulsets`).
    pub fn all(&self, collection: &str) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|((c, _, _), _)| c == collection)
            .map(|(_, v)| v)
            .collect()
    }

    /// Number of stored objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Requests by kind since the last call.
    pub fn take_counts(&mut self) -> BTreeMap<String, usize> {
        std::mem::take(&mut self.counts)
    }

    /// Stores `obj` at `path` as `kubectl apply` (client-side, the default, and what most
    /// GitOps tools do) creates it: with the `last-applied-configuration` annotation and the
    /// `kubectl-client-side-apply` managedFields entry.
    pub fn create_as_kubectl(&mut self, path: &str, obj: &Value) {
        let t = target(path).expect("an object path");
        let mut o = obj.clone();
        o["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
            json!(format!("{}\n", serde_json::to_string(obj).expect("JSON")));
        let fields = applied_fields(&o);
        manage(&mut o, "kubectl-client-side-apply", "Update", None, fields);
        self.store(&t, None, o);
    }

    /// Stores `obj` at `path` as is (with server metadata added).
    pub fn insert(&mut self, path: &str, obj: Value) {
        let t = target(path).expect("an object path");
        let old = self.objects.get(&key(&t)).cloned();
        self.store(&t, old, obj);
    }

    /// Writes `new` in place of `old`: server-owned metadata, the instant StatefulSet
    /// controller, then — only if something changed — a new resourceVersion and a watch event.
    fn store(&mut self, t: &Target, old: Option<Value>, mut new: Value) -> Value {
        let ns = t.namespace.clone().unwrap_or_default();
        let name = t.name.clone().unwrap_or_default();
        new["apiVersion"] = json!(t.api_version);
        new["kind"] = json!(kind_of(&t.collection));
        new["metadata"]["name"] = json!(name);
        if t.namespace.is_some() {
            new["metadata"]["namespace"] = json!(ns);
        }
        let old_meta = old.as_ref().map(|o| o["metadata"].clone());
        let uid = match old_meta.as_ref().map(|m| m["uid"].clone()) {
            Some(Value::String(u)) => u,
            _ => {
                self.uids += 1;
                format!("00000000-0000-4000-8000-{:012x}", self.uids)
            }
        };
        new["metadata"]["uid"] = json!(uid);
        new["metadata"]["creationTimestamp"] = json!(TIME);
        new["metadata"]["resourceVersion"] = old_meta
            .as_ref()
            .map_or(Value::Null, |m| m["resourceVersion"].clone());
        if has_generation(&t.collection) {
            let old_gen = old_meta
                .as_ref()
                .and_then(|m| m["generation"].as_i64())
                .unwrap_or(0);
            let content = |v: &Value| {
                let mut v = v.clone();
                if let Some(m) = v.as_object_mut() {
                    m.remove("metadata");
                    m.remove("status");
                }
                v
            };
            let changed = old.as_ref().is_none_or(|o| content(o) != content(&new));
            new["metadata"]["generation"] = json!(if changed { old_gen + 1 } else { old_gen });
        }
        if t.collection.ends_with("/statefulsets") {
            // The StatefulSet controller, instantly: every replica updated and ready.
            let r = new["spec"]["replicas"].as_i64().unwrap_or(1);
            let ready = if self.pods_not_ready { 0 } else { r };
            let generation = new["metadata"]["generation"].clone();
            let revision = format!("{name}-{}", generation.as_i64().unwrap_or(0));
            let status = json!({
                "observedGeneration": generation, "replicas": r, "readyReplicas": ready,
                "currentReplicas": r, "updatedReplicas": r, "availableReplicas": ready,
                "currentRevision": revision, "updateRevision": revision, "collisionCount": 0,
            });
            manage(
                &mut new,
                "kube-controller-manager",
                "Update",
                Some("status"),
                fields_v1(&json!({ "status": status })),
            );
            new["status"] = status;
        }
        if old.as_ref() == Some(&new) {
            return new;
        }
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let finalizers_left = new["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if !new["metadata"]["deletionTimestamp"].is_null() && !finalizers_left {
            // Being deleted and nothing holds it any more: gone.
            self.objects.remove(&key(t));
            self.events.push(Arc::new(Event {
                rv: self.rv,
                collection: t.collection.clone(),
                namespace: ns,
                type_: "DELETED",
                object: new.clone(),
            }));
            self.collect_garbage();
            return new;
        }
        self.events.push(Arc::new(Event {
            rv: self.rv,
            collection: t.collection.clone(),
            namespace: ns,
            type_: if old.is_some() { "MODIFIED" } else { "ADDED" },
            object: new.clone(),
        }));
        self.objects.insert(key(t), new.clone());
        new
    }

    fn count(&mut self, what: impl Into<String>) {
        *self.counts.entry(what.into()).or_default() += 1;
    }

    /// Answers one request (a watch is answered by [`FakeApiServer::watch_start`] and
    /// [`FakeApiServer::watch_events`] instead).
    pub fn handle(&mut self, call: &Call) -> (StatusCode, Value) {
        let Some(t) = target(&call.path) else {
            return (StatusCode::NOT_FOUND, status_body(404, "NotFound"));
        };
        let resource = t.resource().to_string();
        let what = match (&t.name, &t.sub) {
            (None, _) => resource.clone(),
            (Some(_), None) => format!("{resource}/NAME"),
            (Some(_), Some(sub)) => format!("{resource}/NAME/{sub}"),
        };
        let kind = if call.method == "PATCH" {
            let ct = call.content_type.as_str();
            let how = if ct.contains("apply-patch") {
                "apply"
            } else if ct.contains("merge-patch") {
                "merge"
            } else {
                "json"
            };
            format!("PATCH ({how})")
        } else {
            call.method.clone()
        };
        self.count(format!("{kind} {what}"));
        match (call.method.as_str(), &t.name, t.sub.as_deref()) {
            ("GET", None, _) => self.list(&t, call),
            ("GET", Some(_), Some("scale")) => match self.objects.get(&key(&t)) {
                Some(o) => match self.scale_of(&t, o) {
                    Some(s) => (StatusCode::OK, s),
                    None => (StatusCode::NOT_FOUND, status_body(404, "NotFound")),
                },
                None => (StatusCode::NOT_FOUND, status_body(404, "NotFound")),
            },
            ("GET", Some(_), _) => match self.objects.get(&key(&t)) {
                // A metadata-only get (`Api::get_metadata`) answers `PartialObjectMetadata`.
                Some(o) if call.accept.contains("as=PartialObjectMetadata;") => {
                    (StatusCode::OK, metadata_only(o))
                }
                Some(o) => (StatusCode::OK, o.clone()),
                None => (StatusCode::NOT_FOUND, not_found(&t)),
            },
            ("PATCH", Some(_), sub) if call.content_type.contains("apply-patch") => {
                self.apply(&t, sub, call)
            }
            ("PATCH", Some(_), Some("scale")) if call.content_type.contains("merge-patch") => {
                self.write_scale(&t, call, "Update")
            }
            ("PUT", Some(_), Some("scale")) => {
                // A replace names the resourceVersion it read (an HPA's read-modify-write).
                let want = &call.body["metadata"]["resourceVersion"];
                let now = self
                    .objects
                    .get(&key(&t))
                    .map(|o| &o["metadata"]["resourceVersion"]);
                if !want.is_null() && now.is_some_and(|now| now != want) {
                    return (StatusCode::CONFLICT, status_body(409, "Conflict"));
                }
                self.write_scale(&t, call, "Update")
            }
            ("PATCH", Some(_), None) if call.content_type.contains("merge-patch") => {
                self.merge_patch(&t, call)
            }
            ("PATCH", Some(_), None) if call.content_type.contains("json-patch") => {
                let Some(old) = self.objects.get(&key(&t)).cloned() else {
                    return (StatusCode::NOT_FOUND, status_body(404, "NotFound"));
                };
                let mut new = old.clone();
                if let Err(e) = json_patch(&mut new, &call.body) {
                    return (StatusCode::UNPROCESSABLE_ENTITY, status_body(422, &e));
                }
                let stored = self.store(&t, Some(old), new);
                (StatusCode::OK, stored)
            }
            ("POST", None, _) if resource == "events" => (StatusCode::CREATED, call.body.clone()),
            ("POST", None, _) => self.create(&t, call),
            ("DELETE", None, _) => self.delete_collection(&t, call),
            ("DELETE", Some(_), None) => self.delete_one(&t, call),
            _ => (
                StatusCode::METHOD_NOT_ALLOWED,
                status_body(405, "MethodNotAllowed"),
            ),
        }
    }

    fn scale_of(&self, t: &Target, o: &Value) -> Option<Value> {
        let paths = self.scale.get(&t.collection)?;
        let mut meta = Map::new();
        for k in [
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "creationTimestamp",
        ] {
            meta.insert(k.to_string(), o["metadata"][k].clone());
        }
        let mut status = json!({
            "replicas": at(o, &paths.status_replicas).cloned().unwrap_or(json!(0)),
        });
        if let Some(sel) = paths.selector.as_deref().and_then(|p| at(o, p)) {
            status["selector"] = sel.clone();
        }
        Some(json!({
            "apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": meta,
            "spec": {"replicas": at(o, &paths.spec_replicas).cloned().unwrap_or(json!(0))},
            "status": status,
        }))
    }

    /// The RBAC escalation check of a RoleBinding write, as the API server makes it for a
    /// writer without the `bind` verb (the operator): it needs the rules of the Role the binding
    /// names, and answers 404 — naming the binding — when that Role does not exist.
    fn escalation_check(&self, t: &Target, body: &Value) -> Option<(StatusCode, Value)> {
        if t.resource() != "rolebindings" || body["roleRef"]["kind"] != json!("Role") {
            return None;
        }
        let role = Target {
            collection: t.collection.replace("/rolebindings", "/roles"),
            name: body["roleRef"]["name"].as_str().map(str::to_string),
            sub: None,
            ..t.clone()
        };
        if self.objects.contains_key(&key(&role)) {
            return None;
        }
        let name = t.name.clone().unwrap_or_default();
        let mut refused = status_body(404, "NotFound");
        refused["message"] = json!(format!(
            "rolebindings.rbac.authorization.k8s.io \"{name}\" not found"
        ));
        refused["details"] = json!({"name": name, "group": "rbac.authorization.k8s.io",
                                    "kind": "rolebindings"});
        Some((StatusCode::NOT_FOUND, refused))
    }

    fn apply(&mut self, t: &Target, sub: Option<&str>, call: &Call) -> (StatusCode, Value) {
        if let Some(refused) = self
            .escalation_check(t, &call.body)
            .filter(|_| sub.is_none())
        {
            return refused;
        }
        let manager = query(call, "fieldManager").unwrap_or_else(|| "unknown".to_string());
        let old = self.objects.get(&key(t)).cloned();
        let mut new = match sub {
            None => {
                let mut n = call.body.clone();
                if let Some(o) = &old {
                    // Apply of the main resource never touches status or what other managers
                    // set in metadata.
                    n["status"] = o["status"].clone();
                    if n["status"].is_null() {
                        n.as_object_mut().map(|m| m.remove("status"));
                    }
                    for k in ["managedFields", "finalizers", "deletionTimestamp"] {
                        if !o["metadata"][k].is_null() {
                            n["metadata"][k] = o["metadata"][k].clone();
                        }
                    }
                }
                n
            }
            Some("status") => {
                let Some(mut o) = old.clone() else {
                    return (StatusCode::NOT_FOUND, status_body(404, "NotFound"));
                };
                o["status"] = call.body["status"].clone();
                o
            }
            Some(_) => {
                return (
                    StatusCode::METHOD_NOT_ALLOWED,
                    status_body(405, "MethodNotAllowed"),
                )
            }
        };
        let fields = match sub {
            None => applied_fields(&call.body),
            _ => fields_v1(&json!({"status": call.body["status"]})),
        };
        manage(&mut new, &manager, "Apply", sub, fields);
        let created = old.is_none();
        let stored = self.store(t, old, new);
        let code = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        (code, stored)
    }

    /// Sets the replicas a `/scale` write names at the CRD's `specReplicasPath`.
    fn write_scale(&mut self, t: &Target, call: &Call, operation: &str) -> (StatusCode, Value) {
        let Some(paths) = self.scale.get(&t.collection).cloned() else {
            return (StatusCode::NOT_FOUND, status_body(404, "NotFound"));
        };
        let Some(old) = self.objects.get(&key(t)).cloned() else {
            return (StatusCode::NOT_FOUND, status_body(404, "NotFound"));
        };
        let Some(replicas) = call.body["spec"]["replicas"].as_i64() else {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                status_body(422, "Invalid"),
            );
        };
        let mut new = old.clone();
        set_at(&mut new, &paths.spec_replicas, json!(replicas));
        let manager = query(call, "fieldManager").unwrap_or_else(|| "unknown".to_string());
        manage(
            &mut new,
            &manager,
            operation,
            Some("scale"),
            fields_v1(&json!({"spec": {"replicas": replicas}})),
        );
        let stored = self.store(t, Some(old), new);
        let scale = self.scale_of(t, &stored).expect("scale paths");
        (StatusCode::OK, scale)
    }

    fn merge_patch(&mut self, t: &Target, call: &Call) -> (StatusCode, Value) {
        let Some(old) = self.objects.get(&key(t)).cloned() else {
            return (StatusCode::NOT_FOUND, status_body(404, "NotFound"));
        };
        let want = &call.body["metadata"]["resourceVersion"];
        if !want.is_null() && *want != old["metadata"]["resourceVersion"] {
            return (StatusCode::CONFLICT, status_body(409, "Conflict"));
        }
        let mut new = old.clone();
        merge(&mut new, &call.body);
        let stored = self.store(t, Some(old), new);
        (StatusCode::OK, stored)
    }

    fn create(&mut self, t: &Target, call: &Call) -> (StatusCode, Value) {
        let name = call.body["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let t = Target {
            name: Some(name),
            ..t.clone()
        };
        if self.objects.contains_key(&key(&t)) {
            return (StatusCode::CONFLICT, status_body(409, "AlreadyExists"));
        }
        if let Some(refused) = self.escalation_check(&t, &call.body) {
            return refused;
        }
        let manager = query(call, "fieldManager").unwrap_or_else(|| "unknown".to_string());
        let mut new = call.body.clone();
        manage(
            &mut new,
            &manager,
            "Update",
            None,
            applied_fields(&call.body),
        );
        let stored = self.store(&t, None, new);
        (StatusCode::CREATED, stored)
    }

    fn matching(&self, t: &Target, selector: &str) -> Vec<(Key, &Value)> {
        // Keys sort by (collection, namespace, name): a range, not a scan of every object.
        let from = (
            t.collection.clone(),
            t.namespace.clone().unwrap_or_default(),
            String::new(),
        );
        self.objects
            .range(from..)
            .take_while(|((c, ns, _), _)| {
                *c == t.collection && t.namespace.as_ref().is_none_or(|n| n == ns)
            })
            .filter(|(_, o)| selects(selector, &o["metadata"]["labels"]))
            .map(|(k, v)| (k.clone(), v))
            .collect()
    }

    fn list(&self, t: &Target, call: &Call) -> (StatusCode, Value) {
        let selector = query(call, "labelSelector").unwrap_or_default();
        let items = self.matching(t, &selector);
        // resourceVersion=0 is served from the watch cache, whole, whatever the limit.
        let from_cache = query(call, "resourceVersion").as_deref() == Some("0");
        let start: usize = query(call, "continue")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let limit = query(call, "limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0 && !from_cache)
            .unwrap_or(usize::MAX);
        let end = start.saturating_add(limit).min(items.len());
        let metadata_only_list = call.accept.contains("as=PartialObjectMetadataList");
        let page: Vec<Value> = items[start.min(end)..end]
            .iter()
            .map(|(_, o)| {
                if metadata_only_list {
                    metadata_only(o)
                } else {
                    (*o).clone()
                }
            })
            .collect();
        let mut meta = json!({"resourceVersion": self.rv.to_string()});
        if end < items.len() {
            meta["continue"] = json!(end.to_string());
        }
        let (api_version, kind) = if metadata_only_list {
            (
                "meta.k8s.io/v1".to_string(),
                "PartialObjectMetadataList".to_string(),
            )
        } else {
            (
                t.api_version.clone(),
                format!("{}List", kind_of(&t.collection)),
            )
        };
        (
            StatusCode::OK,
            json!({"apiVersion": api_version, "kind": kind, "metadata": meta, "items": page}),
        )
    }

    fn delete_collection(&mut self, t: &Target, call: &Call) -> (StatusCode, Value) {
        let selector = query(call, "labelSelector").unwrap_or_default();
        let doomed: Vec<Key> = self
            .matching(t, &selector)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let mut items = Vec::new();
        for k in doomed {
            items.extend(self.remove_key(&k));
        }
        self.collect_garbage();
        (
            StatusCode::OK,
            json!({"apiVersion": t.api_version, "kind": format!("{}List", kind_of(&t.collection)),
                   "metadata": {}, "items": items}),
        )
    }

    /// For a watch request: what it receives, and the index in the event log of its first
    /// event (the first after the `resourceVersion` it names).
    pub fn watch_start(&mut self, call: &Call) -> Option<(WatchFilter, usize)> {
        let t = target(&call.path)?;
        let resource = t.resource().to_string();
        self.count(format!("WATCH {resource}"));
        let since: u64 = query(call, "resourceVersion")
            .and_then(|rv| rv.parse().ok())
            .unwrap_or(self.rv);
        let start = self.events.partition_point(|e| e.rv <= since);
        let filter = WatchFilter {
            collection: t.collection,
            namespace: t.namespace,
            selector: query(call, "labelSelector").unwrap_or_default(),
            metadata_only: call.accept.contains("as=PartialObjectMetadata"),
        };
        Some((filter, start))
    }

    /// The watch events from log index `from` that `filter` receives, as JSON lines, and the
    /// index to continue from.
    pub fn watch_events(&self, filter: &WatchFilter, from: usize) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        for e in self.events.iter().skip(from).filter(|e| filter.matches(e)) {
            let object = if filter.metadata_only {
                metadata_only(&e.object)
            } else {
                e.object.clone()
            };
            serde_json::to_writer(&mut out, &json!({"type": e.type_, "object": object}))
                .expect("JSON");
            out.push(b'\n');
        }
        (out, self.events.len())
    }
}
