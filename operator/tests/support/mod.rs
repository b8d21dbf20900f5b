//! Builders shared by the operator's tests.
#![allow(dead_code)]

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use weir_crds::StreamJob;
use weir_operator::desired::{desired, Desired, InvalidSpec, OperatorConfig};
use weir_operator::observation::{Observation, TopicObservation};

/// A valid job (`payments` in namespace `shop`, 3 workers, source credentials) with `extra`
/// YAML lines appended to its spec (later keys replace earlier ones).
pub fn job_with(extra: &str) -> StreamJob {
    let text = format!(
        "apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: payments, namespace: shop}}
spec:
  source: {{kafka: {{bootstrapServers: 'kafka:9092', topic: payments, credentials: {{secretName: kafka-creds}}}}}}
  groupByKey: true
  window: {{type: tumbling, size: 1m, allowedLateness: 10s}}
  aggregations: [{{name: payments, fn: count}}]
  sink: {{kafka: {{topic: payments-per-merchant}}}}
  parallelism: 3
{extra}"
    );
    let mut v: serde_norway::Value = serde_norway::from_str(&text).expect("fixture YAML");
    // Let `extra` replace keys: re-insert them over the base spec.
    if !extra.is_empty() {
        let extra: serde_norway::Value = serde_norway::from_str(extra).expect("extra YAML");
        if let (Some(spec), Some(extra)) = (v.get_mut("spec"), extra.as_mapping()) {
            for (k, val) in extra {
                spec.as_mapping_mut()
                    .expect("spec map")
                    .insert(k.clone(), val.clone());
            }
        }
    }
    let text = serde_norway::to_string(&v).expect("fixture YAML");
    let mut job = weir_crds::parse_stream_job(&text)
        .expect("fixture parses")
        .job;
    job.metadata.uid = Some("0b5e3c1e-1111-2222-3333-444455556666".to_string());
    job.metadata.generation = Some(1);
    job
}

pub fn job() -> StreamJob {
    job_with("")
}

pub fn found(partitions: i32) -> Observation {
    Observation::new(TopicObservation::Found {
        partitions,
        retention_ms: None,
    })
}

pub fn cfg() -> OperatorConfig {
    OperatorConfig {
        worker_image: "weir:test".to_string(),
        ..OperatorConfig::default()
    }
}

pub fn run(job: &StreamJob, obs: &Observation) -> Result<Desired, InvalidSpec> {
    desired(job, obs, &cfg())
}

pub fn ok(job: &StreamJob, obs: &Observation) -> Desired {
    match run(job, obs) {
        Ok(d) => d,
        Err(e) => panic!("unexpected InvalidSpec: {e}"),
    }
}

/// A StatefulSet as the API server would report it.
pub fn sts(
    generation: i64,
    observed_generation: i64,
    wanted: i32,
    replicas: i32,
    ready: i32,
    updated: i32,
) -> StatefulSet {
    StatefulSet {
        metadata: ObjectMeta {
            generation: Some(generation),
            ..ObjectMeta::default()
        },
        spec: Some(StatefulSetSpec {
            replicas: Some(wanted),
            ..StatefulSetSpec::default()
        }),
        status: Some(StatefulSetStatus {
            observed_generation: Some(observed_generation),
            replicas,
            ready_replicas: Some(ready),
            updated_replicas: Some(updated),
            current_revision: Some("r1".to_string()),
            update_revision: Some("r1".to_string()),
            ..StatefulSetStatus::default()
        }),
    }
}

/// A Kafka that always has the topic, with `partitions` partitions whose high watermarks are all
/// `high_watermark` (which a test may move, as records arrive: [`FixedKafka::set_high`]).
pub struct FixedKafka {
    pub partitions: i32,
    pub high_watermark: std::sync::atomic::AtomicI64,
}

impl FixedKafka {
    pub fn new(partitions: i32, high_watermark: i64) -> FixedKafka {
        FixedKafka {
            partitions,
            high_watermark: std::sync::atomic::AtomicI64::new(high_watermark),
        }
    }

    /// Every partition's high watermark is now `high`.
    pub fn set_high(&self, high: i64) {
        self.high_watermark
            .store(high, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl weir_operator::kafka::KafkaClient for FixedKafka {
    async fn topic(
        &self,
        _conn: &weir_operator::observation::KafkaConnection,
        _topic: &str,
    ) -> TopicObservation {
        TopicObservation::Found {
            partitions: self.partitions,
            retention_ms: None,
        }
    }

    async fn high_watermarks(
        &self,
        _conn: &weir_operator::observation::KafkaConnection,
        _topic: &str,
        partitions: i32,
    ) -> Result<Vec<i64>, String> {
        let high = self
            .high_watermark
            .load(std::sync::atomic::Ordering::SeqCst);
        Ok(vec![high; partitions as usize])
    }

    /// Never called: every topic exists.
    async fn create_topic(
        &self,
        _conn: &weir_operator::observation::KafkaConnection,
        topic: &weir_crds::plan::NewTopic,
    ) -> Result<(), weir_operator::kafka::KafkaFailure> {
        Err(weir_operator::kafka::KafkaFailure::Refused(format!(
            "FixedKafka has every topic; asked to create {}",
            topic.name
        )))
    }

    async fn delete_topic(
        &self,
        _conn: &weir_operator::observation::KafkaConnection,
        _topic: &str,
    ) -> Result<(), weir_operator::kafka::KafkaFailure> {
        Ok(())
    }
}
