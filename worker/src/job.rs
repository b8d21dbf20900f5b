//! Running a job's partitions: in a pod (`weir worker`, partitions from the assignment the
//! operator publishes) or all on this machine (`weir run JOB.yaml`, local mode).
//!
//! Both start the same partition threads ([`crate::partition`]) and supervise them
//! ([`supervise_partitions`]); they differ only in where the assignment, the epoch and the
//! checkpoint store come from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::{error, info, warn};
pub use weir_crds::assignment::Assignment;
use weir_crds::plan;
use weir_crds::{StreamJob, StreamJobSpec};
use weir_engine::JobPlan;

use weir_objstore::OpenObjectStoreError;

use crate::checkpoint::{
    CheckpointStore, ConfigMapStore, DirStore, LegacyAccess, MigratingStore, ObjectStoreConfig,
    ObjectStoreStore, StoreError,
};
use crate::group::GroupCommitter;
use crate::http::{self, Health};
use crate::kafka::{self, SettingsError};
use crate::merge::MergeSettings;
use crate::metrics::Metrics;
use crate::partition::Stage;
use crate::runtime::{self, JobContext, Totals};
use crate::supervise::{self, AssignmentFile, Ended, Follow, Ownership};
use crate::tools::ToolError;

/// Why a job could not run, or stopped with an error. The message says what was being done;
/// the cause follows as the error's source.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The async runtime could not start.
    #[error("starting the async runtime")]
    StartRuntime(#[source] std::io::Error),
    /// `--checkpoint-dir` could not be created.
    #[error("creating the checkpoint directory {}", path.display())]
    CreateCheckpointDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The spec's object store could not be opened.
    #[error(transparent)]
    OpenObjectStore(#[from] OpenObjectStoreError),
    /// ConfigMap checkpoints outside a cluster.
    #[error(
        "this job keeps checkpoints in ConfigMaps, which need a cluster; \
         pass --checkpoint-dir DIR to keep them in a local directory"
    )]
    ConfigMapsNeedACluster,
    /// No Kubernetes client for ConfigMap checkpoints.
    #[error("connecting to the Kubernetes API for ConfigMap checkpoints")]
    ConnectKubernetes(#[source] Box<kube::Error>),
    /// A Kafka client's settings could not be put together.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// A Kafka client for metadata could not be created.
    #[error("creating a Kafka client")]
    CreateClient(#[source] Box<KafkaError>),
    /// A topic's metadata could not be read.
    #[error("reading metadata of topic {topic} from {bootstrap}")]
    ReadMetadata {
        /// The topic.
        topic: String,
        /// The brokers asked.
        bootstrap: String,
        /// Cause.
        #[source]
        source: Box<KafkaError>,
    },
    /// The topic is not in the metadata.
    #[error("topic {0} not found")]
    TopicNotFound(String),
    /// The metadata has an error for the topic.
    #[error("topic {topic}: {code:?} (does it exist on {bootstrap}?)")]
    TopicError {
        /// The topic.
        topic: String,
        /// The brokers asked.
        bootstrap: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
    /// The topic has no partitions.
    #[error("topic {0} has no partitions")]
    NoPartitions(String),
    /// Local mode could not read the merge stage's checkpoints (to find the topic they name).
    #[error("reading the merge stage's checkpoints")]
    ReadMergeCheckpoint(#[source] StoreError),
    /// Local mode could not create the repartition topic.
    #[error("creating the repartition topic {topic} on {bootstrap}")]
    CreateRepartitionTopic {
        /// The topic.
        topic: String,
        /// The brokers.
        bootstrap: String,
        /// Cause.
        #[source]
        source: Box<ToolError>,
    },
    /// The HTTP address could not be bound.
    #[error("listening on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A partition thread could not be started.
    #[error("starting a {what} thread")]
    SpawnThread {
        /// "partition", "repartition partition".
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Partitions were taken over by a newer owner.
    #[error(
        "{count} partition(s) were taken over by a newer owner, so this worker's assignment is \
         out of date: {details}"
    )]
    Fenced {
        /// How many.
        count: usize,
        /// Each fencing error, joined by "; ".
        details: String,
    },
    /// The assignment changed shape while running.
    #[error(
        "the assignment changed shape (from {from} to {to}); the worker stopped every \
         partition with a final checkpoint, and starts again with the new one"
    )]
    Reshaped {
        /// The shape it ran.
        from: String,
        /// The new one.
        to: String,
    },
    /// A two-stage job whose assignment has no merge stage.
    #[error(
        "this job's groups may span partitions, so it runs in two stages, but the \
         assignment has no second stage (an operator older than this worker?)"
    )]
    NoMergeStage,
}

