//! Leader election over a `coordination.k8s.io/v1` Lease, so that two operator replicas never
//! reconcile at once. The same protocol as client-go's `leaderelection`: the holder renews
//! `renewTime` every [`LeaseConfig::renew_every`]; a candidate takes the Lease over only when
//! its record has not changed for `leaseDurationSeconds` *as measured by the candidate's own
//! clock* (so clock skew between nodes does not matter). Every write is a replace carrying the
//! `resourceVersion` that was read, so two candidates cannot both win.
//!
//! (`kube-leader-election` 0.44 targets kube 4; this is the small loop it would have been.)

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a record that stopped changing stays valid.
    pub lease_duration: Duration,
    /// How often the holder renews, and a candidate retries.
    pub renew_every: Duration,
}

/// What the last read of the Lease showed, and when (local clock) its record last changed.
#[derive(Debug)]
struct Seen {
    holder: Option<String>,
    renew: Option<MicroTime>,
    changed_at: Instant,
}

/// A candidate for, or the holder of, one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    seen: Option<Seen>,
}

impl LeaderElector {
    /// A candidate for the Lease `cfg.name` in `api`'s namespace.
    pub fn new(api: Api<Lease>, cfg: LeaseConfig) -> Self {
        LeaderElector {
            api,
            cfg,
            seen: None,
        }
    }

    fn spec(&self, transitions: i32, acquire: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.lease_duration.as_secs() as i32),
            acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to acquire or renew. `Ok(true)`: this replica holds the Lease now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let changed = match &self.seen {
            Some(s) => s.holder != holder || s.renew != spec.renew_time,
            None => true,
        };
        if changed {
            self.seen = Some(Seen {
                holder: holder.clone(),
                renew: spec.renew_time.clone(),
                changed_at: Instant::now(),
            });
        }
        let mine = holder.as_deref() == Some(self.cfg.identity.as_str());
        let duration = spec
            .lease_duration_seconds
            .map_or(self.cfg.lease_duration, |s| {
                Duration::from_secs(s.max(1) as u64)
            });
        let expired = self
            .seen
            .as_ref()
            .is_some_and(|s| !changed && s.changed_at.elapsed() > duration);
        if !(mine || holder.is_none() || expired) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquire = if mine {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.spec(transitions, acquire));
        // `lease.metadata.resourceVersion` is the one read: the replace fails with 409 if
        // anyone wrote in between.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, lease = %self.cfg.name, "lease"),
            }
            tokio::time::sleep(self.cfg.renew_every).await;
        }
    }

    /// Renews the Lease until a renewal is refused or none succeeded for the lease duration
    /// (then another replica may already lead): returns at that moment, and the caller must
    /// stop reconciling.
    pub async fn hold(&mut self) {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.cfg.renew_every).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = Instant::now(),
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.cfg.name, "cannot renew the lease");
                    // Stop before the lease can expire for the others.
                    if last_ok.elapsed() + self.cfg.renew_every >= self.cfg.lease_duration {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the Lease up (on shutdown) so that another replica takes over at once; logs the
    /// outcome. `true` when this replica held the Lease and released it.
    pub async fn release(&mut self) -> bool {
        let name = &self.cfg.name;
        let mut lease = match self.api.get_opt(name).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                tracing::info!(lease = %name, "the lease is gone: nothing to release");
                return false;
            }
            Err(e) => {
                tracing::warn!(error = %e, lease = %name, "cannot read the lease to release it; \
                    another replica takes over when it expires");
                return false;
            }
        };
        let Some(spec) = lease.spec.as_mut() else {
            return false;
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            tracing::info!(lease = %name, holder = ?spec.holder_identity,
                "the lease is held by another replica: nothing to release");
            return false;
        }
        spec.holder_identity = None;
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => {
                tracing::info!(lease = %name, identity = %self.cfg.identity,
                    "released the lease: another replica can lead at once");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, lease = %name, "cannot release the lease; \
                    another replica takes over when it expires");
                false
            }
        }
    }
}
