//! The operator's Prometheus metrics, registered in a [`Registry`] passed in by the caller (no
//! global statics): reconciles, failures by [`crate::error::Error::category`], and duration.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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
