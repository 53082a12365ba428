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
    desired::plan::Pin,
    observe::{self, Observed},
};

/// The pins of the images a Job is making (or cannot make), to lay over the registry's answers.
pub async fn advance(
    mcm: &ManagedClusterModule,
    ctx: &Context,
    observed: &Observed,
) -> Result<BTreeMap<String, Pin>, Error> {
    let kernels = observed
        .clusters
        .iter()
        .filter_map(|c| c.kernels.as_ref().ok())
        .flatten();
    let missing = plan::missing(mcm, kernels, &observed.pins);
    if missing.is_empty() {
        return Ok(BTreeMap::new());
    }
    // A build+sign mapping signs once the unsigned intermediate exists: look those up too.
    let intermediates = plan::intermediates(mcm, &missing);
    let mut known = observed.pins.clone();
    if !intermediates.is_empty() {
        known.extend(observe::resolve(&ctx.resolver, intermediates, &Ok(None)).await);
    }
    let steps = plan::steps(mcm, &missing, &known);
    let states = jobs::ensure(mcm, ctx, steps).await?;
    Ok(pins::pins(&ctx.config.namespace, &states))
}
