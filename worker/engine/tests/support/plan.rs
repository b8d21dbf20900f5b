//! A job plan from the parts a test varies, for the engine's tests.

use weir_engine::JobPlan;

/// A job from the parts that vary; the rest is fixed.
pub fn plan(window: &str, group_by: &str, aggregations: &str, time: &str) -> JobPlan {
    let yaml = format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: t}}
spec:
  source:
    kafka: {{bootstrapServers: "k:9092", topic: in}}
    eventTime: {time}
  groupBy: {group_by}
  repartition: {{coPartitioned: true}}
  window: {window}
  aggregations: {aggregations}
  sink:
    kafka: {{topic: out}}
"#
    );
    let job = weir_crds::parse_stream_job(&yaml)
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
        .job;
    JobPlan::new(&job.spec).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}
