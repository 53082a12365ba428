//! Whether a Module belongs on a Node: its selector and the node's taints against its
//! tolerations. Both controllers ask (the node records, the Module's node counts).

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};
use kmm_api::Module;
use kube::ResourceExt;

/// Taints the node-lifecycle controller puts on a node from its conditions, which never decide
/// whether a module belongs on it. `not-ready` and `unreachable` mean the kubelet stopped
/// reporting (a crash, a partition): the module is still loaded in that kernel, and an unload
/// queued on the node would run the moment its kubelet is back. The pressure taints are the
/// ones upstream KMM tolerates internally. The admin's `unschedulable` (cordon) still counts.
pub const NODE_CONDITION_TAINTS: [&str; 5] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
    "node.kubernetes.io/memory-pressure",
    "node.kubernetes.io/disk-pressure",
    "node.kubernetes.io/pid-pressure",
];

/// Whether a node matches a Module's selector and tolerates its NoSchedule/NoExecute taints
/// (other than [`NODE_CONDITION_TAINTS`]).
pub fn targets(module: &Module, node: &Node) -> bool {
    let node_labels = node.labels();
    let selected = module
        .spec
        .selector
        .iter()
        .all(|(k, v)| node_labels.get(k) == Some(v));
    let tolerations = module.spec.tolerations.as_deref().unwrap_or_default();
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    selected
        && taints
            .iter()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .filter(|t| !NODE_CONDITION_TAINTS.contains(&t.key.as_str()))
            .all(|t| tolerations.iter().any(|tol| tolerates(tol, t)))
}

fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    let effect_ok = tol
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key_ok = match tol.key.as_deref() {
        None | Some("") => tol.operator.as_deref() == Some("Exists"),
        Some(k) => k == taint.key,
    };
    let value_ok = match tol.operator.as_deref() {
        Some("Exists") => true,
        _ => tol.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default(),
    };
    effect_ok && key_ok && value_ok
}
