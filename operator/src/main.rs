//! `weir-operator`: reconciles StreamJobs into worker pods (see docs/operator.md). Serves
//! `/metrics` and `/healthz`; with leader election on (the default) only the replica holding
//! the `weir-operator` Lease reconciles.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use clap::{Parser, ValueEnum};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use weir_operator::controller::{self, Context};
use weir_operator::desired::OperatorConfig;
use weir_operator::kafka::RdKafkaClient;
use weir_operator::leader::{LeaderElector, LeaseConfig};
use weir_operator::metrics::{self, Metrics};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The weir operator: turns StreamJobs into worker StatefulSets and reports their status.
#[derive(Debug, Parser)]
#[command(name = "weir-operator", version)]
struct Args {
    /// Watch StreamJobs in these namespaces only: repeat the flag or separate names with
    /// commas (`a,b`). Absent: every namespace.
    #[arg(
        long = "namespace",
        env = "WEIR_WATCH_NAMESPACE",
        value_delimiter = ','
    )]
    namespaces: Vec<String>,
    /// Worker image for jobs whose spec.worker.image is empty.
    #[arg(long, env = "WEIR_WORKER_IMAGE", default_value_t = OperatorConfig::default().worker_image)]
    worker_image: String,
    /// Log format.
    #[arg(long, env = "WEIR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Address of `/metrics` and `/healthz`.
    #[arg(long, env = "WEIR_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Reconcile only while holding the Lease (run two replicas for availability).
    #[arg(long, env = "WEIR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "weir-operator")]
    lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Reconciles running at once, per watched namespace (0: unbounded). Each holds an API
    /// connection and, while it reads the topic, Kafka requests.
    #[arg(long, env = "WEIR_MAX_CONCURRENT_RECONCILES", default_value_t = controller::DEFAULT_CONCURRENCY)]
    max_concurrent_reconciles: u16,
    /// Let the operator reach an object store with its own identity (environment, IRSA,
    /// workload identity) for jobs that name no credentials Secret. Off: such a job is
    /// `InvalidSpec`, so no tenant can make the operator read or delete under its identity.
    #[arg(long, env = "WEIR_OBJECT_STORE_OPERATOR_IDENTITY", default_value_t = false, action = clap::ArgAction::Set)]
    object_store_operator_identity: bool,
    /// This replica's identity in the Lease and in Events (the pod name).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
}

impl Args {
    /// The namespaces to watch, without blanks or repeats; empty means every namespace.
    fn watch_namespaces(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for ns in self.namespaces.iter().map(|n| n.trim()) {
            if !ns.is_empty() && !out.iter().any(|o| o == ns) {
                out.push(ns.to_string());
            }
        }
        out
    }
}

/// Logs to stderr, as text or JSON; text is coloured only when stderr is a terminal and
/// `NO_COLOR` is unset, so that log files and collectors get no ANSI escape codes.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn metrics_handler(
    State(registry): State<Arc<Registry>>,
    headers: header::HeaderMap,
) -> impl IntoResponse {
    let accept = headers.get_all(header::ACCEPT);
    match metrics::exposition(&registry, accept.iter().filter_map(|v| v.to_str().ok())) {
        Ok((content_type, body)) => (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            e.to_string(),
        ),
    }
}

/// Waits for SIGTERM (what the kubelet sends) or SIGINT, and logs which one came.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    tracing::info!("SIGINT: stopping");
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT: stopping"),
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
        tracing::info!("interrupted: stopping");
    }
}

/// Serves `/metrics` (from `registry`) and `/healthz` on `listen`, in the background.
async fn serve_http(listen: SocketAddr, registry: Registry) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Arc::new(registry));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, "serving /metrics and /healthz");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    Ok(())
}

/// Waits for the Lease; `None` when stopped first.
async fn lead(
    args: &Args,
    client: &Client,
    mut stop: watch::Receiver<bool>,
) -> Option<LeaderElector> {
    let identity = args
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("weir-operator-{:016x}", fastrand::u64(..)));
    let cfg = LeaseConfig {
        name: args.lease_name.clone(),
        identity: identity.clone(),
        lease_duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(5),
    };
    let mut e = LeaderElector::new(
        Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
        cfg,
    );
    tracing::info!(lease = %args.lease_name, %identity, "waiting for leadership");
    tokio::select! {
        _ = e.acquire() => {}
        _ = stop.wait_for(|s| *s) => return None,
    }
    tracing::info!(%identity, "leading");
    Some(e)
}

