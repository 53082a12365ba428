//! The next-kernel preflight: a ManagedClusterPreflight the hub keeps itself
//! ([`NEXT_KERNELS_PREFLIGHT`], labelled [`GENERATED_LABEL`]) while the clusters' next-kernel
//! claims ask for kernels ([`next_kernels::plan`]). Its spec lists those kernels with
//! `pushBuiltImage: true`, so what it builds and signs is what a later rollout pins; the
//! controller answers it like any preflight, but per (MCM, kernel) pair the claims ask for, not
//! every MCM against every kernel. It is deleted when no claim asks for anything. A preflight of
//! that name without the label is a user's: the hub leaves it alone and says so.

use std::{sync::Arc, time::Duration};

use kmm_api::{
    ManagedClusterModule,
    preflight::{
        GENERATED_FROM_NEXT_KERNELS, GENERATED_LABEL, ManagedClusterPreflight, NEXT_KERNELS_PREFLIGHT,
    },
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    core::DeserializeGuard,
    runtime::reflector::Store,
};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::next_kernels::{self, NextKernelPlan};
use crate::mcm_controller::{self, apply::FIELD_MANAGER};

/// Waits after a change before acting, so a burst of cluster updates is one write.
const DEBOUNCE: Duration = Duration::from_secs(1);

/// Whether `pf` is the hub's next-kernel preflight.
pub fn is_generated(pf: &ManagedClusterPreflight) -> bool {
    pf.labels().get(GENERATED_LABEL).map(String::as_str) == Some(GENERATED_FROM_NEXT_KERNELS)
}

/// What to do to the generated preflight (pure).
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// It is as it should be.
    None,
    /// Apply this object (server-side apply).
    Apply(Value),
    /// Nothing is asked: delete it.
    Delete,
    /// A user's preflight has the name: leave it.
    Foreign,
}

/// The change that brings `existing` to what `plan` asks for.
pub fn change(plan: &NextKernelPlan, existing: Option<&ManagedClusterPreflight>) -> Change {
    if existing.is_some_and(|pf| !is_generated(pf)) {
        return Change::Foreign;
    }
    if plan.kernels.is_empty() {
        return if existing.is_some() {
            Change::Delete
        } else {
            Change::None
        };
    }
    let up_to_date = existing.is_some_and(|pf| {
        pf.spec.kernel_versions == plan.kernels
            && pf.spec.push_built_image
            && pf.spec.cluster_selector.is_none()
            && pf.metadata.deletion_timestamp.is_none()
    });
    if up_to_date {
        return Change::None;
    }
    Change::Apply(json!({
        "apiVersion": "hub.kmm.sigs.x-k8s.io/v1beta1",
        "kind": "ManagedClusterPreflight",
        "metadata": {
            "name": NEXT_KERNELS_PREFLIGHT,
            "labels": { GENERATED_LABEL: GENERATED_FROM_NEXT_KERNELS },
        },
        "spec": { "kernelVersions": plan.kernels, "pushBuiltImage": true },
    }))
}

/// The plan for the MCMs and clusters the stores hold now.
pub fn current_plan(
    hub: &mcm_controller::Context,
    mcms: &Store<DeserializeGuard<ManagedClusterModule>>,
) -> NextKernelPlan {
    let all: Vec<Arc<ManagedClusterModule>> = mcms
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok().cloned().map(Arc::new))
        .collect();
    next_kernels::plan(&all, &hub.clusters.state())
}

