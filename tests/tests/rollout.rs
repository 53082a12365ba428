//! A progressive rollout on the fleet harness: six real spokes (a control plane each, OCM's
//! klusterlet agent delivering the ManifestWorks and reporting the Module's status feedback,
//! kmm-spoke with worker pods run by the kubelet stand-in), the real kmm-hub.
//!
//! Witnesses, all timestamps from the API servers' audit logs (one clock, this machine's):
//! - when the hub wrote each ManifestWork (hub audit log, the hub's ServiceAccount);
//! - when each spoke's node was loaded at the new image (the spoke's audit log: the write to the
//!   NodeModulesConfig status after which the test saw the new image loaded there);
//! - when the feedback could first show it (hub audit log: the work agent's first status write
//!   on that cluster's ManifestWork after the node was loaded).
//!
//! Each wave's writes must come after all three of the previous wave's clusters' times.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is a failed test

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;
use kmm_api::{ManagedClusterModule, Module, mcm::RolloutStatus, nmc::NodeModulesConfig, ocm::ManifestWork};
use kmm_fleet_tests::{
    controlplane::ControlPlane,
    demo,
    fleet::{Fleet, HUB_NAMESPACE, MODULE_NAMESPACE, NodeSpec, SpokeSpec},
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};

const MCM: &str = "nic-rollout";
const K: &str = demo::K_EAST;
const CLUSTERS: [&str; 6] = ["c1", "c2", "c3", "c4", "c5", "c6"];
const CANARY: &str = "c4";
const REVISION: &str = "hub.kmm.sigs.x-k8s.io/revision";
/// Canary first, then waves of two in name order.
const WAVES: [&[&str]; 4] = [&["c4"], &["c1", "c2"], &["c3", "c5"], &["c6"]];

/// The MCM shipping `repo` (an image repository under `kmm/`) with `module`; `strategy` is
/// the `rolloutStrategy` block.
fn mcm_yaml(host: &str, repo: &str, module: &str, strategy: &str) -> String {
    format!(
        r#"apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1
kind: ManagedClusterModule
metadata:
  name: {MCM}
spec:
  spokeNamespace: {MODULE_NAMESPACE}
  selector:
    driver: nic
  rolloutStrategy:
{strategy}
  moduleSpec:
    selector:
      node-role.kubernetes.io/worker: ""
    moduleLoader:
      container:
        modprobe:
          moduleName: {module}
        registryTLS:
          insecure: true
        kernelMappings:
          - literal: {K}
            containerImage: {host}/kmm/{repo}:{K}
"#
    )
}

const ALL: &str = "    type: All";
/// minSuccessTime is longer than a spoke takes to report a new Module's state (so the feedback
/// of the previous revision cannot pass for the new one), and short for the test's sake.
const PROGRESSIVE: &str = r#"    type: Progressive
    progressive:
      maxConcurrency: 2
      minSuccessTime: 6s
      canary:
        clusterSelector:
          canary: "true""#;

/// One audit record with its times.
#[derive(Debug, Clone)]
struct Stamped {
    at: Timestamp,
    verb: String,
    user: String,
    resource: String,
    subresource: String,
    namespace: String,
    name: String,
    code: u16,
}

impl Stamped {
    fn is_write(&self) -> bool {
        matches!(self.verb.as_str(), "create" | "update" | "patch" | "delete")
            && (200..300).contains(&self.code)
    }
}

