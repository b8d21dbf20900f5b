//! The topics a worker writes — results, dead letters, partials — must exist before it starts:
//! weir never creates a topic on use (`allow.auto.create.topics=false` on every client,
//! [`crate::kafka::AUTO_CREATE_TOPICS`]). A missing one is an error log line naming it, the
//! gauge `weir_output_topic_missing{topic,role}` at 1 and `/readyz` "output topic missing";
//! the worker looks again every [`RETRY`] until the topic appears (then it starts) or it is
//! stopped. A topic deleted while the worker runs fails its deliveries, so the partition and
//! then the worker stop with an error naming the topic; on restart it waits here.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, Producer};
use tracing::{error, info, warn};

use crate::http::Health;
use crate::kafka::ClientSettings;
use crate::metrics::OutputTopicLabels;
use crate::runtime::JobContext;

/// How often a missing output topic is looked for again.
pub const RETRY: Duration = Duration::from_secs(10);

/// Bound of one metadata request.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// What the brokers say of a topic.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// It exists.
    Exists,
    /// It does not exist.
    Missing,
    /// The brokers could not be asked, or answered something else (the message says what).
    Unknown(String),
}

/// Asks the brokers of `settings` whether `topic` exists, with those settings (so without
/// creating it: the request says `allow_auto_topic_creation=false`).
pub fn find(settings: &ClientSettings, topic: &str) -> Found {
    let producer: BaseProducer = match settings.config().create() {
        Ok(p) => p,
        Err(e) => return Found::Unknown(e.to_string()),
    };
    let md = match producer
        .client()
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
    {
        Ok(md) => md,
        Err(e) => return Found::Unknown(e.to_string()),
    };
    match md.topics().iter().find(|t| t.name() == topic) {
        None => Found::Missing,
        Some(t) => match t.error().map(RDKafkaErrorCode::from) {
            None => Found::Exists,
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Found::Missing,
            Some(code) => Found::Unknown(format!("{code:?}")),
        },
    }
}

/// The topics the job's workers write: (role, topic, client settings).
fn outputs(ctx: &JobContext) -> Vec<(&'static str, &str, &ClientSettings)> {
    let mut out = vec![("sink", ctx.spec.sink.kafka.topic.0.as_str(), &ctx.sink)];
    if let (Some(d), Some(settings)) = (&ctx.spec.dead_letter, &ctx.dead_letter) {
        out.push(("dead_letter", d.kafka.topic.0.as_str(), settings));
    }
    if let Some(m) = &ctx.merge {
        out.push(("repartition", m.topic.as_str(), &m.producer));
    }
    out
}

/// Waits until every output topic exists (see the module doc), beating `health` meanwhile.
/// `false` when the worker was stopped first. A topic whose existence cannot be told (brokers
/// unreachable, an unexpected answer) does not hold the start back: the clients retry on their
/// own and a failed delivery stops the worker with the reason.
pub fn wait_for_outputs(ctx: &JobContext, health: &Health) -> bool {
    loop {
        let mut missing = Vec::new();
        for (role, topic, settings) in outputs(ctx) {
            let found = find(settings, topic);
            let gauge = ctx
                .metrics
                .output_topic_missing
                .get_or_create(&OutputTopicLabels {
                    topic: topic.to_string(),
                    role: role.to_string(),
                });
            gauge.set(i64::from(found == Found::Missing));
            match found {
                Found::Exists => {}
                Found::Missing => {
                    // Before the log line, so that whoever reads it sees the state it reports.
                    health.set_not_ready("output topic missing");
                    error!(
                        topic,
                        role,
                        "the {role} topic {topic} does not exist; weir never creates topics: \
                         create it (or correct the StreamJob). Looking again every {}s",
                        RETRY.as_secs()
                    );
                    missing.push(topic.to_string());
                }
                Found::Unknown(why) => {
                    warn!(topic, role, %why, "cannot tell whether the {role} topic exists; starting");
                }
            }
        }
        if missing.is_empty() {
            info!("every output topic exists");
            return true;
        }
        let until = Instant::now() + RETRY;
        while Instant::now() < until {
            if ctx.stop.load(Ordering::Relaxed) {
                return false;
            }
            health.beat();
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
