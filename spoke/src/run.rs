//! `kmm-spoke run`: the controllers' wiring (managed mode). Caches first (the Module and Node
//! stores of the controllers, a NodeModulesConfig store of its own), then the node controller,
//! the Module controller once the records have listed, and the kernel claim writer; `/readyz`
//! turns ready when every cache has synced.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use clap::Args;
use futures::StreamExt;
use kmm_api::{Module, nmc::NodeModulesConfig};
use kube::{
    Api, Client,
    api::ListParams,
    runtime::{
        WatchStreamExt,
        events::{Recorder, Reporter},
        reflector, watcher,
    },
};
use thiserror::Error;
use tokio::sync::mpsc;

use crate::{
    context::{Ctx, Settings},
    health::{self, Health},
    kernel_claim, module_controller,
    node_controller::{self, desired::NodeSettings},
    worker::pod::WorkerPodSettings,
};

/// Flags and environment of `kmm-spoke run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Managed mode (a spoke of a kmm-fleet hub): the only mode kmm-spoke implements.
    #[arg(long, env = "KMM_MANAGED", value_parser = parse_bool, default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub managed: bool,
    /// Namespace kmm-spoke runs in.
    #[arg(long, env = "OPERATOR_NAMESPACE", default_value = "kmm-operator-system")]
    pub operator_namespace: String,
    /// Image of the worker pods (kmm-spoke's own image).
    #[arg(long, env = "RELATED_IMAGE_WORKER")]
    pub worker_image: String,
    /// Path of kmm-spoke inside that image.
    #[arg(long, default_value = "/usr/local/bin/kmm-spoke")]
    pub worker_binary: String,
    /// Host firmware directory the workers copy firmware into.
    #[arg(long, default_value = "/var/lib/firmware")]
    pub firmware_host_path: String,
    /// Point the kernel's firmware class path at --firmware-host-path when a Module has a
    /// firmwarePath (as upstream); `--set-firmware-class-path=false` turns it off.
    #[arg(long, env = "KMM_SET_FIRMWARE_CLASS_PATH", default_value_t = true, action = clap::ArgAction::Set)]
    pub set_firmware_class_path: bool,
    /// Extra argument for every worker (repeatable), for example `--worker-arg=--dry-run`.
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    pub worker_args: Vec<String>,
    /// Service account of worker pods for Modules in the operator namespace.
    #[arg(long, default_value = "kmm-operator-module-loader")]
    pub module_loader_service_account: String,
    /// First retry delay after a failed worker pod, in milliseconds (doubles per failure).
    #[arg(long, default_value_t = 10_000)]
    pub worker_backoff_ms: u64,
    /// Longest retry delay, in milliseconds.
    #[arg(long, default_value_t = 300_000)]
    pub worker_backoff_max_ms: u64,
    /// Resync period of healthy objects, in seconds.
    #[arg(long, default_value_t = 600)]
    pub resync_seconds: u64,
    /// Nodes (and Modules) reconciled at once; each in flight holds an API connection.
    #[arg(long, env = "KMM_SPOKE_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Address of the /healthz, /readyz and /metrics server.
    #[arg(long, env = "KMM_SPOKE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "f" | "false" => Ok(false),
        "1" | "t" | "true" => Ok(true),
        other => Err(format!("{other:?} is not a boolean (use true or false)")),
    }
}

/// Why `run` stopped.
#[derive(Debug, Error)]
pub enum RunError {
    #[error(
        "kmm-spoke only implements managed mode (a spoke of a kmm-fleet hub, where the hub builds \
         and signs): set KMM_MANAGED=1 or pass --managed"
    )]
    NotManaged,
    #[error("connecting to the Kubernetes API: {0}")]
    Client(#[source] kube::Error),
    #[error("binding the health and metrics address {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the Module CRD is not served ({0}); install the spoke CRDs first (`kmm-spoke crds | kubectl apply -f -`)"
    )]
    NoCrd(#[source] kube::Error),
}

impl RunArgs {
    /// Settings from the flags.
    pub fn settings(&self) -> Settings {
        Settings {
            node: NodeSettings {
                operator_namespace: self.operator_namespace.clone(),
                operator_module_loader_sa: self.module_loader_service_account.clone(),
                backoff_base: Duration::from_millis(self.worker_backoff_ms),
                backoff_max: Duration::from_millis(self.worker_backoff_max_ms),
            },
            worker: WorkerPodSettings {
                image: self.worker_image.clone(),
                binary: self.worker_binary.clone(),
                firmware_host_path: self.firmware_host_path.clone(),
                set_firmware_class_path: self.set_firmware_class_path,
                extra_args: self.worker_args.clone(),
            },
            resync: Duration::from_secs(self.resync_seconds.max(1)),
            concurrency: self.concurrency,
        }
    }
}

