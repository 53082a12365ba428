//! The reconcile of the clusters that changed, from the [`Memo`] of the last full one: each
//! changed cluster is observed, planned, rendered and applied as the full reconcile would, and
//! the status is counted from the memo's per-cluster views. Nothing here is O(clusters) but the
//! planner pass and the status counts over cached values; no render, digest, store scan or API
//! call for a cluster that did not change.
//!
//! A kernel no cluster ran before is let in here when its images pin to digests and its tag
//! spelling is its own: a rolling kernel upgrade then never needs a look at the whole fleet. It
//! gives up (returns `None`, and the caller runs a full reconcile) whenever one cluster alone
//! cannot decide: a cluster selected or dropped, a new kernel with an image to build, sign or
//! refuse, a work not at the target revision, a rollout wave ready to start.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;
use kmm_api::{ManagedClusterModule, kernel::normalize_kernel, ocm::ManifestWork};
use kube::{ResourceExt, runtime::reflector::ObjectRef};

use super::{
    Context, Error, apply,
    desired::{self, plan},
    fleet_status::{ClusterView, Tally},
    memo::{FullReason, Memo},
    observe::{self, Observed, SelectedCluster},
};
use crate::rollout::{
    planner, revision,
    round::{self, Assignment, Round},
};

/// One changed cluster, read for this reconcile.
struct Changed {
    index: usize,
    selected: SelectedCluster,
    work: Option<Arc<ManifestWork>>,
    standing: planner::Cluster,
}

/// How a per-cluster reconcile ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done; look again after this long.
    Done(Duration),
    /// A full reconcile is needed instead (the memo may be half updated: drop it).
    Full(FullReason),
}

/// Reconciles `dirty` against `memo` and writes the status. After an error the memo is still
/// sound: every change it took is one the clusters really made, and a retry of the same clusters
/// redoes the rest.
pub async fn reconcile_clusters(
    mcm: &ManagedClusterModule,
    ctx: &Context,
    memo: &mut Memo,
    dirty: &BTreeSet<String>,
) -> Result<Outcome, Error> {
    let now = Timestamp::now();
    let name = mcm.name_any();
    let mut changed = Vec::new();
    for cluster in dirty {
        match read_changed(mcm, ctx, memo, &name, cluster, now) {
            Read::Unconcerned => {}
            Read::NeedsFull(reason) => return Ok(Outcome::Full(reason)),
            Read::Changed(c) => changed.push(*c),
        }
    }
    let new_kernels: BTreeSet<String> = changed
        .iter()
        .filter_map(|c| c.selected.kernels.as_ref().ok())
        .flatten()
        .filter(|k| !memo.accepted.contains(*k))
        .cloned()
        .collect();
    if let Err(reason) = admit_kernels(mcm, ctx, memo, new_kernels).await {
        return Ok(Outcome::Full(reason));
    }
    // The plan and the status are functions of every cluster's standing and view: when the
    // changed clusters' are as before and no soak or deadline runs, they are as before too, and
    // a batch costs only its own clusters (the hub's own writes coming back, mostly).
    let timed = memo.round.plan.recheck_after.is_some();
    let standings_moved = changed.iter().any(|c| memo.planned[c.index] != c.standing);
    if standings_moved || timed {
        for c in &changed {
            memo.planned[c.index] = c.standing.clone();
        }
        let plan = planner::plan(&memo.planned, &memo.round.strategy, now);
        if !plan.move_now.is_empty() {
            return Ok(Outcome::Full(FullReason::WaveStarts)); // the full reconcile moves it
        }
        memo.round.plan = plan;
    }

    let indices: Vec<usize> = changed.iter().map(|c| c.index).collect();
    let mut works = BTreeMap::new();
    let mut clusters = Vec::with_capacity(changed.len());
    for c in changed {
        if let Some(w) = c.work {
            works.insert(c.selected.name.clone(), w);
        }
        clusters.push(c.selected);
    }
    let observed = Observed {
        clusters,
        works,
        pins: memo.pins.clone(),
        spec_error: None,
    };
    let desired = desired::desired_in(mcm, &observed, Some(&memo.round));
    let views = apply::apply(ctx, mcm, desired).await?;
    let mut views_moved = false;
    for (i, view) in indices.into_iter().zip(views) {
        if memo.views[i] != view {
            memo.tally.replace(&memo.views[i], &view);
            memo.views[i] = view;
            views_moved = true;
        }
    }
    if views_moved || standings_moved || timed {
        super::finish(ctx, mcm, &memo.tally, &memo.pins, &memo.round, None, &[]).await?;
    }
    Ok(Outcome::Done(
        memo.round
            .plan
            .recheck_after
            .map_or(ctx.config.resync, |r| r.min(ctx.config.resync))
            .min(ctx.config.resync.saturating_sub(memo.full_at.elapsed())),
    ))
}

