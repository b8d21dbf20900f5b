//! The CRD's own `openAPIV3Schema`, generated once from the types: what `weir validate` walks
//! and where unknown fields find the field probably meant.

use std::sync::OnceLock;

use serde_json::Value;

use crate::StreamJob;

/// The `openAPIV3Schema` of the generated CRD (`Null` if it could not be serialised, which the
/// CRD drift test would catch first).
pub(crate) fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        use kube::CustomResourceExt;
        serde_json::to_value(StreamJob::crd())
            .map(|crd| crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone())
            .unwrap_or(Value::Null)
    })
}