/// Runs every spoke controller with the default client until SIGTERM or Ctrl-C.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    if !args.managed {
        return Err(RunError::NotManaged);
    }
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|source| RunError::Bind {
            addr: args.metrics_addr,
            source,
        })?;
    run_with(client, args.settings(), Some(listener), shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

/// Waits for a store to be ready, asking again every second: the controller waits on the same
/// store, and a store wakes only its most recent waiter, so one long wait can sleep forever.
async fn until_ready<F, Fut, E>(wait: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(1), wait()).await {
            Ok(result) => return result.is_ok(),
            Err(_elapsed) => continue,
        }
    }
}

/// A controller's settings: `concurrency` reconciles at once (at least one).
fn controller_config(concurrency: u16) -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(concurrency.max(1))
}

/// Runs every spoke controller against `client` until `shutdown` resolves (tests call this),
/// serving `/healthz`, `/readyz` and `/metrics` on `listener` when given.
pub async fn run_with(
    client: Client,
    settings: Settings,
    listener: Option<tokio::net::TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), RunError> {
    let health = Health::default();
    if let Some(listener) = listener {
        let addr = listener.local_addr().ok();
        tracing::info!(addr = ?addr, "serving /healthz, /readyz and /metrics");
        let app = health::router(health.clone());
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "the health and metrics server stopped");
            }
        });
    }
    let modules = Api::<Module>::all(client.clone());
    let one = ListParams::default().limit(1);
    kmm_api::startup::until_answered("listing Modules", || modules.list(&one))
        .await
        .map_err(RunError::NoCrd)?;
    // The node records, for the Module controller: a cache of their own (its reconciles read
    // them, the controller's own NodeModulesConfig watch only triggers).
    // Each record change triggers the Modules it names only after the cache holds it (two
    // separate watches let a reconcile read a record older than its trigger and stay there).
    let (records, records_writer) = reflector::store::<NodeModulesConfig>();
    let (record_tx, record_rx) = mpsc::unbounded_channel();
    let records_task = tokio::spawn(
        watcher(Api::all(client.clone()), crate::slim::per_node_watch())
            .modify(crate::slim::record)
            .default_backoff()
            .reflect(records_writer)
            .touched_objects()
            .for_each(move |record| {
                if let Ok(record) = record {
                    for module in module_controller::modules_of(&record) {
                        let _ = record_tx.send(module);
                    }
                }
                std::future::ready(())
            }),
    );
    let (nodes_tx, nodes_rx) = mpsc::channel(1);
    // One Node watch for the node controller (which drives it) and the claim writer.
    let (node_feed, node_stream) = crate::node_feed::watch(client.clone());
    let node_ctrl =
        node_controller::controller(client.clone(), node_stream, node_feed.nodes.clone(), nodes_rx)
            .with_config(controller_config(settings.concurrency));
    let module_ctrl = module_controller::controller(
        client.clone(),
        tokio_stream::wrappers::UnboundedReceiverStream::new(record_rx),
    )
    .with_config(controller_config(settings.concurrency));
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "kmm-spoke".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        settings,
        modules: module_ctrl.store(),
        nodes: node_ctrl.store(),
        records: records.clone(),
        nodes_tx,
        seen_modules: Mutex::new(HashMap::new()),
        reported_once: Mutex::new(HashMap::new()),
        metrics: health.metrics.clone(),
    });
    let synced = tokio::spawn({
        let (nodes, modules) = (ctx.nodes.clone(), ctx.modules.clone());
        let (nodes_flag, modules_flag) = (health.nodes_synced.clone(), health.modules_synced.clone());
        let (records, records_flag) = (records.clone(), health.records_synced.clone());
        async move {
            if until_ready(|| nodes.wait_until_ready()).await {
                nodes_flag.store(true, Ordering::Relaxed);
            }
            if until_ready(|| modules.wait_until_ready()).await {
                modules_flag.store(true, Ordering::Relaxed);
            }
            if until_ready(|| records.wait_until_ready()).await {
                records_flag.store(true, Ordering::Relaxed);
            }
            tracing::info!("node, Module and NodeModulesConfig caches synced");
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let claims = tokio::spawn({
        let client = client.clone();
        let rx = stop_rx.clone();
        let report = kernel_claim::ClaimReporting {
            metrics: health.metrics.clone(),
            synced: health.claims_synced.clone(),
        };
        async move {
            tokio::select! {
                () = kernel_claim::run(client, report, node_feed) => {
                    tracing::error!("the kernel-versions claim writer stopped");
                }
                () = stopped(rx) => {}
            }
        }
    });
    let nodes = tokio::spawn(node_controller::run(
        node_ctrl,
        ctx.clone(),
        stopped(stop_rx.clone()),
    ));
    let modules = tokio::spawn(async move {
        // Counts and the finalizer's release read the records: an empty cache would release
        // every deleted Module at once.
        tokio::select! {
            ready = until_ready(|| records.wait_until_ready()) => {
                if ready {
                    module_controller::run(module_ctrl, ctx, stopped(stop_rx)).await;
                }
            }
            () = stopped(stop_rx.clone()) => {}
        }
    });
    shutdown.await;
    let _ = stop_tx.send(true);
    synced.abort();
    records_task.abort();
    let _ = tokio::join!(claims, nodes, modules);
    Ok(())
}
