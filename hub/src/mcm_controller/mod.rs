//! The ManagedClusterModule controller. Steps, as STYLE.md lays them out, with typed hand-offs:
//! [`observe`] (stores, registry: [`observe::Observed`]) -> [`build`] (Jobs for missing images:
//! pins laid over `Observed`) -> [`desired`] (pure: [`desired::Desired`]) -> [`apply`] (SSA,
//! deletes, Events: one [`fleet_status::ClusterView`] per cluster) -> [`fleet_status`] (pure) ->
//! status write and the Warnings of [`events::new_problems`]. Build Jobs are collected by
//! [`build::gc`], a task of its own.
//!
//! ```text
//!  ManagedCluster watch ──▶ MCMs selecting it, or owning a work in its namespace ─┐
//!  ManifestWork watch   ──▶ the MCM named by its label ─────────────────────────┼─▶ reconcile(MCM)
//!  MCM watch ───────────────────────────────────────────────────────────────────┘
//! ```
//!
//! The cluster and work watches also record the cluster in [`dirty`] ([`triggers`]). A reconcile
//! whose MCM has a fresh [`memo`] of its last full reconcile looks at those clusters alone
//! ([`incremental`]); an MCM change, the resync, a start and anything one cluster cannot decide
//! alone look at the whole fleet.

pub mod apply;
pub mod build;
pub mod desired;
pub mod dirty;
mod error;
pub mod events;
pub mod fleet_status;
pub mod incremental;
pub mod memo;
pub mod observe;
pub mod recent_writes;
pub mod slim;
pub mod triggers;
pub mod trust;
pub mod work_outcome;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kmm_api::{ManagedClusterModule, ocm::ManagedCluster, ocm::ManifestWork};
use kube::{
    Api, Client, Resource as _, ResourceExt,
    core::DeserializeGuard,
    runtime::{
        controller::Action,
        events::Recorder,
        finalizer::{self, finalizer},
        reflector::Store,
    },
};
use tracing::{instrument, warn};

use self::desired::plan::{self, Pin};
pub use self::error::Error;
use crate::{leader::Leadership, metrics::Metrics, reason::Reason, registry::DigestResolver};

/// Finalizer on every MCM: its ManifestWorks live in other namespaces, so owner references alone
/// cannot be relied on to remove them (and the spokes must unload first).
pub const FINALIZER: &str = "hub.kmm.sigs.x-k8s.io/manifestwork-cleanup";

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
    /// Namespace patterns (`name` or `prefix*`) no `spokeNamespace` may match.
    pub forbidden_namespaces: Vec<String>,
    /// Service account patterns (`name`, `prefix*`, `namespace:name`) workers may not run as.
    pub forbidden_service_accounts: Vec<String>,
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
    /// Every ManagedCluster (one watch for the fleet), as [`slim::cluster`] keeps it.
    pub clusters: Store<ManagedCluster>,
    /// Every ManifestWork the hub labelled (one watch for the fleet), as [`slim::work`] keeps it.
    pub works: Store<ManifestWork>,
    /// The hub's own recent work writes, read until the cache holds them.
    pub recent_writes: recent_writes::RecentWrites,
    /// Clusters changed since each MCM's last reconcile (filled by [`triggers`]).
    pub dirty: Arc<dirty::DirtySet>,
    /// Each MCM's last full reconcile, for reconciles of single clusters.
    pub memos: Arc<memo::Memos>,
    /// The hub's build and sign Jobs.
    pub jobs: Store<k8s_openapi::api::batch::v1::Job>,
    /// Only the leader writes.
    pub leader: Arc<Leadership>,
    pub config: Config,
}