/// Keeps the generated preflight in step with the claims until the process ends: after every
/// `changed` notification (an MCM or cluster changed) and at each resync. Only the leader writes;
/// a failed write is tried again after the retry delay.
pub async fn run(
    hub: Arc<mcm_controller::Context>,
    mcms: Store<DeserializeGuard<ManagedClusterModule>>,
    changed: Arc<Notify>,
) {
    let api: Api<ManagedClusterPreflight> = Api::all(hub.client.clone());
    let mut foreign_logged = false;
    let mut wait = hub.config.resync;
    loop {
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
        tokio::time::sleep(DEBOUNCE).await;
        wait = hub.config.resync;
        if !hub.leader.is_leader() {
            continue;
        }
        let plan = current_plan(&hub, &mcms);
        // Read from the API, not the preflight controller's store: that store's readiness was
        // never signalled here (the pass waited forever), and one GET per debounced change or
        // resync is cheap.
        let existing = match api.get_opt(NEXT_KERNELS_PREFLIGHT).await {
            Ok(found) => found,
            Err(error) => {
                warn!(%error, "reading the next-kernel preflight failed; trying again");
                wait = hub.config.retry;
                continue;
            }
        };
        let result = match change(&plan, existing.as_ref()) {
            Change::None => Ok(()),
            Change::Foreign => {
                if !foreign_logged && !plan.kernels.is_empty() {
                    warn!(
                        preflight = NEXT_KERNELS_PREFLIGHT,
                        "a ManagedClusterPreflight of this name was not made by the hub: next-kernel claims are not preflighted until it is renamed"
                    );
                }
                foreign_logged = true;
                Ok(())
            }
            Change::Apply(body) => api
                .patch(
                    NEXT_KERNELS_PREFLIGHT,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(body),
                )
                .await
                .map(|_| info!(kernels = ?plan.kernels, "next-kernel preflight written")),
            Change::Delete => match api.delete(NEXT_KERNELS_PREFLIGHT, &DeleteParams::default()).await {
                Ok(_) => {
                    info!("next-kernel preflight deleted: no cluster announces a next kernel");
                    Ok(())
                }
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(e) => Err(e),
            },
        };
        if let Err(error) = result {
            warn!(%error, "keeping the next-kernel preflight failed; trying again");
            wait = hub.config.retry;
        }
        if existing.as_ref().is_none_or(is_generated) {
            foreign_logged = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(kernels: &[&str]) -> NextKernelPlan {
        NextKernelPlan {
            kernels: kernels.iter().map(|k| k.to_string()).collect(),
            ..Default::default()
        }
    }

    fn existing(kernels: &[&str], generated: bool) -> ManagedClusterPreflight {
        let mut pf = ManagedClusterPreflight::new(
            NEXT_KERNELS_PREFLIGHT,
            kmm_api::preflight::ManagedClusterPreflightSpec {
                kernel_versions: kernels.iter().map(|k| k.to_string()).collect(),
                cluster_selector: None,
                push_built_image: true,
            },
        );
        if generated {
            pf.labels_mut()
                .insert(GENERATED_LABEL.into(), GENERATED_FROM_NEXT_KERNELS.into());
        }
        pf
    }

    #[test]
    fn it_exists_while_claims_ask_and_pushes_what_it_builds() {
        let Change::Apply(body) = change(&plan(&["6.1.0-29"]), None) else {
            panic!("not applied")
        };
        let pf: ManagedClusterPreflight = serde_json::from_value(body).unwrap();
        assert!(is_generated(&pf));
        assert!(pf.spec.push_built_image, "a later rollout must find the image");
        assert_eq!(pf.spec.kernel_versions, ["6.1.0-29"]);
        assert_eq!(change(&plan(&["6.1.0-29"]), Some(&pf)), Change::None);
        assert!(matches!(
            change(&plan(&["6.1.0-30"]), Some(&pf)),
            Change::Apply(_)
        ));
        assert_eq!(change(&plan(&[]), Some(&pf)), Change::Delete);
        assert_eq!(change(&plan(&[]), None), Change::None);
    }

    #[test]
    fn a_users_preflight_of_that_name_is_left_alone() {
        let users = existing(&["5.14.0-1"], false);
        assert_eq!(change(&plan(&["6.1.0-29"]), Some(&users)), Change::Foreign);
        assert_eq!(change(&plan(&[]), Some(&users)), Change::Foreign);
        assert_eq!(
            change(&plan(&["5.14.0-1"]), Some(&existing(&["5.14.0-1"], true))),
            Change::None
        );
    }
}
