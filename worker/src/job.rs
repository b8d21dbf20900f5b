//! Running a job's partitions: in a pod (`weir worker`, partitions from the assignment the
//! operator publishes) or all on this machine (`weir run JOB.yaml`, local mode).
//!
//! Both start the same partition threads ([`crate::runtime`]); they differ only in where the
//! assignment, the epoch and the checkpoint store come from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use tracing::{error, info};
pub use weir_crds::assignment::Assignment;
use weir_crds::{StreamJob, StreamJobSpec};
use weir_engine::JobPlan;

use crate::checkpoint::{
    CheckpointStore, ConfigMapStore, DirStore, ObjectStoreConfig, ObjectStoreStore,
};
use crate::http::{self, Health};
use crate::kafka;
use crate::metrics::Metrics;
use crate::runtime::{self, JobContext, PartitionEnd, RuntimeError, Totals};

/// A StreamJob file, parsed and validated: every problem is one line for the user.
pub fn load_job(path: &Path) -> Result<(StreamJob, JobPlan), Vec<String>> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{shown}: {e}")])?;
    let parsed = weir_crds::parse_stream_job(&text).map_err(|e| vec![format!("{shown}: {e}")])?;
    if !parsed.unknown_fields.is_empty() {
        return Err(parsed
            .unknown_fields
            .iter()
            .map(|f| format!("{shown}: {f}: unknown field (check its spelling)"))
            .collect());
    }
    let plan = JobPlan::new(&parsed.job.spec).map_err(|errors| {
        errors
            .0
            .iter()
            .map(|e| format!("{shown}: {e}"))
            .collect::<Vec<_>>()
    })?;
    Ok((parsed.job, plan))
}

/// Options shared by both ways of running.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Brokers to use instead of every bootstrapServers of the spec (local mode).
    pub bootstrap: Option<String>,
    /// Keep checkpoints in this directory (one subdirectory per job) instead of the spec's store.
    pub checkpoint_dir: Option<PathBuf>,
    /// Serve /metrics, /healthz and /readyz here.
    pub listen: Option<SocketAddr>,
    /// Print results to stdout as they are sent.
    pub echo: bool,
    /// Print a progress line to stderr every this often.
    pub progress_every: Option<Duration>,
}

fn job_name(job: &StreamJob) -> String {
    job.metadata
        .name
        .clone()
        .unwrap_or_else(|| "streamjob".to_string())
}

/// The second stage this process runs, for a two-stage job.
#[derive(Clone, Debug)]
pub struct MergePlan {
    /// The repartition topic.
    pub topic: String,
    /// Its partition count.
    pub partitions: i32,
    /// Partitions of the source topic.
    pub sources: i32,
    /// The repartition partitions this process merges.
    pub mine: Vec<i32>,
}

/// Where a stage's checkpoints live under the job's: stage 1 at the top, stage 2 below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    One,
    Two,
}

