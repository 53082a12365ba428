//! Helpers shared by the spoke's tests on a real control plane (`kmm_fleet_tests::controlplane`:
//! etcd, kube-apiserver, kube-controller-manager and kube-scheduler), with the kmm-agents kubelet
//! registering the Nodes and running the pods bound to them. kmm-spoke always runs as its
//! ServiceAccount with the RBAC of `manifests/spoke`, so the apiserver decides what it may do.

// Test helpers: a panic is a failed test; each test binary uses a part of them (and of the
// re-exports its `use common::*` brings).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unused_imports)]

pub mod kmod;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use k8s_openapi::api::core::v1::{Node, Pod};
use kmm_agents::{AgentHandle, Kubelet, KubeletOptions, NodeControl, NodeRegistration, Outcome, PodMatcher};
use kmm_api::nmc::NodeModulesConfig;
pub use kmm_fleet_tests::nodes::{node_ready, node_tainted};
use kmm_fleet_tests::{
    controlplane::{self, AuditEvent, ControlPlane, Options},
    fleet,
};
use kmm_spoke::{cli::run_with, context::Settings, node_controller::desired::NodeSettings};
pub use kmm_test_kit::{eventually, repo_root};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

/// The user kmm-spoke's ServiceAccount token authenticates as.
pub const SPOKE_USER: &str = "system:serviceaccount:kmm-operator-system:kmm-spoke";

pub const K_DEBIAN: &str = "6.1.0-18-cloud-amd64";
pub const K_RHEL: &str = "5.14.0-70.el9.x86_64";

/// What a test's cluster holds besides the control plane.
pub struct Setup {
    /// Nodes the kubelet registers (and keeps Ready).
    pub nodes: Vec<NodeRegistration>,
    /// The kubelet's options; `nodes`, `node_control`, `daemonsets` and `jobs` are set here.
    pub kubelet: KubeletOptions,
    /// Install OCM's ClusterClaim CRD (kmm-spoke writes the kernel claim).
    pub claim_crd: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            kubelet: KubeletOptions::default(),
            claim_crd: true,
        }
    }
}

impl Setup {
    /// A cluster whose kubelet registers `nodes`.
    pub fn with_nodes(nodes: impl IntoIterator<Item = NodeRegistration>) -> Self {
        Self {
            nodes: nodes.into_iter().collect(),
            ..Self::default()
        }
    }

    /// The worker pods on `node` (`kmm-worker-<node>-...`) end with `outcomes`, one per pod in
    /// order.
    pub fn workers_on(mut self, node: &str, outcomes: impl IntoIterator<Item = Outcome>) -> Self {
        self.kubelet.script = std::mem::take(&mut self.kubelet.script).rule(
            PodMatcher::any().name_prefix(&format!("kmm-worker-{node}-")),
            outcomes,
        );
        self
    }
}

/// A worker's outcomes: the first fails as modprobe does without the module, the retry succeeds.
pub fn first_fails() -> [Outcome; 2] {
    [
        Outcome::failed(1, "modprobe: FATAL: Module kmm_ci_a not found"),
        Outcome::Succeeded,
    ]
}

/// A node running `kernel`, labelled `role=gpu` (what the tests' Modules select).
pub fn gpu_node(name: &str, kernel: &str) -> NodeRegistration {
    NodeRegistration::new(name, kernel).label("role", "gpu")
}

/// The tests' Module `drivers/kmm-ci`: `kmm_ci_a` from `image` on every kernel of the `role=gpu`
/// nodes, with `version` (ordered upgrades) and the device plugin `registry.example/plugin:1`
/// when asked.
pub fn ci_module(image: &str, version: Option<&str>, device_plugin: bool) -> String {
    let version = version
        .map(|v| format!("      version: {v}\n"))
        .unwrap_or_default();
    let plugin = if device_plugin {
        "  devicePlugin:\n    container: {image: registry.example/plugin:1}\n"
    } else {
        ""
    };
    format!(
        r#"apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {{name: kmm-ci, namespace: drivers}}
spec:
  selector: {{role: gpu}}
  moduleLoader:
    container:
{version}      modprobe: {{moduleName: kmm_ci_a}}
      kernelMappings:
        - regexp: '.*'
          containerImage: {image}
{plugin}"#
    )
}

/// One spoke cluster on a real control plane. Fields drop in order: the kubelet stops before
/// the control plane.
pub struct SpokeCluster {
    pub kubelet: Option<AgentHandle>,
    /// Takes nodes down (a dead kubelet) and up.
    pub node_control: NodeControl,
    /// kmm-spoke's ServiceAccount kubeconfig (a TokenRequest token).
    pub spoke_kubeconfig: PathBuf,
    /// A client as kmm-spoke's ServiceAccount.
    pub spoke_client: Client,
    pub cp: ControlPlane,
}

/// Serializes the tests of one test binary: each starts a control plane (about 900 MB and most
/// of a core while it starts), and the machine runs other tests' control planes too. Hold the
/// guard for the whole test.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A fresh folder for a test's control plane, under cargo's target tmp dir.
pub fn test_dir(name: &str) -> PathBuf {
    kmm_fleet_tests::scratch_dir(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("spoke-{name}")))
}

