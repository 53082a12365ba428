//! Hub benchmark (`just bench`, never part of `just test`): cold start of one MCM over a large
//! simulated fleet (tests/sim: sizes the real control plane of this machine cannot hold), against
//! the release `kmm-hub` binary (`KMM_BIN_DIR`) and a real registry, beside the floor (a minimal
//! client server-side-applying the same works to the same simulator). One `BENCH name=...
//! apiserver=simulator` line per figure; docs/benchmarks.md records them.

// Test helpers outside #[test] functions may unwrap: a panic there is a failed benchmark.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use kmm_api::{ManagedClusterModule, ocm::ManifestWork};
use kmm_sim::{FleetMember, Sim};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use support::{
    bench::{KERNELS, floor, mcm, proc_usage, report_floor},
    fleet::{HUB_NAMESPACE, start_sim_hub},
    start_registry,
};

const APISERVER: &str = "simulator";

fn bench(name: &str, value: f64, unit: &str, clusters: usize) {
    support::bench::bench(name, value, unit, clusters, APISERVER);
}

async fn cold_start(clusters: usize) {
    let sim = Sim::new().unwrap();
    let hub = sim.add_cluster("hub").await.unwrap();
    hub.install_crds_from_path(kmm_test_kit::crds_dir()).unwrap();
    hub.install_crds_from_path(kmm_fleet_tests::controlplane::ocm_crds().unwrap().join("all"))
        .unwrap();
    hub.apply_yaml(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {HUB_NAMESPACE}\n"
    ))
    .unwrap();
    let members: Vec<FleetMember> = (0..clusters)
        .map(|i| FleetMember {
            name: format!("cluster-{i:05}"),
            labels: vec![("env".into(), "prod".into())],
            claims: vec![(
                "kernel-versions.kmm.node.kubernetes.io".into(),
                KERNELS[i % 3].into(),
            )],
        })
        .collect();
    let setup = hub.add_managed_clusters(&members).unwrap();
    let registry = start_registry(&format!("bench-{clusters}"));
    for k in KERNELS {
        registry.push_labelled(&format!("kmm/kmod:{k}")).unwrap();
    }
    let registry_before = registry.manifest_requests("kmm/kmod");

    let process = start_sim_hub(&hub, sim.dir(), "bench", &["--leader-election", "false"]);
    let deadline = Instant::now() + Duration::from_secs(600);
    while !process.ready().await {
        assert!(Instant::now() < deadline, "hub never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hub.reset_requests();
    let started = Instant::now();
    Api::<ManagedClusterModule>::all(hub.client())
        .create(&PostParams::default(), &mcm(&registry.host))
        .await
        .unwrap();
    loop {
        let written = hub.requests().get("patch", "manifestworks");
        if written >= clusters as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {written} of {clusters} ManifestWorks written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_written = started.elapsed();
    // Let the status write and the reconciles the hub's own writes trigger settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests = hub.requests();
    let (rss, _) = proc_usage(process.pid());
    let reconciles = process.metric("kmm_hub_reconciles_total").await.unwrap_or(0.0);
    let _ = std::fs::copy(
        &process.log,
        std::env::temp_dir().join(format!("kmm-hub-bench-{clusters}.log")),
    );
    let registry_requests = registry.manifest_requests("kmm/kmod") - registry_before;
    let works: Vec<ManifestWork> = Api::<ManifestWork>::all(hub.client())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let floor = floor(&hub.client(), &works).await;
    report_floor(all_written, &floor, clusters, APISERVER);
    bench(
        "manifestwork_writes",
        requests.get("patch", "manifestworks") as f64,
        "count",
        clusters,
    );
    bench(
        "api_requests_per_cluster",
        requests.total() as f64 / clusters as f64,
        "requests",
        clusters,
    );
    bench(
        "registry_requests_per_unique_image",
        registry_requests as f64 / 3.0,
        "requests",
        clusters,
    );
    bench("hub_peak_rss", rss as f64 / 1024.0, "MiB", clusters);
    bench("hub_reconciles", reconciles, "count", clusters);
    bench("sim_setup_seconds", setup.elapsed.as_secs_f64(), "s", clusters);
    assert_eq!(
        requests.get("patch", "manifestworks"),
        clusters as u64,
        "one write per cluster"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with `just bench`"]
async fn hub_cold_start_1000_clusters() {
    cold_start(1_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with `just bench`"]
async fn hub_cold_start_10000_clusters() {
    cold_start(10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with `just bench`"]
async fn hub_cold_start_50000_clusters() {
    cold_start(50_000).await;
}
