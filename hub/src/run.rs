//! `kmm-hub run`: wires the controller, the fleet-wide stores, leader election and the
//! health/metrics server together. Startup code: errors here are `anyhow`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use axum::{Router, extract::State, http::StatusCode, routing::get};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use kmm_api::{
    ManagedClusterModule,
    labels::MCM_NAME_LABEL,
    ocm::{ManagedCluster, ManifestWork},
};
use kube::{
    Api, Client,
    api::ListParams,
    core::DeserializeGuard,
    runtime::{
        Controller, WatchStreamExt, controller,
        events::{Recorder, Reporter},
        reflector::{self, Store},
        watcher,
    },
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{error, info};

use crate::{
    leader::{self, Leadership, LeaseConfig},
    mcm_controller::{
        self, Context,
        desired::job::{JOB_TYPE_LABEL, JobSettings, Resources, defaults},
        memo::Memos,
        triggers,
    },
    metrics::Metrics,
    registry::DigestResolver,
};

/// Settings of `kmm-hub run` (flags and environment; defaults in the docs).
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Namespace the hub runs in (imageRepoSecrets, the leader Lease).
    #[arg(long, env = "KMM_HUB_NAMESPACE", default_value = "kmm-hub")]
    pub namespace: String,
    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, env = "KMM_HUB_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// ManagedClusterModules reconciled at once.
    #[arg(long, env = "KMM_HUB_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,
    /// Seconds a tag-to-digest answer is trusted.
    #[arg(long, env = "KMM_HUB_CACHE_TTL_SECONDS", default_value_t = 300)]
    pub cache_ttl_seconds: u64,
    /// Seconds between full re-checks of an MCM that is fine.
    #[arg(long, env = "KMM_HUB_RESYNC_SECONDS", default_value_t = 300)]
    pub resync_seconds: u64,
    /// Seconds before re-checking an MCM waiting for an image or a registry.
    #[arg(long, env = "KMM_HUB_RETRY_SECONDS", default_value_t = 30)]
    pub retry_seconds: u64,
    /// Elect a leader with a Lease, so several replicas can run (only the leader writes).
    #[arg(long, env = "KMM_HUB_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "KMM_HUB_LEASE_NAME", default_value = "kmm-hub")]
    pub lease_name: String,
    /// This replica's identity in the Lease (defaults to the pod or host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Image with buildah that build Jobs run.
    #[arg(
        long,
        env = "KMM_HUB_BUILDAH_IMAGE",
        default_value = "quay.io/buildah/stable:v1.39"
    )]
    pub buildah_image: String,
    /// Image of kmm-hub itself, which sign Jobs run (`kmm-hub sign-image`).
    #[arg(long, env = "KMM_HUB_IMAGE", default_value = "kmm-hub:latest")]
    pub hub_image: String,
    /// Registry reached over plain HTTP for every image on it, e.g. `registry.lab:5000`
    /// (repeatable; the environment variable takes a comma-separated list).
    #[arg(
        long = "insecure-registry",
        env = "KMM_HUB_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// Seconds after which a succeeded build or sign Job is deleted (failed ones are kept).
    #[arg(long, env = "KMM_HUB_JOB_GC_DELAY_SECONDS", default_value_t = 0)]
    pub job_gc_delay_seconds: u64,
    /// Namespaces no MCM's `spokeNamespace` may be: names, or prefixes ending in `*`
    /// (comma-separated; an empty value allows every namespace).
    #[arg(
        long,
        env = "KMM_HUB_FORBIDDEN_SPOKE_NAMESPACES",
        value_delimiter = ',',
        default_value = mcm_controller::trust::DEFAULT_FORBIDDEN_NAMESPACES
    )]
    pub forbidden_spoke_namespaces: Vec<String>,
    /// Service accounts no MCM's workers may run as: `name`, `prefix*` or `namespace:name`
    /// patterns (comma-separated).
    #[arg(long, env = "KMM_HUB_FORBIDDEN_SERVICE_ACCOUNTS", value_delimiter = ',')]
    pub forbidden_service_accounts: Vec<String>,
    /// CPU each build and sign Job requests (empty: none).
    #[arg(long, env = "KMM_HUB_JOB_CPU_REQUEST", default_value = defaults::CPU_REQUEST)]
    pub job_cpu_request: String,
    /// Memory each build and sign Job requests (empty: none).
    #[arg(long, env = "KMM_HUB_JOB_MEMORY_REQUEST", default_value = defaults::MEMORY_REQUEST)]
    pub job_memory_request: String,
    /// CPU each build and sign Job may use (empty: no limit).
    #[arg(long, env = "KMM_HUB_JOB_CPU_LIMIT", default_value = defaults::CPU_LIMIT)]
    pub job_cpu_limit: String,
    /// Memory each build and sign Job may use (empty: no limit).
    #[arg(long, env = "KMM_HUB_JOB_MEMORY_LIMIT", default_value = defaults::MEMORY_LIMIT)]
    pub job_memory_limit: String,
    /// Seconds a build or sign Job may run (`activeDeadlineSeconds`; 0: unbounded).
    #[arg(long, env = "KMM_HUB_JOB_DEADLINE_SECONDS", default_value_t = defaults::DEADLINE_SECONDS)]
    pub job_deadline_seconds: i64,
}

