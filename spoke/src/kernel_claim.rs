//! The kernel-versions ClusterClaim(s) a spoke publishes (managed mode), computed from its Nodes.
//!
//! Every node counts, control plane included, as upstream does: the hub decides what to build
//! from this list, and a kernel missing from it would never get an image. Nodes that do not report
//! a kernel yet are skipped rather than written as empty lines.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::{api::core::v1::Node, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kmm_api::{
    claims::{ClaimError, MAX_KERNEL_CLAIMS, continuation_claim_name, encode_kernel_claims},
    ocm::{ClusterClaim, ClusterClaimSpec, KERNEL_VERSIONS_CLAIM},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde_json::json;

use crate::context::{Error, FIELD_MANAGER, is_status, kube_err};

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

/// Whether `name` is one of the kernel-versions claims (first or continuation).
pub fn is_kernel_claim(name: &str) -> bool {
    name == KERNEL_VERSIONS_CLAIM || (2..=MAX_KERNEL_CLAIMS + 1).any(|i| continuation_claim_name(i) == name)
}

/// The writes that bring `existing` claims to `desired`: `(name, value)` to apply, names to delete.
pub fn claim_changes(
    desired: &[ClusterClaim],
    existing: &BTreeMap<String, String>,
) -> (Vec<(String, String)>, Vec<String>) {
    let want: BTreeMap<String, String> = desired
        .iter()
        .map(|c| (c.name_any(), c.spec.value.clone()))
        .collect();
    let apply = want
        .iter()
        .filter(|(name, value)| existing.get(*name) != Some(*value))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let delete = existing
        .keys()
        .filter(|name| is_kernel_claim(name) && !want.contains_key(*name))
        .cloned()
        .collect();
    (apply, delete)
}

/// Keeps the kernel-versions claims in step with the Nodes until the watch ends. Reacts to Node
/// and claim changes; writes only claims whose value differs, deletes continuation claims no
/// longer needed.
pub async fn run(client: Client) {
    let nodes_api = Api::<Node>::all(client.clone());
    let claims_api = Api::<ClusterClaim>::all(client.clone());
    let (nodes, nodes_writer) = reflector::store();
    let (claims, claims_writer) = reflector::store();
    let node_events = reflector(nodes_writer, watcher(nodes_api, watcher::Config::default()))
        .default_backoff()
        .map(|_| ());
    let claim_events = reflector(
        claims_writer,
        watcher(claims_api.clone(), watcher::Config::default()),
    )
    .default_backoff()
    .map(|_| ());
    let mut events = std::pin::pin!(futures::stream::select(node_events, claim_events));
    let mut last_error: Option<String> = None;
    while events.next().await.is_some() {
        if nodes.wait_until_ready().await.is_err() || claims.wait_until_ready().await.is_err() {
            return;
        }
        let node_list: Vec<Node> = nodes.state().iter().map(|n| (**n).clone()).collect();
        let existing: BTreeMap<String, String> = claims
            .state()
            .iter()
            .map(|c| (c.name_any(), c.spec.value.clone()))
            .collect();
        let result = match desired_claims(&node_list) {
            Ok(desired) => sync(&claims_api, &desired, &existing).await,
            Err(ClaimError::NoKernels) => Ok(()),
            Err(e) => Err(Error::Serialize {
                what: "the kernel-versions claims",
                reason: e.to_string(),
            }),
        };
        match result {
            Ok(()) => last_error = None,
            Err(error) => {
                let text = error.to_string();
                if last_error.as_ref() != Some(&text) {
                    tracing::warn!(%error, "updating the kernel-versions claims failed");
                }
                last_error = Some(text);
            }
        }
    }
}

async fn sync(
    api: &Api<ClusterClaim>,
    desired: &[ClusterClaim],
    existing: &BTreeMap<String, String>,
) -> Result<(), Error> {
    let (mut apply, delete) = claim_changes(desired, existing);
    // Continuations before the first claim: a reader never sees "+N" without its claims.
    apply.sort_by_key(|(name, _)| name == KERNEL_VERSIONS_CLAIM);
    for (name, value) in &apply {
        let body = json!({
            "apiVersion": "cluster.open-cluster-management.io/v1alpha1",
            "kind": "ClusterClaim",
            "metadata": { "name": name },
            "spec": { "value": value },
        });
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(kube_err(format!("applying ClusterClaim {name}")))?;
    }
    for name in delete {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(kube_err(format!("deleting ClusterClaim {name}"))(e)),
        }
    }
    Ok(())
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
