//! The wave planner (pure): from each selected cluster's standing against the target revision,
//! the strategy and the time, which clusters move now, and how the rollout stands.
//!
//! Waves are strict: a wave starts only once no moved cluster is still in progress, so every
//! wave waits for the previous one to be loaded and soaked (OCM's `Progressive` refills up to
//! `maxConcurrency` instead; for drivers a clean cut between waves is easier to reason about).
//! Canaries form the first waves; no other cluster moves while a canary is behind or in progress.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::strategy::Strategy;

/// Where one selected cluster stands against the target revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Not on the target revision yet (on an older one, or no work at all).
    Behind,
    /// Moved to the target at `since`; every targeted node loaded, none failing.
    Loaded { since: Timestamp },
    /// Moved to the target at `since`; not loaded yet.
    Loading { since: Timestamp },
    /// Moved to the target; applying or loading fails.
    Failing { reason: String, message: String },
}

/// One selected cluster as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    /// Picked by the canary selector.
    pub canary: bool,
    pub standing: Standing,
}

/// A cluster that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub cluster: String,
    pub reason: String,
    pub message: String,
}

/// The planner's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Clusters to move to the target revision now.
    pub move_now: Vec<String>,
    /// At the target, loaded and soaked for `minSuccessTime`.
    pub succeeded: Vec<String>,
    /// At the target, not yet succeeded nor failed.
    pub in_progress: Vec<String>,
    pub failed: Vec<Failure>,
    /// Behind and not moving this round.
    pub pending: Vec<String>,
    /// More failures than `maxFailures`: nothing moves until the MCM changes.
    pub halted: bool,
    /// `paused` is set: nothing moves.
    pub paused: bool,
    /// When to look again for a soak or deadline to pass, if one is running.
    pub recheck_after: Option<Duration>,
}

/// Reason of a cluster that did not succeed within `progressDeadline`.
pub const DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// Plans one round. `clusters` are in a stable order (by name); waves take them in that order,
/// canaries first.
pub fn plan(clusters: &[Cluster], strategy: &Strategy, now: Timestamp) -> Plan {
    let mut out = Plan {
        paused: strategy.paused,
        ..Plan::default()
    };
    let mut behind: Vec<&Cluster> = Vec::new();
    let mut canary_busy = false;
    for c in clusters {
        let elapsed = |since: &Timestamp| Duration::try_from(now.duration_since(*since)).unwrap_or_default();
        let mut recheck = |d: Duration| {
            out.recheck_after = Some(out.recheck_after.map_or(d, |r| r.min(d)));
        };
        let past_deadline =
            |since: &Timestamp| strategy.progress_deadline.is_some_and(|d| elapsed(since) > d);
        match &c.standing {
            Standing::Behind => {
                canary_busy |= c.canary;
                behind.push(c);
            }
            Standing::Loaded { since } if elapsed(since) >= strategy.min_success_time => {
                out.succeeded.push(c.name.clone());
            }
            Standing::Loaded { since } | Standing::Loading { since } if past_deadline(since) => {
                out.failed.push(Failure {
                    cluster: c.name.clone(),
                    reason: DEADLINE_EXCEEDED.into(),
                    message: format!(
                        "not loaded and soaked within progressDeadline ({}s) of its move",
                        strategy.progress_deadline.unwrap_or_default().as_secs()
                    ),
                });
            }
            Standing::Loaded { since } | Standing::Loading { since } => {
                canary_busy |= c.canary;
                out.in_progress.push(c.name.clone());
                let elapsed = elapsed(since);
                if let Standing::Loaded { .. } = c.standing {
                    recheck(strategy.min_success_time.saturating_sub(elapsed));
                }
                if let Some(d) = strategy.progress_deadline {
                    recheck(d.saturating_sub(elapsed) + Duration::from_secs(1));
                }
            }
            Standing::Failing { reason, message } => out.failed.push(Failure {
                cluster: c.name.clone(),
                reason: reason.clone(),
                message: message.clone(),
            }),
        }
    }
    if !strategy.progressive {
        // `All`: no gate, no halt; only `paused` holds clusters back.
        if !strategy.paused {
            out.move_now = behind.iter().map(|c| c.name.clone()).collect();
            behind.clear();
        }
        out.pending = behind.iter().map(|c| c.name.clone()).collect();
        return out;
    }
    out.halted = out.failed.len() > strategy.max_failures.of(clusters.len());
    let may_move = !out.halted && !strategy.paused && out.in_progress.is_empty();
    if may_move {
        let canaries_left = behind.iter().any(|c| c.canary);
        // Canaries first, then the rest; a busy canary holds everyone else back.
        let eligible = behind
            .iter()
            .filter(|c| c.canary || !(canaries_left || canary_busy));
        out.move_now = eligible
            .take(strategy.wave_size(clusters.len()))
            .map(|c| c.name.clone())
            .collect();
    }
    let moving: std::collections::HashSet<&str> = out.move_now.iter().map(String::as_str).collect();
    out.pending = behind
        .iter()
        .filter(|c| !moving.contains(c.name.as_str()))
        .map(|c| c.name.clone())
        .collect();
    out
}

#[cfg(test)]
#[path = "planner_tests.rs"]
mod tests;
