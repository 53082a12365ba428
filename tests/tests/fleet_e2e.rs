//! The fleet end to end: the real `kmm-hub` and `kmm-spoke` processes, a hub and three spokes
//! on real control planes with OCM's own agents, a real registry, build and sign Jobs run with buildah
//! and `kmm-hub sign-image`, worker pods that pull the module image and run modprobe (dry run).
//! Sign Jobs and worker pods run from the kmm-hub and kmm-spoke images `scripts/images` built
//! (pushed to the fleet's registry, run chrooted in the pulled image by the kubelet stand-in).
//! Every step asserts on the objects a user would look at, in all four clusters.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is a failed test

use std::{
    collections::BTreeMap,
    future::Future,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    batch::v1::Job,
    core::v1::{Node, Pod},
};
use kmm_api::{
    ManagedClusterModule, Module, labels,
    nmc::NodeModulesConfig,
    ocm::{ManagedCluster, ManifestWork},
};
use kmm_fleet_tests::{
    Wait,
    controlplane::Options,
    demo,
    fleet::{Fleet, HUB_NAMESPACE, MODULE_NAMESPACE, NodeSpec, SIGNER, set_kernel},
    images, run,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

const MCM: &str = "fleet-kmod";
/// Prebuilt images exist for these two kernels (the demo's MCM maps them literally).
const K_A: &str = demo::K_EAST;
const K_B: &str = demo::K_WEST;
/// This one is built and signed on the hub, as is the kernel spoke a upgrades to.
const K_C: &str = demo::K_EDGE;
const K_UPGRADE: &str = demo::K_NEXT;

fn fleet_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("e2e-{name}"))
}

/// A fleet whose sign Jobs and worker pods run from the product images.
async fn start_fleet(name: &str, hub_options: Options) -> Fleet {
    Fleet::start_from_images(&fleet_dir(name), hub_options)
        .await
        .unwrap()
}

fn mcm_yaml(host: &str) -> String {
    demo::example_mcm(MCM, host)
}

/// Waits up to `secs` for `check`; on timeout fails with what was awaited and the logs.
async fn eventually<F, Fut>(fleet: &Fleet, secs: u64, what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let Err(timed_out) = Wait::new(what, Duration::from_secs(secs)).until(check).await else {
        return;
    };
    let mcm = Api::<ManagedClusterModule>::all(fleet.hub.client())
        .get_opt(MCM)
        .await
        .ok()
        .flatten();
    let status = mcm
        .and_then(|m| m.status)
        .map(|s| serde_json::to_string_pretty(&s).unwrap_or_default());
    let jobs: Vec<String> = hub_jobs(fleet)
        .await
        .iter()
        .map(|j| format!("{} {:?}", j.name_any(), j.status))
        .collect();
    let runs = fleet.pod_logs.all();
    let last_runs: Vec<String> = runs
        .iter()
        .rev()
        .take(4)
        .map(|l| format!("{}/{}/{}: {}", l.cluster, l.namespace, l.pod, l.output))
        .collect();
    panic!(
        "{timed_out}\nlast pod runs: {last_runs:#?}\nMCM status: {}\nhub Jobs: {jobs:#?}\n{}",
        status.unwrap_or_else(|| "none".into()),
        fleet.log_tails(40)
    );
}

/// A hub and spoke `a` (one worker node `a-1` on kernel A, its prebuilt image pushed), the hub
/// running.
async fn one_spoke(name: &str) -> Fleet {
    let mut fleet = start_fleet(name, Options::hub()).await;
    fleet.push_prebuilt(K_A).unwrap();
    fleet
        .add_spoke("a", &[("driver", "gpu")], &[NodeSpec::worker("a-1", K_A)])
        .await
        .unwrap();
    fleet.start_hub().unwrap();
    fleet
}

async fn create_mcm(fleet: &Fleet, mcm: &ManagedClusterModule) {
    Api::<ManagedClusterModule>::all(fleet.hub.client())
        .create(&PostParams::default(), mcm)
        .await
        .unwrap();
}

async fn work(fleet: &Fleet, cluster: &str) -> Option<ManifestWork> {
    Api::<ManifestWork>::namespaced(fleet.hub.client(), cluster)
        .get_opt(MCM)
        .await
        .unwrap()
}

