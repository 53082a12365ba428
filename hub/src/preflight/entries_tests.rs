use k8s_openapi::jiff::Timestamp;
use rstest::rstest;

use super::*;

fn check(verdict: Verdict) -> Check {
    Check {
        kernel: "6.1.0-22-amd64".into(),
        verdict,
        reason: "the verdict's reason".into(),
    }
}

fn at(second: i64) -> Time {
    Time(Timestamp::from_second(1_800_000_000 + second).unwrap())
}

fn ready() -> Verdict {
    Verdict::Ready {
        digest: "r/k@sha256:ab".into(),
    }
}

fn running(kind: StepKind) -> Option<Making> {
    Some(Making::Running(kind, "Job kmm-hub/j is making r/k".into()))
}

fn failed(kind: StepKind) -> Option<Making> {
    Some(Making::Failed(
        kind,
        "Job kmm-hub/j failed: make: *** no rule".into(),
    ))
}

#[rstest]
#[case::ready(ready(), None, "Success", "Done")]
#[case::building(Verdict::NeedsBuild, running(StepKind::Build), "InProgress", "Build")]
#[case::signing_after_the_build(Verdict::NeedsBuild, running(StepKind::Sign), "InProgress", "Sign")]
#[case::signing(Verdict::NeedsSign, running(StepKind::Sign), "InProgress", "Sign")]
#[case::build_failed(Verdict::NeedsBuild, failed(StepKind::Build), "Failure", "Build")]
#[case::sign_failed(Verdict::NeedsSign, failed(StepKind::Sign), "Failure", "Sign")]
#[case::compiled_without_push(Verdict::NeedsBuild, Some(Making::Compiled("built".into())), "Success", "Done")]
#[case::sign_not_tried_without_push(Verdict::NeedsSign, None, "Success", "Sign")]
#[case::waiting_its_turn(Verdict::NeedsBuild, Some(Making::Waiting("waits its turn".into())), "InProgress", "Build")]
#[case::no_mapping(Verdict::NoMapping, None, "Failure", "Image")]
#[case::bad_variable(Verdict::BadVariable, None, "Failure", "Image")]
#[case::image_missing(Verdict::ImageMissing, None, "Failure", "Image")]
#[case::registry_down_is_retried(Verdict::RegistryError, None, "InProgress", "Image")]
fn verdicts_and_jobs_become_upstream_status(
    #[case] verdict: Verdict,
    #[case] making: Option<Making>,
    #[case] status: &str,
    #[case] stage: &str,
) {
    let e = entry("gpu", &check(verdict.clone()), making.as_ref());
    assert_eq!(
        (e.verification_status.as_str(), e.verification_stage.as_str()),
        (status, stage)
    );
    assert_eq!(e.name, "gpu");
    assert_eq!(e.kernel_version, "6.1.0-22-amd64");
    assert_eq!(e.digest.is_empty(), !verdict.is_ready());
}

#[test]
fn a_failed_build_reports_the_builds_message() {
    let blocker = Blocker::new(
        Reason::BuildFailed,
        "Job kmm-hub/kmm-build-1 for r/k failed: make: *** no rule (fix the cause, ...)",
    );
    let e = entry("gpu", &check(Verdict::NeedsBuild), Some(&from_blocker(&blocker)));
    assert_eq!(e.verification_status, "Failure");
    assert_eq!(e.verification_stage, "Build");
    assert!(
        e.status_reason.contains("make: *** no rule"),
        "{}",
        e.status_reason
    );
}

#[rstest]
#[case(
    Reason::Building,
    "is making",
    Making::Running(StepKind::Build, String::new())
)]
#[case(Reason::Signing, "is making", Making::Running(StepKind::Sign, String::new()))]
#[case(Reason::SignFailed, "failed", Making::Failed(StepKind::Sign, String::new()))]
#[case(
    Reason::BuildInputMissing,
    "Secret absent",
    Making::Failed(StepKind::Build, String::new())
)]
#[case(Reason::Building, "waits its turn", Making::Waiting(String::new()))]
fn the_rollouts_blockers_are_read(#[case] reason: Reason, #[case] message: &str, #[case] want: Making) {
    let got = from_blocker(&Blocker::new(reason, message));
    assert_eq!(
        std::mem::discriminant(&got),
        std::mem::discriminant(&want),
        "{got:?}"
    );
}

#[test]
fn a_collected_check_job_is_remembered_by_its_reason() {
    let compiled = from_check(
        "kmm-hub",
        "kmm-build-1-check",
        &StepState::Job(JobState::Succeeded),
    );
    let e = entry("gpu", &check(Verdict::NeedsBuild), Some(&compiled));
    assert!(compiled_before(Some(&e), "kmm-hub", "kmm-build-1-check"));
    assert!(!compiled_before(Some(&e), "kmm-hub", "kmm-build-2-check"));
    assert!(!compiled_before(None, "kmm-hub", "kmm-build-1-check"));
    let failed = from_check(
        "kmm-hub",
        "kmm-build-1-check",
        &StepState::Job(JobState::Failed("no rule".into())),
    );
    let e = entry("gpu", &check(Verdict::NeedsBuild), Some(&failed));
    assert!(!compiled_before(Some(&e), "kmm-hub", "kmm-build-1-check"));
}

#[test]
fn status_is_sorted_counted_and_keeps_unchanged_transition_times() {
    let mk = |mcm: &str, kernel: &str, v: Verdict| {
        let mut c = check(v);
        c.kernel = kernel.into();
        entry(mcm, &c, None)
    };
    let first = status(
        Some(1),
        vec![
            mk("b", "6.1.0-1", ready()),
            mk("a", "6.1.0-2", Verdict::NoMapping),
            mk("a", "6.1.0-1", Verdict::RegistryError),
        ],
        None,
        &at(0),
    );
    let keys: Vec<_> = first
        .modules
        .iter()
        .map(|m| (m.name.as_str(), m.kernel_version.as_str()))
        .collect();
    assert_eq!(keys, [("a", "6.1.0-1"), ("a", "6.1.0-2"), ("b", "6.1.0-1")]);
    assert_eq!((first.number_ready, first.number_failed), (1, 1));
    assert!(in_progress(&first));
    let second = status(
        Some(1),
        vec![
            mk("b", "6.1.0-1", ready()),
            mk("a", "6.1.0-2", Verdict::NoMapping),
            mk("a", "6.1.0-1", ready()),
        ],
        Some(&first),
        &at(60),
    );
    let times: Vec<_> = second
        .modules
        .iter()
        .map(|m| m.last_transition_time.clone())
        .collect();
    assert_eq!(times, [Some(at(60)), Some(at(0)), Some(at(0))]);
    assert!(!in_progress(&second));
}

#[test]
fn the_list_is_bounded_and_the_rest_counted() {
    let entries = (0..MAX_PREFLIGHT_ENTRIES + 3)
        .map(|i| entry(&format!("m{i:04}"), &check(ready()), None))
        .collect();
    let s = status(None, entries, None, &at(0));
    assert_eq!(s.modules.len(), MAX_PREFLIGHT_ENTRIES);
    assert_eq!(s.modules_omitted, 3);
    assert_eq!(s.number_ready, (MAX_PREFLIGHT_ENTRIES + 3) as i32);
}