/// The checkpoint store: `--checkpoint-dir` if given, else the spec's (a ConfigMap store only
/// inside a cluster). Stage 2 keeps its checkpoints apart: `merge/` under the job's directory
/// or object-store prefix, ConfigMaps `<job>-merge-checkpoint-<partition>`.
async fn open_store(
    job: &StreamJob,
    opts: &RunOptions,
    in_cluster: bool,
    stage: Stage,
) -> anyhow::Result<Arc<dyn CheckpointStore>> {
    let name = job_name(job);
    if let Some(dir) = &opts.checkpoint_dir {
        let dir = dir.join(&name);
        let dir = if stage == Stage::Two {
            dir.join(weir_crds::checkpoint::MERGE_LOCATION)
        } else {
            dir
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the checkpoint directory {}", dir.display()))?;
        return Ok(Arc::new(DirStore::new(dir)));
    }
    let store = &job.spec.checkpoint.store;
    if let Some(o) = &store.object_store {
        // Credentials from the environment: the operator mounts the spec's Secret there.
        let config = ObjectStoreConfig {
            from_env: true,
            ..match stage {
                Stage::One => ObjectStoreConfig::for_job(o, &name),
                Stage::Two => ObjectStoreConfig::for_merge(o, &name),
            }
        };
        return Ok(Arc::new(ObjectStoreStore::new(&config)?));
    }
    if !in_cluster {
        bail!(
            "this job keeps checkpoints in ConfigMaps, which need a cluster; \
             pass --checkpoint-dir DIR to keep them in a local directory"
        );
    }
    let namespace = std::env::var("WEIR_NAMESPACE")
        .ok()
        .or_else(|| job.metadata.namespace.clone())
        .unwrap_or_else(|| "default".to_string());
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API for ConfigMap checkpoints")?;
    let prefix = match stage {
        Stage::One => format!("{name}-checkpoint"),
        Stage::Two => format!("{name}-merge-checkpoint"),
    };
    Ok(Arc::new(ConfigMapStore::new(client, &namespace, &prefix)))
}

/// Partition count of the source topic (Kafka metadata), with an error a person can act on.
pub fn partition_count(settings: &kafka::ClientSettings, topic: &str) -> anyhow::Result<i32> {
    let consumer: BaseConsumer = settings
        .config()
        .create()
        .context("creating a Kafka client")?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .with_context(|| {
            format!(
                "reading metadata of topic {topic} from {}",
                settings.get("bootstrap.servers").unwrap_or("?")
            )
        })?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        bail!("topic {topic} not found");
    };
    if let Some(e) = t.error() {
        bail!(
            "topic {topic}: {:?} (does it exist on {}?)",
            rdkafka::error::RDKafkaErrorCode::from(e),
            settings.get("bootstrap.servers").unwrap_or("?")
        );
    }
    if t.partitions().is_empty() {
        bail!("topic {topic} has no partitions");
    }
    Ok(t.partitions().len() as i32)
}

