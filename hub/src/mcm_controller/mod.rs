//! The ManagedClusterModule controller. Steps, as STYLE.md lays them out:
//! [`observe`] (stores, registry) -> [`desired`] (pure plan and rendering) -> [`apply`] (SSA,
//! deletes) -> [`fleet_status`] (pure) -> status write and Events.
//!
//! ```text
//!  ManagedCluster watch ──▶ MCMs selecting it, or owning a work in its namespace ─┐
//!  ManifestWork watch   ──▶ the MCM named by its label ─────────────────────────┼─▶ reconcile(MCM)
//!  MCM watch ───────────────────────────────────────────────────────────────────┘
//! ```

pub mod apply;
pub mod build;
pub mod desired;
pub mod fleet_status;
pub mod observe;
pub mod status;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt, stream};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kmm_api::{ManagedClusterModule, ModuleSpec, ocm::ManagedCluster, ocm::ManifestWork};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder},
        finalizer::{self, finalizer},
        reflector::Store,
    },
};
use thiserror::Error;
use tracing::{info, instrument, warn};

use self::{
    desired::plan::{self, Blocker, Pin},
    fleet_status::{ClusterState, ClusterView},
    observe::Observed,
};
use crate::{leader::Leadership, metrics::Metrics, reason::Reason, registry::DigestResolver};

/// Finalizer on every MCM: its ManifestWorks live in other namespaces, so owner references alone
/// cannot be relied on to remove them (and the spokes must unload first).
pub const FINALIZER: &str = "hub.kmm.sigs.x-k8s.io/manifestwork-cleanup";

/// ManifestWork writes in flight at once for one MCM.
const WRITE_CONCURRENCY: usize = 16;

/// Read-only settings of the controller.
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace the hub runs in: where `imageRepoSecret`s are read.
    pub namespace: String,
    /// Re-check after this long when everything is fine (digests may move under a tag).
    pub resync: Duration,
    /// Re-check after this long when an image is missing or a registry failed.
    pub retry: Duration,
    /// Build and sign Jobs: namespace and images.
    pub jobs: desired::job::JobSettings,
    /// Succeeded Jobs are deleted this long after they finished.
    pub job_gc_delay: Duration,
}

/// Shared by every reconcile.
pub struct Context {
    /// API client of the hub cluster.
    pub client: Client,
    /// Publishes Events on MCMs (one recorder, so repeats aggregate).
    pub recorder: Recorder,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Tag-to-digest lookups, cached across MCMs and clusters.
    pub resolver: Arc<DigestResolver>,
    /// Every ManagedCluster (one watch for the fleet).
    pub clusters: Store<ManagedCluster>,
    /// Every ManifestWork the hub labelled (one watch for the fleet).
    pub works: Store<ManifestWork>,
    /// The hub's build and sign Jobs.
    pub jobs: Store<k8s_openapi::api::batch::v1::Job>,
    /// Only the leader writes.
    pub leader: Arc<Leadership>,
    pub config: Config,
}

