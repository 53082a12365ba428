//! The MCM's status from every selected cluster's state (pure). It stays small at any fleet size:
//! counts, one line per kernel and at most [`MAX_PROBLEMS`] clusters named.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kmm_api::{ClusterProblem, KernelSummary, ManagedClusterModuleStatus};

use super::{desired::plan::Blocker, work_outcome::WorkOutcome};
use crate::reason::Reason;

/// Clusters named in `status.problems`; the rest are only counted.
pub const MAX_PROBLEMS: usize = 20;
/// Kernel lines in `status.kernels`.
pub const MAX_KERNELS: usize = 256;
/// Longest message kept per problem.
const MAX_MESSAGE: usize = 512;

/// How one selected cluster stands this round.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterState {
    /// No ManifestWork could be rendered (an older one, if any, is left alone).
    Blocked(Blocker),
    /// The ManifestWork is written; this is what the work agent reported on it so far.
    Work(WorkOutcome),
}

/// One selected cluster as the status sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterView {
    pub name: String,
    /// Kernels it reports (empty when unknown).
    pub kernels: Vec<String>,
    /// Kernels it reports that the hub refused, and why (its other kernels still count).
    pub refused: Vec<String>,
    pub state: ClusterState,
    /// Set when the hub cannot hear from the cluster (see `observe::unreachable`): its work's
    /// feedback is then not counted as current.
    pub unreachable: Option<String>,
}

impl ClusterView {
    /// `(state, reason, message)` when the cluster needs attention.
    pub fn problem(&self) -> Option<(&'static str, String, String)> {
        if let (ClusterState::Work(_), Some(why)) = (&self.state, &self.unreachable) {
            return Some(("Unreachable", Reason::ClusterUnavailable.to_string(), why.clone()));
        }
        match &self.state {
            ClusterState::Blocked(b) => Some(("Blocked", b.reason.to_string(), b.message.clone())),
            ClusterState::Work(w) => w
                .failure
                .as_ref()
                .map(|(reason, message)| {
                    let reason = if reason.is_empty() {
                        Reason::ApplyFailed.to_string()
                    } else {
                        reason.clone()
                    };
                    ("Degraded", reason, message.clone())
                })
                .or_else(|| self.refused_problem()),
        }
    }

    /// The refused kernels as a problem: the cluster runs, but some of what it reports was
    /// dropped.
    fn refused_problem(&self) -> Option<(&'static str, String, String)> {
        (!self.refused.is_empty()).then(|| {
            (
                "Degraded",
                Reason::MalformedKernelClaim.to_string(),
                self.refused.join("; "),
            )
        })
    }
}

fn clip(s: &str) -> String {
    if s.len() <= MAX_MESSAGE {
        return s.to_string();
    }
    format!("{}...", kmm_api::text::head(s, MAX_MESSAGE))
}

/// The counts behind the status over a set of cluster views. A full reconcile counts every view
/// ([`Tally::of`]); a per-cluster one swaps each changed cluster's old view for its new one
/// ([`Tally::replace`]), so a change on one cluster costs O(log clusters), not a pass over the
/// fleet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    desired: i64,
    applied: i64,
    blocked: i64,
    degraded: i64,
    pending: i64,
    nodes_desired: i128,
    nodes_loaded: i128,
    per_kernel: BTreeMap<String, i64>,
    /// Every cluster that needs attention, by name (the status names the first few).
    problems: BTreeMap<String, ClusterProblem>,
}

impl Tally {
    pub fn of(views: &[ClusterView]) -> Self {
        let mut t = Self::default();
        for v in views {
            t.count(v, 1);
        }
        t
    }

    /// `old` is now `new` (the same cluster).
    pub fn replace(&mut self, old: &ClusterView, new: &ClusterView) {
        self.count(old, -1);
        self.count(new, 1);
    }

    /// Every kernel some cluster reports.
    pub fn kernels(&self) -> impl Iterator<Item = &String> {
        self.per_kernel.keys()
    }

    /// `(state, reason)` of every cluster that needs attention.
    pub fn problem_kinds(&self) -> impl Iterator<Item = (&str, String)> {
        self.problems
            .values()
            .map(|p| (p.state.as_str(), p.reason.clone()))
    }

    /// Adds (`by` 1) or takes away (`by` -1) one cluster's view.
    fn count(&mut self, c: &ClusterView, by: i64) {
        self.desired += by;
        for k in &c.kernels {
            let n = self.per_kernel.entry(k.clone()).or_default();
            *n += by;
            if *n == 0 {
                self.per_kernel.remove(k);
            }
        }
        match &c.state {
            ClusterState::Blocked(_) => self.blocked += by,
            ClusterState::Work(_) if c.unreachable.is_some() => self.pending += by,
            ClusterState::Work(w) => {
                if w.applied {
                    self.applied += by;
                } else {
                    self.pending += by;
                }
                if w.failure.is_some() || !c.refused.is_empty() {
                    self.degraded += by;
                }
                // Exact in i128 whatever a spoke reports; saturated only in the status.
                self.nodes_desired += i128::from(w.nodes_desired) * i128::from(by);
                self.nodes_loaded += i128::from(w.nodes_loaded) * i128::from(by);
            }
        }
        if by < 0 {
            self.problems.remove(&c.name);
        } else if let Some(p) = c.problem() {
            self.problems.insert(c.name.clone(), p_of(&c.name, p));
        }
    }
}

