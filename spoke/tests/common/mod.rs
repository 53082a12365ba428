//! Helpers shared by the simulator tests.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // test helpers: a panic is a failed test

pub mod kmod;

use std::{collections::BTreeMap, future::Future, time::Duration};

use k8s_openapi::api::core::v1::Node;
use kmm_api::nmc::NodeModulesConfig;
use kmm_sim::SimCluster;
use kmm_spoke::{cli::run_with, context::Settings, node_controller::desired::NodeSettings};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
pub const CLAIM_CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/reference/ocm-crds/0000_02_clusters.open-cluster-management.io_clusterclaims.crd.yaml"
);

/// A cluster with the spoke CRDs, OCM's ClusterClaim CRD and the namespace `drivers`.
pub async fn spoke_cluster(sim: &kmm_sim::Sim, name: &str) -> SimCluster {
    let cluster = sim.add_cluster(name).await.unwrap();
    for crd in [
        "modules.kmm.sigs.x-k8s.io.yaml",
        "nodemodulesconfigs.kmm.sigs.x-k8s.io.yaml",
    ] {
        cluster
            .install_crds_from_path(format!("{ROOT}/manifests/crds/{crd}"))
            .unwrap();
    }
    cluster.install_crds_from_path(CLAIM_CRD).unwrap();
    cluster
        .apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: drivers}\n")
        .unwrap();
    cluster
}

pub const K_DEBIAN: &str = "6.1.0-18-cloud-amd64";
pub const K_RHEL: &str = "5.14.0-70.el9.x86_64";

pub async fn mk_node(client: &Client, name: &str, kernel: &str, node_labels: &[(&str, &str)]) {
    let api = Api::<Node>::all(client.clone());
    let labels: BTreeMap<_, _> = node_labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
    api.create(&PostParams::default(), &node).await.unwrap();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"nodeInfo": {
            "kernelVersion": kernel, "bootID": format!("boot-{name}"), "machineID": "", "systemUUID": "",
            "kubeProxyVersion": "", "kubeletVersion": "", "osImage": "", "containerRuntimeVersion": "",
            "operatingSystem": "linux", "architecture": "amd64"}}})),
    )
    .await
    .unwrap();
}

pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    // A bound so a broken controller fails the test instead of hanging it; not a speed check.
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}

pub fn settings() -> Settings {
    Settings {
        node: NodeSettings {
            operator_namespace: "kmm-operator-system".into(),
            backoff_base: Duration::from_millis(100),
            ..Default::default()
        },
        resync: Duration::from_secs(600),
        ..Default::default()
    }
}

pub struct Spoke {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

pub fn start_spoke(client: &Client) -> Spoke {
    start_spoke_with(client, settings())
}

pub fn start_spoke_with(client: &Client, settings: Settings) -> Spoke {
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let client = client.clone();
    let task = tokio::spawn(async move {
        run_with(client, settings, None, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Spoke { stop, task }
}

impl Spoke {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

pub async fn node_labels(client: &Client, name: &str) -> BTreeMap<String, String> {
    Api::<Node>::all(client.clone())
        .get(name)
        .await
        .unwrap()
        .labels()
        .clone()
}

pub async fn nmc(client: &Client, name: &str) -> Option<NodeModulesConfig> {
    Api::<NodeModulesConfig>::all(client.clone())
        .get_opt(name)
        .await
        .unwrap()
}

pub fn loaded(nmc: &Option<NodeModulesConfig>) -> usize {
    nmc.as_ref()
        .and_then(|n| n.status.as_ref())
        .map(|s| s.modules.len())
        .unwrap_or(0)
}

/// Sets a node's kernel (an upgrade, or the kubelet reporting it for the first time).
pub async fn set_kernel(client: &Client, name: &str, kernel: &str) {
    Api::<Node>::all(client.clone())
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"nodeInfo": {"kernelVersion": kernel}}})),
        )
        .await
        .unwrap();
}

/// Sets (`Some`) or removes (`None`) node labels.
pub async fn label_node(client: &Client, name: &str, labels: &[(&str, Option<&str>)]) {
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.map_or(serde_json::Value::Null, |v| json!(v))))
        .collect();
    Api::<Node>::all(client.clone())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": labels}})),
        )
        .await
        .unwrap();
}
