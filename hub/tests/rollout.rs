//! A progressive rollout driven by the real `kmm-hub run` on a real hub control plane: six
//! ManagedClusters (hub-only, see `support::fleet`), `maxConcurrency: 2`, one canary. No spoke
//! runs here, so the test answers for the work agent: it writes each ManifestWork's status
//! (Applied at its generation, and the Module's feedback: nodes loaded, or the workers' failure)
//! through the status subresource, as OCM's agent would. The order of writes is read from the hub
//! apiserver's audit log (one log, in the order the apiserver handled the requests): the witness
//! that each wave was written only after the previous one reported loaded.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use kmm_api::{ManagedClusterModule, ocm::ManifestWork};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;
use support::fleet::{ClusterSpec, Fleet, HUB_USER, SPOKE_NAMESPACE, is_on, serial, writes_by};

const K1: &str = "6.1.0-28-cloud-amd64";
const MCM: &str = "nic";
const CLUSTERS: [&str; 6] = ["c1", "c2", "c3", "c4", "c5", "c6"];
const REVISION: &str = "hub.kmm.sigs.x-k8s.io/revision";

fn mcm_yaml(registry: &str, tag: &str) -> String {
    format!(
        r#"apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1
kind: ManagedClusterModule
metadata:
  name: {MCM}
spec:
  spokeNamespace: {SPOKE_NAMESPACE}
  selector:
    env: prod
  rolloutStrategy:
    type: Progressive
    progressive:
      maxConcurrency: 2
      canary:
        clusterSelector:
          canary: "true"
  moduleSpec:
    moduleLoader:
      container:
        modprobe:
          moduleName: nic_kmod
        kernelMappings:
          - regexp: '^.+$'
            containerImage: {registry}/kmm/{tag}:${{KERNEL_FULL_VERSION}}
            registryTLS:
              insecure: true
    selector:
      kubernetes.io/os: linux
"#
    )
}

/// The work agent and the spoke, played by the test: every work whose status does not yet
/// describe its generation gets one; images of the `bad` repository fail to load.
async fn agent_round(fleet: &Fleet) {
    for c in CLUSTERS {
        let api: Api<ManifestWork> = Api::namespaced(fleet.hub.client(), c);
        let Some(w) = api.get_opt(MCM).await.unwrap() else {
            continue;
        };
        let generation = w.metadata.generation.unwrap_or_default();
        let described = w.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Applied" && c.observed_generation == Some(generation))
        });
        if described {
            continue;
        }
        let bad = w.spec.workload.manifests[0].to_string().contains("/kmm/bad");
        let mut values = vec![
            json!({"name": "moduleLoader.desiredNumber", "fieldValue": {"type": "Integer", "integer": 2}}),
            json!({"name": "moduleLoader.availableNumber", "fieldValue": {"type": "Integer", "integer": if bad { 0 } else { 2 }}}),
        ];
        if bad {
            values.push(
                json!({"name": "moduleLoader.workersFailing", "fieldValue": {"type": "String",
                "string": format!("node {c}-1: modprobe: FATAL: Module nic_kmod not found")}}),
            );
        }
        let status = json!({"status": {
            "conditions": [{"type": "Applied", "status": "True", "reason": "AppliedManifestWorkComplete",
                            "message": "applied by the test", "lastTransitionTime": "2027-01-01T00:00:00Z",
                            "observedGeneration": generation}],
            "resourceStatus": {"manifests": [{
                "resourceMeta": {"ordinal": 0, "group": "kmm.sigs.x-k8s.io", "version": "v1beta1", "kind": "Module",
                                 "resource": "modules", "name": MCM, "namespace": SPOKE_NAMESPACE},
                "conditions": [], "statusFeedback": {"values": values}}]}}});
        api.patch_status(MCM, &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap();
    }
}

/// The clusters whose work the hub wrote, in the order of the audit log, from `mark` on; each
/// entry is the set written before the agent reported anything loaded in between.
fn waves(audit: &[kmm_fleet_tests::controlplane::AuditEvent]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut open = false;
    for e in audit
        .iter()
        .filter(|e| e.is_write() && e.resource() == "manifestworks")
    {
        let ns = e
            .object_ref
            .as_ref()
            .map(|o| o.namespace.clone())
            .unwrap_or_default();
        if e.user.username == HUB_USER && e.subresource().is_empty() {
            if !open {
                out.push(Vec::new());
                open = true;
            }
            let wave = out.last_mut().unwrap();
            if !wave.contains(&ns) {
                wave.push(ns);
            }
        } else if e.subresource() == "status" && e.user.username != HUB_USER {
            open = false; // the agent answered: whatever the hub writes next is a new wave
        }
    }
    out
}

