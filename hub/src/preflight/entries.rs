//! The status of a ManagedClusterPreflight (pure): each (MCM, kernel) verdict, with how the
//! Job making its image went, becomes upstream's verificationStatus / verificationStage /
//! statusReason; the list is sorted, bounded and keeps transition times of unchanged entries.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kmm_api::preflight::{
    MAX_PREFLIGHT_ENTRIES, ManagedClusterPreflightStatus, PreflightModuleStatus,
    verification_status::{FAILURE, IN_PROGRESS, SUCCESS},
};

use super::verdict::{Check, Stage, Verdict};
use crate::mcm_controller::{
    build::pins::StepState,
    desired::{job::JobState, job::StepKind, plan::Blocker},
};
use crate::reason::Reason;

/// How the making of a missing image stands, whichever Job makes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Making {
    /// A Job runs (or finished and the image is not seen yet).
    Running(StepKind, String),
    /// The check build (no push) compiled the module.
    Compiled(String),
    /// The Job failed, or cannot start (an input is missing): why.
    Failed(StepKind, String),
    /// Not started yet (too many Jobs this round).
    Waiting(String),
}

/// What the rollout's pipeline says about the image of a kernel (from the pins it lays over
/// the registry's answers).
pub fn from_blocker(blocker: &Blocker) -> Making {
    let msg = blocker.message.clone();
    match blocker.reason {
        Reason::BuildFailed => Making::Failed(StepKind::Build, msg),
        Reason::SignFailed => Making::Failed(StepKind::Sign, msg),
        Reason::Signing => Making::Running(StepKind::Sign, msg),
        Reason::BuildInputMissing => Making::Failed(StepKind::Build, msg),
        _ if msg.contains("waits its turn") => Making::Waiting(msg),
        _ => Making::Running(StepKind::Build, msg),
    }
}

/// What a check build (no push) Job named `job` in `namespace` says.
pub fn from_check(namespace: &str, job: &str, state: &StepState) -> Making {
    match state {
        StepState::InputMissing(m) => Making::Failed(StepKind::Build, m.message(namespace)),
        StepState::Deferred { started } => Making::Waiting(format!(
            "Job {namespace}/{job} waits its turn: {started} Jobs were started this round"
        )),
        StepState::Job(JobState::Running) => Making::Running(
            StepKind::Build,
            format!("Job {namespace}/{job} is building (not pushing)"),
        ),
        StepState::Job(JobState::Succeeded) => Making::Compiled(compiled_reason(namespace, job)),
        StepState::Job(JobState::Failed(why)) => {
            Making::Failed(StepKind::Build, format!("Job {namespace}/{job} failed: {why}"))
        }
    }
}

/// The reason of a successful check build; [`compiled_before`] recognises it once the Job is
/// collected, so a succeeded check is not built again.
pub fn compiled_reason(namespace: &str, job: &str) -> String {
    format!("Job {namespace}/{job} built the module; nothing pushed (pushBuiltImage is false)")
}

/// Whether `previous` records that check Job `job` succeeded for this entry.
pub fn compiled_before(previous: Option<&PreflightModuleStatus>, namespace: &str, job: &str) -> bool {
    previous.is_some_and(|p| {
        p.verification_status == SUCCESS && p.status_reason == compiled_reason(namespace, job)
    })
}

fn stage_of(kind: StepKind) -> Stage {
    match kind {
        StepKind::Build => Stage::Build,
        StepKind::Sign => Stage::Sign,
    }
}

/// One entry: the verdict, and for an image to make, how its making stands (`None`: nothing
/// started, e.g. a sign without pushBuiltImage).
pub fn entry(mcm: &str, check: &Check, making: Option<&Making>) -> PreflightModuleStatus {
    let (status, stage, reason) = match (&check.verdict, making) {
        (Verdict::Ready { .. }, _) => (SUCCESS, Stage::Done, check.reason.clone()),
        (Verdict::NeedsBuild | Verdict::NeedsSign, Some(m)) => match m {
            Making::Running(kind, why) => (IN_PROGRESS, stage_of(*kind), why.clone()),
            Making::Waiting(why) => (IN_PROGRESS, check.verdict.stage(), why.clone()),
            Making::Failed(kind, why) => (FAILURE, stage_of(*kind), why.clone()),
            Making::Compiled(why) => (SUCCESS, Stage::Done, why.clone()),
        },
        (Verdict::NeedsSign, None) => (
            SUCCESS,
            Stage::Sign,
            format!("{}; signing is not tried without pushBuiltImage", check.reason),
        ),
        (Verdict::NeedsBuild, None) => (IN_PROGRESS, Stage::Build, check.reason.clone()),
        // The registry could not answer: look again rather than fail.
        (Verdict::RegistryError, _) => (IN_PROGRESS, Stage::Image, check.reason.clone()),
        _ => (FAILURE, check.verdict.stage(), check.reason.clone()),
    };
    let digest = match &check.verdict {
        Verdict::Ready { digest } => digest.clone(),
        _ => String::new(),
    };
    PreflightModuleStatus {
        name: mcm.to_string(),
        kernel_version: check.kernel.clone(),
        verification_status: status.to_string(),
        verification_stage: stage.as_str().to_string(),
        status_reason: kmm_api::text::head(&reason, 1024).to_string(),
        digest,
        last_transition_time: None,
    }
}

/// The whole status: sorted by (MCM, kernel), at most [`MAX_PREFLIGHT_ENTRIES`], each entry's
/// transition time kept from `previous` while its verificationStatus is unchanged.
pub fn status(
    generation: Option<i64>,
    mut entries: Vec<PreflightModuleStatus>,
    previous: Option<&ManagedClusterPreflightStatus>,
    now: &Time,
) -> ManagedClusterPreflightStatus {
    let before: BTreeMap<(&str, &str), &PreflightModuleStatus> = previous
        .map(|p| {
            p.modules
                .iter()
                .map(|m| ((m.name.as_str(), m.kernel_version.as_str()), m))
                .collect()
        })
        .unwrap_or_default();
    entries.sort_by(|a, b| (&a.name, &a.kernel_version).cmp(&(&b.name, &b.kernel_version)));
    entries.dedup_by(|a, b| a.name == b.name && a.kernel_version == b.kernel_version);
    for e in &mut entries {
        let old = before.get(&(e.name.as_str(), e.kernel_version.as_str()));
        e.last_transition_time = match old {
            Some(o) if o.verification_status == e.verification_status => o.last_transition_time.clone(),
            _ => Some(now.clone()),
        };
    }
    let count = |s: &str| entries.iter().filter(|e| e.verification_status == s).count();
    let to_i32 = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let (ready, failed) = (to_i32(count(SUCCESS)), to_i32(count(FAILURE)));
    let omitted = to_i32(entries.len().saturating_sub(MAX_PREFLIGHT_ENTRIES));
    entries.truncate(MAX_PREFLIGHT_ENTRIES);
    ManagedClusterPreflightStatus {
        observed_generation: generation,
        number_ready: ready,
        number_failed: failed,
        modules: entries,
        modules_omitted: omitted,
        claim_issues: Vec::new(),
    }
}

/// Whether anything is still moving (the controller looks again soon).
pub fn in_progress(status: &ManagedClusterPreflightStatus) -> bool {
    status
        .modules
        .iter()
        .any(|m| m.verification_status == IN_PROGRESS)
}

#[cfg(test)]
#[path = "entries_tests.rs"]
mod tests;