/// A StreamJob file, parsed and validated: every problem is one line for the user.
pub fn load_job(path: &Path) -> Result<(StreamJob, JobPlan), Vec<String>> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{shown}: {e}")])?;
    let in_file = |problems: Vec<String>| {
        problems
            .iter()
            .map(|p| format!("{shown}: {p}"))
            .collect::<Vec<_>>()
    };
    // Unknown fields and validation problems together, so one run shows every fix to make.
    let job = weir_crds::check_stream_job(&text).map_err(in_file)?;
    let plan = JobPlan::new(&job.spec)
        .map_err(|errors| in_file(errors.0.iter().map(ToString::to_string).collect()))?;
    Ok((job, plan))
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
    /// The worker's bound on open (group, window) rows, shared by its partitions of both
    /// stages (`None`: no bound). See docs/running.md.
    pub max_open_rows: Option<usize>,
    /// How long a partition an assignment gives this worker waits for its previous owner's
    /// release (docs/checkpoints.md, "Handoff"); local mode: zero.
    pub handoff_timeout: Duration,
}

/// Bytes a worker budgets per open (group, window) row when it derives its bound from its
/// memory limit: above the largest measured (1,155 bytes, sessions with every aggregation;
/// docs/running.md).
pub const ROW_BYTES: u64 = 1_200;

/// The default bound on open rows: half the container's memory limit (cgroup v2
/// `memory.max`, or v1 `memory.limit_in_bytes`) at [`ROW_BYTES`] a row; `None` without a limit.
pub fn default_max_open_rows() -> Option<usize> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|t| t.trim().parse::<u64>().ok())
    // cgroup v1 writes a huge number for "no limit".
    .filter(|bytes| *bytes < 1 << 50)
    .map(|bytes| usize::try_from(bytes / 2 / ROW_BYTES).unwrap_or(usize::MAX))
}

fn job_name(job: &StreamJob) -> String {
    job.metadata
        .name
        .clone()
        .unwrap_or_else(|| "streamjob".to_string())
}

/// The job's namespace: in a cluster the operator sets the pod's; a local run has the file's,
/// if any.
fn job_namespace(job: &StreamJob) -> Option<String> {
    std::env::var(weir_crds::pod::env::NAMESPACE)
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| job.metadata.namespace.clone())
}

/// How this process runs a job, whichever way it was started.
struct Launch<'a> {
    job: &'a StreamJob,
    plan: JobPlan,
    opts: &'a RunOptions,
    /// Inside a cluster (ConfigMap checkpoints possible).
    in_cluster: bool,
    epoch: i64,
    owner: String,
    rt: tokio::runtime::Runtime,
}

fn async_runtime() -> Result<tokio::runtime::Runtime, JobError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(JobError::StartRuntime)
}

