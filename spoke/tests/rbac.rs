//! The spoke's RBAC: `manifests/spoke/rbac.yaml` is what `kmm-spoke rbac` renders from
//! `spoke/src/rbac.rs`, and the real `kmm-spoke run` process, authenticated as the spoke's
//! ServiceAccount against the simulator, makes no request that file does not grant.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};

use common::*;
use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Node};
use kmm_agents::{Kubelet, KubeletOptions, KubeletScript, Outcome, PodMatcher};
use kmm_api::{Module, labels};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::json;

const SPOKE_USER: &str = "system:serviceaccount:kmm-operator-system:kmm-spoke";

const MODULE: &str = r#"
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: kmm-ci, namespace: drivers}
spec:
  selector: {role: gpu}
  moduleLoader:
    container:
      modprobe: {moduleName: kmm_ci_a}
      kernelMappings:
        - regexp: '^.+$'
          containerImage: registry.example/kmm-ci@sha256:1111111111111111111111111111111111111111111111111111111111111111
  devicePlugin:
    container: {image: registry.example/plugin:1}
"#;

#[test]
fn the_committed_rbac_is_what_the_code_renders() {
    let out = Command::new(env!("CARGO_BIN_EXE_kmm-spoke"))
        .arg("rbac")
        .output()
        .expect("kmm-spoke runs");
    assert!(out.status.success());
    let rendered = String::from_utf8(out.stdout).unwrap();
    let committed = std::fs::read_to_string(format!("{ROOT}/manifests/spoke/rbac.yaml")).unwrap_or_default();
    assert!(
        rendered == committed,
        "manifests/spoke/rbac.yaml is missing or stale: run `just gen` and commit the result"
    );
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn has(records: &[kmm_sim::AuditRecord], verb: &str, resource: &str) -> bool {
    records
        .iter()
        .any(|r| r.user == SPOKE_USER && r.verb == verb && r.resource_path() == resource)
}

/// Worker pods (one fails once), node labels, the device plugin, a node that stops matching, the
/// kernel claim, a Module deleted: every request `kmm-spoke run` made as its ServiceAccount must
/// be granted by the kustomization's RBAC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_of_the_spoke_is_granted_by_its_rbac() {
    let sim = kmm_sim::Sim::new().unwrap();
    let cluster = spoke_cluster(&sim, "spoke-rbac").await;
    let client = cluster.client();
    mk_node(&client, "node-a", K_DEBIAN, &[("role", "gpu")]).await;
    mk_node(&client, "node-b", K_RHEL, &[("role", "gpu")]).await;
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

    let kubeconfig = cluster.kubeconfig_as(SPOKE_USER).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = sim.dir().join("kmm-spoke-rbac.log");
    let _spoke = Process(
        Command::new(env!("CARGO_BIN_EXE_kmm-spoke"))
            .args(["run", "--worker-backoff-ms", "100"])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", &kubeconfig)
            .env("KMM_MANAGED", "1")
            .env("OPERATOR_NAMESPACE", "kmm-operator-system")
            .env("RELATED_IMAGE_WORKER", "quay.io/kmm-fleet/kmm-spoke:latest")
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    cluster.apply_yaml(MODULE).unwrap();

    let ready = labels::module_ready("drivers", "kmm-ci");
    for node in ["node-a", "node-b"] {
        eventually(&format!("{node} labelled ready"), || async {
            node_labels(&client, node).await.contains_key(&ready)
        })
        .await;
    }
    eventually("the device plugin DaemonSet", || async {
        !Api::<DaemonSet>::namespaced(client.clone(), "drivers")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    })
    .await;
    Api::<Node>::all(client.clone())
        .patch(
            "node-b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"role": "other"}}})),
        )
        .await
        .unwrap();
    eventually("node-b unloaded", || async {
        !node_labels(&client, "node-b").await.contains_key(&ready)
    })
    .await;
    Api::<Module>::namespaced(client.clone(), "drivers")
        .delete("kmm-ci", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the Module is gone", || async {
        Api::<Module>::namespaced(client.clone(), "drivers")
            .get_opt("kmm-ci")
            .await
            .unwrap()
            .is_none()
    })
    .await;
    eventually("the kernel claim was written", || async {
        has(&cluster.audit(), "create", "clusterclaims")
    })
    .await;
    drop(_spoke);

    let out = Command::new("kubectl")
        .args(["kustomize", &format!("{ROOT}/manifests/spoke")])
        .output()
        .expect("kubectl runs (scripts/test-deps installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let docs = kmm_sim::parse_documents(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let grants = kmm_sim::audit::grants_for(&docs, SPOKE_USER);
    assert!(
        !grants.is_empty(),
        "the kustomization binds roles to {SPOKE_USER}"
    );
    let records = cluster.audit();
    let result = kmm_sim::audit::check(&records, SPOKE_USER, &grants);
    for u in &result.unused {
        println!("granted but not used in this scenario: {u}");
    }
    let denied: Vec<String> = result.denied.iter().map(ToString::to_string).collect();
    assert!(
        denied.is_empty(),
        "requests the spoke's RBAC does not grant (add them to spoke/src/rbac.rs, then `just gen`):\n{}\n--- log ---\n{}",
        denied.join("\n"),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    for (verb, resource) in [
        ("watch", "modules"),
        ("patch", "modules"),
        ("patch", "modules/status"),
        ("create", "nodemodulesconfigs"),
        ("patch", "nodemodulesconfigs/status"),
        ("patch", "nodes"),
        ("create", "pods"),
        ("delete", "pods"),
        ("create", "daemonsets"),
        ("create", "clusterclaims"),
        ("create", "events"),
    ] {
        assert!(
            has(&records, verb, resource),
            "the spoke never did {verb} {resource} in the scenario"
        );
    }
    println!("{} requests of {SPOKE_USER} checked", result.checked);
}
