//! What the spoke's caches keep of each object: only the fields a reconcile or the kernel claim
//! reads. A kubelet's Node carries its image list (up to 50 images, each with every tag and
//! digest), addresses, capacities, volumes and the managedFields of every writer; at 1,000 nodes
//! that is most of the spoke's anonymous memory, and the spoke reads none of it.
//!
//! Applied to the watch streams (kube-runtime's `WatchStreamExt::modify`) before the reflectors
//! store them, so a dropped field is never held, not even for the first list.

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus};
use kmm_api::nmc::NodeModulesConfig;
use kube::runtime::watcher;

/// Objects per page of a watch's initial list (kube-runtime lists 500). The trimming above
/// runs only once a page is decoded, so a page of 500 kubelet Nodes (each 10 to 15 KiB of JSON
/// with its managedFields and images) was held whole, raw and decoded, by every Node watch at
/// once: most of the spoke's peak memory at 1,000 nodes, which glibc then keeps.
pub const LIST_PAGE: u32 = 50;

/// The watch settings of a per-node kind (Node, NodeModulesConfig): small list pages.
pub fn per_node_watch() -> watcher::Config {
    watcher::Config::default().page_size(LIST_PAGE)
}

/// The Node condition the spoke reads (why a worker pod's deletion is stuck).
const READY: &str = "Ready";

/// A Node as the caches keep it: metadata without managedFields (labels and every annotation
/// stay: the node labels are compared before each write, annotations may carry a next kernel),
/// the taints and the cordon mark (targeting), the system info (kernel, boot ID, OS) and the
/// Ready condition. Images, addresses, capacity, allocatable, volumes, daemon endpoints, the
/// other conditions and the spec's pod CIDRs and provider ID are dropped.
pub fn node(node: &mut Node) {
    node.metadata.managed_fields = None;
    if let Some(spec) = node.spec.take() {
        node.spec = Some(NodeSpec {
            taints: spec.taints,
            unschedulable: spec.unschedulable,
            ..Default::default()
        });
    }
    if let Some(status) = node.status.take() {
        node.status = Some(NodeStatus {
            node_info: status.node_info,
            conditions: status
                .conditions
                .map(|cs| cs.into_iter().filter(|c| c.type_ == READY).collect()),
            ..Default::default()
        });
    }
}

