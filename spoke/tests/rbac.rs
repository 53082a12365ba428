//! The spoke's RBAC: `manifests/spoke/rbac.yaml` is what `kmm-spoke rbac` renders from
//! `spoke/src/rbac.rs`, and the real `kmm-spoke run` process, authenticated as the spoke's
//! ServiceAccount (a TokenRequest token) on a real control plane whose RBAC is exactly what the
//! kustomization installs, is refused nothing: the apiserver's own audit log decides.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{collections::BTreeSet, process::Command};

use common::*;
use k8s_openapi::api::apps::v1::DaemonSet;
use kmm_api::{Module, labels};
use kmm_fleet_tests::{
    controlplane::AuditEvent,
    manifests,
    process::{Launch, Process},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams},
};
use serde_json::Value;

const IMAGE: &str =
    "registry.example/kmm-ci@sha256:1111111111111111111111111111111111111111111111111111111111111111";

#[test]
fn the_committed_rbac_is_what_the_code_renders() {
    let out = Command::new(env!("CARGO_BIN_EXE_kmm-spoke"))
        .arg("rbac")
        .output()
        .expect("kmm-spoke runs");
    assert!(out.status.success());
    let rendered = String::from_utf8(out.stdout).unwrap();
    let committed =
        std::fs::read_to_string(repo_root().join("manifests/spoke/rbac.yaml")).unwrap_or_default();
    assert!(
        rendered == committed,
        "manifests/spoke/rbac.yaml is missing or stale: run `just gen` and commit the result"
    );
}

/// `resource` or `resource/subresource` of an audit record.
fn resource_path(e: &AuditEvent) -> String {
    match e.subresource() {
        "" => e.resource().to_owned(),
        sub => format!("{}/{sub}", e.resource()),
    }
}

/// Whether the spoke did `verb` on `resource` and the apiserver answered 2xx. `create` also
/// counts a server-side apply that created the object (a `patch` answered 201, which the
/// apiserver authorizes as a create too).
fn did(records: &[AuditEvent], verb: &str, resource: &str) -> bool {
    records.iter().any(|e| {
        let verb_matches = e.verb == verb || (verb == "create" && e.verb == "patch" && e.code() == 201);
        verb_matches && resource_path(e) == resource && (200..300).contains(&e.code())
    })
}

/// `(verb, resource)` pairs the kustomization grants kmm-spoke's ServiceAccount through its
/// ClusterRoleBindings and RoleBindings.
fn grants(docs: &[Value]) -> BTreeSet<(String, String)> {
    let (sa_ns, sa_name) = SPOKE_USER
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
        .unwrap();
    let mut out = BTreeSet::new();
    for binding in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
    {
        let bound = binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["kind"] == "ServiceAccount" && s["name"] == sa_name && s["namespace"] == sa_ns);
        if !bound {
            continue;
        }
        let role_ref = &binding["roleRef"];
        let Some(role) = docs
            .iter()
            .find(|d| d["kind"] == role_ref["kind"] && d["metadata"]["name"] == role_ref["name"])
        else {
            continue;
        };
        for rule in role["rules"].as_array().into_iter().flatten() {
            for resource in rule["resources"].as_array().into_iter().flatten() {
                for verb in rule["verbs"].as_array().into_iter().flatten() {
                    out.insert((
                        verb.as_str().unwrap().to_owned(),
                        resource.as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
    }
    out
}

/// Worker pods (one fails once), node labels, the device plugin, a node that stops matching, the
/// kernel claim, a Module deleted: every request `kmm-spoke run` made as its ServiceAccount must
/// be allowed by the RBAC the kustomization installed, and each kind of write it needs must have
/// succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_of_the_spoke_is_granted_by_its_rbac() {
    let setup = Setup::with_nodes([gpu_node("node-a", K_DEBIAN), gpu_node("node-b", K_RHEL)])
        .workers_on("node-b", first_fails());
    let cluster = spoke_cluster("rbac", setup).await;
    let client = cluster.client();
    let mut spoke = Process::start(Launch {
        binary: "kmm-spoke",
        args: ["run", "--worker-backoff-ms", "100"].map(str::to_owned).to_vec(),
        kubeconfig: &cluster.spoke_kubeconfig,
        dir: cluster.cp.dir(),
        name: "kmm-spoke-rbac",
        env: [
            ("KMM_MANAGED", "1"),
            ("OPERATOR_NAMESPACE", "kmm-operator-system"),
            ("RELATED_IMAGE_WORKER", "quay.io/kmm-fleet/kmm-spoke:latest"),
            ("POD_NAME", "kmm-spoke-rbac"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec(),
    })
    .unwrap();
    cluster.apply_yaml(&ci_module(IMAGE, None, true)).await;

    let ready = labels::module_ready("drivers", "kmm-ci");
    for node in ["node-a", "node-b"] {
        eventually(&format!("{node} labelled ready"), WAIT, || async {
            node_labels(&client, node).await.contains_key(&ready)
        })
        .await;
    }
    eventually("the device plugin DaemonSet", WAIT, || async {
        !Api::<DaemonSet>::namespaced(client.clone(), "drivers")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    })
    .await;
    label_node(&client, "node-b", &[("role", Some("other"))]).await;
    eventually("node-b unloaded", WAIT, || async {
        !node_labels(&client, "node-b").await.contains_key(&ready)
    })
    .await;
    Api::<Module>::namespaced(client.clone(), "drivers")
        .delete("kmm-ci", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the Module is gone", WAIT, || async {
        Api::<Module>::namespaced(client.clone(), "drivers")
            .get_opt("kmm-ci")
            .await
            .unwrap()
            .is_none()
    })
    .await;
    eventually("the kernel claim was written", WAIT, || async {
        did(&cluster.spoke_requests().await, "create", "clusterclaims")
    })
    .await;
    assert!(
        spoke.running(),
        "kmm-spoke is still running:\n{}",
        spoke.log_tail(40)
    );
    drop(spoke);

    let records = cluster.spoke_requests().await;
    assert!(!records.is_empty(), "the audit log holds kmm-spoke's requests");
    let refused: Vec<String> = records
        .iter()
        .filter(|e| matches!(e.code(), 400 | 401 | 403 | 422))
        .map(|e| format!("{} {} -> {}", e.verb, e.request_uri, e.code()))
        .collect();
    let log = std::fs::read_to_string(cluster.cp.dir().join("kmm-spoke-rbac.log")).unwrap_or_default();
    assert!(
        refused.is_empty(),
        "the apiserver refused requests of {SPOKE_USER} (a 403: add the right to spoke/src/rbac.rs, \
         then `just gen`):\n{}\n--- log ---\n{log}",
        refused.join("\n"),
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
        ("delete", "daemonsets"),
        ("create", "clusterclaims"),
        ("create", "events"),
    ] {
        assert!(
            did(&records, verb, resource),
            "the spoke never did {verb} {resource} successfully in the scenario\n--- log ---\n{log}"
        );
    }

    let docs = manifests::kustomize(&repo_root().join("manifests/spoke")).unwrap();
    let granted = grants(&docs);
    assert!(
        !granted.is_empty(),
        "the kustomization binds roles to {SPOKE_USER}"
    );
    for (verb, resource) in &granted {
        if !did(&records, verb, resource) {
            println!("granted but not used in this scenario: {verb} {resource}");
        }
    }
    println!("{} requests of {SPOKE_USER} checked", records.len());
}
