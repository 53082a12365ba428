//! Hub benchmark (`just bench`, never part of `just test`): cold start of one MCM over a large
//! simulated fleet, against the release `kmm-hub` binary and a real registry. Prints one result
//! line per fleet size; docs/benchmarks.md records them.

// Test helpers outside #[test] functions may unwrap: a panic there is a failed benchmark.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use kmm_api::ManagedClusterModule;
use kmm_sim::{FleetMember, Sim};
use kube::{Api, api::PostParams};
use support::{
    fleet::{HUB_NAMESPACE, start_sim_hub},
    start_registry,
};

const KERNELS: [&str; 3] = [
    "6.1.0-27-cloud-amd64",
    "6.1.0-28-cloud-amd64",
    "6.1.0-29-cloud-amd64",
];

/// Peak resident set of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
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
    let mcm: ManagedClusterModule = serde_saphyr::from_str(&format!(
        "apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1\nkind: ManagedClusterModule\nmetadata: {{name: bench}}\n\
         spec:\n  spokeNamespace: drivers\n  selector: {{env: prod}}\n  moduleSpec:\n    selector: {{}}\n\
         \x20   moduleLoader:\n      container:\n        modprobe: {{moduleName: kmod}}\n        kernelMappings:\n\
         \x20         - regexp: '^.+$'\n            containerImage: {}/kmm/kmod:${{KERNEL_FULL_VERSION}}\n\
         \x20           registryTLS: {{insecure: true}}\n",
        registry.host
    ))
    .unwrap();
    let started = Instant::now();
    Api::<ManagedClusterModule>::all(hub.client())
        .create(&PostParams::default(), &mcm)
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
    let rss = peak_rss_kib(process.pid());
    let reconciles = process.metric("kmm_hub_reconciles_total").await.unwrap_or(0.0);
    let _ = std::fs::copy(
        &process.log,
        std::env::temp_dir().join(format!("kmm-hub-bench-{clusters}.log")),
    );
    let registry_requests = registry.manifest_requests("kmm/kmod") - registry_before;
    println!(
        "BENCH clusters={clusters} kernels=3 seconds_until_all_works_written={:.2} \
         api_requests_total={} api_requests_per_cluster={:.2} manifestwork_writes={} \
         registry_manifest_requests={registry_requests} registry_requests_per_unique_image={:.2} \
         hub_peak_rss_mib={:.1} sim_setup_seconds={:.2} hub_reconciles={reconciles}",
        all_written.as_secs_f64(),
        requests.total(),
        requests.total() as f64 / clusters as f64,
        requests.get("patch", "manifestworks"),
        registry_requests as f64 / 3.0,
        rss as f64 / 1024.0,
        setup.elapsed.as_secs_f64(),
    );
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