/// Starts one controller per watched namespace (a kube watch is over one namespace or all);
/// they share the context, whose backoff and metrics are keyed by (namespace, name), and stop
/// when `stop` turns true.
fn start_controllers(
    args: &Args,
    ctx: &Arc<Context>,
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let namespaces = args.watch_namespaces();
    tracing::info!(namespaces = ?namespaces, "watching StreamJobs (empty: every namespace)");
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    // The concurrency bound is per controller, so per watched namespace.
    let concurrency = args.max_concurrent_reconciles;
    scopes
        .into_iter()
        .map(|ns| {
            let ctx = ctx.clone();
            let mut rx = stop.clone();
            let stopped = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            tokio::spawn(async move {
                controller::run(ctx, ns.as_deref(), concurrency, stopped).await;
            })
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    let client = Client::try_default()
        .await
        .context("no Kubernetes client configuration (in-cluster or KUBECONFIG)")?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    serve_http(args.listen, registry).await?;

    let config = OperatorConfig {
        worker_image: args.worker_image.clone(),
        object_store_operator_identity: args.object_store_operator_identity,
        ..OperatorConfig::default()
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(RdKafkaClient::default()),
        config,
        metrics,
        args.pod_name.clone(),
    ));

    // `stop_tx` turns true on SIGTERM/SIGINT or when the Lease is lost; the controllers drain
    // in-flight reconciles and return.
    let (stop_tx, stop_rx) = watch::channel(false);
    let signal_tx = stop_tx.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = signal_tx.send(true);
    });

    let mut elector = None;
    if args.leader_election {
        match lead(&args, &client, stop_rx.clone()).await {
            Some(e) => elector = Some(e),
            None => return Ok(()),
        }
    }

    let controllers = start_controllers(&args, &ctx, &stop_rx);
    let lost = match elector.as_mut() {
        Some(e) => {
            let mut rx = stop_rx.clone();
            tokio::select! {
                _ = e.hold() => true,
                _ = rx.wait_for(|s| *s) => false,
            }
        }
        None => false,
    };
    let _ = stop_tx.send(true);
    tracing::info!("finishing the reconciles in flight");
    for controller in futures::future::join_all(controllers).await {
        controller.context("controller task")?;
    }
    if let Some(e) = elector.as_mut() {
        if lost {
            // Another replica may lead already: exit non-zero so the pod restarts as a
            // candidate rather than carry on.
            anyhow::bail!("lost the lease {}", args.lease_name);
        }
        e.release().await;
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespaces(args: &[&str]) -> Vec<String> {
        let argv = std::iter::once("weir-operator").chain(args.iter().copied());
        Args::try_parse_from(argv)
            .expect("arguments parse")
            .watch_namespaces()
    }

    // One test, because it sets WEIR_WATCH_NAMESPACE and parsing reads it: tests running in
    // parallel in this binary would otherwise see each other's environment.
    #[test]
    fn watch_namespaces_from_flags_and_env() {
        std::env::remove_var("WEIR_WATCH_NAMESPACE");
        assert!(namespaces(&[]).is_empty(), "no flag: every namespace");
        assert_eq!(namespaces(&["--namespace", "a"]), ["a"]);
        assert_eq!(
            namespaces(&["--namespace", "a,b", "--namespace=c", "--namespace", "b"]),
            ["a", "b", "c"],
            "repeatable, comma-separated, repeats dropped"
        );
        assert!(namespaces(&["--namespace", ""]).is_empty());

        // The chart sets WEIR_WATCH_NAMESPACE to the comma-joined list.
        std::env::set_var("WEIR_WATCH_NAMESPACE", "team-a,team-b");
        assert_eq!(namespaces(&[]), ["team-a", "team-b"]);
        assert_eq!(namespaces(&["--namespace", "x"]), ["x"], "the flag wins");
        std::env::set_var("WEIR_WATCH_NAMESPACE", "");
        assert!(namespaces(&[]).is_empty(), "empty env: every namespace");
        std::env::remove_var("WEIR_WATCH_NAMESPACE");
    }
}