/// A NodeModulesConfig as the record cache keeps it: whole but its managedFields (the spoke and
/// the workers' status writes each add an entry holding every field's path).
pub fn record(record: &mut NodeModulesConfig) {
    record.metadata.managed_fields = None;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use k8s_openapi::{
        api::core::v1::{ContainerImage, NodeAddress, NodeCondition, NodeDaemonEndpoints, Pod, Taint},
        apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ManagedFieldsEntry},
        jiff::Timestamp,
    };
    use kube::ResourceExt;

    use super::*;
    use crate::{
        fixtures::{loader, mk_module, mk_node},
        kernel_claim::node_kernels,
        node_controller::desired::{NodeObserved, NodeSettings, desired},
        reason::Reason,
        targeting::targets,
        worker::pod::{MODULE_NAME_LABEL, WORKER_ACTION_LABEL},
    };

    fn condition(type_: &str, status: &str) -> NodeCondition {
        NodeCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(format!("{type_}Reason")),
            message: Some(format!("{type_} says {status}")),
            ..Default::default()
        }
    }

    /// A node as a kubelet reports it: everything the spoke reads plus what it does not.
    fn kubelet_node(ready: &str) -> Node {
        let mut node = mk_node(&[("role", "gpu")], "boot-1");
        node.annotations_mut().insert(
            "kmm.node.kubernetes.io/next-kernel".into(),
            "6.1.0-19-cloud-amd64".into(),
        );
        node.annotations_mut().insert(
            "volumes.kubernetes.io/controller-managed-attach-detach".into(),
            "true".into(),
        );
        node.metadata.uid = Some("uid-n".into());
        node.metadata.resource_version = Some("42".into());
        node.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default(); 4]);
        node.spec = Some(NodeSpec {
            pod_cidr: Some("10.0.0.0/24".into()),
            provider_id: Some("aws:///eu-west-1a/i-0".into()),
            taints: Some(vec![Taint {
                key: "dedicated".into(),
                effect: "NoSchedule".into(),
                value: Some("gpu".into()),
                ..Default::default()
            }]),
            unschedulable: Some(true),
            ..Default::default()
        });
        let status = node.status.get_or_insert_default();
        status.conditions = Some(vec![
            condition("MemoryPressure", "False"),
            condition("DiskPressure", "False"),
            condition("Ready", ready),
        ]);
        status.images = Some(
            (0..50)
                .map(|i| ContainerImage {
                    names: Some(vec![format!(
                        "registry.example/app-{i}@sha256:{}",
                        "a".repeat(64)
                    )]),
                    size_bytes: Some(1 << 20),
                })
                .collect(),
        );
        status.addresses = Some(vec![NodeAddress {
            type_: "InternalIP".into(),
            address: "10.0.0.1".into(),
        }]);
        status.capacity = Some([("cpu".to_owned(), Quantity("8".into()))].into());
        status.allocatable = status.capacity.clone();
        status.daemon_endpoints = Some(NodeDaemonEndpoints::default());
        node
    }

    #[test]
    fn a_node_keeps_what_the_spoke_reads_and_loses_the_rest() {
        let full = kubelet_node("True");
        let mut slim = full.clone();
        node(&mut slim);

        assert_eq!(slim.metadata.labels, full.metadata.labels);
        assert_eq!(
            slim.metadata.annotations, full.metadata.annotations,
            "every annotation stays"
        );
        assert_eq!(slim.uid(), full.uid());
        assert_eq!(slim.resource_version(), full.resource_version());
        assert!(slim.metadata.managed_fields.is_none());
        let spec = slim.spec.as_ref().unwrap();
        assert_eq!(spec.taints, full.spec.as_ref().unwrap().taints);
        assert_eq!(spec.unschedulable, Some(true));
        assert!(spec.pod_cidr.is_none() && spec.provider_id.is_none());
        let status = slim.status.as_ref().unwrap();
        assert_eq!(status.node_info, full.status.as_ref().unwrap().node_info);
        let kept: Vec<&str> = status
            .conditions
            .iter()
            .flatten()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(kept, [READY]);
        assert!(status.images.is_none() && status.addresses.is_none() && status.capacity.is_none());
        assert!(status.allocatable.is_none() && status.daemon_endpoints.is_none());

        let size = |n: &Node| serde_json::to_vec(n).unwrap().len();
        assert!(
            size(&slim) * 5 < size(&full),
            "{} vs {} bytes",
            size(&slim),
            size(&full)
        );
        let mut again = slim.clone();
        node(&mut again);
        assert_eq!(again, slim, "slimming a slimmed node changes nothing");
    }

    #[test]
    fn a_node_without_spec_or_status_stays_without() {
        let mut bare = Node::default();
        node(&mut bare);
        assert_eq!(bare, Node::default());
    }

    /// The witness that nothing read was dropped: every decision the spoke takes from a node is
    /// the same for the cached copy as for the whole object.
    #[rstest::rstest]
    #[case::ready("True")]
    #[case::not_ready("Unknown")]
    fn every_decision_is_the_same_on_the_slimmed_node(#[case] ready: &str) {
        let full = kubelet_node(ready);
        let mut slim = full.clone();
        node(&mut slim);
        let tolerating = mk_module(&format!(
            "  tolerations: [{{key: dedicated, operator: Exists}}]\n{}",
            loader("p=1")
        ));
        let intolerant = mk_module(&loader("p=2"));
        for module in [&tolerating, &intolerant] {
            assert_eq!(targets(module, &slim), targets(module, &full));
        }
        assert!(targets(&tolerating, &slim) && !targets(&intolerant, &slim));
        assert_eq!(
            node_kernels(std::slice::from_ref(&slim)),
            node_kernels(std::slice::from_ref(&full))
        );

        // A deleting worker pod past its deadline: the note quotes the Ready condition.
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kmm-worker-node-a-m", "namespace": "drivers", "uid": "p-1",
                "labels": {MODULE_NAME_LABEL: "m", WORKER_ACTION_LABEL: "Load"}},
            "spec": {"nodeName": "node-a", "containers": []},
            "status": {"phase": "Pending"}
        }))
        .unwrap();
        pod.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Timestamp::UNIX_EPOCH,
        ));
        let modules = [tolerating.clone()];
        let decide = |n: &Node| {
            desired(
                NodeObserved {
                    node: n,
                    nmc: None,
                    modules: &modules,
                    pods: std::slice::from_ref(&pod),
                    now: Timestamp::now(),
                },
                &NodeSettings::default(),
            )
        };
        let (slimmed, whole) = (decide(&slim), decide(&full));
        assert_eq!(slimmed, whole);
        let readiness = if ready == "True" {
            "is Ready"
        } else {
            "Ready=Unknown"
        };
        assert!(
            slimmed
                .events
                .iter()
                .any(|e| e.reason == Reason::WorkerPodStuck && e.note.contains(readiness)),
            "{:?}",
            slimmed.events
        );
    }

    #[test]
    fn a_record_loses_only_its_managed_fields() {
        let mut full: NodeModulesConfig = serde_json::from_value(serde_json::json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "NodeModulesConfig",
            "metadata": {"name": "node-a", "uid": "r-1", "resourceVersion": "7",
                "labels": {"a": "b"}, "annotations": {"c": "d"}},
            "spec": {"modules": []}
        }))
        .unwrap();
        let before = full.clone();
        full.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default(); 3]);
        record(&mut full);
        assert_eq!(full, before);
    }
}
