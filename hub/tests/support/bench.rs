//! What the hub benchmarks share: the figure lines, /proc readings, the MCM they create and the
//! floor (a minimal client server-side-applying the works the hub wrote).

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use kmm_api::{ManagedClusterModule, ocm::ManifestWork};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

/// The kernels the benchmark fleets run, one per cluster in turn.
pub const KERNELS: [&str; 3] = [
    "6.1.0-27-cloud-amd64",
    "6.1.0-28-cloud-amd64",
    "6.1.0-29-cloud-amd64",
];

/// Requests in flight while a floor applies (as many as the hub's writer keeps).
pub const CONCURRENCY: usize = 16;

/// One figure: `BENCH name=... value=... unit=... clusters=... apiserver=... profile=...`, where
/// `profile` is the kmm-hub binary's build (`KMM_BIN_DIR`, see kmm_test_kit::bin_dir).
pub fn bench(name: &str, value: f64, unit: &str, clusters: usize, apiserver: &str) {
    println!(
        "BENCH name={name} value={value:.3} unit={unit} clusters={clusters} apiserver={apiserver} profile={}",
        kmm_test_kit::bin_profile()
    );
}

/// `(peak RSS KiB, CPU seconds)` of a process, from /proc.
pub fn proc_usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime and stime are 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11..13)
        .map_or(0.0, |f| f.iter().map(|v| v.parse::<f64>().unwrap_or(0.0)).sum());
    (hwm, ticks / 100.0)
}

/// The benchmark's MCM `bench`: every `env=prod` cluster, one image per kernel in `registry`.
pub fn mcm(registry: &str) -> ManagedClusterModule {
    serde_saphyr::from_str(&format!(
        "apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1\nkind: ManagedClusterModule\nmetadata: {{name: bench}}\n\
         spec:\n  spokeNamespace: drivers\n  selector: {{env: prod}}\n  moduleSpec:\n    selector: {{}}\n\
         \x20   moduleLoader:\n      container:\n        modprobe: {{moduleName: kmod}}\n        kernelMappings:\n\
         \x20         - regexp: '^.+$'\n            containerImage: {registry}/kmm/kmod:${{KERNEL_FULL_VERSION}}\n\
         \x20           registryTLS: {{insecure: true}}\n"
    ))
    .unwrap()
}

/// What a floor run took: wall time, and the CPU time of this process (the client) meanwhile.
pub struct Floor {
    pub elapsed: Duration,
    pub client_cpu_seconds: f64,
}

/// A minimal client server-side-applying `works` (renamed `floor`, unlabelled so the hub's
/// watch does not see them), [`CONCURRENCY`] at a time. The client is this harness: its CPU time
/// says how much of the floor is the client's and how much the API server's.
pub async fn floor(client: &Client, works: &[ManifestWork]) -> Floor {
    let (_, cpu_before) = proc_usage(std::process::id());
    let started = Instant::now();
    stream::iter(works)
        .map(|w| {
            let client = client.clone();
            async move {
                let ns = w.namespace().unwrap();
                let body = json!({
                    "apiVersion": "work.open-cluster-management.io/v1", "kind": "ManifestWork",
                    "metadata": {"name": "floor", "namespace": ns},
                    "spec": w.spec,
                });
                Api::<ManifestWork>::namespaced(client, &ns)
                    .patch("floor", &PatchParams::apply("floor").force(), &Patch::Apply(body))
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    let elapsed = started.elapsed();
    let (_, cpu_after) = proc_usage(std::process::id());
    Floor {
        elapsed,
        client_cpu_seconds: cpu_after - cpu_before,
    }
}

/// The floor's figures beside the hub's cold start.
pub fn report_floor(cold: Duration, floor: &Floor, clusters: usize, apiserver: &str) {
    bench("cold_start_seconds", cold.as_secs_f64(), "s", clusters, apiserver);
    bench(
        "floor_ssa_seconds",
        floor.elapsed.as_secs_f64(),
        "s",
        clusters,
        apiserver,
    );
    bench(
        "floor_client_cpu_seconds",
        floor.client_cpu_seconds,
        "s",
        clusters,
        apiserver,
    );
    bench(
        "cold_start_over_floor",
        cold.as_secs_f64() / floor.elapsed.as_secs_f64(),
        "ratio",
        clusters,
        apiserver,
    );
}
