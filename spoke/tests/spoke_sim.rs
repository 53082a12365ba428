//! kmm-spoke's controllers against the kmm-sim API server and the kmm-agents kubelet.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

use std::{collections::BTreeMap, future::Future, time::Duration};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Node, Pod},
    events::v1::Event,
};
use kmm_agents::{Kubelet, KubeletOptions, KubeletScript, Outcome, PodMatcher};
use kmm_api::{Module, labels, nmc::NodeModulesConfig};
use kmm_spoke::{cli::run_with, context::Settings, node_controller::desired::NodeSettings};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

const K_DEBIAN: &str = "6.1.0-18-cloud-amd64";
const K_RHEL: &str = "5.14.0-70.el9.x86_64";

async fn mk_node(client: &Client, name: &str, kernel: &str, node_labels: &[(&str, &str)]) {
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

async fn eventually<F, Fut>(what: &str, check: F)
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

fn settings() -> Settings {
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

struct Spoke {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

fn start_spoke(client: &Client) -> Spoke {
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let client = client.clone();
    let task = tokio::spawn(async move {
        run_with(client, settings(), async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Spoke { stop, task }
}

impl Spoke {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

async fn node_labels(client: &Client, name: &str) -> BTreeMap<String, String> {
    Api::<Node>::all(client.clone())
        .get(name)
        .await
        .unwrap()
        .labels()
        .clone()
}

async fn nmc(client: &Client, name: &str) -> Option<NodeModulesConfig> {
    Api::<NodeModulesConfig>::all(client.clone())
        .get_opt(name)
        .await
        .unwrap()
}

fn loaded(nmc: &Option<NodeModulesConfig>) -> usize {
    nmc.as_ref()
        .and_then(|n| n.status.as_ref())
        .map(|s| s.modules.len())
        .unwrap_or(0)
}

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
    let sim = kmm_sim::Sim::new().unwrap();
    let cluster = sim.add_cluster("spoke-1").await.unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    cluster
        .install_crds_from_path(format!("{root}/manifests/crds/modules.kmm.sigs.x-k8s.io.yaml"))
        .unwrap();
    cluster
        .install_crds_from_path(format!(
            "{root}/manifests/crds/nodemodulesconfigs.kmm.sigs.x-k8s.io.yaml"
        ))
        .unwrap();
    cluster
        .install_crds_from_path(
            "/work/shared/reference/ocm-crds/0000_02_clusters.open-cluster-management.io_clusterclaims.crd.yaml",
        )
        .unwrap();
    cluster
        .apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: drivers}\n")
        .unwrap();
    let client = cluster.client();
    mk_node(&client, "node-a", K_DEBIAN, &[("role", "gpu")]).await;
    mk_node(&client, "node-b", K_RHEL, &[("role", "gpu")]).await;
    mk_node(&client, "node-c", K_DEBIAN, &[("role", "other")]).await;

    // The first worker on node-b fails; the retry succeeds.
    let script = KubeletScript::new().rule(
        PodMatcher::any().name_prefix("kmm-worker-node-b-"),
        [
            Outcome::failed(1, "modprobe: FATAL: Module kmm_ci_a not found"),
            Outcome::Succeeded,
        ],
    );
    let _kubelet = Kubelet::spawn(
        client.clone(),
        KubeletOptions {
            script,
            ..Default::default()
        },
    );
    let spoke = start_spoke(&client);
    cluster.apply_yaml(MODULE).unwrap();

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
    assert_eq!(
        record.status.as_ref().unwrap().modules[0].boot_id.as_deref(),
        Some("boot-node-b")
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
    let spoke = start_spoke(&client);
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
