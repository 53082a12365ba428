//! Idle footprint of a `kmm-spoke run` process with 100 Nodes cached, on a real control plane as
//! its ServiceAccount (ignored by default: it measures, it does not check). The Nodes have no
//! kubelet: the node-lifecycle controller marks them NotReady, which only adds Node updates. Run with the binary to measure, for example the release build:
//! `KMM_SPOKE_BIN=$PWD/target/release/kmm-spoke cargo test -p kmm-spoke --test footprint -- --ignored --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod common;

use std::{io::Read, io::Write, net::TcpStream, process::Command, time::Duration};

use common::*;

fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// A `/proc/<pid>/status` value in KiB (`VmRSS`, `RssAnon`, `RssFile`).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run with --ignored"]
async fn idle_rss_with_100_nodes() {
    let cluster = spoke_cluster("footprint", Setup::default()).await;
    let client = cluster.client();
    for i in 0..100 {
        let kernel = if i % 2 == 0 { K_DEBIAN } else { K_RHEL };
        mk_node(&client, &format!("node-{i:03}"), kernel, &[("role", "gpu")]).await;
    }
    let bin = std::env::var("KMM_SPOKE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_kmm-spoke").to_owned());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(&bin)
        .args([
            "run",
            "--managed",
            "--worker-image",
            "kmm-spoke:test",
            "--metrics-addr",
            &addr,
        ])
        .env("KUBECONFIG", &cluster.spoke_kubeconfig)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    eventually("claim written and every node reconciled", WAIT, || async {
        http_get(&addr, "/metrics").is_some_and(|m| {
            let reconciles = m
                .lines()
                .find_map(|l| l.strip_prefix(r#"kmm_spoke_reconciles_total{controller="node"} "#))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            m.contains("kmm_spoke_kernel_versions 2") && reconciles >= 100
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = child.id();
    let rss = status_kib(pid, "VmRSS");
    println!(
        "kmm-spoke {bin}: idle RSS with 100 nodes: {rss} KiB ({:.1} MiB; anonymous {} KiB, file-backed {} KiB, threads {})",
        rss as f64 / 1024.0,
        status_kib(pid, "RssAnon"),
        status_kib(pid, "RssFile"),
        status_kib(pid, "Threads"),
    );
    println!("{}", http_get(&addr, "/metrics").unwrap_or_default());
    child.kill().unwrap();
    let _ = child.wait();
}