/// The checkpoint store of `stage`, whose records are of `topic`: `--checkpoint-dir` if given,
/// else the spec's (a ConfigMap store only inside a cluster). The merge stage keeps its
/// checkpoints apart: `merge/` under the job's directory or object-store prefix, ConfigMaps
/// `<job>-checkpoint-merge-<partition>`. Where the previous version kept them elsewhere (object
/// storage without the namespace, the merge stage's ConfigMaps `<job>-merge-checkpoint-<p>`),
/// the store resumes from there ([`MigratingStore`], docs/checkpoints.md "Migration").
async fn open_store(
    job: &StreamJob,
    opts: &RunOptions,
    in_cluster: bool,
    stage: Stage,
    topic: &str,
) -> Result<Arc<dyn CheckpointStore>, JobError> {
    let name = job_name(job);
    if let Some(dir) = &opts.checkpoint_dir {
        let dir = dir.join(&name);
        let dir = if stage == Stage::Merge {
            dir.join(weir_crds::checkpoint::MERGE_LOCATION)
        } else {
            dir
        };
        std::fs::create_dir_all(&dir).map_err(|source| JobError::CreateCheckpointDir {
            path: dir.clone(),
            source,
        })?;
        return Ok(Arc::new(DirStore::new(dir)));
    }
    let namespace = job_namespace(job);
    let store = &job.spec.checkpoint.store;
    if let Some(o) = &store.object_store {
        // Credentials from the environment: the operator mounts the spec's Secret there.
        let open = |config: ObjectStoreConfig| {
            let config = ObjectStoreConfig {
                from_env: true,
                ..match stage {
                    Stage::Source => config,
                    Stage::Merge => config.merge(),
                }
            };
            ObjectStoreStore::new(&config)
        };
        let current = open(ObjectStoreConfig::for_job(o, namespace.as_deref(), &name))?;
        let legacy = open(ObjectStoreConfig::legacy_for_job(o, &name))?;
        // A local run without a namespace may find a cluster job's record at the legacy
        // location (they shared it): it resumes from it but never claims it, which with its
        // wall-clock epoch would fence that job out.
        let access = if namespace.is_some() {
            LegacyAccess::Claim
        } else {
            LegacyAccess::Read
        };
        return Ok(Arc::new(MigratingStore::new(
            Arc::new(current),
            Arc::new(legacy),
            topic,
            access,
        )));
    }
    if !in_cluster {
        return Err(JobError::ConfigMapsNeedACluster);
    }
    let namespace = namespace.unwrap_or_else(|| "default".to_string());
    let client = kube::Client::try_default()
        .await
        .map_err(|e| JobError::ConnectKubernetes(Box::new(e)))?;
    let store = |prefix: String| ConfigMapStore::new(client.clone(), &namespace, &prefix);
    Ok(match stage {
        Stage::Source => Arc::new(store(weir_crds::names::checkpoint_prefix(&name))),
        // The Role grants only `get` on the legacy names (docs/checkpoints.md "Migration").
        Stage::Merge => Arc::new(MigratingStore::new(
            Arc::new(store(weir_crds::names::merge_checkpoint_prefix(&name))),
            Arc::new(store(weir_crds::names::legacy_merge_checkpoint_prefix(
                &name,
            ))),
            topic,
            LegacyAccess::Read,
        )),
    })
}

/// Partition count of the source topic (Kafka metadata), with an error a person can act on.
pub fn partition_count(settings: &kafka::ClientSettings, topic: &str) -> Result<i32, JobError> {
    let bootstrap = || settings.get("bootstrap.servers").unwrap_or("?").to_string();
    let consumer: BaseConsumer = settings
        .config()
        .create()
        .map_err(|e| JobError::CreateClient(Box::new(e)))?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .map_err(|source| JobError::ReadMetadata {
            topic: topic.to_string(),
            bootstrap: bootstrap(),
            source: Box::new(source),
        })?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Err(JobError::TopicNotFound(topic.to_string()));
    };
    if let Some(e) = t.error() {
        return Err(JobError::TopicError {
            topic: topic.to_string(),
            bootstrap: bootstrap(),
            code: RDKafkaErrorCode::from(e),
        });
    }
    if t.partitions().is_empty() {
        return Err(JobError::NoPartitions(topic.to_string()));
    }
    Ok(t.partitions().len() as i32)
}

