//! Spoke benchmark on the real control plane (`just bench`, never part of `just test`): the
//! `kmm-spoke run` binary as its ServiceAccount against tests/controlplane's kube-apiserver and
//! etcd, with 1,000 Nodes shaped like a kubelet's (images, addresses, capacity, conditions,
//! nodeInfo) on 3 kernels. No kubelet: the node-lifecycle controller marks them unreachable
//! before the spoke starts, so the spoke starts on a fleet that no longer changes.
//!
//! Figures, one `BENCH name=... value=... unit=... nodes=... apiserver=kube-apiserver
//! profile=...` line each: the spoke's RSS once synced and idle (VmRSS, anonymous, file-backed,
//! and the peak VmHWM from /proc), its CPU over the idle window, then the time from one node's
//! kernel change (a status write) to the kernel-versions ClusterClaim holding the new kernel,
//! seen through a watch. `KMM_SPOKE_BIN` picks the binary (default: this profile's build).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is a failed benchmark

mod common;

use std::{
    net::TcpStream,
    time::{Duration, Instant},
};

use common::*;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Node;
use kmm_api::{
    claims::decode_kernel_claims,
    ocm::{ClusterClaim, KERNEL_VERSIONS_CLAIM},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::{Value, json};

const NODES: usize = 1000;
const KERNELS: [&str; 3] = [
    "6.1.0-27-cloud-amd64",
    "6.1.0-28-cloud-amd64",
    "5.14.0-70.el9.x86_64",
];
/// Kernel changes timed, one at a time.
const CHANGES: usize = 10;
/// Requests in flight while the Nodes are created.
const CONCURRENCY: usize = 16;
/// How long the synced spoke is left alone before its memory is read.
const IDLE: Duration = Duration::from_secs(20);

fn profile(bin: &str) -> &'static str {
    if bin.contains("/release/") {
        "release"
    } else {
        "debug"
    }
}

fn bench(name: &str, value: f64, unit: &str, bin: &str) {
    println!(
        "BENCH name={name} value={value:.3} unit={unit} nodes={NODES} apiserver=kube-apiserver profile={}",
        profile(bin)
    );
}

/// A `/proc/<pid>/status` value in KiB (`VmRSS`, `VmHWM`, `RssAnon`, `RssFile`).
fn status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// CPU seconds (user + system) of a process, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which ends with ')'): utime and stime are 14 and 15.
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();
    fields.iter().sum::<f64>() / 100.0
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn node_name(i: usize) -> String {
    format!("node-{i:04}")
}

/// A Node's metadata and spec as a cloud kubelet registers it.
fn node_object(i: usize) -> Node {
    let name = node_name(i);
    let zone = ["a", "b", "c"][i % 3];
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64", "node.kubernetes.io/instance-type": "m6i.2xlarge",
                "topology.kubernetes.io/region": "eu-west-1",
                "topology.kubernetes.io/zone": format!("eu-west-1{zone}"), "role": "gpu",
            },
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {
            "podCIDR": format!("10.{}.{}.0/24", i / 256, i % 256),
            "podCIDRs": [format!("10.{}.{}.0/24", i / 256, i % 256)],
            "providerID": format!("aws:///eu-west-1{zone}/i-{i:017x}"),
        },
    }))
    .unwrap()
}

/// The status a kubelet reports: conditions, addresses, capacity, 30 images, nodeInfo.
fn node_status(i: usize, kernel: &str) -> Value {
    let now = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ))
    .unwrap();
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let resources = json!({"cpu": "8", "memory": "32386940Ki", "ephemeral-storage": "101430960Ki",
        "hugepages-1Gi": "0", "hugepages-2Mi": "0", "pods": "110"});
    let images: Vec<Value> = (0..30)
        .map(|n| {
            let repo = format!("registry.example/team-{}/service-{n}", n % 7);
            json!({"names": [format!("{repo}@sha256:{:064x}", i * 100 + n), format!("{repo}:v1.{n}.0")],
                   "sizeBytes": 20_000_000 + n * 1_000_003})
        })
        .collect();
    json!({"status": {
        "capacity": resources, "allocatable": resources,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": format!("172.20.{}.{}", i / 256, i % 256)},
            {"type": "Hostname", "address": node_name(i)},
            {"type": "InternalDNS", "address": format!("ip-172-20-{}-{}.eu-west-1.compute.internal", i / 256, i % 256)},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "kernelVersion": kernel, "bootID": format!("{:032x}", i), "machineID": format!("{:032x}", i + 7),
            "systemUUID": format!("ec2{:029x}", i), "kubeProxyVersion": "", "kubeletVersion": "v1.35.0",
            "osImage": "Debian GNU/Linux 12 (bookworm)", "containerRuntimeVersion": "containerd://1.7.24",
            "operatingSystem": "linux", "architecture": "amd64",
        },
        "images": images,
    }})
}

/// Creates the Nodes as admin (create, then the status a kubelet would write).
async fn create_nodes(client: &Client) {
    let api = Api::<Node>::all(client.clone());
    stream::iter(0..NODES)
        .for_each_concurrent(CONCURRENCY, |i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &node_object(i)).await.unwrap();
                api.patch_status(
                    &node_name(i),
                    &PatchParams::default(),
                    &Patch::Merge(node_status(i, KERNELS[i % KERNELS.len()])),
                )
                .await
                .unwrap();
            }
        })
        .await;
}

