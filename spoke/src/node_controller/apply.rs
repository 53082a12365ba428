//! Apply: makes one node's [`NodeDesired`] true, the record first (its spec by server-side
//! apply, then its status), then the worker pods (deletions before creations), the node labels,
//! and the node's Events, each write only when something differs.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Node, Pod};
use kmm_api::{
    labels,
    nmc::{NodeModulesConfig, NodeModulesConfigStatus},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::events::EventType,
};
use serde_json::json;

use super::desired::NodeDesired;
use crate::{
    context::{FIELD_MANAGER, SharedCtx},
    error::{Error, is_status, kube_err},
    metrics::ActionLabels,
    worker::{
        pod::{WorkerPodInput, worker_pod},
        run::Action as WorkerAction,
    },
};

/// Makes `want` true for `node`; `nmc` is its record as observed.
pub async fn apply(
    node: &Node,
    nmc: Option<NodeModulesConfig>,
    want: &NodeDesired,
    ctx: &SharedCtx,
) -> Result<(), Error> {
    let name = node.name_any();
    let client = &ctx.client;
    let nmc_api = Api::<NodeModulesConfig>::all(client.clone());
    let pp = PatchParams::apply(FIELD_MANAGER).force();

    // The record first: pods are owned by it, and its status must hold a finished load before
    // the pod that proves it is deleted.
    let spec_differs = nmc.as_ref().map(|n| &n.spec.modules) != Some(&want.spec);
    let current_status = nmc
        .as_ref()
        .and_then(|n| n.status.as_ref())
        .map(|s| s.modules.clone())
        .unwrap_or_default();
    let mut nmc = nmc;
    let needed = !want.spec.is_empty() || !want.status.is_empty() || !want.create_pods.is_empty();
    if spec_differs && (nmc.is_some() || needed) {
        let body = json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
            "kind": "NodeModulesConfig",
            "metadata": {
                "name": name,
                "ownerReferences": [{
                    "apiVersion": "v1",
                    "kind": "Node",
                    "name": name,
                    "uid": node.uid().unwrap_or_default(),
                }],
            },
            "spec": { "modules": want.spec },
        });
        // Applying `modules: []` removes the entries this manager owned, and the apiserver then
        // drops the emptied `spec` too, which the CRD requires (a 422): an emptied list is
        // written with a merge patch instead.
        let patch = if want.spec.is_empty() && nmc.is_some() {
            Patch::Merge(json!({ "spec": { "modules": [] } }))
        } else {
            Patch::Apply(body)
        };
        let params = if matches!(patch, Patch::Merge(_)) {
            PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            }
        } else {
            pp.clone()
        };
        nmc = Some(
            nmc_api
                .patch(&name, &params, &patch)
                .await
                .map_err(kube_err(format!("applying NodeModulesConfig {name}")))?,
        );
    }
    if current_status != want.status && nmc.is_some() {
        let body = json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
            "kind": "NodeModulesConfig",
            "status": NodeModulesConfigStatus { modules: want.status.clone() },
        });
        nmc_api
            .patch_status(&name, &pp, &Patch::Apply(body))
            .await
            .map_err(kube_err(format!(
                "writing the status of NodeModulesConfig {name}"
            )))?;
    }

    for (ns, pod) in &want.delete_pods {
        match Api::<Pod>::namespaced(client.clone(), ns)
            .delete(pod, &DeleteParams::default())
            .await
        {
            Ok(_) => {
                let failed = want.failed_pods.iter().find(|(r, _)| r.0 == *ns && r.1 == *pod);
                if let Some((_, action)) = failed {
                    ctx.metrics
                        .worker_failures
                        .get_or_create(&action_labels(*action))
                        .inc();
                }
            }
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(kube_err(format!("deleting worker pod {ns}/{pod}"))(e)),
        }
    }
    let owner = nmc.as_ref().map(|n| (n.name_any(), n.uid().unwrap_or_default()));
    for plan in &want.create_pods {
        let pod = worker_pod(
            &WorkerPodInput {
                node: &name,
                action: plan.action,
                item: &plan.item,
                config: &plan.config,
                owner: owner.as_ref().map(|(n, u)| (n.as_str(), u.as_str())),
                attempt: plan.attempt,
                last_failure: plan.last_failure.as_deref(),
            },
            &ctx.settings.worker,
        )
        .map_err(|e| Error::Serialize {
            what: "the worker config",
            reason: e.to_string(),
        })?;
        let ns = plan.item.namespace.clone();
        match Api::<Pod>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &pod)
            .await
        {
            Ok(_) => {
                ctx.metrics
                    .worker_pods
                    .get_or_create(&action_labels(plan.action))
                    .inc();
            }
            // The previous pod of this module is still going away: the next pass retries.
            Err(e) if is_status(&e, 409) => {}
            Err(e) => {
                return Err(kube_err(format!("creating worker pod {ns}/{}", pod.name_any()))(
                    e,
                ));
            }
        }
    }

    if labels_differ(node, want) {
        // No labels at all rather than an empty map: an empty map is owned as one field, and
        // an apiserver may drop the whole map (other owners' labels too) when it later fills.
        let mut metadata = json!({ "name": name });
        if !want.labels.is_empty() {
            metadata["labels"] = json!(want.labels);
        }
        let body = json!({ "apiVersion": "v1", "kind": "Node", "metadata": metadata });
        Api::<Node>::all(client.clone())
            .patch(&name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(body))
            .await
            .map_err(kube_err(format!("labelling node {name}")))?;
    }

    let reference = node.object_ref(&());
    let once_keys: BTreeSet<String> = want.events.iter().filter_map(|e| e.once_per.clone()).collect();
    let already = ctx
        .reported_once
        .lock()
        .map(|mut reported| {
            let before = reported.remove(&name).unwrap_or_default();
            if !once_keys.is_empty() {
                reported.insert(name.clone(), once_keys);
            }
            before
        })
        .unwrap_or_default();
    for ev in &want.events {
        if ev.once_per.as_ref().is_some_and(|k| already.contains(k)) {
            continue;
        }
        let type_ = if ev.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.publish(&reference, type_, ev.reason, "Reconcile", &ev.note)
            .await;
    }
    Ok(())
}

fn action_labels(action: WorkerAction) -> ActionLabels {
    ActionLabels {
        action: match action {
            WorkerAction::Load => "load",
            WorkerAction::Unload => "unload",
        },
    }
}

/// Whether a label kmm-spoke writes is missing, has another value, or is present but no longer
/// wanted.
fn labels_differ(node: &Node, want: &NodeDesired) -> bool {
    let have = node.labels();
    let missing = want.labels.iter().any(|(k, v)| have.get(k) != Some(v));
    let stale = have
        .keys()
        .any(|k| is_owned_label(k) && !want.labels.contains_key(k));
    missing || stale
}

/// Label keys only kmm-spoke writes.
pub fn is_owned_label(key: &str) -> bool {
    let beta = format!("{}/", labels::BETA_LABEL_PREFIX);
    let ours = format!("{}/", labels::NODE_LABEL_PREFIX);
    if let Some(rest) = key.strip_prefix(&beta) {
        return rest.starts_with("version-worker-pod.") || rest.starts_with("version-schedule-pod.");
    }
    key.strip_prefix(&ours).is_some_and(|rest| {
        !rest.starts_with("version-module.")
            && (rest.ends_with(".ready") || rest.ends_with(".device-plugin-target"))
            && !rest.ends_with(".device-plugin-ready")
            && !rest.ends_with(".dra-ready")
    })
}