/// Run `partitions` of the job until stopped (SIGTERM/SIGINT) or until a partition fails.
/// Fenced partitions stop alone; the others go on.
#[allow(clippy::too_many_arguments)]
pub fn run(
    job: &StreamJob,
    plan: JobPlan,
    partitions: Vec<i32>,
    merge: Option<MergePlan>,
    epoch: i64,
    owner: String,
    opts: &RunOptions,
    in_cluster: bool,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let name = job_name(job);
    let spec: &StreamJobSpec = &job.spec;
    let store = rt.block_on(open_store(job, opts, in_cluster, Stage::One))?;
    let merge_ctx = match &merge {
        Some(m) => Some(runtime::MergeContext {
            topic: m.topic.clone(),
            partitions: m.partitions,
            sources: m.sources,
            producer: kafka::repartition_settings(spec, &name, &m.topic)?,
            store: rt.block_on(open_store(job, opts, in_cluster, Stage::Two))?,
        }),
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(Duration::from_secs(30)));
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = Arc::new(JobContext {
        name: name.clone(),
        spec: spec.clone(),
        plan,
        source: kafka::source_settings(spec, &name)?,
        sink: kafka::sink_settings(spec, &name)?,
        dead_letter: kafka::dead_letter_settings(spec, &name)?,
        store,
        checkpoint_interval: JobContext::interval_of(spec),
        epoch,
        owner: owner.clone(),
        metrics: metrics.clone(),
        echo: opts.echo,
        stop: stop.clone(),
        totals: Arc::new(Totals::default()),
        merge: merge_ctx,
        idle_timeout: JobContext::idle_timeout_of(spec),
    });
    info!(
        job = %name,
        owner = %owner,
        epoch,
        partitions = ?partitions,
        merge_partitions = ?merge.as_ref().map(|m| &m.mine),
        store = %ctx.store.describe(),
        "starting"
    );

    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = opts.listen {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("listening on {addr}"))?;
        info!(addr = %listener.local_addr().unwrap_or(addr), "serving /metrics, /healthz, /readyz");
        let (m, h) = (metrics.clone(), health.clone());
        rt.spawn(async move {
            let shutdown = async move {
                let _ = http_stop_rx.await;
            };
            if let Err(e) = http::serve(listener, m, h, shutdown).await {
                error!(error = %e, "HTTP server failed");
            }
        });
    }
    {
        let stop = stop.clone();
        rt.spawn(async move {
            wait_for_signal().await;
            info!("stopping: flushing results and writing final checkpoints");
            stop.store(true, Ordering::Relaxed);
        });
    }

    let merge_mine = merge.map(|m| m.mine).unwrap_or_default();
    metrics
        .partitions_owned
        .set((partitions.len() + merge_mine.len()) as i64);
    let mut threads = BTreeMap::new();
    for p in &partitions {
        let handle = runtime::spawn_partition(ctx.clone(), rt.handle().clone(), *p)
            .context("starting a partition thread")?;
        threads.insert((1, *p), handle);
    }
    for p in &merge_mine {
        let handle = runtime::spawn_merge_partition(ctx.clone(), rt.handle().clone(), *p)
            .context("starting a repartition partition thread")?;
        threads.insert((2, *p), handle);
    }

    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut last_records = 0u64;
    let mut failure: Option<RuntimeError> = None;
    let mut fenced = Vec::new();
    let total = (partitions.len() + merge_mine.len()) as u64;
    while !threads.is_empty() {
        std::thread::sleep(Duration::from_millis(200));
        health.beat();
        let totals = &ctx.totals;
        if totals.caught_up.load(Ordering::Relaxed) >= total {
            health.set_ready();
        }
        let done: Vec<(u8, i32)> = threads
            .iter()
            .filter(|(_, h)| h.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for key in done {
            let Some(h) = threads.remove(&key) else {
                continue;
            };
            let p = key.1;
            match h.join() {
                Ok(Ok(PartitionEnd::Stopped)) => {}
                Ok(Ok(PartitionEnd::Fenced(e))) => {
                    metrics.partitions_owned.dec();
                    fenced.push(e.to_string());
                }
                Ok(Err(e)) => {
                    error!(error = %e, "partition failed; stopping the worker");
                    stop.store(true, Ordering::Relaxed);
                    failure.get_or_insert(e);
                }
                Err(_) => {
                    stop.store(true, Ordering::Relaxed);
                    failure.get_or_insert(RuntimeError::Panicked { partition: p });
                }
            }
        }
        if let Some(every) = opts.progress_every {
            if last_progress.elapsed() >= every {
                let records = totals.records.load(Ordering::Relaxed);
                let rate = (records - last_records) as f64 / last_progress.elapsed().as_secs_f64();
                // Two-stage jobs: how far the second stage is behind the first.
                let exchanged = totals.exchanged.load(Ordering::Relaxed);
                let stage2 = if exchanged > 0 {
                    let merged = totals.merged.load(Ordering::Relaxed);
                    format!("  stage 2: {merged} of {exchanged} partials and markers merged")
                } else {
                    String::new()
                };
                eprintln!(
                    "weir: {:>6.0}s  {:>9.0} records/s  {} records  {} results  {} rejected  lag {}{stage2}",
                    started.elapsed().as_secs_f64(),
                    rate,
                    records,
                    totals.results.load(Ordering::Relaxed),
                    totals.rejected.load(Ordering::Relaxed),
                    totals.lag(),
                );
                last_records = records;
                last_progress = Instant::now();
            }
        }
    }
    let _ = http_stop_tx.send(());
    rt.shutdown_timeout(Duration::from_secs(2));
    if let Some(e) = failure {
        return Err(e.into());
    }
    if !fenced.is_empty() {
        // The assignment this worker started with is out of date; exiting lets the pod restart
        // and read the new one.
        bail!(
            "{} partition(s) were taken over by a newer owner, so this worker's assignment is \
             out of date: {}",
            fenced.len(),
            fenced.join("; ")
        );
    }
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `weir worker`: this pod's partitions from the published assignment.
pub fn worker(
    job: &StreamJob,
    plan: JobPlan,
    assignment: &Assignment,
    ordinal: usize,
    owner: String,
    opts: &RunOptions,
) -> anyhow::Result<()> {
    let Some(partitions) = assignment.workers.get(ordinal) else {
        bail!(
            "ordinal {ordinal} has no entry in the assignment ({} workers); \
             the StatefulSet has more replicas than the assignment",
            assignment.workers.len()
        );
    };
    if !job.spec.co_partitioned() && assignment.merge.is_none() {
        bail!(
            "this job's groups may span partitions, so it runs in two stages, but the \
             assignment has no second stage (an operator older than this worker?)"
        );
    }
    let merge = assignment.merge.as_ref().map(|m| MergePlan {
        topic: m.topic.clone(),
        partitions: m.workers.iter().map(Vec::len).sum::<usize>() as i32,
        sources: m.sources,
        mine: m.workers.get(ordinal).cloned().unwrap_or_default(),
    });
    run(
        job,
        plan,
        partitions.clone(),
        merge,
        assignment.epoch,
        owner,
        opts,
        true,
    )
}

/// The ordinal of a StatefulSet pod from its name (`name-3` → 3).
pub fn ordinal_from_hostname(host: &str) -> Option<usize> {
    host.rsplit_once('-').and_then(|(_, n)| n.parse().ok())
}

/// Local mode: every partition of the topic in this process, split over `parallelism` tasks
/// as the operator would split them over pods. Checkpoints default to `.weir/checkpoints`.
pub fn local(job: &StreamJob, plan: JobPlan, opts: &RunOptions) -> anyhow::Result<()> {
    let mut job = job.clone();
    if let Some(b) = &opts.bootstrap {
        let spec = &mut job.spec;
        spec.source.kafka.bootstrap_servers = b.clone();
        spec.sink.kafka.bootstrap_servers = None;
        if let Some(d) = &mut spec.dead_letter {
            d.kafka.bootstrap_servers = None;
        }
    }
    let job = &job;
    let name = job_name(job);
    let source = kafka::source_settings(&job.spec, &name)?;
    let topic = &job.spec.source.kafka.topic.0;
    let count = partition_count(&source, topic)?;
    let tasks = (job.spec.parallelism.max(1) as usize).min(count as usize);
    let epoch = runtime::local_epoch();
    let assignment = Assignment::round_robin(count, tasks, epoch);
    eprintln!(
        "weir: {name}: topic {topic} has {count} partitions, {tasks} task(s): {:?}",
        assignment.workers
    );
    let mut opts = opts.clone();
    if opts.checkpoint_dir.is_none() && job.spec.checkpoint.store.object_store.is_none() {
        opts.checkpoint_dir = Some(PathBuf::from(".weir/checkpoints"));
    }
    // One process, so one set of threads; the tasks are the assignment's grouping.
    let partitions: Vec<i32> = (0..count).collect();
    let merge = if job.spec.co_partitioned() {
        None
    } else {
        let topic = weir_crds::repartition_topic(job.metadata.namespace.as_deref(), &name);
        let wanted = job.spec.repartition.partitions.unwrap_or(count);
        let bootstrap = source
            .get("bootstrap.servers")
            .unwrap_or_default()
            .to_string();
        let replication = job.spec.repartition.replication_factor;
        crate::tools::create_topic_with(&source, &topic, wanted, replication)
            .with_context(|| format!("creating the repartition topic {topic} on {bootstrap}"))?;
        let partitions = partition_count(&source, &topic)?;
        if partitions != wanted {
            eprintln!(
                "weir: {name}: the repartition topic {topic} exists with {partitions} partitions \
                 (not {wanted}); using it as it is"
            );
        }
        eprintln!(
            "weir: {name}: groups may span partitions: two stages, through {topic} \
             ({partitions} partitions)"
        );
        Some(MergePlan {
            topic,
            partitions,
            sources: count,
            mine: (0..partitions).collect(),
        })
    };
    run(
        job,
        plan,
        partitions,
        merge,
        epoch,
        "local".to_string(),
        &opts,
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_come_from_statefulset_pod_names() {
        assert_eq!(ordinal_from_hostname("payments-worker-3"), Some(3));
        assert_eq!(ordinal_from_hostname("payments"), None);
    }
}