/// Why a reconcile failed. Variant names are the Event reasons and metric labels.
#[derive(Debug, Error)]
pub enum Error {
    /// A call to the hub's API server failed (reads and writes alike).
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("serializing: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    #[error("waiting for {0} ManifestWorks to be removed from the spokes")]
    WorksRemaining(usize),
}

impl Error {
    /// Bounded name for logs and metrics.
    pub fn reason(&self) -> Reason {
        match self {
            Error::Api { .. } => Reason::WriteFailed,
            Error::Serialize(_) => Reason::SerializeFailed,
            Error::Finalizer(_) => Reason::FinalizerFailed,
            Error::WorksRemaining(_) => Reason::WaitingForSpokes,
        }
    }
}

/// Reconciles one MCM; see the module docs for the steps.
#[instrument(skip_all, fields(mcm = %mcm.name_any()))]
pub async fn reconcile(mcm: Arc<ManagedClusterModule>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.leader.is_leader() {
        // Followers keep their caches warm and check back; the leader does the writing.
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let _timer = ctx.metrics.reconcile_timer();
    let api: Api<ManagedClusterModule> = Api::all(ctx.client.clone());
    finalizer(&api, FINALIZER, mcm, |event| async {
        match event {
            finalizer::Event::Apply(mcm) => apply_mcm(&mcm, &ctx).await,
            finalizer::Event::Cleanup(mcm) => cleanup(&mcm, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => inner,
        other => Error::Finalizer(Box::new(other)),
    })
}

/// Transient errors retry soon; waiting for spokes checks back a little later.
pub fn error_policy(mcm: Arc<ManagedClusterModule>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error.reason().as_str());
    warn!(mcm = %mcm.name_any(), %error, "reconcile failed");
    match error {
        Error::WorksRemaining(_) => Action::requeue(Duration::from_secs(5)),
        _ => Action::requeue(Duration::from_secs(10)),
    }
}

async fn apply_mcm(mcm: &ManagedClusterModule, ctx: &Context) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let mut observed = observe::observe(mcm, ctx).await;
    let observed_in = started.elapsed();
    let building = build::advance(mcm, ctx, &observed).await?;
    observed.pins.extend(building);
    build::gc::collect(ctx).await?;
    tracing::debug!(clusters = observed.clusters.len(), ?observed_in, planned_in = ?started.elapsed(), "observed");
    let selected: BTreeSet<&str> = observed.clusters.iter().map(|c| c.name.as_str()).collect();

    // Delete the works of clusters that stopped matching.
    for (ns, work) in &observed.works {
        if !selected.contains(ns.as_str()) {
            apply::delete_work(ctx, work).await?;
            info!(cluster = %ns, "cluster no longer selected; ManifestWork deleted");
            publish(
                ctx,
                mcm,
                EventType::Normal,
                "ManifestWorkDeleted",
                format!("cluster {ns} no longer selected"),
            )
            .await;
        }
    }

    // Render per distinct kernel set (10,000 clusters on 3 kernels render 3 Modules), then write.
    let mut specs: BTreeMap<Vec<String>, Result<ModuleSpec, Blocker>> = BTreeMap::new();
    let planned: Vec<Result<ManifestWork, Blocker>> = observed
        .clusters
        .iter()
        .map(|c| cluster_state(mcm, c, &observed, &mut specs))
        .collect();
    // Writes go out a few at a time: a cold start over thousands of clusters is bound by round trips.
    let outcomes: Vec<Result<(ClusterState, bool), Error>> = stream::iter(planned)
        .map(|plan| async {
            match plan {
                Ok(work) => {
                    let current = observed.works.get(&work.namespace().unwrap_or_default());
                    let (stored, sent) = apply::apply_work(ctx, work, current).await?;
                    Ok((ClusterState::Work(status::work_outcome(&stored)), sent))
                }
                Err(blocker) => Ok((ClusterState::Blocked(blocker), false)),
            }
        })
        .buffered(WRITE_CONCURRENCY)
        .collect()
        .await;
    let mut views = Vec::with_capacity(observed.clusters.len());
    let mut written = 0usize;
    for (cluster, outcome) in observed.clusters.iter().zip(outcomes) {
        let (state, sent) = outcome?;
        written += usize::from(sent);
        views.push(ClusterView {
            name: cluster.name.clone(),
            kernels: cluster.kernels.clone().unwrap_or_default(),
            state,
            unreachable: cluster.unreachable.clone(),
        });
    }
    if written > 0 {
        info!(written, "ManifestWorks written");
        publish(
            ctx,
            mcm,
            EventType::Normal,
            "ManifestWorksApplied",
            format!("{written} ManifestWorks written"),
        )
        .await;
    }

    let kernels: BTreeSet<String> = views.iter().flat_map(|v| v.kernels.iter().cloned()).collect();
    let images = plan::kernel_images(mcm, &kernels, &observed.pins);
    let now = Time(Timestamp::now());
    let new_status =
        fleet_status::fleet_status(mcm.metadata.generation, &views, &images, mcm.status.as_ref(), now);
    announce_problems(ctx, mcm, &new_status).await;
    ctx.metrics.observe_fleet(&mcm.name_any(), &new_status);
    apply::write_status(ctx, mcm, &new_status).await?;

    let waiting = observed.pins.values().any(|p| !matches!(p, Pin::Pinned(_)));
    Ok(Action::requeue(if waiting {
        ctx.config.retry
    } else {
        ctx.config.resync
    }))
}

/// The work for one cluster, or why there is none; Module specs are shared per kernel set.
fn cluster_state(
    mcm: &ManagedClusterModule,
    cluster: &observe::SelectedCluster,
    observed: &Observed,
    specs: &mut BTreeMap<Vec<String>, Result<ModuleSpec, Blocker>>,
) -> Result<ManifestWork, Blocker> {
    if let Some(b) = &observed.spec_error {
        return Err(b.clone());
    }
    let kernels = cluster.kernels.as_ref().map_err(Clone::clone)?;
    let spec = specs
        .entry(kernels.clone())
        .or_insert_with(|| plan::render_spec(mcm, kernels, &observed.pins))
        .clone()?;
    plan::work_for(mcm, &cluster.name, kernels, spec)
}

/// Warning Events for clusters that newly need attention (only those listed, so at most 20).
async fn announce_problems(
    ctx: &Context,
    mcm: &ManagedClusterModule,
    new: &kmm_api::ManagedClusterModuleStatus,
) {
    let old: BTreeSet<(&str, &str)> = mcm
        .status
        .iter()
        .flat_map(|s| s.problems.iter().map(|p| (p.cluster.as_str(), p.reason.as_str())))
        .collect();
    for p in &new.problems {
        if !old.contains(&(p.cluster.as_str(), p.reason.as_str())) {
            let note = format!("cluster {}: {}", p.cluster, p.message);
            publish(ctx, mcm, EventType::Warning, &p.reason, note).await;
        }
    }
}

async fn cleanup(mcm: &ManagedClusterModule, ctx: &Context) -> Result<Action, Error> {
    let works = observe::own_works(mcm, &ctx.works.state());
    // The store may lag behind; ask the API too before declaring the fleet clean.
    let api: Api<ManifestWork> = Api::all(ctx.client.clone());
    let lp = kube::api::ListParams::default().labels(&format!(
        "{}={}",
        kmm_api::labels::MCM_NAME_LABEL,
        mcm.name_any()
    ));
    let listed = api.list(&lp).await.map_err(|source| Error::Api {
        what: "listing ManifestWorks".into(),
        source,
    })?;
    let remaining: Vec<ManifestWork> = listed
        .items
        .into_iter()
        .filter(|w| w.name_any() == mcm.name_any())
        .collect();
    for w in &remaining {
        apply::delete_work(ctx, w).await?;
    }
    if !remaining.is_empty() || !works.is_empty() {
        return Err(Error::WorksRemaining(remaining.len().max(works.len())));
    }
    publish(
        ctx,
        mcm,
        EventType::Normal,
        "Deleted",
        "every ManifestWork is gone".into(),
    )
    .await;
    ctx.metrics.forget(&mcm.name_any());
    Ok(Action::await_change())
}

async fn publish(ctx: &Context, mcm: &ManagedClusterModule, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(kmm_api::event_note::note(&note)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &mcm.object_ref(&())).await {
        warn!(error = %e, "could not publish an Event");
    }
}

use kube::Resource as _;