/// Reconciles one MCM; see the module docs for the steps.
#[instrument(skip_all, fields(mcm = %guard.name_any()))]
pub async fn reconcile(
    guard: Arc<DeserializeGuard<ManagedClusterModule>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    if !ctx.leader.is_leader() {
        // Followers keep their caches warm and check back; the leader does the writing. A memo
        // from an earlier leadership may be stale by now.
        ctx.memos.clear();
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    // A malformed MCM must not stall the watch: report it on the object and wait for a change.
    let mcm = match &guard.0 {
        Ok(mcm) => Arc::new(mcm.clone()),
        Err(invalid) => {
            let event = events::Announcement::warning(Reason::InvalidObject, invalid.to_string());
            events::publish(&ctx, &guard.object_ref(&()), vec![event]).await;
            return Err(Error::InvalidObject(invalid.to_string()));
        }
    };
    let _timer = ctx.metrics.reconcile_timer();
    let mcm = if mcm.metadata.deletion_timestamp.is_none() && !mcm.finalizers().iter().any(|f| f == FINALIZER)
    {
        Arc::new(apply::add_finalizer(&ctx, &mcm).await?)
    } else {
        mcm
    };
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

/// Counts and logs the failure, then looks again after [`Error::retry_after`].
pub fn error_policy(
    mcm: Arc<DeserializeGuard<ManagedClusterModule>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics.reconcile_failed(error.reason());
    warn!(mcm = %mcm.name_any(), %error, "reconcile failed");
    error
        .retry_after()
        .map_or_else(Action::await_change, Action::requeue)
}

async fn apply_mcm(mcm: &ManagedClusterModule, ctx: &Context) -> Result<Action, Error> {
    let name = mcm.name_any();
    let epoch = ctx.memos.epoch();
    let dirty = ctx.dirty.take(&name);
    let memo = ctx.memos.take(&name);
    let age = memo.as_ref().map(|m| memo::MemoAge {
        uid: m.uid.as_deref(),
        generation: m.generation,
        age: m.full_at.elapsed(),
    });
    let scope = memo::scope(
        age,
        mcm.metadata.uid.as_deref(),
        mcm.metadata.generation,
        ctx.config.resync,
        dirty,
    );
    let reason = match (scope, memo) {
        (memo::Scope::Clusters(clusters), Some(mut memo)) => {
            match incremental::reconcile_clusters(mcm, ctx, &mut memo, &clusters).await {
                Ok(incremental::Outcome::Done(after)) => {
                    tracing::debug!(clusters = clusters.len(), "reconciled the changed clusters");
                    ctx.metrics.cluster_batch(clusters.len());
                    ctx.memos.put(&name, memo, epoch);
                    return Ok(Action::requeue(after));
                }
                Ok(incremental::Outcome::Full(reason)) => reason,
                Err(e) => {
                    // The memo stays sound (see `reconcile_clusters`): a transient API error
                    // must not cost the next reconcile the whole fleet.
                    ctx.memos.put(&name, memo, epoch);
                    ctx.dirty.restore(&name, clusters);
                    return Err(e);
                }
            }
        }
        (memo::Scope::Full(reason), _) => reason,
        (memo::Scope::Clusters(_), None) => memo::FullReason::NoMemo,
    };
    ctx.metrics.full_reconcile(reason);
    apply_full(mcm, ctx, epoch, reason).await
}

/// Reconciles every selected cluster, and keeps a memo when the outcome allows reconciling
/// single clusters next.
async fn apply_full(
    mcm: &ManagedClusterModule,
    ctx: &Context,
    epoch: u64,
    reason: memo::FullReason,
) -> Result<Action, Error> {
    let started = Instant::now();
    let (observed, collisions) = observe::observe_checked(mcm, ctx).await;
    let observed_in = started.elapsed();
    let building = build::advance(mcm, ctx, &observed).await?;
    let observed = observed.with_pins(building.pins);
    tracing::debug!(clusters = observed.clusters.len(), ?observed_in, planned_in = ?started.elapsed(), "observed");

    let rollout = crate::rollout::reconcile::prepare(mcm, ctx, &observed).await?;
    let observed = observed.with_pins(rollout.pins);
    let desired = desired::desired_in(mcm, &observed, Some(&rollout.round));
    let views = apply::apply(ctx, mcm, desired).await?;
    let tally = fleet_status::Tally::of(&views);
    finish(
        ctx,
        mcm,
        &tally,
        &observed.pins,
        &rollout.round,
        rollout.invalid.as_deref(),
        &building.failed,
    )
    .await?;
    let labels = |c: &str| observe::cluster_labels(ctx, c);
    let outcome = incremental::FullOutcome {
        mcm,
        observed: &observed,
        collisions,
        round: &rollout.round,
        invalid: rollout.invalid.is_some(),
        failed_jobs: !building.failed.is_empty(),
        views: &views,
    };
    let kept = incremental::remember(outcome, tally, &labels, started);
    tracing::info!(
        mcm = %mcm.name_any(),
        reason = reason.as_str(),
        clusters = observed.clusters.len(),
        memo = kept.is_some(),
        took = ?started.elapsed(),
        "full reconcile"
    );
    if let Some(memo) = kept {
        ctx.memos.put(&mcm.name_any(), memo, epoch);
    }

    // A spec error may be cured outside the MCM (a Secret granting it, say), which no watch
    // sees: look again soon rather than at the next resync.
    let waiting =
        observed.spec_error.is_some() || observed.pins.values().any(|p| !matches!(p, Pin::Pinned(_)));
    let next = if waiting {
        ctx.config.retry
    } else {
        ctx.config.resync
    };
    // A soak or a deadline running out changes no object: look again when it does.
    Ok(Action::requeue(
        rollout.round.plan.recheck_after.map_or(next, |r| r.min(next)),
    ))
}

/// The status from the counts over every selected cluster's view, its Events and metrics, and
/// the status write when it changed.
async fn finish(
    ctx: &Context,
    mcm: &ManagedClusterModule,
    tally: &fleet_status::Tally,
    pins: &BTreeMap<String, Pin>,
    round: &crate::rollout::round::Round,
    invalid: Option<&str>,
    failed_jobs: &[build::FailedJob],
) -> Result<(), Error> {
    let kernels: BTreeSet<String> = tally.kernels().cloned().collect();
    let images = plan::kernel_images(mcm, &kernels, pins);
    let now = Time(Timestamp::now());
    let mut new_status = fleet_status::fleet_status(
        mcm.metadata.generation,
        tally,
        &images,
        mcm.status.as_ref(),
        now.clone(),
    );
    crate::rollout::status::apply(&mut new_status, mcm.status.as_ref(), round, invalid, now.clone());
    new_status.kernel_readiness =
        crate::preflight::readiness::kernel_readiness(mcm.status.as_ref(), &new_status.kernels, &now);
    let mut problems = events::new_problems(mcm.status.as_ref(), &new_status);
    problems.extend(crate::rollout::status::events(
        crate::rollout::status::was_halted(mcm.status.as_ref()),
        round,
    ));
    events::publish(ctx, &mcm.object_ref(&()), problems).await;
    for (job, event) in events::failed_job_events(mcm.status.as_ref(), &new_status, failed_jobs) {
        let reference = events::job_reference(&ctx.config.namespace, &job, &ctx.jobs);
        events::publish(ctx, &reference, vec![event]).await;
    }
    ctx.metrics.observe_fleet(&mcm.name_any(), &new_status);
    ctx.metrics
        .observe_rollout(&mcm.name_any(), new_status.rollout.as_ref());
    ctx.metrics
        .observe_problems(&mcm.name_any(), tally.problem_kinds());
    apply::write_status(ctx, mcm, &new_status).await?;
    Ok(())
}

async fn cleanup(mcm: &ManagedClusterModule, ctx: &Context) -> Result<Action, Error> {
    ctx.memos.take(&mcm.name_any());
    ctx.dirty.take(&mcm.name_any());
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
    let gone = events::Announcement::normal(Reason::Deleted, "every ManifestWork is gone");
    events::publish(ctx, &mcm.object_ref(&()), vec![gone]).await;
    ctx.metrics.forget(&mcm.name_any());
    Ok(Action::await_change())
}