/// Nodes the node-lifecycle controller has not yet marked unreachable (no kubelet renews them).
async fn unsettled(client: &Client) -> usize {
    Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|n| node_ready(n) || !node_tainted(n))
        .count()
}

/// The kernels the kernel-versions claims hold.
fn claimed(claims: &[ClusterClaim]) -> Vec<String> {
    decode_kernel_claims(|name| {
        claims
            .iter()
            .find(|c| c.name_any() == name)
            .map(|c| c.spec.value.as_str())
    })
    .unwrap_or_default()
}

/// Changes one node's kernel at a time and times, through a ClusterClaim watch opened before the
/// write, until the claims hold the new kernel; seconds per change.
async fn time_kernel_changes(client: &Client) -> Vec<f64> {
    let claims = Api::<ClusterClaim>::all(client.clone());
    let nodes = Api::<Node>::all(client.clone());
    let mut latencies = Vec::new();
    for k in 0..CHANGES {
        let node = node_name((k * 97 + 13) % NODES);
        let kernel = format!("6.1.0-{}-cloud-amd64", 40 + k);
        let mut watch = std::pin::pin!(
            watcher(claims.clone(), watcher::Config::default())
                .default_backoff()
                .applied_objects()
        );
        // The watch lists first: once the current claim arrives, it is open.
        let _ = watch.next().await;
        let start = Instant::now();
        nodes
            .patch_status(
                &node,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"nodeInfo": {"kernelVersion": kernel}}})),
            )
            .await
            .unwrap();
        let deadline = start + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline.into(), watch.next())
                .await
                .expect("the claim holds the new kernel in time");
            let claim = next.expect("the watch goes on").unwrap();
            if claim.name_any() == KERNEL_VERSIONS_CLAIM {
                let all = claims.list(&ListParams::default()).await.unwrap().items;
                if claimed(&all).contains(&kernel) {
                    break;
                }
            }
        }
        latencies.push(start.elapsed().as_secs_f64());
    }
    latencies
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark (just bench); run with --ignored --nocapture"]
async fn spoke_with_1000_nodes() {
    let cluster = spoke_cluster("bench-spoke", Setup::default()).await;
    let client = cluster.client();
    let setup = Instant::now();
    create_nodes(&client).await;
    eventually(
        "every node marked unreachable by the node-lifecycle controller",
        Duration::from_secs(600),
        || {
            let client = client.clone();
            async move { unsettled(&client).await == 0 }
        },
    )
    .await;
    println!(
        "setup: {NODES} nodes created and settled in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    let bin = std::env::var("KMM_SPOKE_BIN").unwrap_or_else(|_| {
        kmm_test_kit::workspace_bin("kmm-spoke")
            .unwrap()
            .display()
            .to_string()
    });
    // The environment the Deployment gives it (ConfigMap included: log level and format,
    // concurrency, malloc arenas), the metrics address moved to a free port.
    let deployed = kmm_fleet_tests::process::Deployed::render(
        &kmm_test_kit::repo_root().join("manifests/spoke"),
        "kmm-spoke",
        "kmm-spoke-bench",
        "KMM_SPOKE_METRICS_ADDR",
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", deployed.port);
    let log = cluster.cp.dir().join("kmm-spoke-bench.log");
    let started = Instant::now();
    let mut child = std::process::Command::new(&bin)
        .args(&deployed.args)
        .args(["--managed", "--worker-image", "kmm-spoke:bench"])
        .envs(&deployed.env)
        .env("KUBECONFIG", &cluster.spoke_kubeconfig)
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    eventually(
        "the claim written and every node reconciled",
        Duration::from_secs(600),
        || async {
            http_get(&addr, "/metrics").is_some_and(|m| {
                metric(&m, "kmm_spoke_kernel_versions") >= KERNELS.len() as f64
                    && metric(&m, r#"kmm_spoke_reconciles_total{controller="node"}"#) >= NODES as f64
            })
        },
    )
    .await;
    let synced = started.elapsed().as_secs_f64();
    let cpu_before = cpu_seconds(pid);
    tokio::time::sleep(IDLE).await;
    let idle_cpu = cpu_seconds(pid) - cpu_before;
    println!("kmm-spoke {bin}");
    bench("spoke_seconds_until_synced", synced, "s", &bin);
    bench("spoke_idle_rss", status_kib(pid, "VmRSS") / 1024.0, "MiB", &bin);
    bench(
        "spoke_idle_rss_anon",
        status_kib(pid, "RssAnon") / 1024.0,
        "MiB",
        &bin,
    );
    bench(
        "spoke_idle_rss_file",
        status_kib(pid, "RssFile") / 1024.0,
        "MiB",
        &bin,
    );
    bench("spoke_peak_rss", status_kib(pid, "VmHWM") / 1024.0, "MiB", &bin);
    bench(
        "spoke_idle_cpu",
        idle_cpu / IDLE.as_secs_f64() * 100.0,
        "percent",
        &bin,
    );

    let mut latencies = time_kernel_changes(&client).await;
    latencies.sort_by(f64::total_cmp);
    bench(
        "kernel_change_to_claim_p50",
        percentile(&latencies, 0.5),
        "s",
        &bin,
    );
    bench(
        "kernel_change_to_claim_max",
        percentile(&latencies, 1.0),
        "s",
        &bin,
    );
    bench(
        "spoke_rss_after_changes",
        status_kib(pid, "VmRSS") / 1024.0,
        "MiB",
        &bin,
    );
    child.kill().unwrap();
    let _ = child.wait();
}
