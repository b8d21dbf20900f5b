//! What the operator remembers between reconciles, in memory only: the last successful apply of
//! each child, so that a child whose desired form has not changed is not applied again; the
//! controller (owner reference with `controller: true`) of each child, as applied or as the
//! owned-object watches last showed it, so that a child known to be the job's own needs no read
//! before it is applied ([`Memory::owned_by`], the `NameConflict` rule of `apply`); and when
//! each job's lag was last written to its status, so that lag alone is written at most once per
//! [`LAG_REFRESH`]. A restart forgets everything: the first reconciles then apply every child
//! again, which changes nothing on the API server (server-side apply of the same object).
//!
//! A remembered apply is forgotten, so that the next reconcile applies the child again:
//! - on drift, seen by the owned-object watches ([`Memory::seen`]): the child was deleted, its
//!   `generation` moved past the one the apply returned (kinds with a spec: StatefulSet,
//!   PodDisruptionBudget; their status updates do not count), or, for kinds without
//!   `generation`, its `resourceVersion` moved past the one the apply returned (someone else
//!   wrote it);
//! - after [`CHILD_RESYNC`], the long resync that repairs what no watch event showed.
//!
//! While an apply is remembered, what the operator wrote into that child can be read back from
//! memory instead of the API server ([`Memory::attach`], [`Memory::remembered`]): the job
//! ConfigMap's assignment, which every reconcile reads (one GET fewer per reconcile of a job
//! whose children did not change).
//!
//! A remembered controller is forgotten when the watch shows the child deleted, and when the
//! watch of its kind lists again ([`Memory::relisting`]: a deletion during a watch gap shows no
//! event); the list's objects then set it again.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

/// How long a remembered apply is trusted: after this, the child is applied again even if its
/// desired form has not changed and no watch showed a change.
pub const CHILD_RESYNC: Duration = Duration::from_secs(3600);

/// Lag alone (no other change of the status) is written at most this often per job. It is also
/// the requeue cadence of a job that lags (`controller::REQUEUE_WAITING`), which refreshes it.
pub const LAG_REFRESH: Duration = Duration::from_secs(30);

