//! The fake API server's deletions (see `apiserver.rs`'s module doc): DELETE of one object,
//! pods that terminate for a grace period, the garbage collector, and the pods a StatefulSet
//! controller would create.

use std::sync::Arc;

use http::StatusCode;
use serde_json::{json, Value};

use super::{key, resource_of, Event, FakeApiServer, Key, Target, TIME};
use crate::api::{status_body, Call};

/// Default `terminationGracePeriodSeconds` of a pod.
const POD_GRACE_SECONDS: i64 = 30;

impl FakeApiServer {
    /// A DELETE of one object: 404 if absent, 409 if a `preconditions.uid` names another
    /// object; then as [`FakeApiServer::delete_key`]. Only background propagation (the
    /// default) is modelled: anything else panics, so that a new kind is noticed.
    pub(super) fn delete_one(&mut self, t: &Target, call: &Call) -> (StatusCode, Value) {
        let k = key(t);
        let Some(obj) = self.objects.get(&k) else {
            return (StatusCode::NOT_FOUND, status_body(404, "NotFound"));
        };
        let uid = &call.body["preconditions"]["uid"];
        if !uid.is_null() && *uid != obj["metadata"]["uid"] {
            return (StatusCode::CONFLICT, status_body(409, "Conflict"));
        }
        match call.body["propagationPolicy"].as_str() {
            None | Some("Background") => {}
            Some(other) => {
                panic!("the fake API server only models Background deletion, not {other}")
            }
        }
        let answer = self.delete_key(&k);
        self.collect_garbage();
        (StatusCode::OK, answer)
    }

    /// Deletes the object at `k` as the API server does: a pod starts terminating (it stays,
    /// with `deletionTimestamp`, for its grace period); an object held by finalizers is only
    /// marked; anything else is removed. Returns the object as it is now.
    fn delete_key(&mut self, k: &Key) -> Value {
        let Some(obj) = self.objects.get(k).cloned() else {
            return Value::Null;
        };
        if !obj["metadata"]["deletionTimestamp"].is_null() {
            return obj;
        }
        let held = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if held || resource_of(&k.0) == "pods" {
            let mut marked = obj;
            marked["metadata"]["deletionTimestamp"] = json!(TIME);
            if resource_of(&k.0) == "pods" {
                marked["metadata"]["deletionGracePeriodSeconds"] = json!(POD_GRACE_SECONDS);
            }
            return self.overwrite(k, marked, "MODIFIED");
        }
        self.remove_key(k);
        obj
    }

    /// Removes the object at `k`, with a watch event; returns it.
    pub(super) fn remove_key(&mut self, k: &Key) -> Option<Value> {
        let obj = self.objects.remove(k)?;
        self.rv += 1;
        self.events.push(Arc::new(Event {
            rv: self.rv,
            collection: k.0.clone(),
            namespace: k.1.clone(),
            type_: "DELETED",
            object: obj.clone(),
        }));
        Some(obj)
    }

    /// Stores `obj` at `k` as is, with a new resourceVersion and a watch event of `type_`.
    fn overwrite(&mut self, k: &Key, mut obj: Value, type_: &'static str) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.events.push(Arc::new(Event {
            rv: self.rv,
            collection: k.0.clone(),
            namespace: k.1.clone(),
            type_,
            object: obj.clone(),
        }));
        self.objects.insert(k.clone(), obj.clone());
        obj
    }

    /// The garbage collector: deletes, until none is left, every object that has owners none of
    /// which exists (an owner being deleted still exists: its dependents wait for it to go).
    pub fn collect_garbage(&mut self) {
        loop {
            let live: std::collections::BTreeSet<&str> = self
                .objects
                .values()
                .filter_map(|o| o["metadata"]["uid"].as_str())
                .collect();
            let orphans: Vec<Key> = self
                .objects
                .iter()
                .filter(|(_, o)| o["metadata"]["deletionTimestamp"].is_null())
                .filter(|(_, o)| {
                    o["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|owners| {
                            !owners.is_empty()
                                && owners
                                    .iter()
                                    .all(|r| !r["uid"].as_str().is_some_and(|u| live.contains(u)))
                        })
                })
                .map(|(k, _)| k.clone())
                .collect();
            if orphans.is_empty() {
                return;
            }
            for k in orphans {
                self.delete_key(&k);
            }
        }
    }

    /// What the StatefulSet controller does, once: creates the pods `<name>-<ordinal>` each
    /// StatefulSet that is not being deleted lacks, with its template's labels and the
    /// StatefulSet as their controlling owner; and deletes (so they start terminating, for their
    /// grace period) its pods whose ordinal is not below its `spec.replicas`, as a scale-down
    /// does.
    pub fn run_statefulset_controller(&mut self) {
        let sets: Vec<Value> = self
            .all("/apis/apps/v1/statefulsets")
            .into_iter()
            .filter(|s| s["metadata"]["deletionTimestamp"].is_null())
            .cloned()
            .collect();
        for set in sets {
            let ns = set["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = set["metadata"]["name"].as_str().unwrap_or_default();
            let replicas = set["spec"]["replicas"].as_i64().unwrap_or(1);
            let condemned: Vec<Key> = self
                .objects
                .keys()
                .filter(|(c, n, pod)| {
                    resource_of(c) == "pods"
                        && n == ns
                        && pod
                            .strip_prefix(name)
                            .and_then(|rest| rest.strip_prefix('-'))
                            .and_then(|o| o.parse::<i64>().ok())
                            .is_some_and(|o| o >= replicas)
                })
                .cloned()
                .collect();
            for k in &condemned {
                self.delete_key(k);
            }
            for ordinal in 0..replicas {
                let path = format!("/api/v1/namespaces/{ns}/pods/{name}-{ordinal}");
                if self.get(&path).is_some() {
                    continue;
                }
                let pod = json!({
                    "metadata": {
                        "labels": set["spec"]["template"]["metadata"]["labels"],
                        "ownerReferences": [{
                            "apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
                            "uid": set["metadata"]["uid"], "controller": true,
                            "blockOwnerDeletion": true,
                        }],
                    },
                    "spec": set["spec"]["template"]["spec"],
                });
                self.insert(&path, pod);
            }
        }
    }

    /// The grace period of every terminating pod ends: they are gone. Returns how many.
    pub fn end_grace_periods(&mut self) -> usize {
        let done: Vec<Key> = self
            .objects
            .iter()
            .filter(|((c, _, _), o)| {
                resource_of(c) == "pods" && !o["metadata"]["deletionTimestamp"].is_null()
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &done {
            self.remove_key(k);
        }
        self.collect_garbage();
        done.len()
    }
}
