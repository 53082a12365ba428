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

/// The worker pod as a node runs it: the module image's init container (busybox `cp`) and the
/// worker container from the kmm-spoke image `scripts/images` built, pushed to a real registry
/// and run chrooted in its unpacked filesystem: the binary at the worker pod's command
/// (`/usr/local/bin/kmm-spoke`, not a file of this machine), and the `modprobe` it calls, are
/// the image's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_pods_run_from_the_kmm_spoke_image() {
    use kmm_agents::kubelet::images::{ImageOptions, MainImages};
    use kmm_fleet_tests::images::{build_product_images, push_layout};
    use kmm_fleet_tests::registry::Registry;

    let work = kmm_fleet_tests::fresh_dir(
        // Not under /tmp (a clone there): the worker pod's /tmp is its emptyDir.
        &kmm_fleet_tests::scratch_dir(std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))),
        "worker-image",
    )
    .unwrap();
    assert!(
        !std::path::Path::new("/usr/local/bin/kmm-spoke").exists(),
        "this machine has a kmm-spoke where the image has it: the test could not tell them apart"
    );
    let registry = Registry::start(&work.join("registry")).unwrap();
    // Kept between runs: scripts/images skips an image whose inputs did not change.
    let images = kmm_test_kit::target_dir().unwrap().join("images-test");
    build_product_images(&images, &["kmm-spoke"]).unwrap();
    let spoke_image = push_layout(&registry, &images.join("kmm-spoke"), "kmm-fleet/kmm-spoke:test").unwrap();

    // The driver's image: busybox for the init container's copy, the module tree under /opt.
    let module_root = work.join("module-image");
    std::fs::create_dir_all(module_root.join("bin")).unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("busybox (Debian busybox-static)");
    std::fs::copy(busybox, module_root.join("bin/busybox")).unwrap();
    for applet in ["sh", "cp", "mkdir", "ls", "cat"] {
        std::os::unix::fs::symlink("busybox", module_root.join("bin").join(applet)).unwrap();
    }
    let kernel = kmod_tree(&module_root);
    let module_digest = registry.push_dir("kmm/kmm-exec:1", &module_root).unwrap();
    let host = work.join("host");
    std::fs::create_dir_all(host.join("lib/modules")).unwrap();
    let pulls_before = registry.manifest_requests("kmm-fleet/kmm-spoke");

    let runs = Runs::default();
    let cluster = spoke_cluster(
        "worker-image",
        Setup {
            nodes: vec![gpu_node("node-a", &kernel)],
            kubelet: KubeletOptions {
                script: KubeletScript::new()
                    .rule(PodMatcher::any().name_prefix("kmm-worker-"), [Outcome::Exec]),
                log_sink: Some(Arc::new(runs.clone())),
                exec_root: Some(work.join("pods")),
                exec_images: Some(ImageOptions {
                    cache: work.join("image-cache"),
                    insecure: true,
                }),
                exec_main_images: Some(MainImages {
                    prefixes: vec![format!("{}/kmm-fleet/kmm-spoke@", registry.host)],
                    host_paths: vec![host.clone()],
                }),
                exec_timeout: std::time::Duration::from_secs(120),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let client = cluster.client();
    let mut settings: Settings = common::settings();
    settings.worker.image = spoke_image.clone();
    // The worker pod's command is the image's binary (the default path), run as the pod says.
    settings.worker.binary = "/usr/local/bin/kmm-spoke".to_owned();
    settings.worker.extra_args = ["--dry-run", "--host-root", &host.display().to_string()]
        .map(str::to_owned)
        .to_vec();
    let spoke = start_spoke_with(&cluster, settings);
    let ready = labels::module_ready("drivers", "kmm-exec");
    let yaml = module("p=3", &kernel, "kmm_a").replace(
        &format!("registry.example/kmm-exec@sha256:{}", "3".repeat(64)),
        &format!("{}/kmm/kmm-exec@{module_digest}", registry.host),
    );
    cluster.apply_yaml(&yaml).await;
    eventually("node-a ready, loaded by the image's worker", WAIT, || async {
        node_labels(&client, "node-a").await.contains_key(&ready)
    })
    .await;
    let last = runs.modprobe_lines().last().cloned().unwrap();
    assert_eq!(last, ["modprobe", "insmod kmm_b.ko", "insmod kmm_a.ko p=3"]);
    // modprobe read the tree at the worker's /tmp, the emptyDir the init container filled: a
    // path that is the pod's inside the image only.
    let output = runs.0.lock().unwrap().last().cloned().unwrap();
    assert!(
        output.contains(&format!("modprobe: insmod /tmp/opt/lib/modules/{kernel}/")),
        "{output}"
    );
    // The kubelet pulled the kmm-spoke image from the registry (its access log).
    assert!(registry.manifest_requests("kmm-fleet/kmm-spoke") > pulls_before);
    spoke.stop().await;
}