/// A child of a job: its kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChildKey {
    /// `StatefulSet`, `Role`, ...
    pub kind: &'static str,
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ChildKey {
    /// The key of `meta`, an object of `kind`.
    pub fn of(kind: &'static str, meta: &ObjectMeta) -> Self {
        ChildKey {
            kind,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// The uid of the controller of `meta` (its owner reference with `controller: true`), if any.
pub fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// One successful apply.
#[derive(Clone, Debug)]
struct Applied {
    /// [`fingerprint`] of the object sent.
    fingerprint: u64,
    /// `resourceVersion` and `generation` the API server answered.
    resource_version: Option<String>,
    generation: Option<i64>,
    at: Instant,
    /// What the operator reads back from this child, when it would otherwise have to GET it
    /// ([`Memory::remembered`]): the job ConfigMap's assignment.
    data: Option<String>,
}

/// What [`Memory::remembered`] reads back: the data attached to a remembered apply, and the
/// child's controller.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadBack {
    /// The data attached ([`Memory::attach`]).
    pub data: String,
    /// The uid of the child's controller, as applied or last seen.
    pub controller: Option<String>,
}

/// A fingerprint of an object as it would be sent: equal objects, equal fingerprints (within one
/// process; it is never stored).
pub fn fingerprint<T: Serialize>(obj: &T) -> u64 {
    let mut h = DefaultHasher::new();
    serde_json::to_vec(obj).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// Whether `now` is past `before`: resource versions compare as numbers when both are (etcd's
/// are), else any difference counts.
fn newer(now: Option<&str>, before: Option<&str>) -> bool {
    match (
        now.and_then(|v| v.parse::<u64>().ok()),
        before.and_then(|v| v.parse::<u64>().ok()),
    ) {
        (Some(n), Some(b)) => n > b,
        _ => now != before,
    }
}

/// What is remembered of one child.
#[derive(Clone, Debug, Default)]
struct Remembered {
    /// Its last successful apply, unless forgotten since.
    applied: Option<Applied>,
    /// The uid of its controller, as applied or last seen.
    controller: Option<String>,
}

/// See the module doc.
#[derive(Debug, Default)]
pub struct Memory {
    children: Mutex<HashMap<ChildKey, Remembered>>,
    lag_written: Mutex<HashMap<(String, String), Instant>>,
    /// Each autoscaled job's autoscaler (samples, recommendations, last change). Lost on a
    /// restart of the operator: the autoscaler then warms up again before it decides.
    autoscalers: Mutex<HashMap<(String, String), crate::autoscale::Autoscaler>>,
}

impl Memory {
    /// Whether `key` was applied as `fingerprint`, less than [`CHILD_RESYNC`] before `now`, and
    /// not changed by anyone since: then applying it again would change nothing.
    pub fn unchanged(&self, key: &ChildKey, fingerprint: u64, now: Instant) -> bool {
        let children = self.children.lock().unwrap_or_else(PoisonError::into_inner);
        children
            .get(key)
            .and_then(|c| c.applied.as_ref())
            .is_some_and(|a| {
                a.fingerprint == fingerprint && now.saturating_duration_since(a.at) < CHILD_RESYNC
            })
    }

    /// Whether `key` is known to have the controller `uid` (the job's): the operator applied it
    /// so, or its watch last showed it so.
    pub fn owned_by(&self, key: &ChildKey, uid: &str) -> bool {
        let children = self.children.lock().unwrap_or_else(PoisonError::into_inner);
        children
            .get(key)
            .is_some_and(|c| c.controller.as_deref() == Some(uid))
    }

    /// Remembers that `key` was applied as `fingerprint` at `now`, and what the API server
    /// answered (`meta`).
    pub fn applied(&self, key: ChildKey, fingerprint: u64, meta: &ObjectMeta, now: Instant) {
        let applied = Applied {
            fingerprint,
            resource_version: meta.resource_version.clone(),
            generation: meta.generation,
            at: now,
            data: None,
        };
        let remembered = Remembered {
            applied: Some(applied),
            controller: controller_uid(meta).map(str::to_string),
        };
        self.children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, remembered);
    }

    /// Attaches `data` to the remembered apply of `key` (nothing when there is none): what the
    /// child holds as applied, to be read back with [`Memory::remembered`].
    pub fn attach(&self, key: &ChildKey, data: Option<String>) {
        let mut children = self.children.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(a) = children.get_mut(key).and_then(|c| c.applied.as_mut()) {
            a.data = data;
        }
    }

    /// The data attached to the apply of `key`, while that apply is remembered (no drift seen,
    /// less than [`CHILD_RESYNC`] before `now`): then the child still holds it, and reading it
    /// back from the API server would return the same. `None`: read it.
    pub fn remembered(&self, key: &ChildKey, now: Instant) -> Option<ReadBack> {
        let children = self.children.lock().unwrap_or_else(PoisonError::into_inner);
        let c = children.get(key)?;
        let a = c
            .applied
            .as_ref()
            .filter(|a| now.saturating_duration_since(a.at) < CHILD_RESYNC)?;
        Some(ReadBack {
            data: a.data.clone()?,
            controller: c.controller.clone(),
        })
    }

    /// Whether `meta` (an object of `kind` seen by a watch) is the operator's own last apply of
    /// that child, at exactly the `resourceVersion` the apply returned: its echo, which tells
    /// nothing new.
    pub fn is_echo(&self, kind: &'static str, meta: &ObjectMeta) -> bool {
        let key = ChildKey::of(kind, meta);
        let children = self.children.lock().unwrap_or_else(PoisonError::into_inner);
        children
            .get(&key)
            .and_then(|c| c.applied.as_ref())
            .is_some_and(|a| {
                a.resource_version.is_some() && a.resource_version == meta.resource_version
            })
    }

    /// An owned-object watch saw `meta` (an object of `kind`; `deleted` when it is gone):
    /// forgets the apply of that child when this is a change the operator did not make, and
    /// remembers its controller (a child without one is remembered only if it already was: the
    /// watches see only the operator's children, by label, and those have one).
    pub fn seen(&self, kind: &'static str, meta: &ObjectMeta, deleted: bool) {
        let key = ChildKey::of(kind, meta);
        let mut children = self.children.lock().unwrap_or_else(PoisonError::into_inner);
        if deleted {
            children.remove(&key);
            return;
        }
        let controller = controller_uid(meta).map(str::to_string);
        let Some(c) = children.get_mut(&key) else {
            if controller.is_some() {
                let seen = Remembered {
                    applied: None,
                    controller,
                };
                children.insert(key, seen);
            }
            return;
        };
        c.controller = controller;
        let drift = c
            .applied
            .as_ref()
            .is_some_and(|a| match (meta.generation, a.generation) {
                (Some(now), Some(before)) => now > before,
                _ => newer(
                    meta.resource_version.as_deref(),
                    a.resource_version.as_deref(),
                ),
            });
        if drift {
            c.applied = None;
        }
    }

    /// The watch of `kind` lists again (its `Init` event): forgets the controllers of the
    /// children of that kind, which the list then shows again. Their applies are kept (a relist
    /// is no change), so nothing is applied again for it; a child deleted while the watch was
    /// away is only read again before its next apply.
    pub fn relisting(&self, kind: &'static str) {
        let mut children = self.children.lock().unwrap_or_else(PoisonError::into_inner);
        children.retain(|key, c| {
            if key.kind == kind {
                c.controller = None;
            }
            c.applied.is_some() || c.controller.is_some()
        });
    }

    /// Whether the lag of job (namespace, name) may be written at `now`: it never was, or
    /// [`LAG_REFRESH`] has passed since.
    pub fn lag_due(&self, job: &(String, String), now: Instant) -> bool {
        self.lag_written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(job)
            .is_none_or(|t| now.saturating_duration_since(*t) >= LAG_REFRESH)
    }

    /// Runs `f` on the autoscaler of job (namespace, name), a new one the first time.
    pub fn with_autoscaler<R>(
        &self,
        job: &(String, String),
        f: impl FnOnce(&mut crate::autoscale::Autoscaler) -> R,
    ) -> R {
        let mut all = self
            .autoscalers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(all.entry(job.clone()).or_default())
    }

    /// Forgets the autoscaler of job (namespace, name): deleted, or no longer autoscaled.
    pub fn forget_autoscaler(&self, job: &(String, String)) {
        self.autoscalers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(job);
    }

    /// Remembers that the status of job (namespace, name), lag included, was written at `now`.
    /// Entries older than [`LAG_REFRESH`] say nothing any more; they are dropped now and then,
    /// so that deleted jobs are not remembered for ever.
    pub fn lag_written(&self, job: (String, String), now: Instant) {
        let mut written = self
            .lag_written
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if written.insert(job, now).is_none() && written.len().is_power_of_two() {
            written.retain(|_, t| now.saturating_duration_since(*t) < LAG_REFRESH);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(rv: &str, generation: Option<i64>) -> ObjectMeta {
        ObjectMeta {
            name: Some("payments-worker".to_string()),
            namespace: Some("shop".to_string()),
            resource_version: Some(rv.to_string()),
            generation,
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn an_applied_child_is_unchanged_until_its_form_changes_or_the_resync() {
        let m = Memory::default();
        let t0 = Instant::now();
        let key = ChildKey::of("Role", &meta("5", None));
        assert!(!m.unchanged(&key, 1, t0), "never applied");
        m.applied(key.clone(), 1, &meta("5", None), t0);
        assert!(m.unchanged(&key, 1, t0 + Duration::from_secs(60)));
        assert!(!m.unchanged(&key, 2, t0), "another desired form");
        assert!(!m.unchanged(&key, 1, t0 + CHILD_RESYNC), "the long resync");
    }

    #[test]
    fn drift_seen_by_a_watch_forgets_the_apply_and_its_own_echo_does_not() {
        let m = Memory::default();
        let t0 = Instant::now();
        let role = ChildKey::of("Role", &meta("5", None));
        m.applied(role.clone(), 1, &meta("5", None), t0);
        m.seen("Role", &meta("5", None), false);
        m.seen("Role", &meta("4", None), false);
        assert!(
            m.unchanged(&role, 1, t0),
            "its own apply, or an older event"
        );
        m.seen("Role", &meta("6", None), false);
        assert!(!m.unchanged(&role, 1, t0), "someone else wrote it");

        let sts = ChildKey::of("StatefulSet", &meta("5", Some(2)));
        m.applied(sts.clone(), 1, &meta("5", Some(2)), t0);
        m.seen("StatefulSet", &meta("9", Some(2)), false);
        assert!(m.unchanged(&sts, 1, t0), "a status update is no drift");
        m.seen("StatefulSet", &meta("10", Some(3)), false);
        assert!(!m.unchanged(&sts, 1, t0), "its spec was edited");

        m.applied(role.clone(), 1, &meta("7", None), t0);
        m.seen("Role", &meta("7", None), true);
        assert!(!m.unchanged(&role, 1, t0), "deleted");
    }

    fn owned(rv: &str, uid: &str) -> ObjectMeta {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                api_version: "weir.dev/v1alpha1".to_string(),
                kind: "StreamJob".to_string(),
                name: "payments".to_string(),
                uid: uid.to_string(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..meta(rv, None)
        }
    }

    #[test]
    fn a_child_is_owned_as_applied_or_as_last_seen() {
        let m = Memory::default();
        let t0 = Instant::now();
        let key = ChildKey::of("Role", &meta("5", None));
        assert!(!m.owned_by(&key, "job-1"), "never applied nor seen");
        m.applied(key.clone(), 1, &owned("5", "job-1"), t0);
        assert!(m.owned_by(&key, "job-1"));
        assert!(!m.owned_by(&key, "job-2"), "another job of the same name");
        // Someone removed the owner reference: no longer known as the job's.
        m.seen("Role", &meta("6", None), false);
        assert!(!m.owned_by(&key, "job-1"));
        m.seen("Role", &owned("7", "job-1"), true);
        assert!(!m.owned_by(&key, "job-1"), "deleted");

        // Seen by the watch, never applied by this process (a restart).
        let sa = ChildKey::of("ServiceAccount", &meta("9", None));
        m.seen("ServiceAccount", &owned("9", "job-1"), false);
        assert!(m.owned_by(&sa, "job-1"));
        assert!(!m.unchanged(&sa, 1, t0), "seen is not applied");
        // A relist forgets it until the list shows it again; other kinds are kept.
        m.applied(key.clone(), 1, &owned("8", "job-1"), t0);
        m.relisting("ServiceAccount");
        assert!(!m.owned_by(&sa, "job-1"));
        assert!(m.owned_by(&key, "job-1"));
        m.seen("ServiceAccount", &owned("9", "job-1"), false);
        assert!(m.owned_by(&sa, "job-1"));
        // A labelled object without a controller is not remembered.
        let other = ChildKey::of("Service", &meta("3", None));
        m.seen("Service", &meta("3", None), false);
        assert!(!m.owned_by(&other, ""));
        assert_eq!(
            m.children
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            2
        );
    }

    #[test]
    fn data_attached_to_an_apply_is_remembered_until_drift_or_the_resync() {
        let m = Memory::default();
        let t0 = Instant::now();
        let cm = ChildKey::of("ConfigMap", &meta("5", None));
        m.attach(&cm, Some("a".to_string()));
        assert_eq!(
            m.remembered(&cm, t0),
            None,
            "never applied: nothing to attach to"
        );
        m.applied(cm.clone(), 1, &meta("5", None), t0);
        assert_eq!(m.remembered(&cm, t0), None, "applied, nothing attached");
        m.attach(&cm, Some("a".to_string()));
        let owned = ObjectMeta {
            owner_references: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    uid: "job-uid".to_string(),
                    controller: Some(true),
                    ..Default::default()
                },
            ]),
            ..meta("5", None)
        };
        m.applied(cm.clone(), 1, &owned, t0);
        m.attach(&cm, Some("a".to_string()));
        assert_eq!(
            m.remembered(&cm, t0),
            Some(ReadBack {
                data: "a".to_string(),
                controller: Some("job-uid".to_string())
            })
        );
        m.applied(cm.clone(), 2, &meta("6", None), t0);
        assert_eq!(
            m.remembered(&cm, t0),
            None,
            "a new apply forgets the old data"
        );
        m.attach(&cm, Some("b".to_string()));
        assert_eq!(
            m.remembered(&cm, t0 + CHILD_RESYNC),
            None,
            "the long resync"
        );
        m.seen("ConfigMap", &meta("7", None), false);
        assert_eq!(m.remembered(&cm, t0), None, "someone else wrote it");
    }

    #[test]
    fn only_the_exact_version_an_apply_returned_is_its_echo() {
        let m = Memory::default();
        let t0 = Instant::now();
        let sts = ChildKey::of("StatefulSet", &meta("5", Some(2)));
        assert!(
            !m.is_echo("StatefulSet", &meta("5", Some(2))),
            "never applied"
        );
        m.applied(sts, 1, &meta("5", Some(2)), t0);
        assert!(m.is_echo("StatefulSet", &meta("5", Some(2))));
        assert!(
            !m.is_echo("StatefulSet", &meta("6", Some(2))),
            "a status update (ready replicas) after it"
        );
        assert!(!m.is_echo("Role", &meta("5", None)), "another kind");
        let mut unnamed = meta("5", Some(2));
        unnamed.resource_version = None;
        assert!(!m.is_echo("StatefulSet", &unnamed), "no version: not known");
    }

    #[test]
    fn lag_is_due_once_per_refresh() {
        let m = Memory::default();
        let job = ("shop".to_string(), "payments".to_string());
        let t0 = Instant::now();
        assert!(m.lag_due(&job, t0));
        m.lag_written(job.clone(), t0);
        assert!(!m.lag_due(&job, t0 + LAG_REFRESH - Duration::from_millis(1)));
        assert!(m.lag_due(&job, t0 + LAG_REFRESH));
    }
}
