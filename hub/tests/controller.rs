//! The real `kmm-hub run` against a simulated hub and spokes (with the OCM agents) and a real
//! registry: what a user sees on the hub and on the spokes.

// Test helpers outside #[test] functions may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::{collections::BTreeMap, process::Command};

use k8s_openapi::api::events::v1::Event;
use kmm_api::{
    ManagedClusterModule, Module,
    ocm::{ManagedCluster, ManifestWork},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use support::{
    fleet::{Fleet, HUB_NAMESPACE, HubProcess, SPOKE_NAMESPACE, SpokeSpec, eventually, set_kernels},
    free_port, push_image, start_registry_at,
};

const K1: &str = "6.1.0-28-cloud-amd64";
const K2: &str = "6.1.0-29-cloud-amd64";

fn mcm_yaml(registry: &str, name: &str) -> String {
    format!(
        r#"apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1
kind: ManagedClusterModule
metadata:
  name: {name}
spec:
  spokeNamespace: {SPOKE_NAMESPACE}
  selector:
    env: prod
  moduleSpec:
    moduleLoader:
      container:
        modprobe:
          moduleName: gpu_kmod
        kernelMappings:
          - regexp: '^.+$'
            containerImage: {registry}/kmm/gpu-kmod:${{KERNEL_FULL_VERSION}}
            registryTLS:
              insecure: true
    selector:
      kubernetes.io/os: linux
"#
    )
}

async fn create_mcm(fleet: &Fleet, name: &str) -> ManagedClusterModule {
    let mcm: ManagedClusterModule = serde_saphyr::from_str(&mcm_yaml(&fleet.registry.host, name)).unwrap();
    Api::<ManagedClusterModule>::all(fleet.hub.client())
        .create(&PostParams::default(), &mcm)
        .await
        .unwrap()
}

async fn work(fleet: &Fleet, cluster: &str, name: &str) -> Option<ManifestWork> {
    Api::<ManifestWork>::namespaced(fleet.hub.client(), cluster)
        .get_opt(name)
        .await
        .unwrap()
}

fn literals(work: &ManifestWork) -> Vec<(String, String)> {
    work.spec.workload.manifests[0]["spec"]["moduleLoader"]["container"]["kernelMappings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["literal"].as_str().unwrap().to_string(),
                m["containerImage"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn mcm_status(fleet: &Fleet, name: &str) -> Option<kmm_api::ManagedClusterModuleStatus> {
    Api::<ManagedClusterModule>::all(fleet.hub.client())
        .get_opt(name)
        .await
        .unwrap()
        .and_then(|m| m.status)
}

async fn spoke_module(fleet: &Fleet, spoke: &str, name: &str) -> Option<Module> {
    Api::<Module>::namespaced(fleet.spoke(spoke).client(), SPOKE_NAMESPACE)
        .get_opt(name)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolls_out_pinned_modules_follows_kernels_and_labels_and_cleans_up() {
    let mut fleet = Fleet::start(
        "rollout",
        &[
            SpokeSpec::prod("a", &[K1, K2]),
            SpokeSpec::prod("b", &[K1]),
            SpokeSpec {
                name: "c",
                labels: &[("env", "dev")],
                kernels: Some(&[K1]),
            },
        ],
    )
    .await;
    let d1 = push_image(&fleet.registry, &format!("kmm/gpu-kmod:{K1}"));
    let d2 = push_image(&fleet.registry, &format!("kmm/gpu-kmod:{K2}"));
    // Pushing and inspecting with skopeo asked for manifests too; count from here on.
    let before = fleet.registry.manifest_requests("kmm/gpu-kmod");
    let hub = HubProcess::start(
        &fleet.hub,
        fleet.sim.dir(),
        "hub-0",
        &["--leader-election", "false"],
    );
    eventually(30, "hub ready", Some(&hub), || hub.ready()).await;
    create_mcm(&fleet, "gpu").await;

    eventually(30, "works for the two prod clusters", Some(&hub), || async {
        work(&fleet, "a", "gpu").await.is_some() && work(&fleet, "b", "gpu").await.is_some()
    })
    .await;
    assert!(
        work(&fleet, "c", "gpu").await.is_none(),
        "the dev cluster is not selected"
    );
    let repo = format!("{}/kmm/gpu-kmod", fleet.registry.host);
    let wa = work(&fleet, "a", "gpu").await.unwrap();
    assert_eq!(
        literals(&wa),
        [
            (K1.to_string(), format!("{repo}@{d1}")),
            (K2.to_string(), format!("{repo}@{d2}"))
        ],
        "one literal mapping per kernel, pinned to the digest skopeo reports"
    );
    assert_eq!(
        literals(&work(&fleet, "b", "gpu").await.unwrap()),
        [(K1.to_string(), format!("{repo}@{d1}"))]
    );
    let module_text = wa.spec.workload.manifests[0].to_string();
    assert!(!module_text.contains("\"build\"") && !module_text.contains("\"sign\""));
    assert_eq!(
        wa.labels()["kmm.node.kubernetes.io/managedclustermodule.name"],
        "gpu"
    );

    eventually(30, "Modules on both prod spokes", Some(&hub), || async {
        spoke_module(&fleet, "a", "gpu").await.is_some() && spoke_module(&fleet, "b", "gpu").await.is_some()
    })
    .await;
    eventually(30, "status shows both clusters applied", Some(&hub), || async {
        mcm_status(&fleet, "gpu")
            .await
            .is_some_and(|s| s.number_desired == 2 && s.number_applied == 2)
    })
    .await;
    let status = mcm_status(&fleet, "gpu").await.unwrap();
    let kernels: Vec<(String, String, i32)> = status
        .kernels
        .iter()
        .map(|k| (k.kernel.clone(), k.image.clone(), k.clusters))
        .collect();
    assert_eq!(
        kernels,
        [
            (K1.into(), format!("{repo}@{d1}"), 2),
            (K2.into(), format!("{repo}@{d2}"), 1)
        ]
    );
    // Two clusters share K1: the registry was asked once per unique image, not once per cluster.
    assert_eq!(fleet.registry.manifest_requests("kmm/gpu-kmod") - before, 2);

    // `kmm-hub render` on the same inputs prints the same ManifestWorks.
    let clusters: Vec<ManagedCluster> = Api::<ManagedCluster>::all(fleet.hub.client())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let clusters_file = fleet.sim.dir().join("clusters.yaml");
    let docs: Vec<String> = clusters
        .iter()
        .map(|c| serde_saphyr::to_string(c).unwrap())
        .collect();
    std::fs::write(&clusters_file, format!("---\n{}", docs.join("---\n"))).unwrap();
    let mcm_file = fleet.sim.dir().join("mcm.yaml");
    std::fs::write(&mcm_file, mcm_yaml(&fleet.registry.host, "gpu")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kmm-hub"))
        .args([
            "render",
            "-f",
            mcm_file.to_str().unwrap(),
            "--clusters",
            clusters_file.to_str().unwrap(),
            "--registry-insecure",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rendered: Vec<ManifestWork> =
        serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(rendered.len(), 2);
    for r in &rendered {
        let written = work(&fleet, &r.namespace().unwrap(), "gpu").await.unwrap();
        assert_eq!(
            r.spec,
            written.spec,
            "render matches the controller for {}",
            r.namespace().unwrap()
        );
        assert_eq!(r.annotations(), written.annotations());
    }

    // The MCM is edited: every work follows, the generation of each work moves once.
    Api::<ManagedClusterModule>::all(fleet.hub.client())
        .patch(
            "gpu",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"moduleSpec": {"moduleLoader": {"container": {"modprobe": {"moduleName": "gpu_kmod_v2"}}}}}})),
        )
        .await
        .unwrap();
    eventually(30, "works carry the edited module name", Some(&hub), || async {
        let name = |w: Option<ManifestWork>| {
            w.map(|w| {
                w.spec.workload.manifests[0]["spec"]["moduleLoader"]["container"]["modprobe"]["moduleName"]
                    .clone()
            })
        };
        name(work(&fleet, "a", "gpu").await) == Some("gpu_kmod_v2".into())
            && name(work(&fleet, "b", "gpu").await) == Some("gpu_kmod_v2".into())
    })
    .await;
    eventually(30, "the spoke Module follows", Some(&hub), || async {
        spoke_module(&fleet, "a", "gpu")
            .await
            .and_then(|m| m.spec.module_loader)
            .and_then(|l| l.container.modprobe.module_name)
            == Some("gpu_kmod_v2".into())
    })
    .await;

    // b upgrades to K2: only b's work changes, to a K2 mapping.
    let a_version = work(&fleet, "a", "gpu").await.unwrap().metadata.generation;
    set_kernels(fleet.spoke("b"), &[K2]);
    eventually(30, "b's work follows its new kernel", Some(&hub), || async {
        literals(&work(&fleet, "b", "gpu").await.unwrap()) == [(K2.to_string(), format!("{repo}@{d2}"))]
    })
    .await;
    assert_eq!(
        work(&fleet, "a", "gpu").await.unwrap().metadata.generation,
        a_version,
        "a untouched"
    );

    // a is relabelled out of the selector: its work and its Module go, b keeps its own.
    Api::<ManagedCluster>::all(fleet.hub.client())
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"env": "dev"}}})),
        )
        .await
        .unwrap();
    eventually(30, "a's work and Module removed", Some(&hub), || async {
        work(&fleet, "a", "gpu").await.is_none() && spoke_module(&fleet, "a", "gpu").await.is_none()
    })
    .await;
    assert!(spoke_module(&fleet, "b", "gpu").await.is_some());

    // A new prod cluster joins and gets the Module.
    fleet.add_spoke(&SpokeSpec::prod("d", &[K1])).await;
    eventually(30, "the new cluster gets its Module", Some(&hub), || async {
        spoke_module(&fleet, "d", "gpu").await.is_some()
    })
    .await;

    // The MCM is deleted: every work and Module goes, then the MCM itself.
    Api::<ManagedClusterModule>::all(fleet.hub.client())
        .delete("gpu", &DeleteParams::default())
        .await
        .unwrap();
    eventually(30, "everything removed", Some(&hub), || async {
        Api::<ManagedClusterModule>::all(fleet.hub.client())
            .get_opt("gpu")
            .await
            .unwrap()
            .is_none()
            && work(&fleet, "b", "gpu").await.is_none()
            && spoke_module(&fleet, "b", "gpu").await.is_none()
            && spoke_module(&fleet, "d", "gpu").await.is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_clusters_are_reported_and_recover_when_the_image_appears() {
    let fleet = Fleet::start(
        "blocked",
        &[
            SpokeSpec {
                name: "noclaim",
                labels: &[("env", "prod")],
                kernels: None,
            },
            SpokeSpec::prod("nomap", &[K1]),
        ],
    )
    .await;
    let hub = HubProcess::start(
        &fleet.hub,
        fleet.sim.dir(),
        "hub-0",
        &["--leader-election", "false"],
    );
    create_mcm(&fleet, "gpu").await;
    eventually(30, "both clusters blocked in status", Some(&hub), || async {
        mcm_status(&fleet, "gpu")
            .await
            .is_some_and(|s| s.number_blocked == 2)
    })
    .await;
    let s = mcm_status(&fleet, "gpu").await.unwrap();
    let problems: BTreeMap<String, String> = s
        .problems
        .iter()
        .map(|p| (p.cluster.clone(), p.reason.clone()))
        .collect();
    assert_eq!(problems["noclaim"], "NoKernelClaim");
    assert_eq!(problems["nomap"], "ImageNotFound");
    assert!(
        s.problems
            .iter()
            .all(|p| p.state == "Blocked" && !p.message.is_empty())
    );
    let ready = s.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
    assert_eq!(ready.status, "True");
    assert!(
        work(&fleet, "nomap", "gpu").await.is_none(),
        "no work with a tag the registry does not have"
    );

    let events: Vec<Event> = Api::<Event>::all(fleet.hub.client())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let reasons: Vec<&str> = events
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("gpu"))
        .filter_map(|e| e.reason.as_deref())
        .collect();
    assert!(
        reasons.contains(&"NoKernelClaim") && reasons.contains(&"ImageNotFound"),
        "{reasons:?}"
    );

    // The image is pushed: the next retry pins it and the work appears.
    push_image(&fleet.registry, &format!("kmm/gpu-kmod:{K1}"));
    eventually(30, "work written once the image exists", Some(&hub), || async {
        work(&fleet, "nomap", "gpu").await.is_some()
    })
    .await;
    eventually(
        30,
        "only the cluster without a claim stays blocked",
        Some(&hub),
        || async {
            mcm_status(&fleet, "gpu")
                .await
                .is_some_and(|s| s.number_blocked == 1 && s.problems.len() == 1)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_write_nothing_twice_and_only_the_leader_writes() {
    let fleet = Fleet::start(
        "replicas",
        &[SpokeSpec::prod("a", &[K1]), SpokeSpec::prod("b", &[K1])],
    )
    .await;
    push_image(&fleet.registry, &format!("kmm/gpu-kmod:{K1}"));
    let first = HubProcess::start(&fleet.hub, fleet.sim.dir(), "replica-1", &[]);
    let second = HubProcess::start(&fleet.hub, fleet.sim.dir(), "replica-2", &[]);
    create_mcm(&fleet, "gpu").await;
    eventually(30, "both clusters applied", Some(&first), || async {
        mcm_status(&fleet, "gpu")
            .await
            .is_some_and(|s| s.number_applied == 2)
    })
    .await;
    let w1 = first
        .metric("kmm_hub_manifestwork_writes_total")
        .await
        .unwrap_or(0.0);
    let w2 = second
        .metric("kmm_hub_manifestwork_writes_total")
        .await
        .unwrap_or(0.0);
    assert_eq!(w1 + w2, 2.0, "one write per cluster in total");
    assert!(w1 == 0.0 || w2 == 0.0, "only one replica wrote: {w1} and {w2}");
    let lease: k8s_openapi::api::coordination::v1::Lease = Api::namespaced(fleet.hub.client(), HUB_NAMESPACE)
        .get("kmm-hub")
        .await
        .unwrap();
    let holder = lease.spec.unwrap().holder_identity.unwrap();
    assert_eq!(
        holder,
        if w1 > 0.0 { "replica-1" } else { "replica-2" },
        "the writer holds the Lease"
    );

    // Both replicas restart: the works are up to date, so nothing is written again.
    let generations: Vec<Option<i64>> = vec![
        work(&fleet, "a", "gpu").await.unwrap().metadata.generation,
        work(&fleet, "b", "gpu").await.unwrap().metadata.generation,
    ];
    // SIGTERM stops a replica cleanly and promptly (as the kubelet stops a pod).
    let (mut first, mut second) = (first, second);
    assert_eq!(first.terminate(10), Some(0), "kmm-hub exits 0 on SIGTERM");
    assert_eq!(second.terminate(10), Some(0));
    let again = HubProcess::start(
        &fleet.hub,
        fleet.sim.dir(),
        "replica-3",
        &["--leader-election", "false"],
    );
    eventually(30, "the restarted hub reconciled", Some(&again), || async {
        again
            .metric("kmm_hub_reconciles_total")
            .await
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(again.metric("kmm_hub_manifestwork_writes_total").await, Some(0.0));
    assert_eq!(
        again.metric("kmm_hub_status_writes_total").await,
        Some(0.0),
        "status unchanged, not rewritten"
    );
    assert_eq!(
        vec![
            work(&fleet, "a", "gpu").await.unwrap().metadata.generation,
            work(&fleet, "b", "gpu").await.unwrap().metadata.generation
        ],
        generations
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_is_down_blocks_and_the_rollout_resumes_when_it_is_back() {
    let fleet = Fleet::start("down", &[SpokeSpec::prod("a", &[K1])]).await;
    // The MCM points at a registry port where nothing listens yet.
    let port = free_port();
    let host = format!("127.0.0.1:{port}");
    let hub = HubProcess::start(
        &fleet.hub,
        fleet.sim.dir(),
        "hub-0",
        &["--leader-election", "false"],
    );
    let mcm: ManagedClusterModule = serde_saphyr::from_str(&mcm_yaml(&host, "gpu")).unwrap();
    Api::<ManagedClusterModule>::all(fleet.hub.client())
        .create(&PostParams::default(), &mcm)
        .await
        .unwrap();
    eventually(
        30,
        "the cluster is blocked by the registry error",
        Some(&hub),
        || async {
            mcm_status(&fleet, "gpu")
                .await
                .is_some_and(|s| s.problems.iter().any(|p| p.reason == "RegistryError"))
        },
    )
    .await;
    assert!(work(&fleet, "a", "gpu").await.is_none());

    let registry = start_registry_at("down-later", port);
    let digest = push_image(&registry, &format!("kmm/gpu-kmod:{K1}"));
    eventually(
        30,
        "the work appears once the registry answers",
        Some(&hub),
        || async {
            work(&fleet, "a", "gpu")
                .await
                .is_some_and(|w| literals(&w)[0].1 == format!("{host}/kmm/gpu-kmod@{digest}"))
        },
    )
    .await;
    eventually(30, "no problem left", Some(&hub), || async {
        mcm_status(&fleet, "gpu")
            .await
            .is_some_and(|s| s.problems.is_empty() && s.number_applied == 1)
    })
    .await;
}
