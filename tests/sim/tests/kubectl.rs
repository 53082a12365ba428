//! The real kubectl against the simulator: apply, get, get -o yaml, describe, delete, get -w.
// Test helpers outside #[test] functions may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use common::cluster_with_crds;
use k8s_openapi::api::core::v1::ConfigMap;
use kmm_sim::SimCluster;
use kube::api::{Api, ObjectMeta, PostParams};

/// The kubectl `scripts/controlplane-build` builds beside the test control plane (the same
/// Kubernetes release), in `<target>/controlplane/`.
fn kubectl_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|target| target.join("controlplane/kubectl"))
        .unwrap_or_else(|| "kubectl".into())
}

fn kubectl(c: &SimCluster, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(kubectl_path())
        .arg("--kubeconfig")
        .arg(c.kubeconfig_path())
        .args(args)
        .output()
        .expect("kubectl is built by scripts/controlplane-build");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(c: &SimCluster, args: &[&str]) -> String {
    let (success, out, err) = kubectl(c, args);
    assert!(success, "kubectl {args:?} failed: {err}\n{out}");
    out
}

const OBJECTS: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: default
data:
  mode: fast
---
apiVersion: cluster.open-cluster-management.io/v1
kind: ManagedCluster
metadata:
  name: spoke-1
  labels:
    env: prod
spec:
  hubAcceptsClient: true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_gets_describes_and_deletes() {
    let (sim, c) = cluster_with_crds("hub").await;
    let file = sim.dir().join("objects.yaml");
    std::fs::write(&file, OBJECTS).unwrap();
    let file = file.to_str().unwrap().to_string();

    let applied = ok(&c, &["apply", "-f", &file]);
    assert!(applied.contains("configmap/settings created"), "{applied}");
    assert!(
        applied.contains("managedcluster.cluster.open-cluster-management.io/spoke-1 created"),
        "{applied}"
    );
    // Applying again changes nothing.
    let again = ok(&c, &["apply", "-f", &file]);
    assert!(again.contains("configmap/settings unchanged"), "{again}");
    let ssa = ok(&c, &["apply", "--server-side", "-f", &file]);
    assert!(ssa.contains("serverside-applied"), "{ssa}");

    let yaml = ok(&c, &["get", "configmap", "settings", "-o", "yaml"]);
    assert!(
        yaml.contains("mode: fast") && yaml.contains("resourceVersion:"),
        "{yaml}"
    );

    let table = ok(&c, &["get", "managedclusters"]);
    let header = table.lines().next().unwrap_or_default();
    assert!(header.contains("NAME"), "{table}");
    assert!(table.contains("spoke-1"), "{table}");
    let labelled = ok(&c, &["get", "mcl", "-l", "env=dev", "-o", "name"]);
    assert_eq!(labelled.trim(), "", "the label selector filters");

    let described = ok(&c, &["describe", "configmap", "settings"]);
    assert!(
        described.contains("settings") && described.contains("fast"),
        "{described}"
    );

    let deleted = ok(&c, &["delete", "-f", &file]);
    assert!(deleted.contains("deleted"), "{deleted}");
    let (found, _, err) = kubectl(&c, &["get", "configmap", "settings"]);
    assert!(!found && err.contains("NotFound"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_watch_prints_new_objects() {
    let (_sim, c) = cluster_with_crds("hub").await;
    let mut child = Command::new(kubectl_path())
        .arg("--kubeconfig")
        .arg(c.kubeconfig_path())
        .args(["get", "configmaps", "-w", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let api: Api<ConfigMap> = Api::namespaced(c.client(), "default");
    let mut seen = false;
    for attempt in 0..50 {
        if attempt == 5 {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some("watched".into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            api.create(&PostParams::default(), &cm).await.unwrap();
        }
        if rx
            .recv_timeout(Duration::from_millis(200))
            .is_ok_and(|line| line.contains("configmap/watched"))
        {
            seen = true;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen, "kubectl get -w printed the new ConfigMap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_server_side_applies_our_large_crds() {
    let sim = kmm_sim::Sim::new().unwrap();
    let c = sim.add_cluster("bare").await.unwrap();
    let dir = kmm_test_kit::crds_dir();
    let out = ok(&c, &["apply", "--server-side", "-f", dir.to_str().unwrap()]);
    assert!(
        out.contains(
            "customresourcedefinition.apiextensions.k8s.io/modules.kmm.sigs.x-k8s.io serverside-applied"
        ),
        "{out}"
    );
    let listed = ok(&c, &["get", "modules", "-A"]);
    assert!(listed.is_empty() || listed.contains("No resources"), "{listed}");
}
