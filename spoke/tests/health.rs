//! `/readyz` and `/metrics` of a running spoke on a real control plane: ready once its caches
//! have synced, and worker pods (created and failed) counted per action.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod common;

use common::*;
use kmm_agents::Outcome;
use kmm_api::labels;
use kmm_spoke::cli::run_with;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MODULE: &str = r#"
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: kmm-health, namespace: drivers}
spec:
  selector: {role: gpu}
  moduleLoader:
    container:
      modprobe: {moduleName: kmm_health}
      kernelMappings:
        - literal: 6.1.0-18-cloud-amd64
          containerImage: registry.example/kmm-health@sha256:4444444444444444444444444444444444444444444444444444444444444444
"#;

/// `(status code, body)` of a plain HTTP GET.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: spoke\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// The value of one sample line of the exposition text, 0 when absent.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_ready_and_metrics_count_worker_pods() {
    // The first load fails, the retry succeeds: two load pods, one failure.
    let cluster = spoke_cluster(
        "health",
        Setup::with_nodes([gpu_node("node-a", K_DEBIAN)]).workers_on(
            "node-a",
            [
                Outcome::failed(1, "modprobe: FATAL: Module kmm_health not found"),
                Outcome::Succeeded,
            ],
        ),
    )
    .await;
    let client = cluster.client();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_with(
        cluster.spoke_client.clone(),
        settings(),
        Some(listener),
        async move {
            let _ = stopped.await;
        },
    ));

    eventually("/healthz answers", WAIT, || async {
        get(addr, "/healthz").await.0 == 200
    })
    .await;
    eventually("/readyz ready", WAIT, || async {
        get(addr, "/readyz").await.0 == 200
    })
    .await;
    assert!(get(addr, "/metrics").await.1.contains("kmm_spoke_ready 1"));

    cluster.apply_yaml(MODULE).await;
    let ready = labels::module_ready("drivers", "kmm-health");
    eventually("node-a ready", WAIT, || async {
        node_labels(&client, "node-a").await.contains_key(&ready)
    })
    .await;
    let text = get(addr, "/metrics").await.1;
    assert_eq!(
        sample(&text, r#"kmm_spoke_worker_pods_total{action="load"}"#),
        2,
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"kmm_spoke_worker_failures_total{action="load"}"#),
        1,
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"kmm_spoke_worker_pods_total{action="unload"}"#),
        0,
        "{text}"
    );

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
