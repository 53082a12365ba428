//! Nodes as the tests look at them: Ready, tainted by the node-lifecycle controller, their
//! kernel; and the wait for a node the kubelet stand-in registered to be usable.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;

use crate::controlplane::ControlPlane;

/// The status of one Node condition.
pub fn node_condition(node: &Node, type_: &str) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// Whether the Node's Ready condition is True.
pub fn node_ready(node: &Node) -> bool {
    node_condition(node, "Ready").as_deref() == Some("True")
}

/// Whether the node-lifecycle controller tainted the Node not-ready or unreachable.
pub fn node_tainted(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| {
            ts.iter()
                .any(|t| t.key == "node.kubernetes.io/not-ready" || t.key == "node.kubernetes.io/unreachable")
        })
}

/// The kernel the Node reports, if any.
pub fn kernel_of(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .node_info
        .as_ref()
        .map(|i| i.kernel_version.as_str())
        .filter(|k| !k.is_empty())
}

impl ControlPlane {
    /// Waits (up to 90 s) until the kubelet registered `node` with a kernel and the
    /// node-lifecycle controller finds it Ready with no not-ready or unreachable taint (kmm-spoke
    /// skips nodes with an untolerated NoSchedule taint, as upstream does); the Node.
    pub async fn wait_node_ready(&self, node: &str) -> anyhow::Result<Node> {
        let api = Api::<Node>::all(self.client());
        self.wait(
            &format!("node {node} registered, Ready and untainted"),
            Duration::from_secs(90),
        )
        .until(|| async {
            let n = api.get_opt(node).await.ok()??;
            (node_ready(&n) && !node_tainted(&n) && kernel_of(&n).is_some()).then_some(n)
        })
        .await
    }
}
