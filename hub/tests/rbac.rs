//! The hub's RBAC: `manifests/hub/rbac.yaml` is what `kmm-hub rbac` renders from
//! `hub/src/rbac.rs`, and the real `kmm-hub run`, authenticated with a TokenRequest token of the
//! hub's ServiceAccount against a real hub control plane (RBAC authorizer,
//! `OwnerReferencesPermissionEnforcement`) that holds exactly the Namespace, ServiceAccount and
//! RBAC of `manifests/hub`, is refused nothing: the apiserver decides, and its audit log is the
//! witness. Only the hub is under test: the clusters are ManagedClusters the test creates as
//! admin, with `status.clusterClaims` written through the status subresource (see
//! `support::fleet`); Jobs run on the real Job controller and the kmm-agents kubelet.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{collections::BTreeMap, process::Command, time::Duration};

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{Pod, Secret},
};
use kmm_agents::{Kubelet, KubeletOptions, KubeletScript, NodeRegistration, Outcome, PodMatcher, ScriptRule};
use kmm_api::{ManagedClusterModule, labels::MCM_NAME_LABEL};
use kmm_hub::mcm_controller::desired::job::JOB_TYPE_LABEL;
use kmm_test_kit::repo_root;
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use support::fleet::{ClusterSpec, Fleet, HUB_NAMESPACE, HUB_USER, SPOKE_NAMESPACE, describe, is_on, serial};

const K1: &str = "6.1.0-28-cloud-amd64";
const K2: &str = "6.1.0-29-cloud-amd64";

#[test]
fn the_committed_rbac_is_what_the_code_renders() {
    let out = Command::new(env!("CARGO_BIN_EXE_kmm-hub"))
        .arg("rbac")
        .output()
        .expect("kmm-hub runs");
    assert!(out.status.success());
    let rendered = String::from_utf8(out.stdout).unwrap();
    let committed = std::fs::read_to_string(repo_root().join("manifests/hub/rbac.yaml")).unwrap_or_default();
    assert!(
        rendered == committed,
        "manifests/hub/rbac.yaml is missing or stale: run `just gen` and commit the result"
    );
    assert_eq!(rendered, kmm_hub::rbac::render("kmm-hub", "kmm-hub"));
}

fn mcm_yaml(registry: &str, name: &str, selector: &str, build: bool) -> String {
    let build = if build {
        "            build:\n              dockerfileConfigMap: {name: gpu-dockerfile}\n"
    } else {
        ""
    };
    format!(
        "apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1\nkind: ManagedClusterModule\nmetadata: {{name: {name}}}\n\
         spec:\n  spokeNamespace: {SPOKE_NAMESPACE}\n  selector: {{{selector}}}\n  moduleSpec:\n    selector: {{}}\n\
         \x20   imageRepoSecret: {{name: pull}}\n\
         \x20   moduleLoader:\n      container:\n        modprobe: {{moduleName: gpu_kmod}}\n        kernelMappings:\n\
         \x20         - regexp: '^.+$'\n            containerImage: {registry}/kmm/{name}-kmod:${{KERNEL_FULL_VERSION}}\n\
         \x20           registryTLS: {{insecure: true}}\n{build}"
    )
}

async fn create(fleet: &Fleet, yaml: &str) {
    let mcm: ManagedClusterModule = serde_saphyr::from_str(yaml).unwrap();
    fleet.create_mcm(&mcm).await;
}

