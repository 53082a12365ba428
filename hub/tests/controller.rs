//! The real `kmm-hub run` on a real hub control plane with a real registry: what a user sees on
//! the hub and on the spokes. Where a test looks at delivery or feedback (the spoke's Module, a
//! cluster counted as applied) its clusters are spokes with their own control plane joined by
//! OCM's real klusterlet agent; where only the hub is under test (blocked clusters, an unselected
//! cluster) they are ManagedClusters the test creates as admin with `status.clusterClaims`
//! written through the status subresource (see `support::fleet`). Writes are counted in the hub
//! apiserver's audit log, per identity.

// Test helpers outside #[test] functions may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::{collections::BTreeMap, process::Command, time::Duration};

use k8s_openapi::api::events::v1::Event;
use kmm_api::{
    ManagedClusterModule, Module,
    ocm::{ManagedCluster, ManifestWork},
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use support::{
    fleet::{
        ClusterSpec, Fleet, HUB_NAMESPACE, HUB_USER, SPOKE_NAMESPACE, describe, is_on, serial,
        wait_reconciled, writes_by,
    },
    start_registry_at,
};

const K1: &str = "6.1.0-28-cloud-amd64";
const K2: &str = "6.1.0-29-cloud-amd64";
/// A kernel no cluster runs until b moves to it.
const K3: &str = "6.1.0-30-cloud-amd64";

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
    fleet.create_mcm(&mcm).await
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
    fleet.mcm(name).await.and_then(|m| m.status)
}

async fn spoke_module(fleet: &Fleet, spoke: &str, name: &str) -> Option<Module> {
    Api::<Module>::namespaced(fleet.spoke(spoke).client(), SPOKE_NAMESPACE)
        .get_opt(name)
        .await
        .unwrap()
}

/// Requests of `user` the apiserver refused (403 Forbidden, 400/422 invalid): none expected.
async fn assert_nothing_refused(fleet: &Fleet, user: &str) {
    let audit = fleet.audit().await;
    let refused: Vec<String> = audit
        .iter()
        .filter(|e| e.user.username == user && matches!(e.code(), 400 | 403 | 422))
        .map(describe)
        .collect();
    assert!(refused.is_empty(), "the apiserver refused {user}: {refused:#?}");
}

/// Since `mark`, the hub wrote b's work and no other (a's keeps `a_version`).
async fn assert_only_b_written(fleet: &Fleet, mark: usize, a_version: Option<i64>, what: &str) {
    assert_eq!(
        fleet.work("a", "gpu").await.unwrap().metadata.generation,
        a_version,
        "a untouched"
    );
    let audit = fleet.audit().await;
    let work_writes: Vec<String> = writes_by(&audit[mark..], HUB_USER)
        .into_iter()
        .filter(|e| is_on(e, "manifestworks"))
        .map(describe)
        .collect();
    assert!(
        work_writes.iter().all(|w| w.contains(" b/gpu ")) && !work_writes.is_empty(),
        "{what} wrote b's work only: {work_writes:#?}"
    );
}

