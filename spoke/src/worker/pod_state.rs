//! What a worker pod says back: its action, the config it ran, its phase, and why it ended.
//! Read by the node controller (the record) and the Module controller (its status).

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kmm_api::nmc::ModuleConfig;
use kube::ResourceExt;

use super::{
    pod::{WORKER_ACTION_LABEL, WORKER_CONFIG_ANNOTATION},
    run::Action,
};

/// The worker's action, from its label (`None`: not a worker, e.g. a device plugin pod).
pub fn action(pod: &Pod) -> Option<Action> {
    match pod.labels().get(WORKER_ACTION_LABEL).map(String::as_str) {
        Some("Load") => Some(Action::Load),
        Some("Unload") => Some(Action::Unload),
        _ => None,
    }
}

/// The config the worker ran, from its annotation.
pub fn config(pod: &Pod) -> Option<ModuleConfig> {
    serde_saphyr::from_str(pod.annotations().get(WORKER_CONFIG_ANNOTATION)?).ok()
}

/// The pod's phase (`Pending` until the kubelet reports one).
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// When the pod's worker container (or a failed init container) ended, and its one-line reason.
pub fn termination(pod: &Pod) -> (Option<Timestamp>, String) {
    kmm_api::pod_failure::termination(pod, "worker").unwrap_or((None, "the worker pod failed".into()))
}
