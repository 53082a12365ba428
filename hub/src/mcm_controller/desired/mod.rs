//! Desired: what the hub wants for one MCM, decided from [`Observed`] alone (pure). One file per
//! rendered kind ([`manifestwork`], [`job`]), the per-cluster plan in [`plan`], and here the
//! whole round: the works to write or keep, the works to delete, and the Events that say so.

pub mod job;
pub mod manifestwork;
pub mod plan;
pub mod step;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kmm_api::{
    ManagedClusterModule,
    ocm::{ManifestWork, ManifestWorkSpec},
};
use kube::ResourceExt;

use self::plan::Blocker;
use super::{
    events::Announcement,
    observe::{Observed, SelectedCluster},
};
use crate::{reason::Reason, rollout::round::Round};

/// Everything one reconcile of an MCM wants done.
#[derive(Debug)]
pub struct Desired {
    /// One entry per selected cluster, in the order of [`Observed::clusters`].
    pub clusters: Vec<ClusterPlan>,
    /// ManifestWorks of clusters the MCM no longer selects.
    pub deletes: Vec<Arc<ManifestWork>>,
    /// Events to publish once the works are written and deleted.
    pub events: Vec<Announcement>,
}

/// What one selected cluster gets.
#[derive(Debug)]
pub struct ClusterPlan {
    pub cluster: String,
    /// Kernels it reports (empty when unknown).
    pub kernels: Vec<String>,
    /// Kernels it reports that the hub refused, and why.
    pub refused: Vec<String>,
    /// Why the hub cannot hear from it, if so.
    pub unreachable: Option<String>,
    pub work: WorkPlan,
}

/// A ManifestWork to write: its own metadata, and a spec shared by every cluster with the same
/// revision and kernels. 10,000 clusters on 3 kernels render, hash and hold 3 specs, not
/// 10,000; the whole work is put together only when it is written.
#[derive(Debug, Clone)]
pub struct PendingWork {
    pub metadata: ObjectMeta,
    pub spec: Arc<SharedSpec>,
}

/// A rendered ManifestWork spec and its digest (what "already up to date" compares).
#[derive(Debug)]
pub struct SharedSpec {
    pub spec: ManifestWorkSpec,
    pub digest: String,
}

impl SharedSpec {
    pub fn new(spec: ManifestWorkSpec) -> Self {
        let digest = super::slim::spec_digest(&spec);
        Self { spec, digest }
    }
}

impl PendingWork {
    /// The ManifestWork to send.
    pub fn to_work(&self) -> ManifestWork {
        ManifestWork {
            metadata: self.metadata.clone(),
            spec: self.spec.spec.clone(),
            status: None,
        }
    }
}

/// Rendered specs of one round, by revision and kernel set.
type Specs = BTreeMap<(String, Vec<String>), Result<Arc<SharedSpec>, Blocker>>;

/// The fate of one cluster's ManifestWork this round.
#[derive(Debug)]
pub enum WorkPlan {
    /// Write this (new or changed).
    Write(Box<PendingWork>),
    /// The stored work already says what we want: writing it again would be a no-op patch.
    Keep(Arc<ManifestWork>),
    /// No work can be rendered (an older one, if any, is left alone).
    Blocked(Blocker),
}

/// The round for `mcm` given what was observed, every cluster at the MCM's own revision.
pub fn desired(mcm: &ManagedClusterModule, observed: &Observed) -> Desired {
    desired_in(mcm, observed, None)
}

