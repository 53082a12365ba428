//! The I/O of the build step: for each planned step, check its inputs, create its Job when it
//! does not exist yet, and read how the Job went (with the failed pod's message). Decides nothing.

use std::collections::BTreeSet;

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ConfigMap, Pod, Secret},
};
use kmm_api::ManagedClusterModule;
use kube::{
    Api, ResourceExt,
    api::{ListParams, PostParams},
};
use tracing::info;

use super::{
    inputs::{self, Input, InputKind, MissingInput},
    pins::StepState,
    plan::PlannedStep,
};
use crate::mcm_controller::{
    Context, Error,
    desired::{
        job::{self, JobState},
        plan::{ImageRef, Pin},
    },
    observe,
};

/// Most Jobs one reconcile of one MCM starts; the rest wait for the next round, so a spoke
/// reporting many kernels cannot start a build storm at once.
pub const MAX_JOBS_STARTED_PER_RECONCILE: usize = 4;

/// Each planned step with its state, starting Jobs whose inputs are all there.
pub async fn ensure(
    mcm: &ManagedClusterModule,
    ctx: &Context,
    steps: Vec<PlannedStep>,
) -> Result<Vec<(PlannedStep, StepState)>, Error> {
    let mut out = Vec::with_capacity(steps.len());
    let mut started = 0;
    for planned in steps {
        let existing = ctx.jobs.state().into_iter().find(|j| j.name_any() == planned.job);
        let state = match existing {
            Some(job) => {
                let state = state_of(ctx, &job).await;
                if state == JobState::Succeeded {
                    // Its image is there now: the next lookup should not wait out a remembered miss.
                    ctx.resolver.forget_misses(planned.step.target()).await;
                }
                StepState::Job(state)
            }
            None if started >= MAX_JOBS_STARTED_PER_RECONCILE => StepState::Deferred { started },
            // Its Job may have finished and been collected since the lookup that found the
            // image missing (a miss is remembered for a while): never build an image twice.
            None if already_pushed(mcm, ctx, &planned).await => StepState::Job(JobState::Succeeded),
            None => match first_missing(ctx, &planned).await? {
                Some(missing) => StepState::InputMissing(missing),
                None => {
                    started += 1;
                    StepState::Job(state_of(ctx, &create(mcm, ctx, &planned).await?).await)
                }
            },
        };
        out.push((planned, state));
    }
    Ok(out)
}

/// Whether the step's image is in its registry now, asked afresh (remembered misses dropped).
async fn already_pushed(mcm: &ManagedClusterModule, ctx: &Context, planned: &PlannedStep) -> bool {
    let target = planned.step.target();
    ctx.resolver.forget_misses(target).await;
    let tls = planned.step.push_tls();
    let image = ImageRef {
        image: target.to_owned(),
        insecure: tls.insecure,
        insecure_skip_tls_verify: tls.insecure_skip_tls_verify,
    };
    let auth = observe::pull_auth(mcm, ctx).await;
    let answer = observe::resolve(&ctx.resolver, BTreeSet::from([image]), &auth).await;
    matches!(answer.get(target), Some(Pin::Pinned(_)))
}

/// The first input of the step that is absent or lacks its key.
pub(crate) async fn first_missing(
    ctx: &Context,
    planned: &PlannedStep,
) -> Result<Option<MissingInput>, Error> {
    for input in inputs::inputs(&planned.step) {
        let keys = keys(ctx, &input).await?;
        if let Some(missing) = inputs::check(&input, keys.as_deref()) {
            return Ok(Some(missing));
        }
    }
    Ok(None)
}

/// The data keys of an input object, `None` when it does not exist.
async fn keys(ctx: &Context, input: &Input) -> Result<Option<Vec<String>>, Error> {
    let ns = &ctx.config.namespace;
    let name = &input.name;
    let read = |source| Error::Api {
        what: format!("reading {} {ns}/{name}", input.kind),
        source,
    };
    Ok(match input.kind {
        InputKind::ConfigMap => Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(read)?
            .map(|c| c.data.unwrap_or_default().into_keys().collect()),
        InputKind::Secret => Api::<Secret>::namespaced(ctx.client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(read)?
            .map(|s| s.data.unwrap_or_default().into_keys().collect()),
    })
}

/// Creates the step's Job; one that exists already (another reconcile, a previous hub) is read.
async fn create(mcm: &ManagedClusterModule, ctx: &Context, planned: &PlannedStep) -> Result<Job, Error> {
    let trigger = mcm.spec.module_spec.image_rebuild_trigger_generation;
    let desired = job::job(mcm, &planned.step, trigger, &ctx.config.jobs);
    let (job, created) = create_or_read(ctx, &desired).await?;
    if created {
        info!(job = %planned.job, image = planned.step.target(), "started a {} Job", planned.step.kind());
        ctx.metrics.jobs_started.inc();
    }
    Ok(job)
}

/// Creates `desired` in the hub's namespace, or reads the Job of that name when it exists
/// already; says whether this call created it.
pub(crate) async fn create_or_read(ctx: &Context, desired: &Job) -> Result<(Job, bool), Error> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let name = desired.name_any();
    match api.create(&PostParams::default(), desired).await {
        Ok(created) => Ok((created, true)),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            api.get(&name)
                .await
                .map(|job| (job, false))
                .map_err(|source| Error::Api {
                    what: format!("reading Job {name}"),
                    source,
                })
        }
        Err(source) => Err(Error::Api {
            what: format!("creating Job {name}"),
            source,
        }),
    }
}

/// How the Job went, with its failed pod's termination message when it failed.
pub(crate) async fn state_of(ctx: &Context, job: &Job) -> JobState {
    match job::job_state(job, None) {
        JobState::Failed(_) => job::job_state(job, failure_message(ctx, &job.name_any()).await.as_deref()),
        state => state,
    }
}

/// The termination message of the Job's failed pod, if any.
async fn failure_message(ctx: &Context, job: &str) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let list = pods
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await
        .ok()?;
    list.items
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"))
        .find_map(|p| kmm_api::pod_failure::termination(p, "build").map(|(_, why)| why))
}
