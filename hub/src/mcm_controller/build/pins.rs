//! How the clusters waiting for a built or signed image are told why (pure): each planned step's
//! state becomes the [`Pin`] of the image they pull.

use std::collections::BTreeMap;

use super::{inputs::MissingInput, plan::PlannedStep};
use crate::{
    mcm_controller::desired::{
        job::{JobState, StepKind},
        plan::{Blocker, Pin},
    },
    reason::Reason,
};

/// Where one planned step stands after the hub looked at (or started) its Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepState {
    /// An input is missing, so the Job was not started.
    InputMissing(MissingInput),
    /// The Job exists; this is how it went so far.
    Job(JobState),
    /// Not started this round: this reconcile already started its share of Jobs.
    Deferred { started: usize },
}

/// The pin of the image waiting for `planned`; Jobs live in `namespace`.
pub fn pin(namespace: &str, planned: &PlannedStep, state: &StepState) -> Pin {
    let (job, target) = (&planned.job, planned.step.target());
    let (making, failed) = match planned.step.kind() {
        StepKind::Build => (Reason::Building, Reason::BuildFailed),
        StepKind::Sign => (Reason::Signing, Reason::SignFailed),
    };
    Pin::Blocked(match state {
        StepState::InputMissing(missing) => {
            Blocker::new(Reason::BuildInputMissing, missing.message(namespace))
        }
        StepState::Deferred { started } => Blocker::new(
            making,
            format!(
                "Job {namespace}/{job} for {target} waits its turn: {started} Jobs were started this round, the most one reconcile starts"
            ),
        ),
        StepState::Job(JobState::Running) => {
            Blocker::new(making, format!("Job {namespace}/{job} is making {target}"))
        }
        StepState::Job(JobState::Failed(why)) => Blocker::new(
            failed,
            format!(
                "Job {namespace}/{job} for {target} failed: {why} (fix the cause, then delete the Job or bump imageRebuildTriggerGeneration)"
            ),
        ),
        // Done: the next registry lookup finds the image (or the intermediate, for the sign step).
        StepState::Job(JobState::Succeeded) => Blocker::new(
            making,
            format!("Job {namespace}/{job} finished; waiting for {target} in its registry"),
        ),
    })
}

/// The pins of every waiting image, by image.
pub fn pins(namespace: &str, states: &[(PlannedStep, StepState)]) -> BTreeMap<String, Pin> {
    states
        .iter()
        .map(|(planned, state)| (planned.waits.clone(), pin(namespace, planned, state)))
        .collect()
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;
    use crate::{
        fixtures::{BUILD, FINAL, K, SIGN, UNSIGNED, mk_build_mcm, pins as mk_pins},
        mcm_controller::build::{
            inputs::{Input, InputKind},
            plan,
        },
    };

    fn planned(kind: StepKind) -> PlannedStep {
        let mcm = mk_build_mcm("m", &format!("{BUILD}{SIGN}"));
        let unsigned = match kind {
            StepKind::Build => Pin::Missing,
            StepKind::Sign => Pin::Pinned("u@sha256:2".into()),
        };
        let p = mk_pins(&[(FINAL, Pin::Missing), (UNSIGNED, unsigned)]);
        let kernels = [K.to_string()];
        let mut steps = plan::steps(&mcm, &plan::missing(&mcm, &kernels, &p), &p);
        assert_eq!(steps.len(), 1);
        steps.remove(0)
    }

    fn failed(why: &str) -> StepState {
        StepState::Job(JobState::Failed(why.into()))
    }

    fn running() -> StepState {
        StepState::Job(JobState::Running)
    }

    fn succeeded() -> StepState {
        StepState::Job(JobState::Succeeded)
    }

    #[rstest]
    #[case::building(StepKind::Build, running(), Reason::Building, "is making")]
    #[case::signing(StepKind::Sign, running(), Reason::Signing, "is making")]
    #[case::built_not_yet_seen(StepKind::Build, succeeded(), Reason::Building, "finished; waiting")]
    #[case::signed_not_yet_seen(StepKind::Sign, succeeded(), Reason::Signing, "finished; waiting")]
    #[case::build_failed(StepKind::Build, failed("make: no rule"), Reason::BuildFailed, "failed: make")]
    #[case::sign_failed(StepKind::Sign, failed("bad key"), Reason::SignFailed, "failed: bad key (fix")]
    fn job_states_become_blockers(
        #[case] kind: StepKind,
        #[case] state: StepState,
        #[case] reason: Reason,
        #[case] says: &str,
    ) {
        let planned = planned(kind);
        let Pin::Blocked(b) = pin("kmm-hub", &planned, &state) else {
            panic!("not blocked")
        };
        assert_eq!(b.reason, reason);
        assert!(
            b.message.starts_with(&format!("Job kmm-hub/{} ", planned.job)),
            "{}",
            b.message
        );
        assert!(b.message.contains(says), "{}", b.message);
        assert!(b.message.contains(planned.step.target()), "{}", b.message);
    }

    #[test]
    fn a_missing_input_blocks_the_final_image_with_its_message() {
        let input = Input {
            kind: InputKind::Secret,
            name: "key".into(),
            field: "sign.keySecret",
            key: Some("key"),
        };
        let state = StepState::InputMissing(MissingInput::Absent(input));
        let got = pins("kmm-hub", &[(planned(StepKind::Sign), state)]);
        assert_eq!(
            got,
            mk_pins(&[(
                FINAL,
                Pin::Blocked(Blocker::new(
                    Reason::BuildInputMissing,
                    "Secret kmm-hub/key (spec.moduleSpec...sign.keySecret) does not exist; create it in the hub's namespace"
                ))
            )])
        );
    }

    #[test]
    fn a_step_over_the_per_reconcile_cap_waits_its_turn() {
        let p = planned(StepKind::Build);
        let Pin::Blocked(b) = pin("kmm-hub", &p, &StepState::Deferred { started: 4 }) else {
            panic!("blocked")
        };
        assert_eq!(b.reason, Reason::Building);
        assert!(b.message.contains("waits its turn"), "{}", b.message);
    }
}