#[derive(Clone)]
struct Health {
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

/// Runs the hub until SIGTERM or Ctrl-C.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the hub's API server (KUBECONFIG or in-cluster)")?;
    // Guarded: one MCM that does not parse gets an InvalidObject Event instead of stalling the watch.
    let mcms: Api<DeserializeGuard<ManagedClusterModule>> = Api::all(client.clone());
    let one = ListParams::default().limit(1);
    kmm_api::startup::until_answered("listing ManagedClusterModules", || mcms.list(&one))
        .await
        .context(
        "listing ManagedClusterModules failed: are the CRDs installed (kubectl apply --server-side -f manifests/crds) \
         and may this account list them?",
    )?;
    let resolver = Arc::new(
        DigestResolver::new(Duration::from_secs(args.cache_ttl_seconds))
            .with_insecure_hosts(args.insecure_registries.clone()),
    );
    let ready = Arc::new(AtomicBool::new(false));
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("kmm-hub-{}", std::process::id()))
    });
    let leadership = Arc::new(if args.leader_election {
        Leadership::default()
    } else {
        Leadership::always()
    });
    if args.leader_election {
        let lease = LeaseConfig {
            namespace: args.namespace.clone(),
            name: args.lease_name.clone(),
            identity: identity.clone(),
            duration: Duration::from_secs(15),
            renew: Duration::from_secs(5),
        };
        tokio::spawn(leader::run(client.clone(), lease, leadership.clone()));
    }

    // The MCM controller's cluster and work triggers come from the stores' own watches (see
    // `Triggers`), so a reconcile never reads a store older than the change that caused it.
    let memos = Arc::new(Memos::default());
    let (relisted, relisted_rx) = mpsc::channel(1);
    let (cluster_triggers, cluster_rx) = Triggers::new(memos.clone(), relisted.clone());
    let (work_triggers, work_rx) = Triggers::new(memos.clone(), relisted);
    let (clusters, clusters_task) = reflect(
        Api::<ManagedCluster>::all(client.clone()),
        per_cluster_watch(),
        mcm_controller::slim::cluster,
        Some(cluster_triggers),
    );
    let (works, works_task) = reflect(
        Api::<ManifestWork>::all(client.clone()),
        per_cluster_watch().labels(MCM_NAME_LABEL),
        mcm_controller::slim::work,
        Some(work_triggers),
    );
    let (jobs, jobs_task) = reflect(
        Api::<Job>::namespaced(client.clone(), &args.namespace),
        watcher::Config::default().labels(JOB_TYPE_LABEL),
        |job: &mut Job| job.metadata.managed_fields = None,
        None,
    );
    let metrics = Arc::new({
        let (c, w, j) = (clusters.clone(), works.clone(), jobs.clone());
        Metrics::new(resolver.clone(), leadership.clone())
            .with_cache("managedclusters", move || c.len())
            .with_cache("manifestworks", move || w.len())
            .with_cache("jobs", move || j.len())
    });
    tokio::spawn(clusters_task);
    tokio::spawn(works_task);
    tokio::spawn(jobs_task);

    let health = Health {
        ready: ready.clone(),
        metrics: metrics.clone(),
    };
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding the metrics address {}", args.metrics_addr))?;
    info!(addr = %args.metrics_addr, "serving /metrics, /healthz and /readyz");
    tokio::spawn(async move {
        let app = Router::new()
            .route(
                "/metrics",
                get(|State(h): State<Health>| async move {
                    // What prometheus_client writes, so Prometheus reads counters as counters.
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        h.metrics.encode(),
                    )
                }),
            )
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/readyz",
                get(|State(h): State<Health>| async move {
                    if h.ready.load(Ordering::Relaxed) {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "stores not synced")
                    }
                }),
            )
            .with_state(health);
        if let Err(e) = axum::serve(listener, app).await {
            error!(error = %e, "metrics server stopped");
        }
    });

    clusters
        .wait_until_ready()
        .await
        .context("ManagedCluster watch never synced")?;
    works
        .wait_until_ready()
        .await
        .context("ManifestWork watch never synced")?;
    ready.store(true, Ordering::Relaxed);
    info!(
        clusters = clusters.len(),
        works = works.len(),
        "fleet caches synced"
    );

    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "kmm-hub".into(),
                instance: Some(identity),
            },
        ),
        metrics,
        resolver,
        clusters: clusters.clone(),
        works: works.clone(),
        recent_writes: Default::default(),
        dirty: Default::default(),
        memos,
        jobs,
        leader: leadership,
        config: mcm_controller::Config {
            namespace: args.namespace.clone(),
            resync: Duration::from_secs(args.resync_seconds),
            retry: Duration::from_secs(args.retry_seconds),
            jobs: JobSettings {
                requests: Resources {
                    cpu: args.job_cpu_request.clone(),
                    memory: args.job_memory_request.clone(),
                },
                limits: Resources {
                    cpu: args.job_cpu_limit.clone(),
                    memory: args.job_memory_limit.clone(),
                },
                deadline_seconds: args.job_deadline_seconds,
                ..JobSettings::new(&args.namespace, &args.buildah_image, &args.hub_image)
            },
            job_gc_delay: Duration::from_secs(args.job_gc_delay_seconds),
            forbidden_namespaces: args.forbidden_spoke_namespaces.clone(),
            forbidden_service_accounts: args.forbidden_service_accounts.clone(),
        },
    });
    tokio::spawn(mcm_controller::build::gc::run(ctx.clone()));
    let controller = Controller::new(mcms, watcher::Config::default().any_semantic());
    let mcm_store = controller.store();
    tokio::spawn(crate::preflight::run::run(
        client.clone(),
        ctx.clone(),
        args.concurrency,
    ));
    let works_for_mapper = works.clone();
    let (dirty_clusters, dirty_works) = (ctx.dirty.clone(), ctx.dirty.clone());
    controller
        .watches_stream(ReceiverStream::new(cluster_rx).map(Ok), move |cluster| {
            triggers::mcms_for_cluster(&mcm_store, &works_for_mapper, &dirty_clusters, &cluster)
        })
        .watches_stream(ReceiverStream::new(work_rx).map(Ok), move |work| {
            triggers::mcm_for_work(&dirty_works, &work)
        })
        .reconcile_all_on(ReceiverStream::new(relisted_rx))
        .with_config(
            // No debounce: kube-runtime's is trailing-edge, so a fleet whose claims change every
            // few milliseconds (a rolling kernel upgrade) would postpone every reconcile until
            // the changes stop. Triggers arriving while a reconcile runs still collapse into one
            // next reconcile, which takes every cluster marked dirty meanwhile.
            controller::Config::default().concurrency(args.concurrency),
        )
        .graceful_shutdown_on(shutdown_signal())
        .run(mcm_controller::reconcile, mcm_controller::error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
    info!("stopped");
    Ok(())
}