/// Leader election, two MCMs (one pinned to pushed images with an imageRepoSecret, one whose
/// build fails), a build that succeeds and whose Job is collected, a cluster that stops
/// matching, an MCM deleted: the apiserver refused none of the requests the hub made as its
/// ServiceAccount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_of_the_hub_is_granted_by_its_rbac() {
    let _serial = serial().await;
    let fleet = Fleet::start("rbac").await;
    fleet.add_cluster(&ClusterSpec::prod("a", &[K1])).await;
    fleet.add_cluster(&ClusterSpec::prod("b", &[K1])).await;
    fleet
        .add_cluster(&ClusterSpec {
            name: "c",
            labels: &[("env", "lab")],
            kernels: Some(&[K2]),
        })
        .await;
    fleet
        .add_cluster(&ClusterSpec {
            name: "d",
            labels: &[("env", "built")],
            kernels: Some(&[K2]),
        })
        .await;
    fleet
        .registry
        .push_labelled(&format!("kmm/gpu-kmod:{K1}"))
        .unwrap();
    // The pull secret names another registry, so the local one is used without credentials.
    fleet
        .hub
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: pull, namespace: {HUB_NAMESPACE}, annotations: {{hub.kmm.sigs.x-k8s.io/allowed-modules: \"gpu,lab,ok\"}}}}\n\
             type: kubernetes.io/dockerconfigjson\n\
             data: {{.dockerconfigjson: eyJhdXRocyI6IHsib3RoZXIuZXhhbXBsZSI6IHsiYXV0aCI6ICJkVHB3In19fQ==}}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: gpu-dockerfile, namespace: {HUB_NAMESPACE}}}\n\
             data: {{dockerfile: \"FROM scratch\\n\"}}\n"
        ))
        .await
        .unwrap();
    let fail = ScriptRule {
        matcher: PodMatcher {
            labels: BTreeMap::from([
                (JOB_TYPE_LABEL.to_string(), "build".to_string()),
                (MCM_NAME_LABEL.to_string(), "lab".to_string()),
            ]),
            ..Default::default()
        },
        outcomes: vec![Outcome::failed(2, "make: Error 2")],
    };
    let _kubelet = Kubelet::spawn(
        fleet.hub.client(),
        KubeletOptions {
            nodes: vec![NodeRegistration::new("hub-node", "6.1.0-hub")],
            daemonsets: false,
            jobs: false,
            script: KubeletScript { rules: vec![fail] },
            ..Default::default()
        },
    );

    let hub = fleet.start_hub("hub-0", &[]);
    hub.wait_ready().await;
    create(&fleet, &mcm_yaml(&fleet.registry.host, "gpu", "env: prod", false)).await;
    create(&fleet, &mcm_yaml(&fleet.registry.host, "lab", "env: lab", true)).await;
    hub.wait("works for the prod clusters", Duration::from_secs(120))
        .eventually(|| async {
            fleet.work("a", "gpu").await.is_some() && fleet.work("b", "gpu").await.is_some()
        })
        .await;
    hub.wait("the lab build failed", Duration::from_secs(120))
        .eventually(|| async {
            fleet
                .mcm("lab")
                .await
                .unwrap()
                .status
                .is_some_and(|s| s.problems.iter().any(|p| p.message.contains("make: Error 2")))
        })
        .await;

    // A build that succeeds: once the image is there, the succeeded Job is deleted, and the
    // garbage collector deletes its pod.
    create(&fleet, &mcm_yaml(&fleet.registry.host, "ok", "env: built", true)).await;
    let ok_jobs = || async {
        Api::<Job>::namespaced(fleet.hub.client(), HUB_NAMESPACE)
            .list(&ListParams::default().labels(&format!("{MCM_NAME_LABEL}=ok")))
            .await
            .unwrap()
            .items
            .len()
    };
    let ok_pods = || async {
        Api::<Pod>::namespaced(fleet.hub.client(), HUB_NAMESPACE)
            .list(&ListParams::default().labels(&format!("{MCM_NAME_LABEL}=ok")))
            .await
            .unwrap()
            .items
            .len()
    };
    hub.wait("the ok build Job", Duration::from_secs(120))
        .eventually(|| async { ok_jobs().await == 1 })
        .await;
    fleet
        .registry
        .push_labelled(&format!("kmm/ok-kmod:{K2}"))
        .unwrap();
    hub.wait("d's work and the build Job deleted", Duration::from_secs(120))
        .eventually(|| async { fleet.work("d", "ok").await.is_some() && ok_jobs().await == 0 })
        .await;
    hub.wait(
        "the collected Job's pod garbage-collected",
        Duration::from_secs(120),
    )
    .eventually(|| async { ok_pods().await == 0 })
    .await;

    Api::<kmm_api::ocm::ManagedCluster>::all(fleet.hub.client())
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"env": "dev"}}})),
        )
        .await
        .unwrap();
    hub.wait("b's work removed", Duration::from_secs(120))
        .eventually(|| async { fleet.work("b", "gpu").await.is_none() })
        .await;
    fleet.delete_mcm("gpu").await;
    hub.wait("the MCM is gone", Duration::from_secs(120))
        .eventually(|| async { fleet.mcm("gpu").await.is_none() })
        .await;
    // The leader renews its Lease every 5 s.
    hub.wait("the Lease renewed", Duration::from_secs(60))
        .eventually(|| async {
            fleet
                .hub
                .audit()
                .unwrap()
                .iter()
                .any(|r| r.user.username == HUB_USER && r.verb == "update" && r.resource() == "leases")
        })
        .await;
    drop(hub);
    let records: Vec<_> = fleet
        .audit()
        .await
        .into_iter()
        .filter(|r| r.user.username == HUB_USER)
        .collect();

    // The identity is really confined: what the manifests do not grant is refused.
    let confined = kmm_fleet_tests::controlplane::client_from(&fleet.hub_kubeconfig)
        .await
        .unwrap();
    let err = Api::<Secret>::namespaced(confined, "default")
        .list(&ListParams::default())
        .await
        .expect_err("the hub may not list Secrets in default");
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 403), "{err:?}");

    let denied: Vec<String> = records.iter().filter(|r| r.code() == 403).map(describe).collect();
    assert!(
        denied.is_empty(),
        "requests the hub's RBAC does not grant (add them to hub/src/rbac.rs, then `just gen`):\n{}",
        denied.join("\n")
    );
    // The scenario did exercise what it claims to, as the hub's identity, with success.
    let succeeded = |verb: &str, resource: &str| {
        records
            .iter()
            .any(|r| r.verb == verb && is_on(r, resource) && (200..300).contains(&r.code()))
    };
    for (verb, resource) in [
        ("watch", "managedclustermodules"),
        ("patch", "managedclustermodules"),
        ("patch", "managedclustermodules/status"),
        ("watch", "managedclusters"),
        ("patch", "manifestworks"),
        ("delete", "manifestworks"),
        ("create", "jobs"),
        ("delete", "jobs"),
        ("list", "pods"),
        ("get", "secrets"),
        ("get", "configmaps"),
        ("create", "leases"),
        ("update", "leases"),
        ("create", "events"),
    ] {
        assert!(
            succeeded(verb, resource),
            "the hub never did {verb} {resource} with success in the scenario"
        );
    }
    for unused in unused_grants(&records) {
        println!("granted but not used in this scenario: {unused}");
    }
    println!("{} requests of {HUB_USER} checked", records.len());
}

/// `verb resource` pairs the rendered RBAC grants that no request of the scenario used. Rights
/// the apiserver checks inside another request show here too: `create` for a server-side apply
/// that creates (audited as `patch`), `update` on `managedclustermodules/finalizers` for the
/// owner-reference admission plugin.
fn unused_grants(records: &[kmm_fleet_tests::controlplane::AuditEvent]) -> Vec<String> {
    let docs = kmm_fleet_tests::manifests::kustomize(&repo_root().join("manifests/hub")).unwrap();
    let mut out = Vec::new();
    for role in docs
        .iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("Role" | "ClusterRole")))
    {
        for rule in role["rules"].as_array().into_iter().flatten() {
            for resource in rule["resources"].as_array().into_iter().flatten() {
                for verb in rule["verbs"].as_array().into_iter().flatten() {
                    let (resource, verb) = (resource.as_str().unwrap(), verb.as_str().unwrap());
                    if !records.iter().any(|r| r.verb == verb && is_on(r, resource)) {
                        out.push(format!("{verb} {resource}"));
                    }
                }
            }
        }
    }
    out
}
