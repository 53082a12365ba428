//! kmm-spoke's controllers on a real control plane (kube-apiserver, etcd, kube-controller-manager
//! running the device plugin DaemonSets and garbage collection, kube-scheduler binding their
//! pods), as its ServiceAccount, with the kmm-agents kubelet running the pods of its nodes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod common;

use common::*;
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Node, Pod},
    events::v1::Event,
};
use kmm_agents::{KubeletOptions, KubeletScript, NodeRegistration, Outcome, PodMatcher};
use kmm_api::{Module, labels};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::json;

const MODULE: &str = r#"
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: kmm-ci, namespace: drivers}
spec:
  selector: {role: gpu}
  imageRepoSecret: {name: pull}
  moduleLoader:
    container:
      modprobe: {moduleName: kmm_ci_a}
      build:
        dockerfileConfigMap: {name: dockerfile}
      kernelMappings:
        - literal: 6.1.0-18-cloud-amd64
          containerImage: registry.example/kmm-ci@sha256:1111111111111111111111111111111111111111111111111111111111111111
        - regexp: '^5\.14.*el9'
          containerImage: registry.example/kmm-ci@sha256:2222222222222222222222222222222222222222222222222222222222222222
  devicePlugin:
    container: {image: registry.example/plugin:1}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_unloads_and_survives_a_restart() {
    // The first worker on node-b fails; the retry succeeds.
    let script = KubeletScript::new().rule(
        PodMatcher::any().name_prefix("kmm-worker-node-b-"),
        [
            Outcome::failed(1, "modprobe: FATAL: Module kmm_ci_a not found"),
            Outcome::Succeeded,
        ],
    );
    let cluster = spoke_cluster(
        "loads-unloads",
        Setup {
            nodes: vec![
                NodeRegistration::new("node-a", K_DEBIAN).label("role", "gpu"),
                NodeRegistration::new("node-b", K_RHEL).label("role", "gpu"),
                NodeRegistration::new("node-c", K_DEBIAN).label("role", "other"),
            ],
            kubelet: KubeletOptions {
                script,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let client = cluster.client();
    let spoke = start_spoke(&cluster);
    cluster.apply_yaml(MODULE).await;

    let ready = labels::module_ready("drivers", "kmm-ci");
    for node in ["node-a", "node-b"] {
        eventually(&format!("{node} labelled ready"), || async {
            node_labels(&client, node).await.contains_key(&ready)
        })
        .await;
    }
    assert!(!node_labels(&client, "node-c").await.contains_key(&ready));
    let record = nmc(&client, "node-b").await.unwrap();
    assert_eq!(record.spec.modules.len(), 1);
    assert_eq!(
        record.spec.modules[0].config.container_image,
        "registry.example/kmm-ci@sha256:2222222222222222222222222222222222222222222222222222222222222222"
    );
    let boot_id = Api::<Node>::all(client.clone())
        .get("node-b")
        .await
        .unwrap()
        .status
        .unwrap()
        .node_info
        .unwrap()
        .boot_id;
    assert_eq!(
        record.status.as_ref().unwrap().modules[0].boot_id.as_deref(),
        Some(boot_id.as_str()),
        "the load is recorded against the boot the kubelet reports"
    );
    let events = Api::<Event>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert!(
        events.iter().any(|e| e.reason.as_deref() == Some("WorkerFailed")
            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("node-b")
            && e.note.as_deref().is_some_and(|m| m.contains("not found"))),
        "a WorkerFailed event names the failure"
    );
    // Finished worker pods are gone once read back.
    eventually("worker pods cleaned up", || async {
        Api::<Pod>::namespaced(client.clone(), "drivers")
            .list(&ListParams::default().labels("kmm.node.kubernetes.io/worker-action"))
            .await
            .unwrap()
            .items
            .is_empty()
    })
    .await;

    // Status, the managed-mode condition, and the device plugin only where the module is loaded.
    let modules = Api::<Module>::namespaced(client.clone(), "drivers");
    eventually("module status counts", || async {
        let m = modules.get("kmm-ci").await.unwrap();
        let s = m.status.unwrap_or_default();
        s.module_loader.is_some_and(|l| {
            l.desired_number == 2 && l.available_number == 2 && l.nodes_matching_selector_number == 2
        }) && s
            .conditions
            .iter()
            .any(|c| c.type_ == "BuildSignIgnored" && c.status == "True")
    })
    .await;
    let plugin_nodes = || async {
        let mut nodes: Vec<String> = Api::<Pod>::namespaced(client.clone(), "drivers")
            .list(&ListParams::default().labels("kmm.node.kubernetes.io/role=device-plugin"))
            .await
            .unwrap()
            .items
            .iter()
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect();
        nodes.sort();
        nodes
    };
    eventually("device plugin on loaded nodes", || async {
        plugin_nodes().await == ["node-a", "node-b"]
    })
    .await;

    // node-b relabelled out: unloaded, ready label gone, plugin gone.
    Api::<Node>::all(client.clone())
        .patch(
            "node-b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"role": "other"}}})),
        )
        .await
        .unwrap();
    eventually("node-b unloaded", || async {
        loaded(&nmc(&client, "node-b").await) == 0
            && !node_labels(&client, "node-b").await.contains_key(&ready)
    })
    .await;
    eventually("device plugin left node-b", || async {
        plugin_nodes().await == ["node-a"]
    })
    .await;

    // Restart the spoke, delete the Module while it is down: the new spoke unloads node-a.
    spoke.stop().await;
    modules.delete("kmm-ci", &DeleteParams::default()).await.unwrap();
    assert!(
        modules.get_opt("kmm-ci").await.unwrap().is_some(),
        "the finalizer holds the Module"
    );
    let spoke = start_spoke(&cluster);
    eventually("node-a unloaded after the restart", || async {
        loaded(&nmc(&client, "node-a").await) == 0
            && !node_labels(&client, "node-a").await.contains_key(&ready)
    })
    .await;
    eventually("Module released", || async {
        modules.get_opt("kmm-ci").await.unwrap().is_none()
    })
    .await;
    let ds = Api::<DaemonSet>::namespaced(client.clone(), "drivers")
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(ds.items.is_empty(), "device plugin DaemonSet removed");

    spoke.stop().await;
}
