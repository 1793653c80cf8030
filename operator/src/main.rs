//! `tickflow-operator`: run the controllers, or print the CRDs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use tickflow_crds::AccessMode;
use tickflow_crds::telemetry::{LogFormat, init_logging};
use tickflow_operator::controller::{self, Context};
use tickflow_operator::desired::Defaults;
use tickflow_operator::leader::Election;
use tickflow_operator::metrics::Metrics;
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "tickflow-operator",
    version,
    about = "tickflow's Kubernetes operator"
)]
struct Cli {
    #[arg(
        long,
        global = true,
        env = "TICKFLOW_LOG_FORMAT",
        default_value = "plain"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile MarketProducer and StreamQuery resources.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as YAML (or write one file per CRD to --out-dir).
    Crdgen {
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "TICKFLOW_OPERATOR_HTTP_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    http_addr: SocketAddr,
    /// Watch only this namespace (default: all).
    #[arg(long, env = "TICKFLOW_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Watch only these namespaces, comma-separated (with --watch-namespace:
    /// both; default: all).
    #[arg(long, env = "TICKFLOW_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Worker image for resources that do not name one.
    #[arg(
        long,
        env = "TICKFLOW_WORKER_IMAGE",
        default_value = "ghcr.io/tickflow/tickflow-worker:0.1.0"
    )]
    worker_image: String,
    /// Image repositories a resource's spec.image may name, comma-separated:
    /// `registry/repo` exactly, or `registry/prefix/*`. Default: only the
    /// repository of --worker-image. A resource naming another image gets
    /// Degraded (reason ImageNotAllowed) and no Deployment.
    #[arg(
        long,
        env = "TICKFLOW_ALLOWED_IMAGE_REPOSITORIES",
        value_delimiter = ','
    )]
    allowed_image_repositories: Vec<String>,
    /// Access mode of new checkpoint PVCs whose StreamQuery names none:
    /// ReadWriteOncePod, ReadWriteOnce, or auto (ReadWriteOncePod on
    /// Kubernetes >= 1.29).
    #[arg(long, env = "TICKFLOW_CHECKPOINT_ACCESS_MODE", default_value = "auto")]
    checkpoint_access_mode: String,
    /// Kafka bootstrap servers for resources that do not name them.
    #[arg(
        long,
        env = "TICKFLOW_DEFAULT_KAFKA_BROKERS",
        default_value = "redpanda.redpanda.svc.cluster.local:9093"
    )]
    default_kafka_brokers: String,
    /// Schema registry URL for resources that do not name one.
    #[arg(
        long,
        env = "TICKFLOW_DEFAULT_SCHEMA_REGISTRY_URL",
        default_value = "http://redpanda.redpanda.svc.cluster.local:8081"
    )]
    default_schema_registry_url: String,
    /// Hold a Lease so that only one replica reconciles.
    #[arg(long, env = "TICKFLOW_LEADER_ELECTION", default_value_t = false, action = clap::ArgAction::Set)]
    leader_election: bool,
    #[arg(long, env = "TICKFLOW_LEASE_NAME", default_value = "tickflow-operator")]
    lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// How long a Lease holds without renewal (the longest handover after a crash).
    #[arg(long, env = "TICKFLOW_LEASE_DURATION", value_parser = humantime::parse_duration, default_value = "15s")]
    lease_duration: Duration,
    /// Identity in the Lease (default: the pod name, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Reconciles running at once.
    #[arg(long, env = "TICKFLOW_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    /// How often running workloads' figures are refreshed from the worker.
    #[arg(long, env = "TICKFLOW_STATUS_REFRESH", value_parser = humantime::parse_duration, default_value = "15s")]
    status_refresh: Duration,
}

fn identity(args: &RunArgs) -> String {
    args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "operator".into());
        format!("{host}-{}", std::process::id())
    })
}