/// The merge stage's settings: the repartition topic's shape, the partitions this process
/// merges, the producer the source partitions write it with, and the merge stage's store.
fn merge_settings(
    launch: &Launch<'_>,
    topic: String,
    partitions: i32,
    sources: i32,
    mine: Vec<i32>,
) -> Result<MergeSettings, JobError> {
    let (job, opts) = (launch.job, launch.opts);
    let producer = kafka::repartition_settings(&job.spec, &job_name(job), &topic)?;
    let store = launch.rt.block_on(open_store(
        job,
        opts,
        launch.in_cluster,
        Stage::Merge,
        &topic,
    ))?;
    Ok(MergeSettings {
        topic,
        partitions,
        sources,
        mine,
        producer,
        partials: Default::default(),
        store,
    })
}

/// What every partition thread shares.
fn job_context(
    launch: &Launch<'_>,
    merge: Option<MergeSettings>,
    stop: Arc<AtomicBool>,
) -> Result<JobContext, JobError> {
    let (job, opts) = (launch.job, launch.opts);
    let name = job_name(job);
    let spec: &StreamJobSpec = &job.spec;
    let store = launch.rt.block_on(open_store(
        job,
        opts,
        launch.in_cluster,
        Stage::Source,
        &spec.source.kafka.topic.0,
    ))?;
    let source = kafka::source_settings(spec, &name)?;
    let metrics = Arc::new(Metrics::new());
    let group = weir_crds::topics::consumer_group(job_namespace(job).as_deref(), &name);
    let failures = metrics.group_commit_failures.clone();
    let progress_group = match GroupCommitter::start(&source, &group, move || {
        failures.inc();
    }) {
        Ok(g) => Some(g),
        Err(e) => {
            warn!(group, error = %e, "no client for committing progress to the job's consumer group; Kafka tools will not see the job's lag");
            None
        }
    };
    Ok(JobContext {
        name: name.clone(),
        spec: spec.clone(),
        plan: launch.plan.clone(),
        source,
        sink: kafka::sink_settings(spec, &name)?,
        dead_letter: kafka::dead_letter_settings(spec, &name)?,
        store,
        checkpoint_interval: JobContext::interval_of(spec),
        epoch: launch.epoch,
        owner: launch.owner.clone(),
        metrics,
        echo: opts.echo,
        stop,
        totals: Arc::new(Totals::default()),
        merge,
        rows: crate::budget::RowBudget::new(launch.opts.max_open_rows),
        progress_group,
    })
}

/// Serve /metrics, /healthz and /readyz on `addr` until `stopped` fires.
fn serve_http(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), JobError> {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(addr))
        .map_err(|source| JobError::Listen { addr, source })?;
    info!(addr = %listener.local_addr().unwrap_or(addr), "serving /metrics, /healthz, /readyz");
    rt.spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) = http::serve(listener, metrics, health, shutdown).await {
            error!(error = %e, "HTTP server failed");
        }
    });
    Ok(())
}

