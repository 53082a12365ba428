//! A DaemonSet controller: one pod per matching Node, status counts from those pods.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::util::{fnv1a, is_conflict, is_not_found};

/// Label with the hash of the pod template a DaemonSet pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// Whether `node` carries every label of `selector`.
pub fn node_matches(node: &Node, selector: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| node.labels().get(k) == Some(v))
}

/// Stable hash of the DaemonSet's pod template.
pub fn template_hash(ds: &DaemonSet) -> String {
    let template = ds
        .spec
        .as_ref()
        .map(|s| serde_json::to_string(&s.template).unwrap_or_default())
        .unwrap_or_default();
    format!("{:010x}", fnv1a(template.as_bytes()) & 0xff_ffff_ffff)
}

/// Name of the DaemonSet's pod on `node`.
pub fn pod_name(ds: &str, node: &str) -> String {
    let name = format!("{ds}-{node}");
    if name.len() <= 253 {
        name
    } else {
        format!("{}-{:x}", &ds[..ds.len().min(200)], fnv1a(name.as_bytes()))
    }
}

pub(crate) fn pod_node(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

pub(crate) fn is_ready(pod: &Pod) -> bool {
    pod.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Running")
            && s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

pub(crate) fn controlled_by(pod: &Pod, uid: &str) -> bool {
    pod.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// The DaemonSet status its pods give. `nodes` are the names of the nodes it should run on;
/// `pods` are its live (not terminating) pods.
pub fn status(ds: &DaemonSet, nodes: &[String], pods: &[Pod], hash: &str) -> DaemonSetStatus {
    let on_wanted: Vec<&Pod> = pods
        .iter()
        .filter(|p| pod_node(p).is_some_and(|n| nodes.iter().any(|x| x == n)))
        .collect();
    let desired = i32::try_from(nodes.len()).unwrap_or(i32::MAX);
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let current = count(on_wanted.len());
    let ready = count(on_wanted.iter().filter(|p| is_ready(p)).count());
    let updated = count(
        on_wanted
            .iter()
            .filter(|p| p.labels().get(REVISION_LABEL).map(String::as_str) == Some(hash))
            .count(),
    );
    DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: current,
        number_misscheduled: count(pods.len() - on_wanted.len()),
        number_ready: ready,
        number_available: Some(ready),
        number_unavailable: Some(desired.saturating_sub(ready).max(0)),
        updated_number_scheduled: Some(updated),
        observed_generation: ds.metadata.generation,
        ..Default::default()
    }
}

/// The pod the DaemonSet runs on `node`.
pub fn pod_for(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let template = ds.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(REVISION_LABEL.to_string(), hash.to_string());
    let mut spec = template.spec.unwrap_or_default();
    spec.node_name = Some(node.to_string());
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&ds.name_any(), node)),
            namespace: ds.namespace(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: DaemonSet::api_version(&()).into_owned(),
                kind: DaemonSet::kind(&()).into_owned(),
                name: ds.name_any(),
                uid: ds.uid().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn selector_string(ds: &DaemonSet) -> String {
    ds.spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// One pass over every DaemonSet of the cluster.
pub(crate) async fn sync_all(client: &Client) -> Result<(), kube::Error> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let sets = Api::<DaemonSet>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    for ds in sets {
        if ds.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Err(e) = sync_one(client, &ds, &nodes).await {
            tracing::warn!(daemonset = %ds.name_any(), error = %e, "DaemonSet sync failed");
        }
    }
    Ok(())
}

async fn sync_one(client: &Client, ds: &DaemonSet, nodes: &[Node]) -> Result<(), kube::Error> {
    let ns = ds.namespace().unwrap_or_default();
    let uid = ds.uid().unwrap_or_default();
    let pods_api = Api::<Pod>::namespaced(client.clone(), &ns);
    let selector = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.node_selector.clone())
        .unwrap_or_default();
    let mut wanted: Vec<String> = nodes
        .iter()
        .filter(|n| node_matches(n, &selector))
        .map(|n| n.name_any())
        .collect();
    wanted.sort();
    let hash = template_hash(ds);
    let all: Vec<Pod> = pods_api
        .list(&ListParams::default().labels(&selector_string(ds)))
        .await?
        .items
        .into_iter()
        .filter(|p| controlled_by(p, &uid))
        .collect();

    let mut live = Vec::new();
    for pod in &all {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let stale = !pod_node(pod).is_some_and(|n| wanted.iter().any(|w| w == n))
            || pod.labels().get(REVISION_LABEL) != Some(&hash)
            || pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed");
        if stale {
            match pods_api.delete(&pod.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        } else {
            live.push(pod.clone());
        }
    }
    for node in &wanted {
        let taken = all
            .iter()
            .any(|p| pod_node(p) == Some(node.as_str()) && p.name_any() == pod_name(&ds.name_any(), node))
            || live.iter().any(|p| pod_node(p) == Some(node.as_str()));
        if !taken {
            match pods_api
                .create(
                    &PostParams {
                        field_manager: Some("daemonset-controller".into()),
                        ..Default::default()
                    },
                    &pod_for(ds, node, &hash),
                )
                .await
            {
                Ok(p) => live.push(p),
                Err(e) if is_conflict(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let new = status(ds, &wanted, &live, &hash);
    if ds.status.as_ref() != Some(&new) {
        let api = Api::<DaemonSet>::namespaced(client.clone(), &ns);
        api.patch_status(
            &ds.name_any(),
            &PatchParams {
                field_manager: Some("daemonset-controller".into()),
                ..Default::default()
            },
            &Patch::Merge(&json!({"status": new})),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DaemonSetSpec;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus, PodTemplateSpec};

    fn ds(node_selector: &[(&str, &str)]) -> DaemonSet {
        let mut d = DaemonSet::default();
        d.metadata.name = Some("loader".into());
        d.metadata.namespace = Some("kmm".into());
        d.metadata.uid = Some("u1".into());
        d.metadata.generation = Some(4);
        d.spec = Some(DaemonSetSpec {
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(BTreeMap::from([("app".to_string(), "loader".to_string())])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    node_selector: Some(
                        node_selector
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    ),
                    ..Default::default()
                }),
            },
            ..Default::default()
        });
        d
    }

    fn running(d: &DaemonSet, node: &str, hash: &str, ready: bool) -> Pod {
        let mut p = pod_for(d, node, hash);
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    #[test]
    fn pod_is_named_after_set_and_node_and_owned_by_the_set() {
        let d = ds(&[]);
        let p = pod_for(&d, "node-1", "abc");
        assert_eq!(p.name_any(), "loader-node-1");
        assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("node-1"));
        assert_eq!(p.labels().get("app").map(String::as_str), Some("loader"));
        assert_eq!(p.labels().get(REVISION_LABEL).map(String::as_str), Some("abc"));
        assert!(controlled_by(&p, "u1"));
        assert!(!controlled_by(&p, "u2"));
    }

    #[test]
    fn template_change_changes_the_hash() {
        let a = ds(&[("kmm", "yes")]);
        let b = ds(&[("kmm", "no")]);
        assert_eq!(template_hash(&a), template_hash(&a.clone()));
        assert_ne!(template_hash(&a), template_hash(&b));
    }

    #[test]
    fn status_counts_scheduled_ready_updated_and_misscheduled() {
        let d = ds(&[]);
        let nodes = vec!["n1".to_string(), "n2".to_string(), "n3".to_string()];
        let pods = vec![
            running(&d, "n1", "h", true),
            running(&d, "n2", "old", false),
            running(&d, "gone", "h", true),
        ];
        let s = status(&d, &nodes, &pods, "h");
        assert_eq!(s.desired_number_scheduled, 3);
        assert_eq!(s.current_number_scheduled, 2);
        assert_eq!(s.number_misscheduled, 1);
        assert_eq!(s.number_ready, 1);
        assert_eq!(s.number_available, Some(1));
        assert_eq!(s.number_unavailable, Some(2));
        assert_eq!(s.updated_number_scheduled, Some(1));
        assert_eq!(s.observed_generation, Some(4));
    }

    #[test]
    fn node_selector_needs_every_label() {
        let mut n = Node::default();
        n.metadata.labels = Some(BTreeMap::from([
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
        ]));
        assert!(node_matches(&n, &BTreeMap::new()));
        assert!(node_matches(
            &n,
            &BTreeMap::from([("a".to_string(), "1".to_string())])
        ));
        assert!(!node_matches(
            &n,
            &BTreeMap::from([("a".to_string(), "2".to_string())])
        ));
        assert!(!node_matches(
            &n,
            &BTreeMap::from([("c".to_string(), "1".to_string())])
        ));
    }
}