/// SIGTERM or Ctrl-C flips the returned flag.
fn shutdown_flag() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    rx
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    tickflow_operator::http::serve(args.http_addr, metrics.clone())?;
    let client = Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("connecting to the Kubernetes API: {e}"))?;
    let version = client
        .apiserver_version()
        .await
        .map_err(|e| anyhow::anyhow!("the Kubernetes API does not answer: {e}"))?;
    let access_mode = checkpoint_access_mode(&args.checkpoint_access_mode, &version)?;
    metrics.ready.store(true, Ordering::Relaxed);
    let id = identity(&args);
    let mut shutdown = shutdown_flag();

    let mut election = None;
    if args.leader_election {
        let mut e = Election::join(
            client.clone(),
            &args.lease_namespace,
            &args.lease_name,
            &id,
            args.lease_duration,
        )
        .await?;
        tracing::info!(identity = %id, lease = %args.lease_name, "waiting for the leader Lease");
        tokio::select! {
            r = e.acquired() => r?,
            _ = shutdown.wait_for(|s| *s) => {
                e.release().await;
                return Ok(());
            }
        }
        tracing::info!(identity = %id, "became the leader");
        election = Some(e);
    }
    metrics.set_leader(true);

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "tickflow-operator".into(),
            instance: Some(id.clone()),
        },
    );
    let defaults = Defaults {
        worker_image: args.worker_image.clone(),
        kafka_brokers: args.default_kafka_brokers.clone(),
        schema_registry_url: args.default_schema_registry_url.clone(),
        allowed_image_repositories: args
            .allowed_image_repositories
            .iter()
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty())
            .collect(),
        checkpoint_access_mode: access_mode,
    };
    tracing::info!(
        worker_image = %defaults.worker_image,
        allowed = ?defaults.allowed_image_repositories,
        access_mode = defaults.checkpoint_access_mode.as_str(),
        "defaults"
    );
    let ctx_client = client.clone();
    let ctx = Arc::new(Context::new(
        client,
        defaults,
        recorder,
        metrics.clone(),
        args.status_refresh,
    ));
    let (tx_q, rx_q) = tokio::sync::oneshot::channel();
    let (tx_p, rx_p) = tokio::sync::oneshot::channel();
    let mut stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = stop.wait_for(|v| *v).await;
        let _ = tx_q.send(());
        let _ = tx_p.send(());
    });
    let mut namespaces: Vec<String> = args
        .watch_namespaces
        .iter()
        .chain(&args.watch_namespace)
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    namespaces.sort();
    namespaces.dedup();
    let controllers = controller::run(ctx, namespaces, args.concurrency, [rx_q, rx_p]);
    match election {
        Some(mut e) => {
            tokio::select! {
                _ = controllers => {}
                _ = Election::watchdog(
                    ctx_client.clone(),
                    args.lease_namespace.clone(),
                    args.lease_name.clone(),
                    id.clone(),
                    args.lease_duration,
                ) => {
                    metrics.set_leader(false);
                    anyhow::bail!("cannot confirm the leader Lease; stopping");
                }
                _ = e.lost() => {
                    // Another replica holds the Lease now: stop at once rather
                    // than reconcile beside it. The pod restarts as a standby.
                    metrics.set_leader(false);
                    anyhow::bail!("lost the leader Lease");
                }
            }
            metrics.set_leader(false);
            e.release().await;
        }
        None => controllers.await,
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Crdgen { out_dir } => crdgen(out_dir),
        Command::Run(args) => run(*args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("tickflow-operator: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The checkpoint access mode from --checkpoint-access-mode and the API
/// server's version.
fn checkpoint_access_mode(
    arg: &str,
    version: &k8s_openapi::apimachinery::pkg::version::Info,
) -> anyhow::Result<AccessMode> {
    Ok(match arg {
        "ReadWriteOncePod" => AccessMode::ReadWriteOncePod,
        "ReadWriteOnce" => AccessMode::ReadWriteOnce,
        "auto" => {
            let minor: u32 = version
                .minor
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .unwrap_or(0);
            if version.major == "1" && minor < 29 {
                AccessMode::ReadWriteOnce
            } else {
                AccessMode::ReadWriteOncePod
            }
        }
        other => anyhow::bail!(
            "--checkpoint-access-mode {other:?}: expected auto, ReadWriteOncePod or ReadWriteOnce"
        ),
    })
}

fn crdgen(out_dir: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let crds = tickflow_crds::crd_yaml();
    match out_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for (file, yaml) in crds {
                std::fs::write(dir.join(file), yaml)?;
            }
        }
        None => {
            for (_, yaml) in crds {
                print!("---\n{yaml}");
            }
        }
    }
    Ok(())
}