/// Run the partitions `own` names (both stages) until stopped (SIGTERM/SIGINT), following the
/// assignment when `own` has one to follow ([`crate::supervise`]).
fn supervise_partitions(
    launch: Launch<'_>,
    own: Ownership,
    merge: Option<MergeSettings>,
) -> Result<(), JobError> {
    let stop = Arc::new(AtomicBool::new(false));
    let of_stage = |stage: Stage| -> Vec<i32> {
        own.mine
            .iter()
            .filter(|k| k.0 == stage)
            .map(|k| k.1)
            .collect()
    };
    let (sources, merges) = (of_stage(Stage::Source), of_stage(Stage::Merge));
    let ctx = Arc::new(job_context(&launch, merge, stop.clone())?);
    let bound = ctx
        .rows
        .limit()
        .map_or(0, |r| i64::try_from(r).unwrap_or(i64::MAX));
    ctx.metrics.open_rows_limit.set(bound);
    info!(
        job = %ctx.name,
        owner = %ctx.owner,
        epoch = own.epoch,
        partitions = ?sources,
        merge_partitions = ?merges,
        store = %ctx.store.describe(),
        "starting"
    );
    let rt = launch.rt;
    let metrics = ctx.metrics.clone();
    let health = Arc::new(Health::new(Duration::from_secs(30)));
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = launch.opts.listen {
        serve_http(&rt, addr, metrics.clone(), health.clone(), http_stop_rx)?;
    }
    {
        let stop = stop.clone();
        rt.spawn(async move {
            wait_for_signal().await;
            info!("stopping: flushing results and writing final checkpoints");
            stop.store(true, Ordering::Relaxed);
        });
    }
    if !crate::topics::wait_for_outputs(&ctx, &health) {
        let _ = http_stop_tx.send(());
        return Ok(());
    }
    let outcome = supervise::run(&ctx, &rt, &health, own, launch.opts.progress_every);
    let _ = http_stop_tx.send(());
    rt.shutdown_timeout(Duration::from_secs(2));
    outcome.map_err(|ended| match ended {
        Ended::Spawn(source) => JobError::SpawnThread {
            what: "partition",
            source,
        },
        Ended::Fenced(details) => JobError::Fenced {
            count: details.len(),
            details: details.join("; "),
        },
        Ended::Reshaped(from, to) => JobError::Reshaped {
            from: format!("{from:?}"),
            to: format!("{to:?}"),
        },
    })
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

/// `weir worker`: this pod's partitions from the published assignment, followed as it changes
/// (`file`, read again every second).
pub fn worker(
    job: &StreamJob,
    plan: JobPlan,
    (file, assignment): (AssignmentFile, Assignment),
    ordinal: usize,
    owner: String,
    opts: &RunOptions,
) -> Result<(), JobError> {
    if !job.spec.co_partitioned() && assignment.merge.is_none() {
        return Err(JobError::NoMergeStage);
    }
    if assignment.workers.get(ordinal).is_none() {
        info!(
            ordinal,
            workers = assignment.workers.len(),
            "this ordinal has no partitions in the assignment (more pods than workers, or a \
             scale-down under way); waiting for an assignment that gives it some"
        );
    }
    let launch = Launch {
        job,
        plan,
        opts,
        in_cluster: true,
        epoch: assignment.epoch,
        owner,
        rt: async_runtime()?,
    };
    let merge = match &assignment.merge {
        Some(m) => Some(merge_settings(
            &launch,
            m.topic.clone(),
            m.workers.iter().map(Vec::len).sum::<usize>() as i32,
            m.sources,
            m.workers.get(ordinal).cloned().unwrap_or_default(),
        )?),
        None => None,
    };
    let own = Ownership {
        mine: supervise::owned(&assignment, ordinal),
        epoch: assignment.epoch,
        handoff_timeout: opts.handoff_timeout,
        follow: Some(Follow {
            file,
            ordinal,
            shape: assignment.shape(),
        }),
    };
    supervise_partitions(launch, own, merge)
}

/// The ordinal of a StatefulSet pod from its name (`name-3` → 3).
pub fn ordinal_from_hostname(host: &str) -> Option<usize> {
    host.rsplit_once('-').and_then(|(_, n)| n.parse().ok())
}

/// Local mode: every partition of the topic in this process, split over `parallelism` tasks
/// as the operator would split them over pods. Checkpoints default to `.weir/checkpoints`.
pub fn local(job: &StreamJob, plan: JobPlan, opts: &RunOptions) -> Result<(), JobError> {
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
    let tasks = plan::worker_count(&job.spec, count);
    let epoch = runtime::local_epoch();
    let mut opts = opts.clone();
    if opts.checkpoint_dir.is_none() && job.spec.checkpoint.store.object_store.is_none() {
        opts.checkpoint_dir = Some(PathBuf::from(".weir/checkpoints"));
    }
    let launch = Launch {
        job,
        plan,
        opts: &opts,
        in_cluster: false,
        epoch,
        owner: "local".to_string(),
        rt: async_runtime()?,
    };
    // Planned as the operator plans it (weir_crds::plan): the same tasks, the same repartition
    // topic with the same partition count and configs.
    let repartition = if job.spec.co_partitioned() {
        None
    } else {
        Some(local_repartition_topic(&launch, &source, count)?)
    };
    let (repartition_name, merge_partitions) = match &repartition {
        Some((topic, n)) => (topic.as_str(), *n),
        None => ("", 0),
    };
    let assignment = plan::assignment(
        &job.spec,
        repartition_name,
        count,
        tasks,
        merge_partitions,
        epoch,
    );
    eprintln!(
        "weir: {name}: topic {topic} has {count} partitions, {tasks} task(s): {:?}",
        assignment.workers
    );
    // One process, so one set of threads; the tasks are the assignment's grouping.
    let merge = match repartition {
        Some((topic, n)) => Some(merge_settings(&launch, topic, n, count, (0..n).collect())?),
        None => None,
    };
    let merge_keys = merge.as_ref().map_or(0, |m| m.partitions);
    let own = Ownership {
        mine: (0..count)
            .map(|p| (Stage::Source, p))
            .chain((0..merge_keys).map(|p| (Stage::Merge, p)))
            .collect(),
        epoch,
        handoff_timeout: Duration::ZERO,
        follow: None,
    };
    supervise_partitions(launch, own, merge)
}

/// Local mode, two-stage job: the repartition topic, by the operator's rule
/// ([`weir_crds::topics::repartition_topic_in_use`], with no assignment to read): the legacy
/// name `weir-<namespace>-<job>-repartition` while the merge stage's checkpoints of an earlier
/// run name it (they would refuse another topic), else `weir.<namespace>.<job>.repartition`.
/// Created as the operator creates it (its partition count, replication factor and configs
/// from [`plan::new_repartition_topic`], the retention of the source topic); an existing one
/// is used as it is. Its name and partition count.
fn local_repartition_topic(
    launch: &Launch<'_>,
    source: &kafka::ClientSettings,
    count: i32,
) -> Result<(String, i32), JobError> {
    let job = launch.job;
    let name = job_name(job);
    let namespace = job.metadata.namespace.as_deref();
    let legacy = weir_crds::topics::legacy_repartition_topic(namespace, &name);
    // Only a run of an earlier version has merge-stage records naming the legacy topic, and
    // only while that topic exists are they worth reading.
    let checkpointed = match partition_count(source, &legacy) {
        Ok(legacy_partitions) => {
            launch
                .rt
                .block_on(merge_topics(launch, &legacy, legacy_partitions))?
        }
        Err(_) => Vec::new(),
    };
    let topic = weir_crds::topics::repartition_topic_in_use(
        namespace,
        &name,
        None,
        checkpointed.iter().map(String::as_str),
    )
    .name;
    let source_topic = &job.spec.source.kafka.topic.0;
    let retention = crate::tools::topic_retention_ms(source, source_topic).unwrap_or_else(|e| {
        // As the operator: without the source's retention the brokers' default applies.
        eprintln!("weir: {name}: cannot read retention.ms of {source_topic} ({e}); the repartition topic gets the brokers' default");
        None
    });
    let wanted = plan::merge_partitions(&job.spec, None, count);
    let new = plan::new_repartition_topic(&job.spec, &topic, wanted, retention);
    crate::tools::create_topic_with(source, &new).map_err(|source_err| {
        JobError::CreateRepartitionTopic {
            topic: topic.clone(),
            bootstrap: source
                .get("bootstrap.servers")
                .unwrap_or_default()
                .to_string(),
            source: Box::new(source_err),
        }
    })?;
    let partitions = partition_count(source, &topic)?;
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
    Ok((topic, partitions))
}

/// The topics the merge stage's checkpoints of partitions `0..partitions` name (a record at the
/// store's legacy location counts only if it names `legacy`, the topic the previous version
/// used).
async fn merge_topics(
    launch: &Launch<'_>,
    legacy: &str,
    partitions: i32,
) -> Result<Vec<String>, JobError> {
    let store = open_store(
        launch.job,
        launch.opts,
        launch.in_cluster,
        Stage::Merge,
        legacy,
    )
    .await?;
    let mut topics = Vec::new();
    for p in 0..partitions {
        if let Some(v) = store.get(p).await.map_err(JobError::ReadMergeCheckpoint)? {
            topics.push(v.checkpoint.topic);
        }
    }
    Ok(topics)
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