/// The round for `mcm`, each cluster rendered from the revision `rollout` assigns it (see
/// [`crate::rollout::round`]); `None` renders every cluster from `mcm`.
pub fn desired_in(mcm: &ManagedClusterModule, observed: &Observed, rollout: Option<&Round>) -> Desired {
    let selected: BTreeSet<&str> = observed.clusters.iter().map(|c| c.name.as_str()).collect();
    let deletes: Vec<Arc<ManifestWork>> = observed
        .works
        .iter()
        .filter(|(ns, _)| !selected.contains(ns.as_str()))
        .map(|(_, w)| w.clone())
        .collect();
    let mut events: Vec<Announcement> = deletes
        .iter()
        .map(|w| {
            let ns = w.namespace().unwrap_or_default();
            Announcement::normal(
                Reason::ManifestWorkDeleted,
                format!("cluster {ns} no longer selected"),
            )
        })
        .collect();

    // Render per distinct revision and kernel set (10,000 clusters on 3 kernels render 3 Modules).
    let mut specs = Specs::new();
    let clusters: Vec<ClusterPlan> = observed
        .clusters
        .iter()
        .map(|c| ClusterPlan {
            cluster: c.name.clone(),
            kernels: c.kernels.clone().unwrap_or_default(),
            refused: c.refused.clone(),
            unreachable: c.unreachable.clone(),
            work: match rollout_render(mcm, c, observed, rollout, &mut specs) {
                Err(blocker) => WorkPlan::Blocked(blocker),
                Ok(None) => match observed.works.get(&c.name) {
                    Some(current) => WorkPlan::Keep(current.clone()),
                    None => WorkPlan::Blocked(Blocker::new(
                        Reason::RolloutPending,
                        "waiting for its wave of the progressive rollout",
                    )),
                },
                Ok(Some(work)) => match observed.works.get(&c.name) {
                    Some(current) if up_to_date(current, &work) => WorkPlan::Keep(current.clone()),
                    _ => WorkPlan::Write(Box::new(work)),
                },
            },
        })
        .collect();
    let written = clusters
        .iter()
        .filter(|c| matches!(c.work, WorkPlan::Write(_)))
        .count();
    if written > 0 {
        events.push(Announcement::normal(
            Reason::ManifestWorksApplied,
            format!("{written} ManifestWorks written"),
        ));
    }
    Desired {
        clusters,
        deletes,
        events,
    }
}

/// The work for one cluster from the revision the rollout assigns it, annotated with it;
/// `Ok(None)` when the rollout writes nothing for it this round.
fn rollout_render(
    mcm: &ManagedClusterModule,
    cluster: &SelectedCluster,
    observed: &Observed,
    rollout: Option<&Round>,
    specs: &mut Specs,
) -> Result<Option<PendingWork>, Blocker> {
    let Some(rollout) = rollout else {
        return render(mcm, "", cluster, observed, specs).map(Some);
    };
    let Some((at, notes)) = rollout.render_from(&cluster.name) else {
        return Ok(None);
    };
    let mut work = render(&at, &notes[0].1, cluster, observed, specs)?;
    work.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .extend(notes.into_iter().map(|(k, v)| (k.to_owned(), v)));
    Ok(Some(work))
}

/// The work for one cluster, or why there is none; Module specs are shared per revision and
/// kernel set.
fn render(
    mcm: &ManagedClusterModule,
    revision: &str,
    cluster: &SelectedCluster,
    observed: &Observed,
    specs: &mut Specs,
) -> Result<PendingWork, Blocker> {
    if let Some(b) = &observed.spec_error {
        return Err(b.clone());
    }
    let kernels = cluster.kernels.as_ref().map_err(Clone::clone)?;
    let spec = specs
        .entry((revision.to_owned(), kernels.clone()))
        .or_insert_with(|| {
            let module = plan::render_spec(mcm, kernels, &observed.pins)?;
            Ok(Arc::new(SharedSpec::new(plan::work_spec_for(mcm, module)?)))
        })
        .clone()?;
    Ok(PendingWork {
        metadata: plan::work_metadata_for(mcm, &cluster.name, kernels),
        spec,
    })
}

/// Does the stored work already say what we want? Then writing it again is pointless: a hub
/// restart over 10,000 clusters must not cost 10,000 no-op patches.
pub fn up_to_date(current: &ManifestWork, desired: &PendingWork) -> bool {
    let subset = |want: Option<&BTreeMap<String, String>>, have: &BTreeMap<String, String>| {
        want.into_iter().flatten().all(|(k, v)| have.get(k) == Some(v))
    };
    let meta = &desired.metadata;
    super::slim::work_spec_digest(current) == desired.spec.digest
        && current.metadata.deletion_timestamp.is_none()
        && subset(meta.labels.as_ref(), current.labels())
        && subset(meta.annotations.as_ref(), current.annotations())
        && meta
            .owner_references
            .iter()
            .flatten()
            .all(|o| current.owner_references().contains(o))
}

#[cfg(test)]
mod tests;
