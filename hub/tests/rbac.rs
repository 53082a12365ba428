//! The hub's RBAC: `manifests/hub/rbac.yaml` is what `kmm-hub rbac` renders from
//! `hub/src/rbac.rs`, and the real `kmm-hub run`, authenticated as the hub's ServiceAccount
//! against the simulated hub, makes no request that file does not grant.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{collections::BTreeMap, process::Command};

use k8s_openapi::api::batch::v1::Job;
use kmm_agents::{Kubelet, KubeletOptions, KubeletScript, Outcome, PodMatcher, ScriptRule};
use kmm_api::{ManagedClusterModule, labels::MCM_NAME_LABEL, ocm::ManifestWork};
use kmm_hub::mcm_controller::desired::job::JOB_TYPE_LABEL;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use support::{
    fleet::{Fleet, HUB_NAMESPACE, HubProcess, SPOKE_NAMESPACE, SpokeSpec, eventually, repo_root},
    push_image,
};

const K1: &str = "6.1.0-28-cloud-amd64";
const K2: &str = "6.1.0-29-cloud-amd64";
const HUB_USER: &str = "system:serviceaccount:kmm-hub:kmm-hub";

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
    Api::<ManagedClusterModule>::all(fleet.hub.client())
        .create(&PostParams::default(), &mcm)
        .await
        .unwrap();
}

async fn work_exists(fleet: &Fleet, cluster: &str, name: &str) -> bool {
    Api::<ManifestWork>::namespaced(fleet.hub.client(), cluster)
        .get_opt(name)
        .await
        .unwrap()
        .is_some()
}