/// Index of the next audit record: what happens from now on is `audit[mark..]`.
async fn audit_mark(fleet: &Fleet) -> usize {
    fleet.audit().await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolls_out_pinned_modules_follows_kernels_and_labels_and_cleans_up() {
    let _serial = serial().await;
    let mut fleet = Fleet::start("rollout").await;
    fleet
        .add_spokes(&[ClusterSpec::prod("a", &[K1, K2]), ClusterSpec::prod("b", &[K1])])
        .await;
    // Never selected: only the hub needs to know it.
    fleet
        .add_cluster(&ClusterSpec {
            name: "c",
            labels: &[("env", "dev")],
            kernels: Some(&[K1]),
        })
        .await;
    let d1 = fleet
        .registry
        .push_labelled(&format!("kmm/gpu-kmod:{K1}"))
        .unwrap();
    let d2 = fleet
        .registry
        .push_labelled(&format!("kmm/gpu-kmod:{K2}"))
        .unwrap();
    // Pushing and inspecting with skopeo asked for manifests too; count from here on.
    let before = fleet.registry.manifest_requests("kmm/gpu-kmod");
    let hub = fleet.start_hub("hub-0", &["--leader-election", "false"]);
    hub.wait_ready().await;
    create_mcm(&fleet, "gpu").await;

    hub.wait("works for the two prod clusters", Duration::from_secs(120))
        .eventually(|| async {
            fleet.work("a", "gpu").await.is_some() && fleet.work("b", "gpu").await.is_some()
        })
        .await;
    assert!(
        fleet.work("c", "gpu").await.is_none(),
        "the dev cluster is not selected"
    );
    let repo = format!("{}/kmm/gpu-kmod", fleet.registry.host);
    let wa = fleet.work("a", "gpu").await.unwrap();
    assert_eq!(
        literals(&wa),
        [
            (K1.to_string(), format!("{repo}@{d1}")),
            (K2.to_string(), format!("{repo}@{d2}"))
        ],
        "one literal mapping per kernel, pinned to the digest skopeo reports"
    );
    assert_eq!(
        literals(&fleet.work("b", "gpu").await.unwrap()),
        [(K1.to_string(), format!("{repo}@{d1}"))]
    );
    let module_text = wa.spec.workload.manifests[0].to_string();
    assert!(!module_text.contains("\"build\"") && !module_text.contains("\"sign\""));
    assert_eq!(
        wa.labels()["kmm.node.kubernetes.io/managedclustermodule.name"],
        "gpu"
    );

    hub.wait("Modules on both prod spokes", Duration::from_secs(180))
        .eventually(|| async {
            spoke_module(&fleet, "a", "gpu").await.is_some()
                && spoke_module(&fleet, "b", "gpu").await.is_some()
        })
        .await;
    hub.wait("status shows both clusters applied", Duration::from_secs(180))
        .eventually(|| async {
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
    let clusters_file = fleet.dir.join("clusters.yaml");
    let docs: Vec<String> = clusters
        .iter()
        .map(|c| serde_saphyr::to_string(c).unwrap())
        .collect();
    std::fs::write(&clusters_file, format!("---\n{}", docs.join("---\n"))).unwrap();
    let mcm_file = fleet.dir.join("mcm.yaml");
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
        let written = fleet.work(&r.namespace().unwrap(), "gpu").await.unwrap();
        assert_eq!(
            r.spec,
            written.spec,
            "render matches the controller for {}",
            r.namespace().unwrap()
        );
        // The rollout's annotations (revision, and when the cluster moved to it) are the
        // controller's bookkeeping; render shows the Module.
        let mut bookkeeping = written.annotations().clone();
        bookkeeping.retain(|k, _| !k.starts_with("hub.kmm.sigs.x-k8s.io/revision"));
        assert_eq!(r.annotations(), &bookkeeping);
    }

    // The MCM is edited: every work follows, the generation of each work moves once.
    fleet.mcms()
        .patch(
            "gpu",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"moduleSpec": {"moduleLoader": {"container": {"modprobe": {"moduleName": "gpu_kmod_v2"}}}}}})),
        )
        .await
        .unwrap();
    hub.wait("works carry the edited module name", Duration::from_secs(120))
        .eventually(|| async {
            let name = |w: Option<ManifestWork>| {
                w.map(|w| {
                w.spec.workload.manifests[0]["spec"]["moduleLoader"]["container"]["modprobe"]["moduleName"]
                    .clone()
            })
            };
            name(fleet.work("a", "gpu").await) == Some("gpu_kmod_v2".into())
                && name(fleet.work("b", "gpu").await) == Some("gpu_kmod_v2".into())
        })
        .await;
    hub.wait("the spoke Module follows", Duration::from_secs(180))
        .eventually(|| async {
            spoke_module(&fleet, "a", "gpu")
                .await
                .and_then(|m| m.spec.module_loader)
                .and_then(|l| l.container.modprobe.module_name)
                == Some("gpu_kmod_v2".into())
        })
        .await;
    hub.wait("the edit applied on both spokes", Duration::from_secs(180))
        .eventually(|| async {
            mcm_status(&fleet, "gpu")
                .await
                .is_some_and(|s| s.number_applied == 2)
        })
        .await;

    // b upgrades to K2: only b's work changes, to a K2 mapping.
    let a_version = fleet.work("a", "gpu").await.unwrap().metadata.generation;
    let mark = audit_mark(&fleet).await;
    fleet.set_kernels("b", &[K2]).await;
    hub.wait("b's work follows its new kernel", Duration::from_secs(180))
        .eventually(|| async {
            literals(&fleet.work("b", "gpu").await.unwrap()) == [(K2.to_string(), format!("{repo}@{d2}"))]
        })
        .await;
    assert_only_b_written(&fleet, mark, a_version, "the kernel change of b").await;

    // b moves on to K3, a kernel no cluster ran: its image is looked up once (the registry's
    // access log), b's work alone is rewritten to it, and the status counts it.
    let d3 = fleet
        .registry
        .push_labelled(&format!("kmm/gpu-kmod:{K3}"))
        .unwrap();
    let lookups = fleet.registry.manifest_requests_of("kmm/gpu-kmod", K3);
    let mark = audit_mark(&fleet).await;
    fleet.set_kernels("b", &[K3]).await;
    hub.wait(
        "b's work follows a kernel new to the fleet",
        Duration::from_secs(180),
    )
    .eventually(|| async {
        literals(&fleet.work("b", "gpu").await.unwrap()) == [(K3.to_string(), format!("{repo}@{d3}"))]
    })
    .await;
    hub.wait("the status counts the new kernel", Duration::from_secs(60))
        .eventually(|| async {
            mcm_status(&fleet, "gpu").await.is_some_and(|s| {
                let clusters = |k: &str| s.kernels.iter().find(|x| x.kernel == k).map(|x| x.clusters);
                clusters(K3) == Some(1) && clusters(K1) == Some(1) && clusters(K2) == Some(1)
            })
        })
        .await;
    assert_only_b_written(&fleet, mark, a_version, "the move of b to a new kernel").await;
    assert_eq!(
        fleet.registry.manifest_requests_of("kmm/gpu-kmod", K3) - lookups,
        1,
        "one registry lookup for the new kernel's image"
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
    hub.wait("a's work and Module removed", Duration::from_secs(180))
        .eventually(|| async {
            fleet.work("a", "gpu").await.is_none() && spoke_module(&fleet, "a", "gpu").await.is_none()
        })
        .await;
    assert!(spoke_module(&fleet, "b", "gpu").await.is_some());

    // A new prod cluster joins and gets the Module.
    fleet.add_spokes(&[ClusterSpec::prod("d", &[K1])]).await;
    hub.wait("the new cluster gets its Module", Duration::from_secs(180))
        .eventually(|| async { spoke_module(&fleet, "d", "gpu").await.is_some() })
        .await;

    // The MCM is deleted: every work and Module goes, then the MCM itself.
    fleet.delete_mcm("gpu").await;
    hub.wait("everything removed", Duration::from_secs(180))
        .eventually(|| async {
            fleet.mcm("gpu").await.is_none()
                && fleet.work("b", "gpu").await.is_none()
                && spoke_module(&fleet, "b", "gpu").await.is_none()
                && spoke_module(&fleet, "d", "gpu").await.is_none()
        })
        .await;
    assert_nothing_refused(&fleet, HUB_USER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_clusters_are_reported_and_recover_when_the_image_appears() {
    let _serial = serial().await;
    let fleet = Fleet::start("blocked").await;
    fleet
        .add_cluster(&ClusterSpec {
            name: "noclaim",
            labels: &[("env", "prod")],
            kernels: None,
        })
        .await;
    fleet.add_cluster(&ClusterSpec::prod("nomap", &[K1])).await;
    let hub = fleet.start_hub("hub-0", &["--leader-election", "false"]);
    create_mcm(&fleet, "gpu").await;
    hub.wait("both clusters blocked in status", Duration::from_secs(120))
        .eventually(|| async {
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
        fleet.work("nomap", "gpu").await.is_none(),
        "no work with a tag the registry does not have"
    );

    let reasons = || async {
        let events: Vec<Event> = Api::<Event>::all(fleet.hub.client())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        events
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("gpu"))
            .filter_map(|e| e.reason.clone())
            .collect::<Vec<String>>()
    };
    hub.wait("an Event per blocking reason", Duration::from_secs(60))
        .eventually(|| async {
            let reasons = reasons().await;
            reasons.iter().any(|r| r == "NoKernelClaim") && reasons.iter().any(|r| r == "ImageNotFound")
        })
        .await;

    // The image is pushed: the next retry pins it and the work appears.
    fleet
        .registry
        .push_labelled(&format!("kmm/gpu-kmod:{K1}"))
        .unwrap();
    hub.wait("work written once the image exists", Duration::from_secs(120))
        .eventually(|| async { fleet.work("nomap", "gpu").await.is_some() })
        .await;
    hub.wait(
        "only the cluster without a claim stays blocked",
        Duration::from_secs(120),
    )
    .eventually(|| async {
        mcm_status(&fleet, "gpu")
            .await
            .is_some_and(|s| s.number_blocked == 1 && s.problems.len() == 1)
    })
    .await;
    assert_nothing_refused(&fleet, HUB_USER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_write_nothing_twice_and_only_the_leader_writes() {
    let _serial = serial().await;
    let mut fleet = Fleet::start_with("replicas", &["replica-1", "replica-2", "replica-3"]).await;
    fleet
        .add_spokes(&[ClusterSpec::prod("a", &[K1]), ClusterSpec::prod("b", &[K1])])
        .await;
    fleet
        .registry
        .push_labelled(&format!("kmm/gpu-kmod:{K1}"))
        .unwrap();
    let first = fleet.start_hub_as("replica-1", &[]);
    let second = fleet.start_hub_as("replica-2", &[]);
    create_mcm(&fleet, "gpu").await;
    first
        .wait("both clusters applied", Duration::from_secs(180))
        .eventually(|| async {
            mcm_status(&fleet, "gpu")
                .await
                .is_some_and(|s| s.number_applied == 2)
        })
        .await;
    let audit = fleet.audit().await;
    let work_writes = |user: &str| -> Vec<String> {
        writes_by(&audit, user)
            .into_iter()
            .filter(|e| is_on(e, "manifestworks"))
            .map(describe)
            .collect()
    };
    let (w1, w2) = (work_writes("replica-1"), work_writes("replica-2"));
    assert_eq!(
        w1.len() + w2.len(),
        2,
        "one ManifestWork write per cluster in total: {w1:#?} {w2:#?}"
    );
    assert!(
        w1.is_empty() || w2.is_empty(),
        "only one replica wrote: {w1:#?} {w2:#?}"
    );
    let lease: k8s_openapi::api::coordination::v1::Lease = Api::namespaced(fleet.hub.client(), HUB_NAMESPACE)
        .get("kmm-hub")
        .await
        .unwrap();
    let holder = lease.spec.unwrap().holder_identity.unwrap();
    let (writer, other) = if w1.is_empty() {
        ("replica-2", "replica-1")
    } else {
        ("replica-1", "replica-2")
    };
    assert_eq!(holder, writer, "the writer holds the Lease");
    let other_writes: Vec<String> = writes_by(&audit, other)
        .into_iter()
        .filter(|e| !is_on(e, "leases"))
        .map(describe)
        .collect();
    assert!(
        other_writes.is_empty(),
        "the replica without the Lease wrote only to the Lease: {other_writes:#?}"
    );
    assert!(
        writes_by(&audit, writer)
            .iter()
            .any(|e| is_on(e, "managedclustermodules/status")),
        "the leader wrote the status"
    );

    // Both replicas restart: the works are up to date, so nothing is written again.
    let generations: Vec<Option<i64>> = vec![
        fleet.work("a", "gpu").await.unwrap().metadata.generation,
        fleet.work("b", "gpu").await.unwrap().metadata.generation,
    ];
    // SIGTERM stops a replica cleanly and promptly (as the kubelet stops a pod).
    let (mut first, mut second) = (first, second);
    assert_eq!(
        first.terminate(Duration::from_secs(30)),
        Some(0),
        "kmm-hub exits 0 on SIGTERM"
    );
    assert_eq!(second.terminate(Duration::from_secs(30)), Some(0));
    let again = fleet.start_hub_as("replica-3", &["--leader-election", "false"]);
    wait_reconciled(&again).await;
    // Several retry periods (1 s) and feedback rounds (1 s) later.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let audit = fleet.audit().await;
    let writes: Vec<String> = writes_by(&audit, "replica-3").into_iter().map(describe).collect();
    assert!(
        writes.is_empty(),
        "the restarted hub found everything up to date and wrote nothing (works, status, finalizers): {writes:#?}"
    );
    assert_eq!(
        vec![
            fleet.work("a", "gpu").await.unwrap().metadata.generation,
            fleet.work("b", "gpu").await.unwrap().metadata.generation
        ],
        generations
    );
    for user in ["replica-1", "replica-2", "replica-3"] {
        assert_nothing_refused(&fleet, user).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_is_down_blocks_and_the_rollout_resumes_when_it_is_back() {
    let _serial = serial().await;
    let mut fleet = Fleet::start("down").await;
    fleet.add_spokes(&[ClusterSpec::prod("a", &[K1])]).await;
    // The MCM points at a registry port where nothing listens yet.
    let port = kmm_test_kit::free_port().unwrap();
    let host = format!("127.0.0.1:{port}");
    let hub = fleet.start_hub("hub-0", &["--leader-election", "false"]);
    let mcm: ManagedClusterModule = serde_saphyr::from_str(&mcm_yaml(&host, "gpu")).unwrap();
    fleet.create_mcm(&mcm).await;
    hub.wait(
        "the cluster is blocked by the registry error",
        Duration::from_secs(120),
    )
    .eventually(|| async {
        mcm_status(&fleet, "gpu")
            .await
            .is_some_and(|s| s.problems.iter().any(|p| p.reason == "RegistryError"))
    })
    .await;
    assert!(fleet.work("a", "gpu").await.is_none());

    let registry = start_registry_at("down-later", port);
    let digest = registry.push_labelled(&format!("kmm/gpu-kmod:{K1}")).unwrap();
    hub.wait(
        "the work appears once the registry answers",
        Duration::from_secs(120),
    )
    .eventually(|| async {
        fleet
            .work("a", "gpu")
            .await
            .is_some_and(|w| literals(&w)[0].1 == format!("{host}/kmm/gpu-kmod@{digest}"))
    })
    .await;
    hub.wait("no problem left", Duration::from_secs(180))
        .eventually(|| async {
            mcm_status(&fleet, "gpu")
                .await
                .is_some_and(|s| s.problems.is_empty() && s.number_applied == 1)
        })
        .await;
    assert_nothing_refused(&fleet, HUB_USER).await;
}