/// The Module a ManifestWork carries.
fn carried_module(work: &ManifestWork) -> serde_json::Value {
    let manifest = &work.spec.workload.manifests[0];
    serde_json::to_value(manifest).unwrap()
}

/// `(literal kernel, image)` of every mapping of the carried Module.
fn mappings(work: &ManifestWork) -> BTreeMap<String, String> {
    let module = carried_module(work);
    module["spec"]["moduleLoader"]["container"]["kernelMappings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["literal"].as_str().unwrap().to_owned(),
                m["containerImage"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn mcm_status(fleet: &Fleet) -> Option<kmm_api::mcm::ManagedClusterModuleStatus> {
    Api::<ManagedClusterModule>::all(fleet.hub.client())
        .get_opt(MCM)
        .await
        .unwrap()
        .and_then(|m| m.status)
}

async fn node_labels(fleet: &Fleet, spoke: &str, node: &str) -> BTreeMap<String, String> {
    Api::<Node>::all(fleet.spoke(spoke).unwrap().cluster.client())
        .get(node)
        .await
        .unwrap()
        .labels()
        .clone()
}

async fn ready_nodes(fleet: &Fleet, spoke: &str) -> Vec<String> {
    let ready = labels::module_ready(MODULE_NAMESPACE, MCM);
    Api::<Node>::all(fleet.spoke(spoke).unwrap().cluster.client())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|n| n.labels().contains_key(&ready))
        .map(|n| n.name_any())
        .collect()
}

async fn hub_jobs(fleet: &Fleet) -> Vec<Job> {
    Api::<Job>::namespaced(fleet.hub.client(), HUB_NAMESPACE)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
}

/// Pods the hub's kubelet ran (build and sign Jobs' pods).
fn hub_runs(fleet: &Fleet) -> usize {
    fleet.pod_logs.all().iter().filter(|l| l.cluster == "hub").count()
}

/// Worker runs on `spoke` whose output shows modprobe inserting the fleet module.
fn insmod_runs(fleet: &Fleet, spoke: &str) -> usize {
    fleet
        .pod_logs
        .all()
        .iter()
        .filter(|l| l.cluster == spoke && l.output.contains("insmod ") && l.output.contains("kmm_fleet.ko"))
        .count()
}

/// Worker runs on `spoke` whose modprobe inserted the module for `kernel` from `/tmp`, the
/// worker pod's emptyDir as a process chrooted in the kmm-spoke image sees it (run as a
/// command of this machine, the path would be the pod's folder here).
fn runs_inside_the_image(fleet: &Fleet, spoke: &str, kernel: &str) -> usize {
    let inside = format!("modprobe: insmod /tmp/opt/lib/modules/{kernel}/");
    fleet
        .pod_logs
        .all()
        .iter()
        .filter(|l| l.cluster == spoke && l.output.contains(&inside))
        .count()
}

/// Pod folders under `pods` whose main container was unpacked from an image holding `binary`.
fn pods_from_image(pods: &Path, binary: &str) -> usize {
    std::fs::read_dir(pods)
        .map(|entries| {
            entries
                .filter_map(|e| Some(e.ok()?.path()))
                .filter(|pod| pod.join("main/rootfs").join(binary).is_file())
                .count()
        })
        .unwrap_or(0)
}

/// Manifest requests for the product image `name` in the fleet's registry (its access log).
fn pulls(fleet: &Fleet, name: &str) -> usize {
    fleet.registry.manifest_requests(&format!("kmm-fleet/{name}"))
}

/// Pulls `image` and returns the `modinfo -F signer` of its module for `kernel`.
fn signer_of(fleet: &Fleet, image: &str, kernel: &str, name: &str) -> String {
    let bundle = images::unpack(
        &format!("docker://{image}"),
        &fleet.dir.join(format!("readback-{name}")),
    )
    .unwrap();
    let ko = bundle.join(format!("opt/lib/modules/{kernel}/extra/kmm_fleet.ko"));
    run(Command::new("modinfo").args(["-F", "signer"]).arg(ko))
        .unwrap()
        .trim()
        .to_owned()
}

/// A fleet of three spokes labelled `driver=gpu`: `a` on K_A (two workers and a control-plane
/// node), `b` on K_B, `c` on K_C; prebuilt images for K_A and K_B, sources for K_C/K_UPGRADE.
async fn three_spokes(name: &str) -> Fleet {
    let mut fleet = start_fleet(name, Options::hub()).await;
    fleet.push_prebuilt(K_A).unwrap();
    fleet.push_prebuilt(K_B).unwrap();
    fleet.push_sources(&[K_C, K_UPGRADE]).unwrap();
    let mut control = NodeSpec::worker("a-cp", K_A);
    control.labels = BTreeMap::from([("node-role.kubernetes.io/control-plane".into(), String::new())]);
    let spokes = [
        (
            "a",
            vec![
                NodeSpec::worker("a-1", K_A),
                NodeSpec::worker("a-2", K_A),
                control,
            ],
        ),
        ("b", vec![NodeSpec::worker("b-1", K_B)]),
        ("c", vec![NodeSpec::worker("c-1", K_C)]),
    ];
    for (spoke, nodes) in spokes {
        fleet
            .add_spoke(spoke, &[("driver", "gpu")], &nodes)
            .await
            .unwrap();
    }
    fleet
}

async fn apply_mcm(fleet: &Fleet) {
    let mcm: ManagedClusterModule = serde_saphyr::from_str(&mcm_yaml(&fleet.registry.host)).unwrap();
    create_mcm(fleet, &mcm).await;
}

/// Every spoke loaded: ManifestWorks applied, nodes ready, MCM status complete.
async fn converged(fleet: &Fleet, nodes_loaded: i64) -> bool {
    let Some(status) = mcm_status(fleet).await else {
        return false;
    };
    status.number_applied == 3 && status.nodes_loaded == nodes_loaded && status.nodes_desired == nodes_loaded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_rolls_out_follows_a_kernel_upgrade_a_relabel_and_a_deletion() {
    let mut fleet = three_spokes("rollout").await;
    // Neither binary exists here where the images hold it: a pod that ran it ran the image's.
    for binary in ["/usr/local/bin/kmm-hub", "/usr/local/bin/kmm-spoke"] {
        assert!(
            !Path::new(binary).exists(),
            "this machine has {binary}: the test could not tell it from the image's"
        );
    }
    let (hub_pulls, spoke_pulls) = (pulls(&fleet, "kmm-hub"), pulls(&fleet, "kmm-spoke"));
    fleet.start_hub().unwrap();
    apply_mcm(&fleet).await;
    let host = fleet.registry.host.clone();

    // 1. Rollout: every cluster gets its ManifestWork with digest-pinned literal mappings.
    eventually(&fleet, 300, "a ManifestWork per cluster", || async {
        work(&fleet, "a").await.is_some()
            && work(&fleet, "b").await.is_some()
            && work(&fleet, "c").await.is_some()
    })
    .await;
    let prebuilt_a = fleet
        .registry
        .digest(&format!("kmm/fleet-prebuilt:{K_A}"))
        .unwrap();
    let prebuilt_b = fleet
        .registry
        .digest(&format!("kmm/fleet-prebuilt:{K_B}"))
        .unwrap();
    let built_c = fleet.registry.digest(&format!("kmm/fleet-built:{K_C}")).unwrap();
    let expect = |kernel: &str, repo: &str, digest: &str| {
        BTreeMap::from([(kernel.to_owned(), format!("{host}/kmm/{repo}@{digest}"))])
    };
    assert_eq!(
        mappings(&work(&fleet, "a").await.unwrap()),
        expect(K_A, "fleet-prebuilt", &prebuilt_a)
    );
    assert_eq!(
        mappings(&work(&fleet, "b").await.unwrap()),
        expect(K_B, "fleet-prebuilt", &prebuilt_b)
    );
    assert_eq!(
        mappings(&work(&fleet, "c").await.unwrap()),
        expect(K_C, "fleet-built", &built_c)
    );
    for cluster in ["a", "b", "c"] {
        let text = carried_module(&work(&fleet, cluster).await.unwrap()).to_string();
        assert!(
            !text.contains("\"build\"") && !text.contains("\"sign\""),
            "{cluster}: {text}"
        );
    }
    // Built and signed once (one build pod and one sign pod ran), with the fleet's key; the
    // sign pod from the kmm-hub image (the only pod unpacked from it), the build pod buildah here.
    assert_eq!(hub_runs(&fleet), 2);
    assert_eq!(
        pods_from_image(&fleet.dir.join("hub-pods"), "usr/local/bin/kmm-hub"),
        1
    );
    assert_eq!(
        signer_of(&fleet, &format!("{host}/kmm/fleet-built:{K_C}"), K_C, "c"),
        SIGNER
    );

    // Modules on the spokes, loaded by worker pods on the worker nodes only; device plugins.
    eventually(
        &fleet,
        180,
        "every worker node loaded and the MCM status complete",
        || async { converged(&fleet, 4).await },
    )
    .await;
    for (spoke, nodes) in [("a", vec!["a-1", "a-2"]), ("b", vec!["b-1"]), ("c", vec!["c-1"])] {
        let client = fleet.spoke(spoke).unwrap().cluster.client();
        let module = Api::<Module>::namespaced(client.clone(), MODULE_NAMESPACE)
            .get(MCM)
            .await
            .unwrap();
        assert!(module.spec.module_loader.is_some());
        let mut ready = ready_nodes(&fleet, spoke).await;
        ready.sort();
        assert_eq!(ready, nodes, "{spoke}");
        assert!(
            insmod_runs(&fleet, spoke) >= nodes.len(),
            "{spoke}: the worker ran modprobe"
        );
        let kernel = [("a", K_A), ("b", K_B), ("c", K_C)]
            .into_iter()
            .find(|(s, _)| *s == spoke)
            .unwrap()
            .1;
        assert!(
            runs_inside_the_image(&fleet, spoke, kernel) >= nodes.len(),
            "{spoke}: the workers ran modprobe chrooted in the kmm-spoke image"
        );
        let pods = fleet.spoke(spoke).unwrap().dir().join("pods");
        assert!(
            pods_from_image(&pods, "usr/local/bin/kmm-spoke") >= nodes.len(),
            "{spoke}: worker pods unpacked from the kmm-spoke image"
        );
        let plugins = Api::<DaemonSet>::namespaced(client.clone(), MODULE_NAMESPACE)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        assert_eq!(plugins.len(), 1, "{spoke}: one device plugin DaemonSet");
    }
    eventually(&fleet, 60, "device plugin pods on every loaded node", || async {
        let mut ok = true;
        for (spoke, want) in [("a", 2), ("b", 1), ("c", 1)] {
            let pods = Api::<Pod>::namespaced(fleet.spoke(spoke).unwrap().cluster.client(), MODULE_NAMESPACE)
                .list(&ListParams::default())
                .await
                .unwrap()
                .items;
            let running = pods
                .iter()
                .filter(|p| !p.name_any().starts_with("kmm-worker-"))
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            ok &= running == want;
        }
        ok
    })
    .await;
    assert!(
        !node_labels(&fleet, "a", "a-cp")
            .await
            .contains_key(&labels::module_ready(MODULE_NAMESPACE, MCM))
    );
    // The kubelets pulled both images from the fleet's registry (its access log), by the
    // digests the hub and the spokes were given.
    assert!(
        pulls(&fleet, "kmm-hub") > hub_pulls,
        "the hub's kubelet pulled kmm-hub"
    );
    assert!(
        pulls(&fleet, "kmm-spoke") > spoke_pulls,
        "the spokes' kubelets pulled kmm-spoke"
    );
    let images = fleet.product_images.clone().unwrap();
    assert!(
        images.spoke.contains("/kmm-fleet/kmm-spoke@sha256:"),
        "{images:?}"
    );

    // 2. Kernel upgrade on a-2: the hub builds for the new kernel and updates only cluster a
    //    (a ManifestWork's generation moves with its spec only, not with status feedback).
    let before_b = work(&fleet, "b").await.unwrap().metadata.generation;
    let before_c = work(&fleet, "c").await.unwrap().metadata.generation;
    set_kernel(&fleet.spoke("a").unwrap().cluster, "a-2", K_UPGRADE, "boot-2")
        .await
        .unwrap();
    eventually(
        &fleet,
        300,
        "cluster a's ManifestWork maps the upgraded kernel",
        || async {
            work(&fleet, "a")
                .await
                .is_some_and(|w| mappings(&w).contains_key(K_UPGRADE))
        },
    )
    .await;
    let built_upgrade = fleet
        .registry
        .digest(&format!("kmm/fleet-built:{K_UPGRADE}"))
        .unwrap();
    let a = mappings(&work(&fleet, "a").await.unwrap());
    assert_eq!(a[K_UPGRADE], format!("{host}/kmm/fleet-built@{built_upgrade}"));
    assert_eq!(a[K_A], format!("{host}/kmm/fleet-prebuilt@{prebuilt_a}"));
    assert_eq!(hub_runs(&fleet), 4, "one more build and sign");
    eventually(&fleet, 180, "a-2 reloaded on the new kernel", || async {
        let nmc = Api::<NodeModulesConfig>::all(fleet.spoke("a").unwrap().cluster.client())
            .get_opt("a-2")
            .await
            .unwrap();
        let loaded_on = nmc
            .and_then(|n| n.status)
            .and_then(|s| s.modules.first().and_then(|m| m.config.clone()))
            .map(|c| c.kernel_version);
        loaded_on.as_deref() == Some(K_UPGRADE) && ready_nodes(&fleet, "a").await.len() == 2
    })
    .await;
    assert_eq!(
        work(&fleet, "b").await.unwrap().metadata.generation,
        before_b,
        "b untouched"
    );
    assert_eq!(
        work(&fleet, "c").await.unwrap().metadata.generation,
        before_c,
        "c untouched"
    );

    // 3. Cluster b relabelled out of the selector: its work goes, its node unloads.
    let before_a = work(&fleet, "a").await.unwrap().metadata.generation;
    Api::<ManagedCluster>::all(fleet.hub.client())
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"driver": "none"}}})),
        )
        .await
        .unwrap();
    eventually(
        &fleet,
        120,
        "b's ManifestWork, Module and ready label gone",
        || async {
            let module =
                Api::<Module>::namespaced(fleet.spoke("b").unwrap().cluster.client(), MODULE_NAMESPACE)
                    .get_opt(MCM)
                    .await
                    .unwrap();
            work(&fleet, "b").await.is_none() && module.is_none() && ready_nodes(&fleet, "b").await.is_empty()
        },
    )
    .await;
    let unloads_b = fleet
        .pod_logs
        .all()
        .iter()
        .filter(|l| l.cluster == "b" && l.output.contains("-rvd"))
        .count();
    assert!(unloads_b >= 1, "an unload worker ran on b");
    assert_eq!(
        work(&fleet, "a").await.unwrap().metadata.generation,
        before_a,
        "a untouched"
    );
    assert_eq!(
        work(&fleet, "c").await.unwrap().metadata.generation,
        before_c,
        "c untouched"
    );
    assert_eq!(ready_nodes(&fleet, "c").await, ["c-1"]);

    // 4. MCM deleted: every spoke unloads; no ManifestWork, Module or label is left.
    Api::<ManagedClusterModule>::all(fleet.hub.client())
        .delete(MCM, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        &fleet,
        120,
        "the MCM, every ManifestWork, Module and label gone",
        || async {
            let mut gone = Api::<ManagedClusterModule>::all(fleet.hub.client())
                .get_opt(MCM)
                .await
                .unwrap()
                .is_none();
            for spoke in ["a", "b", "c"] {
                let client = fleet.spoke(spoke).unwrap().cluster.client();
                gone &= work(&fleet, spoke).await.is_none();
                gone &= Api::<Module>::namespaced(client.clone(), MODULE_NAMESPACE)
                    .get_opt(MCM)
                    .await
                    .unwrap()
                    .is_none();
                let nodes = Api::<Node>::all(client)
                    .list(&ListParams::default())
                    .await
                    .unwrap()
                    .items;
                gone &= nodes.iter().all(|n| {
                    !n.labels()
                        .keys()
                        .any(|k| k.contains(&format!("{MODULE_NAMESPACE}.{MCM}")))
                });
            }
            gone
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_restart_and_an_unreachable_spoke_mid_rollout_lose_nothing() {
    let mut fleet = three_spokes("restart").await;
    fleet.start_hub().unwrap();
    // Spoke b is cut off from the hub (its OCM agent is down) while the rollout starts.
    fleet.spoke_mut("b").unwrap().disconnect();
    apply_mcm(&fleet).await;

    // Kill the hub as soon as the build Job exists (the build is under way), then start it again.
    eventually(&fleet, 120, "the build Job started", || async {
        !hub_jobs(&fleet).await.is_empty()
    })
    .await;
    fleet.hub_process.as_mut().unwrap().kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet.start_hub().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    fleet.spoke_mut("b").unwrap().reconnect().unwrap();

    eventually(
        &fleet,
        300,
        "every cluster loaded after the restart and the outage",
        || async { converged(&fleet, 4).await },
    )
    .await;
    // No duplicate work: one build pod and one sign pod ran, one push per image.
    assert_eq!(hub_runs(&fleet), 2, "one build pod and one sign pod ran");
    assert_eq!(
        fleet.registry.manifest_pushes("kmm/fleet-built"),
        2,
        "the unsigned intermediate and the signed image, pushed once each"
    );
    assert_eq!(fleet.hub_starts(), 2);
    for (spoke, nodes) in [("a", 2), ("b", 1), ("c", 1)] {
        assert_eq!(ready_nodes(&fleet, spoke).await.len(), nodes, "{spoke}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_the_workers_cannot_load_shows_on_the_hub_with_modprobes_reason() {
    let fleet = one_spoke("load-failure").await;
    // The image holds kmm_fleet; the MCM asks for a module it does not have.
    let yaml = mcm_yaml(&fleet.registry.host).replace("moduleName: kmm_fleet", "moduleName: kmm_absent");
    let mcm: ManagedClusterModule = serde_saphyr::from_str(&yaml).unwrap();
    create_mcm(&fleet, &mcm).await;

    eventually(
        &fleet,
        180,
        "cluster a degraded with the worker's reason",
        || async {
            mcm_status(&fleet).await.is_some_and(|s| {
                s.number_applied == 1
                    && s.number_degraded == 1
                    && s.problems.iter().any(|p| {
                        p.cluster == "a"
                            && p.state == "Degraded"
                            && p.reason == "LoadFailed"
                            && p.message.contains("a-1")
                            && p.message.contains("kmm_absent not found")
                    })
            })
        },
    )
    .await;
    assert!(ready_nodes(&fleet, "a").await.is_empty());

    // Fixed: the spoke loads it and the problem goes away.
    let fixed: ManagedClusterModule = serde_saphyr::from_str(&mcm_yaml(&fleet.registry.host)).unwrap();
    Api::<ManagedClusterModule>::all(fleet.hub.client())
        .patch(
            MCM,
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(serde_json::to_value(&fixed).unwrap()),
        )
        .await
        .unwrap();
    eventually(&fleet, 180, "cluster a loaded and no problem left", || async {
        mcm_status(&fleet)
            .await
            .is_some_and(|s| s.problems.is_empty() && s.nodes_loaded == 1 && s.number_degraded == 0)
    })
    .await;
    assert_eq!(ready_nodes(&fleet, "a").await, ["a-1"]);
}

/// OCM turns a cluster that stops renewing its lease Unknown: the hub must not count the
/// feedback it last reported as current, and must say the cluster is unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_goes_silent_is_reported_unreachable_until_it_is_back() {
    let mut fleet = one_spoke("unreachable").await;
    let mcm: ManagedClusterModule = serde_saphyr::from_str(&mcm_yaml(&fleet.registry.host)).unwrap();
    create_mcm(&fleet, &mcm).await;
    eventually(&fleet, 180, "cluster a loaded", || async {
        mcm_status(&fleet)
            .await
            .is_some_and(|s| s.number_applied == 1 && s.nodes_loaded == 1 && s.problems.is_empty())
    })
    .await;

    // The klusterlet agent goes away: no lease renewals, no feedback.
    fleet.spoke_mut("a").unwrap().disconnect();
    eventually(&fleet, 120, "cluster a reported unreachable", || async {
        mcm_status(&fleet).await.is_some_and(|s| {
            s.number_applied == 0
                && s.nodes_loaded == 0
                && s.problems.iter().any(|p| {
                    p.cluster == "a"
                        && p.state == "Unreachable"
                        && p.reason == "ClusterUnavailable"
                        && p.message.contains("ManagedClusterConditionAvailable Unknown")
                })
        })
    })
    .await;
    let ready = Api::<ManagedClusterModule>::all(fleet.hub.client())
        .get(MCM)
        .await
        .unwrap()
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "False");

    fleet.spoke_mut("a").unwrap().reconnect().unwrap();
    eventually(&fleet, 180, "cluster a back and loaded", || async {
        mcm_status(&fleet)
            .await
            .is_some_and(|s| s.number_applied == 1 && s.nodes_loaded == 1 && s.problems.is_empty())
    })
    .await;
}

/// The hub's watches resume after losing their place. The hub is frozen and the apiserver
/// restarts: on shutdown it sends each watch a bookmark, which waits in the frozen hub's socket.
/// Then a cluster is relabelled out, more writes follow, etcd compacts (every 2 s here) and the
/// apiserver restarts again, so its watch cache begins after the bookmark. When the hub thaws,
/// each watch resumes from a resourceVersion that no longer exists (410 Gone) and must list
/// again, and the hub must still notice the relabel. The apiserver's audit log is the witness of
/// the relist. (With one restart the resumed watch can start exactly where the new cache begins
/// and be served without a list.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_converges_after_its_watches_lose_their_place_to_a_compaction() {
    let mut hub_options = Options::hub();
    hub_options
        .apiserver_args
        .push("--etcd-compaction-interval=2s".into());
    let mut fleet = start_fleet("compaction", hub_options).await;
    fleet.push_prebuilt(K_A).unwrap();
    fleet.push_prebuilt(K_B).unwrap();
    for (spoke, kernel) in [("a", K_A), ("b", K_B)] {
        fleet
            .add_spoke(
                spoke,
                &[("driver", "gpu")],
                &[NodeSpec::worker(&format!("{spoke}-1"), kernel)],
            )
            .await
            .unwrap();
    }
    fleet.start_hub().unwrap();
    apply_mcm(&fleet).await;
    eventually(&fleet, 180, "both clusters loaded", || async {
        mcm_status(&fleet)
            .await
            .is_some_and(|s| s.number_applied == 2 && s.nodes_loaded == 2)
    })
    .await;

    fleet.hub_process.as_ref().unwrap().pause().unwrap();
    fleet.hub.restart_apiserver().await.unwrap();
    Api::<ManagedCluster>::all(fleet.hub.client())
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"driver": "none"}}})),
        )
        .await
        .unwrap();
    // More writes, so that compaction moves well past what the hub last saw.
    let cms = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(fleet.hub.client(), "default");
    for i in 0..20 {
        cms.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": format!("churn-{i}")}})).unwrap(),
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    fleet.hub.restart_apiserver().await.unwrap();
    let before = fleet.hub.audit().unwrap().len();
    fleet.hub_process.as_ref().unwrap().resume().unwrap();

    eventually(&fleet, 180, "b's ManifestWork gone after the relabel", || async {
        Api::<ManifestWork>::namespaced(fleet.hub.client(), "b")
            .get_opt(MCM)
            .await
            .unwrap()
            .is_none()
            && mcm_status(&fleet).await.is_some_and(|s| s.number_desired == 1)
    })
    .await;
    let audit = fleet.hub.audit_settled().await.unwrap();
    let relisted = audit[before..].iter().any(|e| {
        e.user.username == "system:serviceaccount:kmm-hub:kmm-hub"
            && e.resource() == "managedclusters"
            && (e.verb == "list" || e.request_uri.contains("sendInitialEvents=true"))
    });
    let seen: Vec<String> = audit[before..]
        .iter()
        .filter(|e| e.resource() == "managedclusters")
        .map(|e| format!("{} {} {}", e.user.username, e.verb, e.request_uri))
        .collect();
    assert!(
        relisted,
        "the hub listed ManagedClusters again after its watch lost its place; \
         ManagedCluster requests after the restarts:\n{}",
        seen.join("\n")
    );
}