fn sat32(n: i64) -> i32 {
    i32::try_from(n).unwrap_or(if n < 0 { i32::MIN } else { i32::MAX })
}

fn sat64(n: i128) -> i64 {
    i64::try_from(n).unwrap_or(if n < 0 { i64::MIN } else { i64::MAX })
}

/// The status from the fleet's [`Tally`]; `previous` keeps condition transition times stable.
pub fn fleet_status(
    generation: Option<i64>,
    tally: &Tally,
    kernel_images: &BTreeMap<String, String>,
    previous: Option<&ManagedClusterModuleStatus>,
    now: Time,
) -> ManagedClusterModuleStatus {
    let mut s = ManagedClusterModuleStatus {
        observed_generation: generation,
        number_desired: sat32(tally.desired),
        number_applied: sat32(tally.applied),
        number_blocked: sat32(tally.blocked),
        number_degraded: sat32(tally.degraded),
        nodes_desired: sat64(tally.nodes_desired),
        nodes_loaded: sat64(tally.nodes_loaded),
        problems_omitted: sat32(tally.problems.len().saturating_sub(MAX_PROBLEMS) as i64),
        problems: tally.problems.values().take(MAX_PROBLEMS).cloned().collect(),
        ..Default::default()
    };
    let pending = tally.pending;
    // The kernels most clusters run first: kernels invented by a few spokes sort last and are
    // the ones omitted.
    let mut per_kernel: Vec<(&str, i32)> = tally
        .per_kernel
        .iter()
        .map(|(k, n)| (k.as_str(), sat32(*n)))
        .collect();
    per_kernel.sort_by(|(ka, na), (kb, nb)| nb.cmp(na).then(ka.cmp(kb)));
    s.kernels_omitted = per_kernel
        .len()
        .saturating_sub(MAX_KERNELS)
        .try_into()
        .unwrap_or(i32::MAX);
    s.kernels = per_kernel
        .into_iter()
        .take(MAX_KERNELS)
        .map(|(k, n)| KernelSummary {
            kernel: k.to_string(),
            image: kernel_images.get(k).cloned().unwrap_or_default(),
            clusters: n,
        })
        .collect();

    let all_loaded = s.nodes_loaded >= s.nodes_desired;
    let ready = s.number_blocked == 0 && s.number_degraded == 0 && pending == 0 && all_loaded;
    let (ready_reason, ready_msg) = if s.number_desired == 0 {
        (
            Reason::NoClusterSelected,
            "the selector matches no ManagedCluster".to_string(),
        )
    } else if ready {
        (
            Reason::Loaded,
            format!(
                "{} clusters applied; module loaded on {} nodes",
                s.number_applied, s.nodes_loaded
            ),
        )
    } else {
        (
            Reason::NotReady,
            format!(
                "{} of {} clusters applied, {} blocked, {} degraded; module loaded on {} of {} nodes",
                s.number_applied,
                s.number_desired,
                s.number_blocked,
                s.number_degraded,
                s.nodes_loaded,
                s.nodes_desired
            ),
        )
    };
    let progressing = pending > 0 || !all_loaded;
    let degraded = s.number_blocked + s.number_degraded;
    let old = previous.map(|p| p.conditions.as_slice()).unwrap_or_default();
    s.conditions = vec![
        condition(
            old,
            "Ready",
            ready || s.number_desired == 0,
            ready_reason,
            &ready_msg,
            generation,
            &now,
        ),
        condition(
            old,
            "Progressing",
            progressing,
            if progressing {
                Reason::Rollout
            } else {
                Reason::Done
            },
            &format!(
                "{pending} clusters not applied yet; {} of {} nodes loaded",
                s.nodes_loaded, s.nodes_desired
            ),
            generation,
            &now,
        ),
        condition(
            old,
            "Degraded",
            degraded > 0,
            if degraded > 0 {
                Reason::ClustersNeedAttention
            } else {
                Reason::AsExpected
            },
            &format!(
                "{} blocked and {} degraded clusters; see status.problems",
                s.number_blocked, s.number_degraded
            ),
            generation,
            &now,
        ),
    ];
    s
}

fn p_of(cluster: &str, (state, reason, message): (&'static str, String, String)) -> ClusterProblem {
    ClusterProblem {
        cluster: cluster.to_string(),
        state: state.to_string(),
        reason,
        message: clip(&message),
    }
}

/// A condition whose `lastTransitionTime` moves only when its status does.
fn condition(
    old: &[Condition],
    type_: &str,
    value: bool,
    reason: Reason,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if value { "True" } else { "False" };
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time: since,
    }
}

#[cfg(test)]
mod tests;
