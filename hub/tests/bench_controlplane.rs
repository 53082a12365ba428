//! Hub benchmark on the real control plane (`just bench`, never part of `just test`): the
//! release `kmm-hub run` (`KMM_BIN_DIR=target/release`) against tests/controlplane's
//! kube-apiserver and etcd, a real registry.
//!
//! Per fleet size: cold start of one MCM over N clusters x 3 kernels, beside the floor (a
//! minimal client server-side-applying the same ManifestWorks to the same API server); then a
//! rolling kernel upgrade (10 % of the clusters change their kernel claim at a steady rate);
//! then a quiet minute. API requests are counted from the apiserver's audit log, registry
//! requests from the registry's access log, the hub's RSS and CPU from /proc. Each figure is one
//! `BENCH name=... value=... unit=... clusters=... apiserver=kube-apiserver profile=...` line.

// Test helpers outside #[test] functions may unwrap: a panic there is a failed benchmark.
#![allow(clippy::unwrap_used)]

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt, stream};
use kmm_api::{ManagedClusterModule, ocm::ManifestWork};
use kmm_fleet_tests::controlplane::AuditEvent;
use kube::{
    Api, ResourceExt,
    api::{DynamicObject, ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use support::{
    bench::{CONCURRENCY, KERNELS, floor, mcm, proc_usage, report_floor},
    fleet::{Fleet, HUB_USER},
};

const APISERVER: &str = "kube-apiserver";

fn bench(name: &str, value: f64, unit: &str, clusters: usize) {
    support::bench::bench(name, value, unit, clusters, APISERVER);
}

/// The kernel the rolling upgrade moves clusters to.
const NEW_KERNEL: &str = "6.1.0-30-cloud-amd64";
/// Claim changes per second during the rolling upgrade.
const UPGRADE_RATE: f64 = 50.0;

fn cluster_name(i: usize) -> String {
    format!("cluster-{i:05}")
}

fn claims(kernel: &str) -> serde_json::Value {
    let claims: Vec<serde_json::Value> = kmm_api::claims::encode_kernel_claims([kernel])
        .unwrap()
        .into_iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    json!(claims)
}

/// N hub-only clusters (namespace, ManagedCluster, Available condition and kernel claim), as
/// OCM's registration would leave them, written as admin.
async fn create_clusters(fleet: &Fleet, n: usize) {
    let clusters: Api<DynamicObject> = Api::all_with(
        fleet.hub.client(),
        &kmm_fleet_tests::ocm::managed_cluster_resource(),
    );
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(fleet.hub.client());
    let now = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ))
    .unwrap();
    stream::iter(0..n)
        .map(|i| {
            let (clusters, namespaces, now) = (&clusters, &namespaces, &now);
            async move {
                let name = cluster_name(i);
                let ns = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
                namespaces.create(&PostParams::default(), &ns).await.unwrap();
                let mc = serde_json::from_value(json!({
                    "apiVersion": "cluster.open-cluster-management.io/v1", "kind": "ManagedCluster",
                    "metadata": {"name": name, "labels": {"env": "prod"}},
                    "spec": {"hubAcceptsClient": true, "leaseDurationSeconds": 60},
                }))
                .unwrap();
                clusters.create(&PostParams::default(), &mc).await.unwrap();
                let status = json!({"status": {
                    "conditions": [{"type": "ManagedClusterConditionAvailable", "status": "True",
                        "reason": "ManagedClusterAvailable", "message": "bench", "lastTransitionTime": now}],
                    "clusterClaims": claims(KERNELS[i % 3]),
                }});
                clusters
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
}

fn hub_requests(audit: &[AuditEvent]) -> Vec<&AuditEvent> {
    audit.iter().filter(|e| e.user.username == HUB_USER).collect()
}

/// `kmm_hub_full_reconciles_total` by reason, from the hub's /metrics.
async fn full_reconciles(hub: &kmm_fleet_tests::process::Process) -> BTreeMap<String, f64> {
    let text = hub.http_get("/metrics").await.unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("kmm_hub_full_reconciles_total{reason=\""))
        .filter_map(|l| {
            let (reason, rest) = l.split_once('"')?;
            Some((reason.to_owned(), rest.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// Reconciles that took longer than 0.5 s so far (the duration histogram's count above that
/// bucket): a change arriving meanwhile waits for it.
async fn slow_reconciles(hub: &kmm_fleet_tests::process::Process) -> f64 {
    let all = hub.metric("kmm_hub_reconcile_duration_seconds_count").await;
    let fast = hub
        .metric("kmm_hub_reconcile_duration_seconds_bucket{le=\"0.5\"}")
        .await;
    all.unwrap_or(0.0) - fast.unwrap_or(0.0)
}

/// Sorted latencies' quantile (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn run(clusters: usize) {
    let fleet = Fleet::start(&format!("bench-{clusters}")).await;
    let setup = Instant::now();
    create_clusters(&fleet, clusters).await;
    bench("setup_seconds", setup.elapsed().as_secs_f64(), "s", clusters);
    for k in KERNELS.iter().chain([&NEW_KERNEL]) {
        fleet.registry.push_labelled(&format!("kmm/kmod:{k}")).unwrap();
    }
    let registry_before = fleet.registry.manifest_requests("kmm/kmod");
    let hub = fleet.start_hub("bench", &["--leader-election", "false"]);
    hub.wait_ready().await;
    let mark = fleet.hub.audit_settled().await.unwrap().len();

    // Cold start.
    let started = Instant::now();
    Api::<ManagedClusterModule>::all(fleet.hub.client())
        .create(&PostParams::default(), &mcm(&fleet.registry.host))
        .await
        .unwrap();
    hub.wait("every work written", Duration::from_secs(1800))
        .eventually(|| async {
            hub.metric("kmm_hub_manifestwork_writes_total")
                .await
                .is_some_and(|n| n >= clusters as f64)
        })
        .await;
    let cold = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let audit = fleet.hub.audit_settled().await.unwrap();
    let hub_reqs = hub_requests(&audit[mark..]);
    let work_writes = hub_reqs
        .iter()
        .filter(|e| e.is_write() && e.resource() == "manifestworks")
        .count();
    let (rss, _) = proc_usage(hub.pid());
    let registry_cold = fleet.registry.manifest_requests("kmm/kmod") - registry_before;
    let works: Vec<ManifestWork> = Api::<ManifestWork>::all(fleet.hub.client())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let floor = floor(&fleet.hub.client(), &works).await;
    report_floor(cold, &floor, clusters, APISERVER);
    bench("manifestwork_writes", work_writes as f64, "count", clusters);
    bench(
        "api_requests_per_cluster",
        hub_reqs.len() as f64 / clusters as f64,
        "requests",
        clusters,
    );
    bench(
        "registry_requests_per_unique_image",
        registry_cold as f64 / 3.0,
        "requests",
        clusters,
    );
    bench("hub_peak_rss", rss as f64 / 1024.0, "MiB", clusters);
    assert_eq!(work_writes, clusters, "one ManifestWork write per cluster");

    // Rolling kernel upgrade: every 10th cluster moves to NEW_KERNEL, UPGRADE_RATE a second.
    let changed: Vec<usize> = (0..clusters).step_by(10).collect();
    let changed_names: BTreeSet<String> = changed.iter().map(|i| cluster_name(*i)).collect();
    let sent: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let seen: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let watch = tokio::spawn({
        let (sent, seen) = (sent.clone(), seen.clone());
        let api = Api::<ManifestWork>::all(fleet.hub.client());
        async move {
            watcher(
                api,
                watcher::Config::default().labels(kmm_api::labels::MCM_NAME_LABEL),
            )
            .applied_objects()
            .try_for_each(|w| {
                let upgraded =
                    w.name_any() == "bench" && serde_json::to_string(&w.spec).unwrap().contains(NEW_KERNEL);
                let ns = w.namespace().unwrap_or_default();
                if upgraded && sent.lock().unwrap().contains_key(&ns) {
                    seen.lock().unwrap().entry(ns).or_insert_with(Instant::now);
                }
                futures::future::ready(Ok(()))
            })
            .await
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mark = fleet.hub.audit_settled().await.unwrap().len();
    let registry_before = fleet.registry.manifest_requests("kmm/kmod");
    let (_, cpu_before) = proc_usage(hub.pid());
    let full_before = full_reconciles(&hub).await;
    let slow_before = slow_reconciles(&hub).await;
    let mc: Api<DynamicObject> = Api::all_with(
        fleet.hub.client(),
        &kmm_fleet_tests::ocm::managed_cluster_resource(),
    );
    let rolling = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / UPGRADE_RATE));
    for i in &changed {
        tick.tick().await;
        let name = cluster_name(*i);
        sent.lock().unwrap().insert(name.clone(), Instant::now());
        let patch = json!({"status": {"clusterClaims": claims(NEW_KERNEL)}});
        mc.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }
    hub.wait("every changed cluster's work rewritten", Duration::from_secs(900))
        .eventually(|| async { seen.lock().unwrap().len() == changed.len() })
        .await;
    let rolled = rolling.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, cpu_after) = proc_usage(hub.pid());
    let full_after = full_reconciles(&hub).await;
    let slow_after = slow_reconciles(&hub).await;
    watch.abort();
    let mut latencies: Vec<f64> = {
        let (sent, seen) = (sent.lock().unwrap(), seen.lock().unwrap());
        seen.iter()
            .map(|(ns, at)| at.duration_since(sent[ns]).as_secs_f64())
            .collect()
    };
    latencies.sort_by(f64::total_cmp);
    let audit = fleet.hub.audit_settled().await.unwrap();
    let writes: Vec<&AuditEvent> = hub_requests(&audit[mark..])
        .into_iter()
        .filter(|e| e.is_write() && e.resource() == "manifestworks")
        .collect();
    let unchanged_writes = writes
        .iter()
        .filter(|e| !changed_names.contains(&e.object_ref.clone().unwrap_or_default().namespace))
        .count();
    let registry_rolling = fleet.registry.manifest_requests("kmm/kmod") - registry_before;
    bench("upgrade_changes", changed.len() as f64, "clusters", clusters);
    bench("upgrade_seconds", rolled.as_secs_f64(), "s", clusters);
    bench("upgrade_latency_p50", quantile(&latencies, 0.5), "s", clusters);
    bench("upgrade_latency_p99", quantile(&latencies, 0.99), "s", clusters);
    bench("upgrade_latency_max", quantile(&latencies, 1.0), "s", clusters);
    bench("upgrade_work_writes", writes.len() as f64, "count", clusters);
    bench(
        "upgrade_writes_to_unchanged_clusters",
        unchanged_writes as f64,
        "count",
        clusters,
    );
    bench(
        "upgrade_registry_requests",
        registry_rolling as f64,
        "requests",
        clusters,
    );
    // Each full reconcile is O(clusters) and holds back the changes behind it: say why.
    let mut full = 0.0;
    for (reason, after) in &full_after {
        let n = after - full_before.get(reason).copied().unwrap_or(0.0);
        if n > 0.0 {
            println!("upgrade: {n} full reconciles, reason {reason}");
        }
        full += n;
    }
    bench("upgrade_full_reconciles", full, "count", clusters);
    bench(
        "upgrade_reconciles_over_half_a_second",
        slow_after - slow_before,
        "count",
        clusters,
    );
    bench(
        "upgrade_hub_cpu_per_change",
        (cpu_after - cpu_before) / changed.len() as f64 * 1000.0,
        "ms",
        clusters,
    );

    // A quiet minute: nothing changes.
    let mark = fleet.hub.audit_settled().await.unwrap().len();
    let (_, cpu_before) = proc_usage(hub.pid());
    tokio::time::sleep(Duration::from_secs(60)).await;
    let (rss, cpu_after) = proc_usage(hub.pid());
    let audit = fleet.hub.audit_settled().await.unwrap();
    let quiet = hub_requests(&audit[mark..]);
    let quiet_writes = quiet.iter().filter(|e| e.is_write()).count();
    bench(
        "steady_requests_per_minute",
        quiet.len() as f64,
        "requests",
        clusters,
    );
    bench(
        "steady_writes_per_minute",
        quiet_writes as f64,
        "writes",
        clusters,
    );
    bench(
        "steady_hub_cpu_per_hour",
        (cpu_after - cpu_before) * 60.0,
        "s",
        clusters,
    );
    bench("hub_peak_rss_end", rss as f64 / 1024.0, "MiB", clusters);
    assert_eq!(unchanged_writes, 0, "no write to an unchanged cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with `just bench`"]
async fn hub_on_kube_apiserver_1000_clusters() {
    run(1_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with `just bench`"]
async fn hub_on_kube_apiserver_10000_clusters() {
    run(10_000).await;
}

/// The largest size the issue names. Setup alone is 150,000 admin requests; the apiserver and
/// etcd then hold 50,000 Namespaces, ManagedClusters and ManifestWorks (and the floor's 50,000
/// more): about 20 minutes and a few GiB on the 2-core machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with `just bench`"]
async fn hub_on_kube_apiserver_50000_clusters() {
    run(50_000).await;
}
