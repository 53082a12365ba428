//! The kernel-versions ClusterClaim(s) a spoke publishes (managed mode), computed from its Nodes.
//!
//! Every node counts, control plane included, as upstream does: the hub decides what to build
//! from this list, and a kernel missing from it would never get an image. Nodes that do not report
//! a kernel yet are skipped rather than written as empty lines.

use k8s_openapi::{api::core::v1::Node, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kmm_api::{
    claims::{ClaimError, encode_kernel_claims},
    ocm::{ClusterClaim, ClusterClaimSpec},
};

/// The claims to apply for these nodes.
pub fn desired_claims(nodes: &[Node]) -> Result<Vec<ClusterClaim>, ClaimError> {
    let kernels = nodes
        .iter()
        .filter_map(|n| n.status.as_ref()?.node_info.as_ref())
        .map(|info| info.kernel_version.as_str());
    Ok(encode_kernel_claims(kernels)?
        .into_iter()
        .map(|(name, value)| ClusterClaim {
            metadata: ObjectMeta {
                name: Some(name),
                ..Default::default()
            },
            spec: ClusterClaimSpec { value },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeStatus, NodeSystemInfo};
    use kmm_api::{claims::decode_kernel_claims, ocm::KERNEL_VERSIONS_CLAIM};

    use super::*;

    fn mk_node(kernel: Option<&str>) -> Node {
        Node {
            status: Some(NodeStatus {
                node_info: kernel.map(|k| NodeSystemInfo {
                    kernel_version: k.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn publishes_each_kernel_once_and_skips_nodes_without_one() {
        let nodes = [
            mk_node(Some("6.1.0-18-cloud-amd64")),
            mk_node(Some("5.14.0-70.el9.x86_64")),
            mk_node(Some("6.1.0-18-cloud-amd64")),
            mk_node(None),
        ];
        let claims = desired_claims(&nodes).unwrap();
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].metadata.name.as_deref(), Some(KERNEL_VERSIONS_CLAIM));
        assert_eq!(claims[0].spec.value, "5.14.0-70.el9.x86_64\n6.1.0-18-cloud-amd64");
    }

    #[test]
    fn what_the_spoke_publishes_the_hub_reads_back() {
        let nodes: Vec<Node> = (0..80)
            .map(|i| mk_node(Some(&format!("5.14.0-{i}.el9_{i}.x86_64"))))
            .collect();
        let claims = desired_claims(&nodes).unwrap();
        assert!(claims.len() > 1);
        let read = decode_kernel_claims(|name| {
            claims
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(name))
                .map(|c| c.spec.value.as_str())
        })
        .unwrap();
        assert_eq!(read.len(), 80);
    }

    #[test]
    fn a_cluster_without_kernels_publishes_nothing() {
        assert_eq!(
            desired_claims(&[mk_node(None)]).unwrap_err(),
            ClaimError::NoKernels
        );
    }
}