/// A control plane with the spoke CRDs (and OCM's ClusterClaim CRD unless told otherwise),
/// kmm-spoke's Namespace, ServiceAccounts and RBAC from `manifests/spoke`, the namespace
/// `drivers` (with its `default` ServiceAccount, which worker pods run as) and a kubelet for
/// `setup.nodes`, each registered Ready and without a not-ready taint.
pub async fn spoke_cluster(name: &str, setup: Setup) -> SpokeCluster {
    let cp = ControlPlane::start(&test_dir(name), "spoke", Options::default())
        .await
        .expect("control plane starts");
    let root = repo_root();
    for crd in [
        "modules.kmm.sigs.x-k8s.io.yaml",
        "nodemodulesconfigs.kmm.sigs.x-k8s.io.yaml",
    ] {
        cp.install_crds_from_path(kmm_test_kit::crds_dir().join(crd))
            .await
            .unwrap();
    }
    if setup.claim_crd {
        install_claim_crd(&cp).await;
    }
    let spoke_kubeconfig = fleet::install_service_account(&cp, &root.join("manifests/spoke"))
        .await
        .expect("kmm-spoke's ServiceAccount and RBAC");
    let spoke_client = controlplane::client_from(&spoke_kubeconfig).await.unwrap();
    cp.apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: drivers}\n")
        .await
        .unwrap();
    cp.wait_for_default_service_account("drivers").await.unwrap();
    let node_control = NodeControl::default();
    let kubelet = (!setup.nodes.is_empty() || setup.kubelet.log_sink.is_some()).then(|| {
        Kubelet::spawn(
            cp.client(),
            KubeletOptions {
                nodes: setup.nodes.clone(),
                node_control: Some(node_control.clone()),
                daemonsets: false,
                jobs: false,
                ..setup.kubelet
            },
        )
    });
    let cluster = SpokeCluster {
        kubelet,
        node_control,
        spoke_kubeconfig,
        spoke_client,
        cp,
    };
    for node in &setup.nodes {
        cluster.cp.wait_node_ready(&node.name).await.unwrap();
    }
    cluster
}

/// OCM's ClusterClaim CRD, as `scripts/controlplane-build` copies it from the OCM API module.
pub async fn install_claim_crd(cp: &ControlPlane) {
    let dir = kmm_test_kit::ocm_crds().unwrap().join("spoke");
    cp.install_crds_from_path(dir.join("0000_02_clusters.open-cluster-management.io_clusterclaims.crd.yaml"))
        .await
        .unwrap();
}

impl SpokeCluster {
    /// An admin client.
    pub fn client(&self) -> Client {
        self.cp.client()
    }

    /// Server-side applies YAML as the admin.
    pub async fn apply_yaml(&self, text: &str) {
        self.cp.apply_yaml(text).await.unwrap();
    }

    /// Every request the apiserver recorded for kmm-spoke's ServiceAccount.
    pub async fn spoke_requests(&self) -> Vec<AuditEvent> {
        self.cp
            .audit_settled()
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.user.username == SPOKE_USER)
            .collect()
    }

    /// The writes kmm-spoke's ServiceAccount made to `resource` (not its subresources) so far,
    /// from the audit log once its batches are written.
    pub async fn spoke_writes(&self, resource: &str) -> usize {
        self.cp
            .audit_settled()
            .await
            .unwrap()
            .iter()
            .filter(|e| {
                e.user.username == SPOKE_USER
                    && e.is_write()
                    && e.resource() == resource
                    && e.subresource().is_empty()
            })
            .count()
    }
}

/// A Node without a kubelet: created and given a kernel by the admin (enough for what reads
/// only `nodeInfo`, like the kernel claim writer).
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

/// How long a wait on a real control plane may take: a bound so a broken controller fails the
/// test instead of hanging it, not a speed check.
pub const WAIT: Duration = Duration::from_secs(120);

pub fn settings() -> Settings {
    Settings {
        node: NodeSettings {
            operator_namespace: "kmm-operator-system".into(),
            backoff_base: Duration::from_millis(100),
            ..Default::default()
        },
        resync: Duration::from_secs(600),
        concurrency: 8,
        ..Default::default()
    }
}

/// kmm-spoke's controllers running in this test process (`run_with`) as its ServiceAccount.
pub struct Spoke {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

pub fn start_spoke(cluster: &SpokeCluster) -> Spoke {
    start_spoke_with(cluster, settings())
}

pub fn start_spoke_with(cluster: &SpokeCluster, settings: Settings) -> Spoke {
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let client = cluster.spoke_client.clone();
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

    /// Whether the controllers still run (a panic ends the task).
    pub fn running(&self) -> bool {
        !self.task.is_finished()
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

/// Whether `node`'s NodeModulesConfig reports a module loaded from `image`.
pub async fn loaded_with(client: &Client, node: &str, image: &str) -> bool {
    nmc(client, node).await.and_then(|n| n.status).is_some_and(|s| {
        s.modules
            .iter()
            .any(|m| m.config.as_ref().is_some_and(|c| c.container_image == image))
    })
}

pub fn loaded(nmc: &Option<NodeModulesConfig>) -> usize {
    nmc.as_ref()
        .and_then(|n| n.status.as_ref())
        .map(|s| s.modules.len())
        .unwrap_or(0)
}

/// The worker pods in `drivers`.
pub async fn worker_pods(client: &Client) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), "drivers")
        .list(&ListParams::default().labels("kmm.node.kubernetes.io/worker-action"))
        .await
        .unwrap()
        .items
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
