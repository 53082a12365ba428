//! The worker pods the controller creates on a real control plane, run for real: the kmm-agents
//! kubelet executes each pod's worker container (the `kmm-spoke worker` binary cargo built, with `--dry-run` modprobe
//! against a module tree compiled and depmod'ed here) and reports its exit code and output.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod common;

use std::sync::{Arc, Mutex};

use common::{kmod::kmod_tree, *};
use k8s_openapi::api::events::v1::Event;
use kmm_agents::{KubeletOptions, KubeletScript, Outcome, PodLogSink, PodMatcher};
use kmm_api::labels;
use kmm_spoke::context::Settings;
use kube::{Api, api::ListParams};

/// Every worker run's output, in order.
#[derive(Default, Clone)]
struct Runs(Arc<Mutex<Vec<String>>>);

impl PodLogSink for Runs {
    fn pod_log(&self, _namespace: &str, _name: &str, text: &str) {
        self.0.lock().unwrap().push(text.to_owned());
    }
}

impl Runs {
    /// Per run: `modprobe -r` / `modprobe` for the command it ran, then the `insmod <file>
    /// [params]` lines dry-run modprobe printed.
    fn modprobe_lines(&self) -> Vec<Vec<String>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|out| {
                out.lines()
                    .filter_map(|l| {
                        if let Some(cmd) = l.strip_prefix("running modprobe ") {
                            let unload = cmd.split_whitespace().any(|w| w == "-rvd");
                            return Some(if unload { "modprobe -r" } else { "modprobe" }.to_owned());
                        }
                        let insmod = l.strip_prefix("modprobe: insmod ")?;
                        // /abs/path/kmm_a.ko p=3 -> insmod kmm_a.ko p=3
                        let (path, params) = insmod.split_once(' ').unwrap_or((insmod, ""));
                        let file = path.rsplit('/').next().unwrap_or(path);
                        Some(format!("insmod {file} {}", params.trim()).trim().to_owned())
                    })
                    .collect()
            })
            .collect()
    }
}

fn module(params: &str, kernel: &str, name: &str) -> String {
    format!(
        r#"
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {{name: kmm-exec, namespace: drivers}}
spec:
  selector: {{role: gpu}}
  moduleLoader:
    container:
      modprobe: {{moduleName: {name}, dirName: /opt, parameters: [{params}]}}
      kernelMappings:
        - literal: {kernel}
          containerImage: registry.example/kmm-exec@sha256:{digest}
"#,
        digest = "3".repeat(64)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_pods_run_the_real_worker_and_the_node_follows_its_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    let kernel = kmod_tree(&shared);
    let host = tmp.path().join("host");
    std::fs::create_dir_all(host.join("lib/modules")).unwrap();

    let runs = Runs::default();
    let cluster = spoke_cluster(
        "worker-exec",
        Setup {
            nodes: vec![gpu_node("node-a", &kernel)],
            kubelet: KubeletOptions {
                script: KubeletScript::new()
                    .rule(PodMatcher::any().name_prefix("kmm-worker-"), [Outcome::Exec]),
                log_sink: Some(Arc::new(runs.clone())),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let client = cluster.client();
    let mut settings: Settings = common::settings();
    settings.worker.binary = env!("CARGO_BIN_EXE_kmm-spoke").to_owned();
    settings.worker.extra_args = [
        "--dry-run",
        "--shared-root",
        &shared.display().to_string(),
        "--host-root",
        &host.display().to_string(),
        "--modprobe-conf-dir",
        &tmp.path().join("modprobe.d").display().to_string(),
        "--termination-log",
        &tmp.path().join("termination-log").display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let spoke = start_spoke_with(&cluster, settings);
    let ready = labels::module_ready("drivers", "kmm-exec");

    // A module that is not in the tree: the worker fails with modprobe's reason.
    cluster.apply_yaml(&module("p=3", &kernel, "kmm_missing")).await;
    let events = Api::<Event>::all(client.clone());
    eventually("WorkerFailed with modprobe's reason", WAIT, || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("WorkerFailed")
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.contains("kmm_missing not found"))
            })
    })
    .await;
    assert!(!node_labels(&client, "node-a").await.contains_key(&ready));

    // Fixed: kmm_a loads after its dependency kmm_b, with its parameter; the node is ready.
    cluster.apply_yaml(&module("p=3", &kernel, "kmm_a")).await;
    eventually("node-a ready", WAIT, || async {
        node_labels(&client, "node-a").await.contains_key(&ready)
    })
    .await;
    let last = runs.modprobe_lines().last().cloned().unwrap();
    assert_eq!(last, ["modprobe", "insmod kmm_b.ko", "insmod kmm_a.ko p=3"]);
    let record = nmc(&client, "node-a").await.unwrap();
    let loaded_config = record.status.unwrap().modules[0].config.clone().unwrap();
    assert_eq!(
        loaded_config.modprobe.parameters.as_deref(),
        Some(&["p=3".to_owned()][..])
    );

    // New parameters: unloaded first (a loaded module keeps its old ones), then loaded again.
    let before = runs.modprobe_lines().len();
    cluster.apply_yaml(&module("p=4", &kernel, "kmm_a")).await;
    eventually("reloaded with p=4", WAIT, || async {
        let record = nmc(&client, "node-a").await.unwrap();
        record
            .status
            .and_then(|s| s.modules.first()?.config.clone())
            .is_some_and(|c| c.modprobe.parameters.as_deref() == Some(&["p=4".to_owned()][..]))
            && node_labels(&client, "node-a").await.contains_key(&ready)
    })
    .await;
    let after: Vec<Vec<String>> = runs.modprobe_lines()[before..].to_vec();
    assert_eq!(
        after,
        [
            vec!["modprobe -r".to_owned()],
            vec![
                "modprobe".to_owned(),
                "insmod kmm_b.ko".to_owned(),
                "insmod kmm_a.ko p=4".to_owned()
            ],
        ]
    );
    spoke.stop().await;
}
