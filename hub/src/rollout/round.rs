//! One reconcile's rollout decision (pure): each selected cluster's standing against the target
//! revision, the planner's answer, and the revision each cluster is rendered from this round.
//!
//! A cluster that is not moving keeps the revision its ManifestWork names, and is re-rendered
//! from it when its kernels change (a new kernel never waits for a wave). A cluster with no work
//! yet waits for its wave with nothing written, unless the rollout is `All`. A work that names no
//! revision the hub still stores (written before the hub kept revisions) is left as it is until
//! its wave.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::jiff::Timestamp;
use kmm_api::{ManagedClusterModule, ocm::ManifestWork};
use kube::ResourceExt;

use super::{
    planner::{self, Plan, Standing},
    revision::{self, Content, MOVED_AT_ANNOTATION},
    strategy::Strategy,
};
use crate::mcm_controller::{observe::SelectedCluster, work_outcome::work_outcome};

/// The annotations a cluster's work carries: its revision and when it moved there.
pub type WorkNotes = [(&'static str, String); 2];

/// What one cluster gets this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// Render from `revision`; the work carries `moved_at` (when it moved to that revision).
    Render { revision: String, moved_at: String },
    /// Leave the current work as it is.
    Hold,
    /// No work yet, and none to write before its wave.
    Wait,
}

/// The rollout as decided for one reconcile.
#[derive(Debug, Clone, Default)]
pub struct Round {
    pub target: String,
    pub strategy: Strategy,
    pub plan: Plan,
    /// By cluster name; every selected cluster has one.
    pub assignments: BTreeMap<String, Assignment>,
    /// The MCM at each revision clusters are rendered from, by hash.
    pub at_revision: BTreeMap<String, Arc<ManagedClusterModule>>,
    /// Waves started for the target (canaries' wave counted once).
    pub wave: i32,
    /// The revision most clusters not at the target are on.
    pub previous: Option<String>,
}

impl Round {
    /// The MCM to render `cluster` from, and the annotations its work carries; `None` when the
    /// cluster gets no new work this round.
    pub fn render_from(&self, cluster: &str) -> Option<(Arc<ManagedClusterModule>, WorkNotes)> {
        match self.assignments.get(cluster)? {
            Assignment::Render { revision, moved_at } => Some((
                self.at_revision.get(revision)?.clone(),
                [
                    (revision::REVISION_ANNOTATION, revision.clone()),
                    (MOVED_AT_ANNOTATION, moved_at.clone()),
                ],
            )),
            Assignment::Hold | Assignment::Wait => None,
        }
    }
}

/// The revisions the works name, so the stored ones in use are kept.
pub fn in_use(works: &BTreeMap<String, Arc<ManifestWork>>) -> BTreeSet<String> {
    works
        .values()
        .filter_map(|w| revision::of_work(w).map(str::to_owned))
        .collect()
}

/// A cluster's standing against `target` from its work.
pub fn standing(work: Option<&ManifestWork>, target: &str, unreachable: bool, now: Timestamp) -> Standing {
    let Some(work) = work.filter(|w| revision::of_work(w) == Some(target)) else {
        return Standing::Behind;
    };
    let since = moved_at(work).unwrap_or(now);
    let outcome = work_outcome(work);
    if let Some((reason, message)) = outcome.failure {
        return Standing::Failing { reason, message };
    }
    let loaded =
        outcome.applied && outcome.nodes_desired > 0 && outcome.nodes_loaded == outcome.nodes_desired;
    if loaded && !unreachable {
        Standing::Loaded { since }
    } else {
        Standing::Loading { since }
    }
}

/// Does the strategy's canary selector pick a cluster with these labels? (An empty selector
/// picks none.)
pub fn is_canary(strategy: &Strategy, labels: &BTreeMap<String, String>) -> bool {
    !strategy.canary.is_empty() && strategy.canary.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn moved_at(work: &ManifestWork) -> Option<Timestamp> {
    work.annotations().get(MOVED_AT_ANNOTATION)?.parse().ok()
}

/// Decides the round: `labels` gives each selected cluster's ManagedCluster labels (for the
/// canary selector), `revisions` the stored revisions by hash.
pub fn decide(
    mcm: &ManagedClusterModule,
    clusters: &[SelectedCluster],
    labels: &dyn Fn(&str) -> BTreeMap<String, String>,
    works: &BTreeMap<String, Arc<ManifestWork>>,
    strategy: Strategy,
    revisions: &BTreeMap<String, Content>,
    now: Timestamp,
) -> Round {
    let target_content = Content::of(mcm);
    let target = target_content.hash();
    let canary = |name: &str| is_canary(&strategy, &labels(name));
    let planned: Vec<planner::Cluster> = clusters
        .iter()
        .map(|c| planner::Cluster {
            name: c.name.clone(),
            canary: canary(&c.name),
            standing: standing(
                works.get(&c.name).map(AsRef::as_ref),
                &target,
                c.unreachable.is_some(),
                now,
            ),
        })
        .collect();
    let plan = planner::plan(&planned, &strategy, now);
    let moving: BTreeSet<&str> = plan.move_now.iter().map(String::as_str).collect();
    let mut at_revision: BTreeMap<String, Arc<ManagedClusterModule>> =
        BTreeMap::from([(target.clone(), Arc::new(mcm.clone()))]);
    let mut behind_on: BTreeMap<String, usize> = BTreeMap::new();
    let mut assignments = BTreeMap::new();
    let (mut canaries_moved, mut others_moved) = (0usize, 0usize);
    for c in &planned {
        let work = works.get(&c.name);
        let current = work.and_then(|w| revision::of_work(w));
        let assignment = if current == Some(target.as_str()) || moving.contains(c.name.as_str()) {
            if c.canary {
                canaries_moved += 1;
            } else {
                others_moved += 1;
            }
            let kept = work
                .filter(|_| current == Some(target.as_str()))
                .and_then(|w| w.annotations().get(MOVED_AT_ANNOTATION).cloned());
            Assignment::Render {
                revision: target.clone(),
                moved_at: kept.unwrap_or_else(|| now.to_string()),
            }
        } else {
            match (
                work,
                current.and_then(|r| revisions.get(r).map(|content| (r, content))),
            ) {
                (Some(w), Some((r, content))) => {
                    *behind_on.entry(r.to_owned()).or_default() += 1;
                    at_revision
                        .entry(r.to_owned())
                        .or_insert_with(|| Arc::new(content.apply_to(mcm)));
                    Assignment::Render {
                        revision: r.to_owned(),
                        moved_at: w
                            .annotations()
                            .get(MOVED_AT_ANNOTATION)
                            .cloned()
                            .unwrap_or_default(),
                    }
                }
                (Some(_), None) => Assignment::Hold,
                (None, _) => Assignment::Wait,
            }
        };
        assignments.insert(c.name.clone(), assignment);
    }
    let size = strategy.wave_size(clusters.len());
    let wave = usize::from(canaries_moved > 0) + others_moved.div_ceil(size);
    let previous = behind_on.into_iter().max_by_key(|(_, n)| *n).map(|(r, _)| r);
    Round {
        target,
        strategy,
        plan,
        assignments,
        at_revision,
        wave: i32::try_from(wave).unwrap_or(i32::MAX),
        previous,
    }
}

#[cfg(test)]
#[path = "round_tests.rs"]
mod tests;
