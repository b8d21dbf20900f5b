//! The worker's HTTP endpoints: `/metrics` for Prometheus, `/healthz` (liveness) and `/readyz`
//! (readiness) for the kubelet. This module only reads what the runtime publishes in
//! [`Metrics`] and [`Health`]; it changes nothing.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE};

/// How long the main loop may go without [`Health::beat`] before `/healthz` fails, by default.
pub const DEFAULT_LIVENESS_TIMEOUT: Duration = Duration::from_secs(30);

/// What the runtime tells the probes. All updates are cheap; `beat` is one atomic store.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    live_within: Duration,
    /// Milliseconds from `started` to the last beat.
    last_beat_ms: AtomicU64,
    ready: AtomicBool,
    // Only touched when readiness changes, which is rare; never on a record path.
    not_ready_reason: Mutex<&'static str>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new(DEFAULT_LIVENESS_TIMEOUT)
    }
}

impl Health {
    /// Not ready ("starting"), and live for `live_within` from now: creation counts as a beat,
    /// so a process that hangs before its first tick still fails liveness.
    pub fn new(live_within: Duration) -> Health {
        Health {
            started: Instant::now(),
            live_within,
            last_beat_ms: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            not_ready_reason: Mutex::new("starting"),
        }
    }

    /// The main loop ticked: call it every iteration (or at least every few seconds).
    pub fn beat(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_beat_ms.store(ms, Ordering::Relaxed);
    }

    /// Every owned partition has caught up its replay and started.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Not ready, with a short reason for `/readyz` (e.g. "replaying partitions").
    pub fn set_not_ready(&self, reason: &'static str) {
        if let Ok(mut r) = self.not_ready_reason.lock() {
            *r = reason;
        }
        self.ready.store(false, Ordering::Release);
    }

    /// Whether the main loop beat within the liveness timeout.
    pub fn is_live(&self) -> bool {
        self.is_live_at(Instant::now())
    }

    /// [`Health::is_live`] as of `now`.
    pub fn is_live_at(&self, now: Instant) -> bool {
        let last = self.started + Duration::from_millis(self.last_beat_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(last) <= self.live_within
    }

    /// `Ok(())` when ready, else the reason.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if !self.is_live() {
            return Err("main loop stalled");
        }
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        Err(self.not_ready_reason.lock().map_or("not ready", |r| *r))
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The router, for tests or to mount elsewhere.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(get_healthz))
        .route("/readyz", get(get_readyz))
        .with_state(AppState { metrics, health })
}

/// Serve the endpoints on `listener` until `shutdown` completes, then finish the requests in
/// flight and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(shutdown)
        .await
}

/// OpenMetrics when the client asks for it (Prometheus does, in its `Accept` header), else
/// the Prometheus text format 0.0.4, which every other client and `promtool check metrics`
/// read (they do not know OpenMetrics' counter naming).
async fn get_metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get_all(header::ACCEPT);
    if weir_crds::exposition::wants_openmetrics(accept.iter().filter_map(|v| v.to_str().ok())) {
        (
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            s.metrics.encode(),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE)],
            s.metrics.encode_prometheus_text(),
        )
            .into_response()
    }
}

async fn get_healthz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.health.is_live() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "main loop stalled\n")
    }
}

async fn get_readyz(State(s): State<AppState>) -> (StatusCode, String) {
    match s.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_follows_beats() {
        let h = Health::new(Duration::from_secs(10));
        assert!(h.is_live());
        let later = Instant::now() + Duration::from_secs(11);
        assert!(!h.is_live_at(later));
        h.beat();
        assert!(h.is_live());
        assert!(h.is_live_at(Instant::now() + Duration::from_secs(9)));
    }

    #[test]
    fn readiness_has_a_reason_until_set() {
        let h = Health::default();
        assert_eq!(h.readiness(), Err("starting"));
        h.set_not_ready("replaying partitions");
        assert_eq!(h.readiness(), Err("replaying partitions"));
        h.set_ready();
        assert_eq!(h.readiness(), Ok(()));
    }
}