/// Leader election, two MCMs (one pinned to pushed images with an imageRepoSecret, one whose
/// build fails), a cluster that stops matching, an MCM deleted: every request the hub made as
/// its ServiceAccount must be granted by the kustomization's RBAC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_of_the_hub_is_granted_by_its_rbac() {
    let fleet = Fleet::start(
        "rbac",
        &[
            SpokeSpec::prod("a", &[K1]),
            SpokeSpec::prod("b", &[K1]),
            SpokeSpec {
                name: "c",
                labels: &[("env", "lab")],
                kernels: Some(&[K2]),
            },
            SpokeSpec {
                name: "d",
                labels: &[("env", "built")],
                kernels: Some(&[K2]),
            },
        ],
    )
    .await;
    push_image(&fleet.registry, &format!("kmm/gpu-kmod:{K1}"));
    // The pull secret names another registry, so the local one is used without credentials.
    fleet
        .hub
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: pull, namespace: {HUB_NAMESPACE}}}\n\
             type: kubernetes.io/dockerconfigjson\n\
             data: {{.dockerconfigjson: eyJhdXRocyI6IHsib3RoZXIuZXhhbXBsZSI6IHsiYXV0aCI6ICJkVHB3In19fQ==}}\n---\n\
             apiVersion: v1\nkind: Node\nmetadata: {{name: hub-node, labels: {{kubernetes.io/os: linux}}}}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: gpu-dockerfile, namespace: {HUB_NAMESPACE}}}\n\
             data: {{dockerfile: \"FROM scratch\\n\"}}\n"
        ))
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
            script: KubeletScript { rules: vec![fail] },
            ..Default::default()
        },
    );

    let kubeconfig = fleet.hub.kubeconfig_as(HUB_USER).unwrap();
    let hub = HubProcess::start_with_kubeconfig(&kubeconfig, fleet.sim.dir(), "hub-0", &[]);
    eventually(30, "hub ready", Some(&hub), || hub.ready()).await;
    create(&fleet, &mcm_yaml(&fleet.registry.host, "gpu", "env: prod", false)).await;
    create(&fleet, &mcm_yaml(&fleet.registry.host, "lab", "env: lab", true)).await;
    eventually(30, "works for the prod clusters", Some(&hub), || async {
        work_exists(&fleet, "a", "gpu").await && work_exists(&fleet, "b", "gpu").await
    })
    .await;
    eventually(30, "the lab build failed", Some(&hub), || async {
        Api::<ManagedClusterModule>::all(fleet.hub.client())
            .get("lab")
            .await
            .unwrap()
            .status
            .is_some_and(|s| s.problems.iter().any(|p| p.message.contains("make: Error 2")))
    })
    .await;

    // A build that succeeds: once the image is there, the succeeded Job is deleted.
    create(&fleet, &mcm_yaml(&fleet.registry.host, "ok", "env: built", true)).await;
    let ok_jobs = || async {
        Api::<Job>::namespaced(fleet.hub.client(), HUB_NAMESPACE)
            .list(&kube::api::ListParams::default().labels(&format!("{MCM_NAME_LABEL}=ok")))
            .await
            .unwrap()
            .items
            .len()
    };
    eventually(30, "the ok build Job", Some(&hub), || async {
        ok_jobs().await == 1
    })
    .await;
    push_image(&fleet.registry, &format!("kmm/ok-kmod:{K2}"));
    eventually(30, "d's work and the build Job deleted", Some(&hub), || async {
        work_exists(&fleet, "d", "ok").await && ok_jobs().await == 0
    })
    .await;

    Api::<kmm_api::ocm::ManagedCluster>::all(fleet.hub.client())
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"env": "dev"}}})),
        )
        .await
        .unwrap();
    eventually(30, "b's work removed", Some(&hub), || async {
        !work_exists(&fleet, "b", "gpu").await
    })
    .await;
    Api::<ManagedClusterModule>::all(fleet.hub.client())
        .delete("gpu", &DeleteParams::default())
        .await
        .unwrap();
    eventually(30, "the MCM is gone", Some(&hub), || async {
        Api::<ManagedClusterModule>::all(fleet.hub.client())
            .get_opt("gpu")
            .await
            .unwrap()
            .is_none()
    })
    .await;
    // The leader renews its Lease every 5 s.
    eventually(15, "the Lease renewed", Some(&hub), || async {
        fleet
            .hub
            .audit()
            .iter()
            .any(|r| r.user == HUB_USER && r.verb == "update" && r.resource == "leases")
    })
    .await;
    drop(hub);

    let out = Command::new("kubectl")
        .args([
            "kustomize",
            &repo_root().join("manifests/hub").display().to_string(),
        ])
        .output()
        .expect("kubectl runs (scripts/test-deps installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let docs = kmm_sim::parse_documents(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let grants = kmm_sim::audit::grants_for(&docs, HUB_USER);
    assert!(!grants.is_empty(), "the kustomization binds roles to {HUB_USER}");
    let records = fleet.hub.audit();
    let result = kmm_sim::audit::check(&records, HUB_USER, &grants);
    for u in &result.unused {
        println!("granted but not used in this scenario: {u}");
    }
    let denied: Vec<String> = result.denied.iter().map(ToString::to_string).collect();
    assert!(
        denied.is_empty(),
        "requests the hub's RBAC does not grant (add them to hub/src/rbac.rs, then `just gen`):\n{}",
        denied.join("\n")
    );
    // The scenario did exercise what it claims to, as the hub's identity.
    for (verb, resource) in [
        ("watch", "managedclustermodules"),
        ("patch", "managedclustermodules"),
        ("patch", "managedclustermodules/status"),
        ("create", "manifestworks"),
        ("delete", "manifestworks"),
        ("create", "jobs"),
        ("delete", "jobs"),
        ("list", "pods"),
        ("get", "secrets"),
        ("create", "leases"),
        ("update", "leases"),
        ("create", "events"),
    ] {
        assert!(
            records
                .iter()
                .any(|r| r.user == HUB_USER && r.verb == verb && r.resource_path() == resource),
            "the hub never did {verb} {resource} in the scenario"
        );
    }
    println!("{} requests of {HUB_USER} checked", result.checked);
}
