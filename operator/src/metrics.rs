//! The operator's Prometheus metrics, registered in a [`Registry`] passed in by the caller (no
//! global statics): reconciles, failures by [`crate::error::Error::category`], and duration;
//! and their text for `/metrics` ([`exposition`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use weir_crds::exposition::{
    openmetrics_to_prometheus_text, wants_openmetrics, OPENMETRICS_CONTENT_TYPE,
    PROMETHEUS_TEXT_CONTENT_TYPE,
};

/// Label of [`Metrics::failures`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabel {
    /// The error's category.
    pub category: String,
}

/// Reconcile metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// `weir_operator_reconciles_total`.
    pub reconciles: Counter,
    /// `weir_operator_reconcile_failures_total{category}`.
    pub failures: Family<CategoryLabel, Counter>,
    /// `weir_operator_reconcile_duration_seconds`.
    pub duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: Counter::default(),
            failures: Family::default(),
            duration: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        }
    }
}

impl Metrics {
    /// New metrics, registered under the `weir_operator` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("weir_operator");
        r.register("reconciles", "Reconciles started", m.reconciles.clone());
        r.register(
            "reconcile_failures",
            "Reconciles that failed, by error category",
            m.failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile",
            m.duration.clone(),
        );
        m
    }
}

/// `/metrics` for a request with these `Accept` values: OpenMetrics for a client that asks for
/// it (Prometheus), else the Prometheus text format 0.0.4 (`curl`, `promtool check metrics`).
/// Returns the content type and the body, or why the registry could not be encoded.
pub fn exposition<'a>(
    registry: &Registry,
    accept: impl IntoIterator<Item = &'a str>,
) -> Result<(&'static str, String), std::fmt::Error> {
    let mut om = String::new();
    prometheus_client::encoding::text::encode(&mut om, registry)?;
    Ok(if wants_openmetrics(accept) {
        (OPENMETRICS_CONTENT_TYPE, om)
    } else {
        (
            PROMETHEUS_TEXT_CONTENT_TYPE,
            openmetrics_to_prometheus_text(&om),
        )
    })
}
