//! Step 1 (pure): read the node's worker pods back. A finished load or unload goes into the
//! record's status and its pod is deleted; a failed or running pod is handed on to the worker
//! step; a pod past its deletion's grace period is reported.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::core::v1::{Node, Pod},
    jiff::Timestamp,
};
use kmm_api::nmc::{ModuleItem, NodeModuleStatus};
use kube::ResourceExt;

use super::{ModuleKey, NodeEvent, doing, earliest, key_of};
use crate::{
    reason::Reason,
    worker::{
        pod::{MODULE_NAME_LABEL, WORKER_ATTEMPT_ANNOTATION, WORKER_VERSION_ANNOTATION},
        pod_state,
        run::Action,
    },
};

/// A worker pod that has not finished well.
pub enum PodState<'a> {
    /// Running, pending, or being deleted.
    InFlight { pod: &'a Pod, pending: bool },
    /// Failed: its attempt number, when it ended and why.
    Failed {
        pod: &'a Pod,
        attempt: u32,
        finished: Option<Timestamp>,
        message: String,
    },
}

/// What reading the pods back gives the later steps.
#[derive(Default)]
pub struct ReadBack<'a> {
    /// Per Module, its worker pod that is still in flight or failed.
    pub states: BTreeMap<ModuleKey, PodState<'a>>,
    /// Finished pods, read back and to delete, `(namespace, name)`.
    pub finished: Vec<(String, String)>,
    pub events: Vec<NodeEvent>,
    /// When the first pod being deleted should be gone.
    pub wait: Option<Duration>,
}

/// Reads `pods` back into `status` (the record's status by Module).
pub fn read_back<'a>(
    node: &Node,
    pods: &'a [Pod],
    status: &mut BTreeMap<ModuleKey, NodeModuleStatus>,
    boot_id: Option<&str>,
    now: Timestamp,
) -> ReadBack<'a> {
    let mut out = ReadBack::default();
    for pod in pods {
        let Some(action) = pod_state::action(pod) else {
            continue;
        };
        let Some(module) = pod.labels().get(MODULE_NAME_LABEL) else {
            continue;
        };
        let key = key_of(&pod.namespace().unwrap_or_default(), module);
        if let Some(deadline) = pod.metadata.deletion_timestamp.as_ref().map(|t| t.0) {
            // Being deleted: nothing replaces it (the name is taken) until the kubelet has
            // stopped it and it is gone. Past its grace period, that kubelet is not doing it.
            if now > deadline {
                out.events.push(stuck_event(node, pod, &key, action, deadline));
            } else {
                let left = deadline.duration_since(now).unsigned_abs() + Duration::from_secs(1);
                out.wait = earliest(out.wait, left);
            }
            out.states.insert(key, PodState::InFlight { pod, pending: false });
            continue;
        }
        match pod_state::phase(pod) {
            "Succeeded" => {
                out.events.push(finished(pod, &key, action, status, boot_id));
                out.finished.push((key.0.clone(), pod.name_any()));
            }
            "Failed" => {
                let attempt = pod
                    .annotations()
                    .get(WORKER_ATTEMPT_ANNOTATION)
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0);
                let (finished, message) = pod_state::termination(pod);
                out.states.insert(
                    key,
                    PodState::Failed {
                        pod,
                        attempt,
                        finished,
                        message,
                    },
                );
            }
            phase => {
                out.states.insert(
                    key,
                    PodState::InFlight {
                        pod,
                        pending: phase == "Pending",
                    },
                );
            }
        }
    }
    out
}

/// Records a succeeded worker in `status` and says what happened.
fn finished(
    pod: &Pod,
    key: &ModuleKey,
    action: Action,
    status: &mut BTreeMap<ModuleKey, NodeModuleStatus>,
    boot_id: Option<&str>,
) -> NodeEvent {
    match action {
        Action::Load => match pod_state::config(pod) {
            Some(config) => {
                status.insert(
                    key.clone(),
                    NodeModuleStatus {
                        item: loaded_item(pod, key),
                        config: Some(config),
                        boot_id: boot_id.map(str::to_owned),
                        last_transition_time: None,
                    },
                );
                NodeEvent::normal(Reason::ModuleLoaded, format!("module {}/{} loaded", key.0, key.1))
            }
            None => NodeEvent::warning(
                Reason::WorkerConfigUnreadable,
                format!(
                    "worker pod {} has no readable config; loading again",
                    pod.name_any()
                ),
            ),
        },
        Action::Unload => {
            status.remove(key);
            NodeEvent::normal(
                Reason::ModuleUnloaded,
                format!("module {}/{} unloaded", key.0, key.1),
            )
        }
    }
}

/// The record's item for a load, from the pod that did it.
fn loaded_item(pod: &Pod, key: &ModuleKey) -> ModuleItem {
    let spec = pod.spec.as_ref();
    ModuleItem {
        name: key.1.clone(),
        namespace: key.0.clone(),
        service_account_name: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        image_repo_secret: spec.and_then(|s| s.image_pull_secrets.as_ref()?.first().cloned()),
        tolerations: spec.and_then(|s| s.tolerations.clone()).unwrap_or_default(),
        version: pod.annotations().get(WORKER_VERSION_ANNOTATION).cloned(),
    }
}

/// The Warning about a worker pod whose deletion nobody finishes: which pod, why (the node's
/// readiness), what waits for it and how an admin ends it.
fn stuck_event(node: &Node, pod: &Pod, key: &ModuleKey, action: Action, deadline: Timestamp) -> NodeEvent {
    let pod_name = pod.name_any();
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    let node_state = match ready {
        Some(c) if c.status == "True" => format!(
            "node {} is Ready, but its kubelet has not finished the deletion",
            node.name_any()
        ),
        Some(c) => format!(
            "node {} is NotReady (Ready={}, {}: {}), so no kubelet finishes the deletion",
            node.name_any(),
            c.status,
            c.reason.as_deref().unwrap_or_default(),
            c.message.as_deref().unwrap_or_default()
        ),
        None => format!(
            "node {} reports no Ready condition, so no kubelet finishes the deletion",
            node.name_any()
        ),
    };
    let note = format!(
        "worker pod {ns}/{pod_name} ({action} {ns}/{module}) is still terminating after its grace \
         period ended at {deadline}: {node_state}. The next worker for {ns}/{module} on this node \
         starts once the pod is gone: when the node is back, or, if the node is gone for good, after \
         `kubectl delete pod -n {ns} {pod_name} --force --grace-period=0`",
        ns = key.0,
        module = key.1,
        action = doing(action),
    );
    NodeEvent {
        once_per: Some(pod.uid().unwrap_or(pod_name)),
        ..NodeEvent::warning(Reason::WorkerPodStuck, note)
    }
}
