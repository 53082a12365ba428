//! The rollout's part of the MCM status (pure): `status.rollout`, the `RolloutHalted`
//! condition, and the Events of a new wave or a halt.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kmm_api::{ManagedClusterModuleStatus, mcm::RolloutStatus};

use super::round::Round;
use crate::{mcm_controller::events::Announcement, reason::Reason};

/// Condition type set while the rollout is halted (or its strategy unusable).
pub const HALTED: &str = "RolloutHalted";
/// Failing clusters named in the condition message; the rest are counted.
const NAMED: usize = 5;

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// `status.rollout` for `round`.
pub fn rollout_status(round: &Round) -> RolloutStatus {
    let plan = &round.plan;
    let phase = if plan.halted {
        "Halted"
    } else if plan.paused {
        "Paused"
    } else if plan.in_progress.is_empty() && plan.pending.is_empty() && plan.move_now.is_empty() {
        "Succeeded"
    } else {
        "Progressing"
    };
    RolloutStatus {
        target_revision: round.target.clone(),
        previous_revision: round.previous.clone().unwrap_or_default(),
        updated: count(plan.succeeded.len()),
        in_progress: count(plan.in_progress.len() + plan.move_now.len()),
        failed: count(plan.failed.len()),
        pending: count(plan.pending.len()),
        wave: round.wave,
        phase: phase.into(),
    }
}

/// Lays the rollout over `status`: `status.rollout` and the `RolloutHalted` condition (True with
/// the failing clusters and reasons, or the strategy's error; False otherwise). Its transition
/// time comes from `previous` (the stored status) while its value holds, so a steady rollout
/// writes no status.
pub fn apply(
    status: &mut ManagedClusterModuleStatus,
    previous: Option<&ManagedClusterModuleStatus>,
    round: &Round,
    invalid: Option<&str>,
    now: Time,
) {
    status.rollout = Some(rollout_status(round));
    let (state, reason, message) = match invalid {
        Some(why) => (
            "True",
            Reason::InvalidRolloutStrategy,
            format!("{why}; no cluster moves until it is fixed"),
        ),
        None if round.plan.halted => ("True", Reason::RolloutHalted, halted_message(round)),
        None => (
            "False",
            Reason::AsExpected,
            "the rollout is not halted".to_string(),
        ),
    };
    let previous = previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == HALTED));
    let since = match previous {
        Some(p) if p.status == state => p.last_transition_time.clone(),
        _ => now,
    };
    let condition = Condition {
        type_: HALTED.into(),
        status: state.into(),
        reason: reason.to_string(),
        message,
        last_transition_time: since,
        observed_generation: status.observed_generation,
    };
    status.conditions.retain(|c| c.type_ != HALTED);
    status.conditions.push(condition);
}

fn halted_message(round: &Round) -> String {
    let failed = &round.plan.failed;
    let named: Vec<String> = failed
        .iter()
        .take(NAMED)
        .map(|f| {
            format!(
                "{} ({}: {})",
                f.cluster,
                f.reason,
                kmm_api::text::head(&f.message, 200)
            )
        })
        .collect();
    let more = failed.len().saturating_sub(NAMED);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(
        "{} clusters failed at revision {}, more than maxFailures allows: {}{tail}. No other cluster moves; fix the Module (a new revision) or roll back by editing the MCM back",
        failed.len(),
        round.target,
        named.join("; ")
    )
}

/// Events for this round: a Warning when the rollout becomes halted, a Normal per new wave.
pub fn events(was_halted: bool, round: &Round) -> Vec<Announcement> {
    let mut out = Vec::new();
    if round.plan.halted && !was_halted {
        out.push(Announcement::warning(
            Reason::RolloutHalted,
            halted_message(round),
        ));
    }
    if round.strategy.progressive && !round.plan.move_now.is_empty() {
        out.push(
            Announcement::normal(
                Reason::RolloutWave,
                format!(
                    "wave {}: moving {} to revision {}",
                    round.wave,
                    round.plan.move_now.join(", "),
                    round.target
                ),
            )
            // One series per wave of a revision: otherwise every wave's Event would only count up
            // the first one's, whose note names wave 1.
            .with_action(format!("MoveWave{}-{}", round.wave, round.target)),
        );
    }
    out
}

/// Was the stored status halted?
pub fn was_halted(status: Option<&ManagedClusterModuleStatus>) -> bool {
    status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == HALTED && c.status == "True")
    })
}
