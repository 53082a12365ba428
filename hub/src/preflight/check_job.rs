//! Check builds: without `pushBuiltImage` a preflight proves the module compiles for the kernel
//! and pushes nothing. The Job is the rollout's build Job for the same step with the push line
//! removed and its own name (`<rollout job>-check`), so the rollout never mistakes it for the
//! Job that makes its image.

use k8s_openapi::api::batch::v1::Job;
use kmm_api::ManagedClusterModule;
use kube::ResourceExt;
use tracing::info;

use crate::mcm_controller::{
    Context, Error,
    build::{jobs, pins::StepState, plan::PlannedStep},
    desired::job::{self, BUILD_SCRIPT, JobSettings},
};

/// Annotation on a check Job: it pushes nothing.
pub const CHECK_ANNOTATION: &str = "hub.kmm.sigs.x-k8s.io/preflight-check";

/// The check Job's name for a planned build step.
pub fn name(planned: &PlannedStep) -> String {
    format!("{}-check", planned.job)
}

/// The build script without its push.
pub fn script() -> String {
    BUILD_SCRIPT
        .lines()
        .filter(|l| !l.trim_start().starts_with("buildah $storage push"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The check Job of `planned` (pure): the rollout's Job, renamed, without the push.
pub fn check_job(mcm: &ManagedClusterModule, planned: &PlannedStep, settings: &JobSettings) -> Job {
    let trigger = mcm.spec.module_spec.image_rebuild_trigger_generation;
    let mut job = job::job(mcm, &planned.step, trigger, settings);
    job.metadata.name = Some(name(planned));
    job.metadata
        .annotations
        .get_or_insert_default()
        .insert(CHECK_ANNOTATION.into(), "true".into());
    let containers = job
        .spec
        .iter_mut()
        .flat_map(|s| s.template.spec.iter_mut())
        .flat_map(|p| p.containers.iter_mut());
    for c in containers {
        for arg in c.args.iter_mut().flatten() {
            if arg == BUILD_SCRIPT {
                *arg = script();
            }
        }
    }
    job
}

/// The check Job's state, creating it when it does not exist and its inputs are there.
/// `started` counts the Jobs this reconcile created (shared cap with the rollout's).
pub async fn ensure(
    mcm: &ManagedClusterModule,
    ctx: &Context,
    planned: &PlannedStep,
    started: &mut usize,
) -> Result<StepState, Error> {
    let name = name(planned);
    if let Some(existing) = ctx.jobs.state().into_iter().find(|j| j.name_any() == name) {
        return Ok(StepState::Job(jobs::state_of(ctx, &existing).await));
    }
    if *started >= jobs::MAX_JOBS_STARTED_PER_RECONCILE {
        return Ok(StepState::Deferred { started: *started });
    }
    if let Some(missing) = jobs::first_missing(ctx, planned).await? {
        return Ok(StepState::InputMissing(missing));
    }
    let (job, created) = jobs::create_or_read(ctx, &check_job(mcm, planned, &ctx.config.jobs)).await?;
    if created {
        *started += 1;
        info!(job = %name, "started a check build Job (no push)");
    }
    Ok(StepState::Job(jobs::state_of(ctx, &job).await))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fixtures::{BUILD, FINAL, K, mk_build_mcm, pins},
        mcm_controller::{build::plan, desired::plan::Pin},
    };

    #[test]
    fn the_check_job_is_the_rollouts_build_without_the_push() {
        let mcm = mk_build_mcm("m", BUILD);
        let p = pins(&[(FINAL, Pin::Missing)]);
        let kernels = [K.to_string()];
        let steps = plan::steps(&mcm, &plan::missing(&mcm, &kernels, &p), &p);
        let settings = JobSettings::new("kmm-hub", "buildah", "hub");
        let rollout = job::job(&mcm, &steps[0].step, None, &settings);
        let check = check_job(&mcm, &steps[0], &settings);
        assert_eq!(check.name_any(), format!("{}-check", rollout.name_any()));
        let args = |j: &Job| {
            j.spec.clone().unwrap().template.spec.unwrap().containers[0]
                .args
                .clone()
                .unwrap()
        };
        let (r, c) = (args(&rollout), args(&check));
        assert!(r[1].contains("buildah $storage push"));
        assert!(!c[1].contains(" push "), "{}", c[1]);
        assert!(c[1].contains("buildah $storage bud"), "{}", c[1]);
        assert_eq!(r[2..], c[2..], "same build arguments");
        assert_eq!(
            check.annotations().get(CHECK_ANNOTATION).map(String::as_str),
            Some("true")
        );
        assert_eq!(
            check.labels(),
            rollout.labels(),
            "collected and watched as the rollout's Jobs"
        );
    }
}