/// Lets kernels no cluster ran at the last full reconcile in without another one: each needs an
/// image-tag spelling of its own in the fleet ([`spellings_clash`]) and every image it maps to
/// must pin to a digest (nothing to build or sign). An error leaves the decision to a full
/// reconcile, which builds, signs or refuses as it always does.
async fn admit_kernels(
    mcm: &ManagedClusterModule,
    ctx: &Context,
    memo: &mut Memo,
    kernels: BTreeSet<String>,
) -> Result<(), FullReason> {
    if kernels.is_empty() {
        return Ok(());
    }
    if spellings_clash(&memo.accepted, &kernels) {
        return Err(FullReason::KernelSpellingClash);
    }
    let list: Vec<String> = kernels.iter().cloned().collect();
    let Ok(images) = plan::images_for(mcm, &list) else {
        return Err(FullReason::KernelNotPinned);
    };
    let unknown: BTreeSet<plan::ImageRef> = images
        .into_iter()
        .filter(|i| !memo.pins.contains_key(&i.image))
        .collect();
    if !unknown.is_empty() {
        let auth = observe::pull_auth(mcm, ctx).await;
        let pins = observe::resolve(&ctx.resolver, unknown, &auth).await;
        if !pins.values().all(|p| matches!(p, plan::Pin::Pinned(_))) {
            return Err(FullReason::KernelNotPinned);
        }
        memo.pins.extend(pins);
    }
    memo.accepted.extend(kernels);
    Ok(())
}

/// Would `new` kernels share an image-tag spelling with a different kernel, known or new? Such a
/// pair is refused by the full reconcile (see [`plan::refuse_tag_collisions`]), which also
/// decides which spelling keeps the tag.
pub fn spellings_clash(known: &BTreeSet<String>, new: &BTreeSet<String>) -> bool {
    let mut owner: HashMap<String, &str> = known.iter().map(|k| (normalize_kernel(k), k.as_str())).collect();
    for k in new {
        match owner.insert(normalize_kernel(k), k) {
            Some(other) if other != k => return true,
            _ => {}
        }
    }
    false
}

enum Read {
    /// Neither selected now nor before: not this MCM's business.
    Unconcerned,
    NeedsFull(FullReason),
    Changed(Box<Changed>),
}

/// Reads one changed cluster from the stores, or says why it needs a full reconcile.
fn read_changed(
    mcm: &ManagedClusterModule,
    ctx: &Context,
    memo: &Memo,
    name: &str,
    cluster: &str,
    now: Timestamp,
) -> Read {
    let found = ctx
        .clusters
        .get(&ObjectRef::new(cluster))
        .filter(|c| c.metadata.deletion_timestamp.is_none() && plan::selects(mcm, c));
    let (found, index) = match (found, memo.index.get(cluster)) {
        (None, None) => return Read::Unconcerned,
        (Some(found), Some(&index)) => (found, index),
        _ => return Read::NeedsFull(FullReason::ClusterJoinedOrLeft),
    };
    let (kernels, refused) = plan::checked_cluster_kernels(&found);
    let target = memo.round.target.as_str();
    let cached = ctx.works.get(&ObjectRef::new(name).within(cluster));
    let work = ctx.recent_writes.latest(cluster, name, cached);
    let at_target = work.as_deref().and_then(revision::of_work) == Some(target);
    let rendered_at_target = matches!(
        memo.round.assignments.get(cluster),
        Some(Assignment::Render { revision, .. }) if revision == target
    );
    if !at_target || !rendered_at_target {
        return Read::NeedsFull(FullReason::NotAtTarget);
    }
    let unreachable = observe::unreachable(&found);
    let standing = planner::Cluster {
        name: cluster.to_owned(),
        canary: round::is_canary(&memo.round.strategy, found.labels()),
        standing: round::standing(work.as_deref(), target, unreachable.is_some(), now),
    };
    Read::Changed(Box::new(Changed {
        index,
        selected: SelectedCluster {
            name: cluster.to_owned(),
            kernels,
            refused,
            unreachable,
        },
        work,
        standing,
    }))
}

