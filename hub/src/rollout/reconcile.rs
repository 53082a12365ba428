//! The rollout step of a reconcile: read the strategy, keep the revisions in use stored, decide
//! the round ([`round::decide`]) and pin the images of the older revisions clusters stay on.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use kmm_api::ManagedClusterModule;
use kube::ResourceExt;

use super::{
    revision::{self, Content},
    round::{self, Round},
    strategy::{self, Strategy},
};
use crate::mcm_controller::{
    Context, Error,
    desired::plan::Pin,
    observe::{self, Observed},
};

/// The round, the pins of older revisions' images, and why the strategy is unusable, if it is.
pub struct Prepared {
    pub round: Round,
    pub pins: BTreeMap<String, Pin>,
    pub invalid: Option<String>,
}

/// Decides this reconcile's rollout for `mcm`.
pub async fn prepare(
    mcm: &ManagedClusterModule,
    ctx: &Context,
    observed: &Observed,
) -> Result<Prepared, Error> {
    // A malformed strategy moves nothing: holding every cluster where it is is the safe reading
    // of a rollout the user meant to control.
    let (strategy, invalid) = match strategy::parse(mcm.spec.rollout_strategy.as_ref()) {
        Ok(s) => (s, None),
        Err(why) => (
            Strategy {
                progressive: true,
                paused: true,
                ..Strategy::default()
            },
            Some(why),
        ),
    };
    let target = Content::of(mcm);
    let hash = target.hash();
    let in_use = round::in_use(&observed.works);
    // Steady `All` fleets make no API call here; a change, or any Progressive MCM, keeps the
    // revisions stored so an older one can still be rendered after a restart.
    let revisions = if strategy.progressive || in_use.iter().any(|r| *r != hash) || in_use.is_empty() {
        revision::sync(&ctx.client, &ctx.config.namespace, mcm, &target, &in_use)
            .await
            .map_err(|source| Error::Api {
                what: format!("keeping the ControllerRevisions of {}", mcm.name_any()),
                source,
            })?
    } else {
        BTreeMap::from([(hash.clone(), target)])
    };
    let labels = |name: &str| observe::cluster_labels(ctx, name);
    let round = round::decide(
        mcm,
        &observed.clusters,
        &labels,
        &observed.works,
        strategy,
        &revisions,
        Timestamp::now(),
    );
    let mut pins = BTreeMap::new();
    for (rev, at) in round.at_revision.iter().filter(|(r, _)| **r != round.target) {
        let on_it: Vec<observe::SelectedCluster> = observed
            .clusters
            .iter()
            .filter(|c| matches!(round.assignments.get(&c.name), Some(round::Assignment::Render { revision, .. }) if revision == rev))
            .map(|c| observe::SelectedCluster {
                name: c.name.clone(),
                kernels: c.kernels.clone(),
                refused: c.refused.clone(),
                unreachable: c.unreachable.clone(),
            })
            .collect();
        let Ok(images) = observe::images_needed(at, &on_it) else {
            continue; // rendering reports it for those clusters
        };
        let auth = observe::pull_auth(at, ctx).await;
        pins.extend(observe::resolve(&ctx.resolver, images, &auth).await);
    }
    Ok(Prepared { round, pins, invalid })
}