/// The audit log of `cp` with each request's received time.
fn stamped(cp: &ControlPlane) -> Vec<Stamped> {
    let text = std::fs::read_to_string(cp.dir().join("audit.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let s = |p: &str| {
                v.pointer(p)
                    .and_then(|x| x.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            Some(Stamped {
                at: v["requestReceivedTimestamp"].as_str()?.parse().ok()?,
                verb: s("/verb"),
                user: s("/user/username"),
                resource: s("/objectRef/resource"),
                subresource: s("/objectRef/subresource"),
                namespace: s("/objectRef/namespace"),
                name: s("/objectRef/name"),
                code: v
                    .pointer("/responseStatus/code")
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|c| u16::try_from(c).ok())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

fn is_hub(e: &Stamped) -> bool {
    e.user
        .starts_with(&format!("system:serviceaccount:{HUB_NAMESPACE}:"))
}

/// The hub's writes to the MCM's ManifestWorks from `since` on.
fn hub_work_writes(hub: &[Stamped], since: Timestamp) -> Vec<Stamped> {
    hub.iter()
        .filter(|e| {
            e.at >= since
                && is_hub(e)
                && e.is_write()
                && e.resource == "manifestworks"
                && e.subresource.is_empty()
                && e.name == MCM
        })
        .cloned()
        .collect()
}

/// When each cluster's node was seen loaded at the image of `repo`, by the test's clock.
type Seen = BTreeMap<String, Timestamp>;

async fn rollout(fleet: &Fleet) -> Option<RolloutStatus> {
    Api::<ManagedClusterModule>::all(fleet.hub.client())
        .get_opt(MCM)
        .await
        .unwrap()
        .and_then(|m| m.status)
        .and_then(|s| s.rollout)
}

/// The image the node of `cluster` has loaded for the MCM's Module, per its NodeModulesConfig.
async fn loaded_image(fleet: &Fleet, cluster: &str) -> Option<String> {
    let nmc = Api::<NodeModulesConfig>::all(fleet.spoke(cluster).unwrap().cluster.client())
        .get_opt(&format!("{cluster}-1"))
        .await
        .ok()??;
    let loaded = nmc.status?.modules.into_iter().find(|m| m.item.name == MCM)?;
    Some(loaded.config?.container_image)
}

/// Polls until `done` holds for the MCM's rollout status, noting when each node is first seen
/// with the image of `repo` loaded; `on_poll` runs every round (to act mid-rollout).
async fn follow(
    fleet: &mut Fleet,
    repo: &str,
    what: &str,
    secs: u64,
    done: impl Fn(&RolloutStatus) -> bool,
    mut on_poll: impl AsyncFnMut(&mut Fleet, &Option<RolloutStatus>),
) -> Seen {
    let mut seen = Seen::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    loop {
        for c in CLUSTERS {
            if !seen.contains_key(c)
                && loaded_image(fleet, c)
                    .await
                    .is_some_and(|i| i.contains(&format!("/kmm/{repo}@")))
            {
                seen.insert(c.to_owned(), Timestamp::now());
            }
        }
        let status = rollout(fleet).await;
        let line = format!("{status:?}");
        if line != last {
            eprintln!("[{}] {line}", Timestamp::now());
            last = line;
        }
        if status.as_ref().is_some_and(&done) {
            return seen;
        }
        on_poll(fleet, &status).await;
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for: {what}\nseen loaded: {seen:?}\n{}",
            fleet.log_tails(30)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Per cluster of the rollout: when its node was loaded (spoke audit log) and when the feedback
/// could first show it (hub audit log).
#[derive(Debug)]
struct Loaded {
    node: Timestamp,
    feedback: Timestamp,
}

/// Reads [`Loaded`] for every cluster in `seen` from the audit logs.
fn loaded_times(fleet: &Fleet, hub: &[Stamped], seen: &Seen) -> BTreeMap<String, Loaded> {
    let mut out = BTreeMap::new();
    for (c, saw) in seen {
        let spoke = stamped(&fleet.spoke(c).unwrap().cluster);
        // Status writes to the node's NodeModulesConfig before the test saw the new image loaded.
        let mut node_writes: Vec<Timestamp> = spoke
            .iter()
            .filter(|e| {
                e.is_write()
                    && e.resource == "nodemodulesconfigs"
                    && e.subresource == "status"
                    && e.at <= *saw
            })
            .map(|e| e.at)
            .collect();
        assert!(
            !node_writes.is_empty(),
            "no NodeModulesConfig status write on {c} before {saw}"
        );
        node_writes.sort();
        // The work agent's first status write after a node write. The node was loaded from the
        // last such write on (a later status write that changed no feedback, e.g. one the spoke
        // makes again after the load, has no agent write after it: the test polls slower than
        // the spoke writes).
        let agent_after = |t: Timestamp| {
            hub.iter()
                .filter(|e| {
                    e.is_write()
                        && !is_hub(e)
                        && e.resource == "manifestworks"
                        && e.subresource == "status"
                        && e.namespace == *c
                        && e.at > t
                })
                .map(|e| e.at)
                .min()
        };
        let (node, feedback) = node_writes
            .iter()
            .rev()
            .find_map(|t| agent_after(*t).map(|f| (*t, f)))
            .unwrap_or_else(|| {
                panic!("no work agent status write on {c}'s work after its node's status writes")
            });
        out.insert(c.clone(), Loaded { node, feedback });
    }
    out
}

/// Asserts the waves: each wave's clusters were written together (before any of them loaded),
/// and every write to a later wave's cluster came after each earlier wave's nodes were loaded
/// and the agent reported status after that. Returns the first write per cluster.
fn assert_waves(
    writes: &[Stamped],
    loaded: &BTreeMap<String, Loaded>,
    waves: &[&[&str]],
) -> BTreeMap<String, Timestamp> {
    let first: BTreeMap<String, Timestamp> =
        writes.iter().rev().map(|e| (e.namespace.clone(), e.at)).collect();
    let timeline = || {
        let mut rows: Vec<String> = writes
            .iter()
            .map(|e| format!("{} hub {} work of {}", e.at, e.verb, e.namespace))
            .collect();
        for (c, l) in loaded {
            rows.push(format!("{} {c}: node loaded", l.node));
            rows.push(format!("{} {c}: agent status write after the load", l.feedback));
        }
        rows.sort();
        rows.join("\n")
    };
    eprintln!("timeline:\n{}", timeline());
    for (i, wave) in waves.iter().enumerate() {
        for c in *wave {
            assert!(first.contains_key(*c), "{c} was never written\n{}", timeline());
        }
        let last_move = wave.iter().map(|c| first[*c]).max().unwrap();
        let first_load = wave.iter().map(|c| loaded[*c].node).min().unwrap();
        assert!(
            last_move < first_load,
            "wave {} {wave:?} moved together\n{}",
            i + 1,
            timeline()
        );
        for later in &waves[i + 1..] {
            for d in *later {
                for w in writes.iter().filter(|e| e.namespace == *d) {
                    for c in *wave {
                        assert!(
                            w.at > loaded[*c].node && w.at > loaded[*c].feedback,
                            "{d} written at {} before {c} (an earlier wave) was loaded ({:?})\n{}",
                            w.at,
                            loaded[*c],
                            timeline()
                        );
                    }
                }
            }
        }
    }
    let written: BTreeSet<&str> = writes.iter().map(|e| e.namespace.as_str()).collect();
    let planned: BTreeSet<&str> = waves.iter().flat_map(|w| w.iter().copied()).collect();
    assert_eq!(
        written,
        planned,
        "only the rollout's clusters are written\n{}",
        timeline()
    );
    first
}

/// Applies `yaml` as the user would (server-side apply).
async fn apply(fleet: &Fleet, yaml: &str) {
    let mcm: ManagedClusterModule = serde_saphyr::from_str(yaml).unwrap();
    Api::<ManagedClusterModule>::all(fleet.hub.client())
        .patch(
            MCM,
            &PatchParams::apply("rollout-test").force(),
            &Patch::Apply(serde_json::to_value(&mcm).unwrap()),
        )
        .await
        .unwrap();
}

async fn work_revision(fleet: &Fleet, cluster: &str) -> Option<String> {
    Api::<ManifestWork>::namespaced(fleet.hub.client(), cluster)
        .get_opt(MCM)
        .await
        .unwrap()
        .and_then(|w| w.annotations().get(REVISION).cloned())
}

/// Notes of the hub's Events with `reason`.
async fn event_notes(fleet: &Fleet, reason: &str) -> Vec<String> {
    Api::<k8s_openapi::api::events::v1::Event>::all(fleet.hub.client())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.note)
        .collect()
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("rollout-fleet")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_image_rolls_out_in_waves_survives_a_hub_kill_and_a_bad_one_halts_at_the_canary() {
    let mut fleet = Fleet::start(&dir()).await.unwrap();
    // The work agents re-read the Modules' status faster than a node loads (about a second
    // here): each load's dip to "not loaded" reaches the hub, and the agent writes again once
    // the node is loaded. At the 1 s default a quick load could fall between two reads; the
    // feedback then never changed and the wave gate passed on the old revision's counts.
    fleet.agent_options.status_sync_interval = Duration::from_millis(200);
    fleet.push_prebuilt(K).unwrap();
    fleet
        .images
        .module_image(&fleet.registry, &format!("kmm/fleet-v2:{K}"), K)
        .unwrap();
    let specs: Vec<SpokeSpec> = CLUSTERS
        .iter()
        .map(|c| {
            let labels: &[(&str, &str)] = if *c == CANARY {
                &[("driver", "nic"), ("canary", "true")]
            } else {
                &[("driver", "nic")]
            };
            (*c, labels, vec![NodeSpec::worker(&format!("{c}-1"), K)])
        })
        .collect();
    fleet.add_spokes(&specs).await.unwrap();
    fleet.start_hub().unwrap();
    let host = fleet.registry.host.clone();

    // v1 everywhere at once (`All`).
    apply(&fleet, &mcm_yaml(&host, "fleet-prebuilt", "kmm_fleet", ALL)).await;
    follow(
        &mut fleet,
        "fleet-prebuilt",
        "v1 loaded everywhere",
        420,
        |r| r.phase == "Succeeded" && r.updated == 6,
        async |_, _| {},
    )
    .await;
    let v1 = rollout(&fleet).await.unwrap().target_revision;

    // 1. A new image, Progressive: canary, then 2, 2, 1, each wave after the previous one loaded.
    //    c1's node is down from the canary's load until 9 s after c1 moved, so c1 loads later
    //    than minSuccessTime after its move: only a gate on "loaded" holds wave 3 back.
    let mark = Timestamp::now();
    apply(&fleet, &mcm_yaml(&host, "fleet-v2", "kmm_fleet", PROGRESSIVE)).await;
    let mut c1_down = false;
    let mut c1_moved: Option<std::time::Instant> = None;
    let seen = follow(
        &mut fleet,
        "fleet-v2",
        "v2 loaded everywhere in four waves",
        600,
        |r| r.target_revision != v1 && r.phase == "Succeeded" && r.updated == 6,
        async |fleet, status| {
            let Some(target) = status
                .as_ref()
                .map(|s| s.target_revision.clone())
                .filter(|t| *t != v1)
            else {
                return;
            };
            let nodes = &fleet.spoke("c1").unwrap().nodes;
            if !c1_down
                && loaded_image(fleet, CANARY)
                    .await
                    .is_some_and(|i| i.contains("/kmm/fleet-v2@"))
            {
                nodes.set_down("c1-1", true);
                c1_down = true;
            }
            if c1_down
                && c1_moved.is_none()
                && work_revision(fleet, "c1").await.as_deref() == Some(target.as_str())
            {
                c1_moved = Some(std::time::Instant::now());
            }
            if c1_moved.is_some_and(|t| t.elapsed() > Duration::from_secs(9)) && nodes.is_down("c1-1") {
                nodes.set_down("c1-1", false);
            }
        },
    )
    .await;
    assert!(c1_moved.is_some(), "c1's node was held down while c1 moved");
    let v2 = rollout(&fleet).await.unwrap();
    assert_eq!(v2.wave, 4, "{v2:?}");
    let hub = fleet
        .hub
        .audit_settled()
        .await
        .map(|_| stamped(&fleet.hub))
        .unwrap();
    let loaded = loaded_times(&fleet, &hub, &seen);
    let first = assert_waves(&hub_work_writes(&hub, mark), &loaded, &WAVES);
    let c1_load = loaded["c1"].node.duration_since(first["c1"]);
    assert!(
        c1_load > k8s_openapi::jiff::SignedDuration::from_secs(6),
        "c1 loaded {c1_load} after its move, within minSuccessTime: the scenario did not test the gate"
    );
    for c in CLUSTERS {
        assert_eq!(
            work_revision(&fleet, c).await.as_deref(),
            Some(v2.target_revision.as_str()),
            "{c}"
        );
    }

    // 2. Back to v1, and the hub killed while wave 2 is in progress: the restarted hub goes on
    //    with wave 3 and writes nothing to the clusters already moved.
    let mark = Timestamp::now();
    apply(
        &fleet,
        &mcm_yaml(&host, "fleet-prebuilt", "kmm_fleet", PROGRESSIVE),
    )
    .await;
    let mut restarted_at: Option<Timestamp> = None;
    let mut waves_after_restart: Vec<i32> = Vec::new();
    let seen = follow(
        &mut fleet,
        "fleet-prebuilt",
        "v1 back everywhere across a hub restart",
        600,
        |r| r.target_revision == v1 && r.phase == "Succeeded" && r.updated == 6,
        async |fleet, status| {
            if restarted_at.is_some() {
                if let Some(s) = status.as_ref().filter(|s| s.target_revision == v1) {
                    waves_after_restart.push(s.wave);
                }
                return;
            }
            let Some(s) = status.as_ref().filter(|s| s.target_revision == v1 && s.wave == 2) else {
                return;
            };
            if work_revision(fleet, "c1").await.as_deref() == Some(v1.as_str())
                && work_revision(fleet, "c2").await.as_deref() == Some(v1.as_str())
            {
                eprintln!("killing the hub in wave 2: {s:?}");
                fleet.hub_process.as_mut().unwrap().kill();
                tokio::time::sleep(Duration::from_secs(2)).await;
                restarted_at = Some(Timestamp::now());
                fleet.start_hub().unwrap();
            }
        },
    )
    .await;
    let restarted_at = restarted_at.expect("the hub was killed in wave 2");
    assert_eq!(fleet.hub_starts(), 2);
    let hub = fleet
        .hub
        .audit_settled()
        .await
        .map(|_| stamped(&fleet.hub))
        .unwrap();
    let loaded = loaded_times(&fleet, &hub, &seen);
    let back = hub_work_writes(&hub, mark);
    assert_waves(&back, &loaded, &WAVES);
    let after: BTreeSet<&str> = back
        .iter()
        .filter(|e| e.at >= restarted_at)
        .map(|e| e.namespace.as_str())
        .collect();
    assert_eq!(
        after,
        BTreeSet::from(["c3", "c5", "c6"]),
        "the restarted hub wrote only the clusters of waves 3 and 4"
    );
    assert!(
        waves_after_restart.first() == Some(&2) && waves_after_restart.is_sorted(),
        "the restarted hub goes on from wave 2: {waves_after_restart:?}"
    );

    // 3. A module the workers cannot load: the canary fails, the rollout halts, nobody else moves.
    let mark = Timestamp::now();
    apply(
        &fleet,
        &mcm_yaml(&host, "fleet-prebuilt", "kmm_absent", PROGRESSIVE),
    )
    .await;
    follow(
        &mut fleet,
        "fleet-prebuilt",
        "the rollout halted",
        300,
        |r| r.phase == "Halted",
        async |_, _| {},
    )
    .await;
    let mcm = Api::<ManagedClusterModule>::all(fleet.hub.client())
        .get(MCM)
        .await
        .unwrap();
    let halted = mcm
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "RolloutHalted")
        .unwrap();
    assert_eq!(halted.status, "True");
    assert!(
        halted
            .message
            .contains("c4 (LoadFailed: 1 node(s) failing; c4-1: modprobe"),
        "{}",
        halted.message
    );
    // The condition keeps 200 bytes per cluster, and the worker's modprobe line carries the
    // pod's folder under this clone's target dir, so a long clone path can cut the module name
    // off there; the canary's own Module status names it.
    let module = Api::<Module>::namespaced(fleet.spoke(CANARY).unwrap().cluster.client(), MODULE_NAMESPACE)
        .get(MCM)
        .await
        .unwrap();
    let conditions = module.status.map(|s| s.conditions).unwrap_or_default();
    assert!(
        conditions.iter().any(|c| c.message.contains("kmm_absent failed")),
        "{conditions:?}"
    );
    // Longer than minSuccessTime: a gate that let anything through would move wave 2 by now.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let hub = fleet
        .hub
        .audit_settled()
        .await
        .map(|_| stamped(&fleet.hub))
        .unwrap();
    let written: BTreeSet<String> = hub_work_writes(&hub, mark)
        .into_iter()
        .map(|e| e.namespace)
        .collect();
    assert_eq!(
        written,
        BTreeSet::from([CANARY.to_owned()]),
        "only the canary's ManifestWork was written"
    );
    for c in CLUSTERS.iter().filter(|c| **c != CANARY) {
        assert_eq!(
            work_revision(&fleet, c).await.as_deref(),
            Some(v1.as_str()),
            "{c} stays on v1"
        );
    }
    let r = rollout(&fleet).await.unwrap();
    assert_eq!((r.failed, r.pending, r.wave), (1, 5, 1), "{r:?}");
    assert_eq!(
        event_notes(&fleet, "RolloutHalted").await.len(),
        1,
        "one Warning Event for the halt"
    );
}