/// Applies the MCM `yaml` as the user would.
async fn apply(fleet: &Fleet, yaml: String) {
    let mcm: ManagedClusterModule = serde_saphyr::from_str(&yaml).unwrap();
    fleet
        .mcms()
        .patch(
            MCM,
            &PatchParams::apply("test").force(),
            &Patch::Apply(serde_json::to_value(&mcm).unwrap()),
        )
        .await
        .unwrap();
}

async fn revisions(fleet: &Fleet) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for c in CLUSTERS {
        out.push(
            fleet
                .work(c, MCM)
                .await
                .and_then(|w| w.annotations().get(REVISION).cloned()),
        );
    }
    out
}

async fn rollout_settled(
    fleet: &Fleet,
    until: impl Fn(&kmm_api::mcm::RolloutStatus) -> bool,
    what: &str,
    hub: &kmm_fleet_tests::process::Process,
) {
    hub.wait(what, Duration::from_secs(240))
        .eventually(|| async {
            agent_round(fleet).await;
            fleet
                .mcm(MCM)
                .await
                .and_then(|m| m.status)
                .and_then(|s| s.rollout)
                .is_some_and(|r| until(&r))
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_image_rolls_canary_then_waves_of_two_and_a_bad_one_halts_after_the_canary() {
    let _serial = serial().await;
    let fleet = Fleet::start("rollout").await;
    for c in CLUSTERS {
        let labels: &[(&str, &str)] = if c == "c4" {
            &[("env", "prod"), ("canary", "true")]
        } else {
            &[("env", "prod")]
        };
        fleet
            .add_cluster(&ClusterSpec {
                name: c,
                labels,
                kernels: Some(&[K1]),
            })
            .await;
    }
    for tag in ["v1", "v2", "bad"] {
        fleet.registry.push_labelled(&format!("kmm/{tag}:{K1}")).unwrap();
    }
    let hub = fleet.start_hub("rollout", &[]);
    let v1: ManagedClusterModule = serde_saphyr::from_str(&mcm_yaml(&fleet.registry.host, "v1")).unwrap();
    fleet.create_mcm(&v1).await;
    rollout_settled(
        &fleet,
        |r| r.phase == "Succeeded" && r.updated == 6,
        "v1 everywhere",
        &hub,
    )
    .await;
    let v1_target = fleet
        .mcm(MCM)
        .await
        .and_then(|m| m.status)
        .and_then(|s| s.rollout)
        .unwrap()
        .target_revision;
    let v1_revision = revisions(&fleet).await;
    assert!(
        v1_revision.iter().all(|r| r.is_some() && *r == v1_revision[0]),
        "{v1_revision:?}"
    );

    // A new image: canary c4, then c1 c2, then c3 c5, then c6.
    let mark = fleet.audit().await.len();
    apply(&fleet, mcm_yaml(&fleet.registry.host, "v2")).await;
    rollout_settled(
        &fleet,
        |r| r.target_revision != v1_target && r.phase == "Succeeded" && r.updated == 6 && r.wave == 4,
        "v2 everywhere in four waves",
        &hub,
    )
    .await;
    let audit = fleet.audit().await;
    let seen = waves(&audit[mark..]);
    let want: Vec<Vec<String>> = [&["c4"][..], &["c1", "c2"], &["c3", "c5"], &["c6"]]
        .iter()
        .map(|w| w.iter().map(|s| s.to_string()).collect())
        .collect();
    let mut sorted = seen.clone();
    for w in &mut sorted {
        w.sort();
    }
    let trail: Vec<String> = audit[mark..]
        .iter()
        .filter(|e| e.is_write() && e.resource() == "manifestworks")
        .map(|e| format!("{} {}", e.user.username, support::fleet::describe(e)))
        .collect();
    assert_eq!(
        sorted, want,
        "each wave written only after the previous one reported loaded: {trail:#?}"
    );
    let v2_revision = revisions(&fleet).await;
    assert!(v2_revision.iter().all(|r| *r == v2_revision[0]) && v2_revision[0] != v1_revision[0]);
    let revs: Api<k8s_openapi::api::apps::v1::ControllerRevision> =
        Api::namespaced(fleet.hub.client(), support::fleet::HUB_NAMESPACE);
    let stored = revs.list(&ListParams::default()).await.unwrap().items;
    assert!(
        stored
            .iter()
            .any(|r| r.name_any().ends_with(v2_revision[0].as_deref().unwrap())),
        "the target revision is stored: {:?}",
        stored.iter().map(ResourceExt::name_any).collect::<Vec<_>>()
    );

    // A module the workers cannot load: the canary fails, the rollout halts, nobody else moves.
    let mark = fleet.audit().await.len();
    apply(&fleet, mcm_yaml(&fleet.registry.host, "bad")).await;
    hub.wait("RolloutHalted naming the canary", Duration::from_secs(240))
        .eventually(|| async {
            agent_round(&fleet).await;
            fleet.mcm(MCM).await.and_then(|m| m.status).is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "RolloutHalted"
                        && c.status == "True"
                        && c.message.contains(
                            "c4 (LoadFailed: node c4-1: modprobe: FATAL: Module nic_kmod not found)",
                        )
                })
            })
        })
        .await;
    // Several reconciles later (the hub retries every second), still nobody else moved.
    for _ in 0..5 {
        agent_round(&fleet).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let audit = fleet.audit().await;
    let hub_work_writes: Vec<String> = writes_by(&audit[mark..], HUB_USER)
        .into_iter()
        .filter(|e| is_on(e, "manifestworks"))
        .map(|e| {
            e.object_ref
                .as_ref()
                .map(|o| o.namespace.clone())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(hub_work_writes, ["c4"], "only the canary's ManifestWork changed");
    let now = revisions(&fleet).await;
    for (i, c) in CLUSTERS.iter().enumerate() {
        if *c != "c4" {
            assert_eq!(now[i], v2_revision[i], "{c} stays on v2");
        }
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(fleet.hub.client());
    let halted = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("RolloutHalted"))
        .count();
    assert_eq!(halted, 1, "one Warning Event for the halt");

    // `kmm-hub render --revision`: from what the real apiserver holds (the MCM with its rollout
    // status, the stored ControllerRevisions, the clusters), the previous revision renders the
    // v2 image the fleet still runs, the target the bad one.
    let dir = std::env::temp_dir().join(format!("kmm-render-revision-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mcm = fleet.mcm(MCM).await.unwrap();
    assert_eq!(
        mcm.status
            .as_ref()
            .and_then(|s| s.rollout.as_ref())
            .map(|r| r.previous_revision.clone()),
        v2_revision[0].clone(),
        "the previous revision is the one the clusters stay on"
    );
    // As `kubectl get -o yaml` writes them: every item with its kind.
    let typed = |mut v: serde_json::Value, kind: &str| {
        v["kind"] = json!(kind);
        v
    };
    let list = |items: Vec<serde_json::Value>| json!({"apiVersion": "v1", "kind": "List", "items": items});
    let stored = revs.list(&ListParams::default()).await.unwrap().items;
    let clusters: Api<kmm_api::ocm::ManagedCluster> = Api::all(fleet.hub.client());
    let clusters = clusters.list(&ListParams::default()).await.unwrap().items;
    for (name, value) in [
        (
            "mcm.yaml",
            typed(serde_json::to_value(&mcm).unwrap(), "ManagedClusterModule"),
        ),
        (
            "revisions.yaml",
            list(
                stored
                    .iter()
                    .map(|r| typed(serde_json::to_value(r).unwrap(), "ControllerRevision"))
                    .collect(),
            ),
        ),
        (
            "clusters.yaml",
            list(
                clusters
                    .iter()
                    .map(|c| typed(serde_json::to_value(c).unwrap(), "ManagedCluster"))
                    .collect(),
            ),
        ),
    ] {
        std::fs::write(dir.join(name), serde_json::to_string(&value).unwrap()).unwrap();
    }
    let render = |revision: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kmm-hub"))
            .args(["render", "--no-resolve", "--revision", revision, "-f"])
            .arg(dir.join("mcm.yaml"))
            .arg("--clusters")
            .arg(dir.join("clusters.yaml"))
            .arg("--revisions")
            .arg(dir.join("revisions.yaml"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.success(),
            stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, previous, err) = render("previous");
    assert!(ok, "{err}");
    assert_eq!(previous.matches("kind: ManifestWork").count(), 6, "{previous}");
    assert!(
        previous.contains(&format!("/kmm/v2:{K1}")) && !previous.contains("/kmm/bad"),
        "{previous}"
    );
    let (ok, target, err) = render("target");
    assert!(ok, "{err}");
    assert!(
        target.contains(&format!("/kmm/bad:{K1}")) && !target.contains("/kmm/v2"),
        "{target}"
    );
    let (ok, by_hash, _) = render(v2_revision[0].as_deref().unwrap());
    assert!(ok && by_hash == previous, "a hash renders the same as its name");
    let (ok, _, err) = render(&v1_target);
    assert!(
        !ok && err.contains(&format!("revision {v1_target} of {MCM} is not stored")),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