/// The memo of a full reconcile, when its outcome lets single clusters be reconciled alone:
/// nothing blocks the fleet as a whole (spec error, unusable strategy, image not pinned, failed
/// Job, tag collision), no wave is starting and every cluster is rendered from the target.
pub struct FullOutcome<'a> {
    pub mcm: &'a ManagedClusterModule,
    pub observed: &'a Observed,
    pub collisions: bool,
    pub round: &'a Round,
    pub invalid: bool,
    pub failed_jobs: bool,
    pub views: &'a [ClusterView],
}

/// See [`FullOutcome`]; `labels` reads a cluster's labels for the canary selector.
pub fn remember(
    outcome: FullOutcome<'_>,
    tally: Tally,
    labels: &dyn Fn(&str) -> BTreeMap<String, String>,
    started: std::time::Instant,
) -> Option<Memo> {
    let FullOutcome {
        mcm,
        observed,
        collisions,
        round,
        invalid,
        failed_jobs,
        views,
    } = outcome;
    let settled = observed.spec_error.is_none()
        && !collisions
        && !invalid
        && !failed_jobs
        && round.plan.move_now.is_empty()
        && observed.pins.values().all(|p| matches!(p, plan::Pin::Pinned(_)))
        && views.len() == observed.clusters.len()
        && observed.clusters.iter().zip(views).all(|(c, v)| {
            c.name == v.name
                && matches!(round.assignments.get(&c.name),
                    Some(Assignment::Render { revision, .. }) if *revision == round.target)
        });
    if !settled {
        return None;
    }
    let now = Timestamp::now();
    let planned = observed
        .clusters
        .iter()
        .map(|c| planner::Cluster {
            name: c.name.clone(),
            canary: round::is_canary(&round.strategy, &labels(&c.name)),
            standing: round::standing(
                observed.works.get(&c.name).map(AsRef::as_ref),
                &round.target,
                c.unreachable.is_some(),
                now,
            ),
        })
        .collect();
    Some(Memo {
        uid: mcm.metadata.uid.clone(),
        generation: mcm.metadata.generation,
        full_at: started,
        round: round.clone(),
        pins: observed.pins.clone(),
        accepted: observed
            .clusters
            .iter()
            .filter_map(|c| c.kernels.as_ref().ok())
            .flatten()
            .cloned()
            .collect(),
        views: views.to_vec(),
        tally,
        planned,
        index: views
            .iter()
            .enumerate()
            .map(|(i, v)| (v.name.clone(), i))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(kernels: &[&str]) -> BTreeSet<String> {
        kernels.iter().map(|k| (*k).to_owned()).collect()
    }

    #[test]
    fn a_new_kernel_with_its_own_spelling_does_not_clash() {
        let known = set(&["6.1.0-29", "6.1.0-30+rt"]);
        assert!(!spellings_clash(&known, &set(&["6.1.0-31"])));
        // A kernel already known is no clash with itself.
        assert!(!spellings_clash(&known, &set(&["6.1.0-30+rt", "6.1.0-31"])));
    }

    #[test]
    fn a_new_kernel_spelled_like_a_known_one_clashes() {
        let known = set(&["6.1.0-30+rt"]);
        assert!(spellings_clash(&known, &set(&["6.1.0-30_rt"])));
        let known = set(&["6.1.0-30_rt"]);
        assert!(spellings_clash(&known, &set(&["6.1.0-30+rt"])));
    }

    #[test]
    fn two_new_kernels_spelled_alike_clash() {
        assert!(spellings_clash(&set(&[]), &set(&["5.14+a", "5.14_a"])));
    }
}
