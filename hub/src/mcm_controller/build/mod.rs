//! The build and sign step of reconcile: for every missing image the MCM says how to make, make
//! sure its Job exists (one per image, whoever asks), read how it went, and tell the rendering
//! step why the clusters wait. Failed Jobs stay for inspection and are not retried (a new
//! `imageRebuildTriggerGeneration` or deleting the Job starts another); [`gc`] removes succeeded
//! ones.
//!
//! ```text
//! plan::missing ─▶ (registry: intermediates) ─▶ plan::steps ─▶ ensure (Jobs) ─▶ pins::pins
//!      pure                 I/O                     pure           I/O             pure
//! ```

pub mod gc;
pub mod inputs;
pub mod jobs;
pub mod pins;
pub mod plan;

use std::collections::BTreeMap;

use kmm_api::ManagedClusterModule;

use super::{
    Context, Error,
    desired::{job::JobState, plan::Pin},
    observe::{self, Observed},
};

/// A build or sign Job that failed, with its output (its failed pod's termination message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedJob {
    pub name: String,
    pub output: String,
}

/// What the build step found: the pins of the images a Job is making (or cannot make), to lay
/// over the registry's answers, and the Jobs that failed.
#[derive(Clone, Debug, Default)]
pub struct Advanced {
    pub pins: BTreeMap<String, Pin>,
    pub failed: Vec<FailedJob>,
}

/// The build step of one reconcile (see the module docs).
pub async fn advance(
    mcm: &ManagedClusterModule,
    ctx: &Context,
    observed: &Observed,
) -> Result<Advanced, Error> {
    let kernels = observed
        .clusters
        .iter()
        .filter_map(|c| c.kernels.as_ref().ok())
        .flatten();
    let missing = plan::missing(mcm, kernels, &observed.pins);
    if missing.is_empty() {
        return Ok(Advanced::default());
    }
    // A build+sign mapping signs once the unsigned intermediate exists: look those up too.
    let intermediates = plan::intermediates(mcm, &missing);
    let mut known = observed.pins.clone();
    if !intermediates.is_empty() {
        known.extend(observe::resolve(&ctx.resolver, intermediates, &Ok(None)).await);
    }
    let steps = plan::steps(mcm, &missing, &known);
    let states = jobs::ensure(mcm, ctx, steps).await?;
    Ok(Advanced {
        pins: pins::pins(&ctx.config.namespace, &states),
        failed: failed_jobs(&states),
    })
}

/// The failed Jobs among `states`, each once.
pub fn failed_jobs(states: &[(plan::PlannedStep, pins::StepState)]) -> Vec<FailedJob> {
    let mut out: Vec<FailedJob> = Vec::new();
    for (planned, state) in states {
        if let pins::StepState::Job(JobState::Failed(why)) = state
            && !out.iter().any(|f| f.name == planned.job)
        {
            out.push(FailedJob {
                name: planned.job.clone(),
                output: why.clone(),
            });
        }
    }
    out
}