/// Objects per page of a per-cluster watch's initial list (kube-runtime lists 500). Trimming
/// runs per decoded object, so each watch held a page of 500 whole ManifestWorks (Module,
/// managedFields, status), raw and decoded, at once; glibc keeps such a peak.
const LIST_PAGE: u32 = 100;

/// The watch settings of a kind with one object per cluster (ManagedCluster, ManifestWork).
fn per_cluster_watch() -> watcher::Config {
    watcher::Config::default().page_size(LIST_PAGE)
}

/// Objects a fleet store hands the MCM controller that it has not taken yet; past this, the
/// store's watch waits for the controller.
const TRIGGER_BUFFER: usize = 1024;

/// What a fleet store tells the MCM controller once it has taken a change: the object (the
/// trigger mappers read it and mark its cluster dirty), or that a re-list replaced the store (a
/// change, a deletion even, may have gone unseen: every memo is dropped and every MCM is looked
/// at whole). The first list is not passed on: the controller starts after it and looks at every
/// MCM anyway.
struct Triggers<K> {
    objects: mpsc::Sender<K>,
    relisted: mpsc::Sender<()>,
    memos: Arc<Memos>,
    lists: u32,
}

impl<K> Triggers<K> {
    fn new(memos: Arc<Memos>, relisted: mpsc::Sender<()>) -> (Self, mpsc::Receiver<K>) {
        let (objects, rx) = mpsc::channel(TRIGGER_BUFFER);
        let triggers = Self {
            objects,
            relisted,
            memos,
            lists: 0,
        };
        (triggers, rx)
    }

    /// Passes on one event the store has just applied.
    async fn pass(&mut self, event: watcher::Event<K>) {
        match event {
            watcher::Event::Apply(obj) | watcher::Event::Delete(obj) => {
                // A closed channel is a controller that stopped: nothing to tell.
                let _ = self.objects.send(obj).await;
            }
            watcher::Event::InitDone => {
                self.lists += 1;
                if self.lists > 1 {
                    self.memos.clear();
                    // A full channel already holds a look at every MCM.
                    let _ = self.relisted.try_send(());
                }
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }
}

/// A store fed by its own watch, and the task driving it; `slim` trims each object to what the
/// hub reads before the store keeps it, and `triggers` hears of each change after the store.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    slim: impl FnMut(&mut K) + Send + 'static,
    triggers: Option<Triggers<K>>,
) -> (Store<K>, impl std::future::Future<Output = ()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let mut events = reflector::reflector(writer, watcher::watcher(api, config).modify(slim))
        .default_backoff()
        .boxed();
    let task = async move {
        let mut triggers = triggers;
        while let Some(event) = events.next().await {
            // Watch errors are retried by the backoff; the store keeps what it had.
            if let (Ok(event), Some(t)) = (event, triggers.as_mut()) {
                t.pass(event).await;
            }
        }
    };
    (reader, task)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c().map(|_| ());
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return ctrl_c.await,
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}
