//! Build and sign on the hub: Jobs started by the real `kmm-hub run` on a real hub control plane,
//! run by its kube-controller-manager's Job controller, their pods bound by its scheduler to the
//! node of the kmm-agents kubelet (which runs them: a scripted outcome, or the pod's command on
//! this machine); and the build Job's own command run here with buildah against the real
//! registry. Only the hub is under test: the clusters are ManagedClusters the test creates as
//! admin, with `status.clusterClaims` written through the status subresource (see
//! `support::fleet`). Jobs started are counted in the apiserver's audit log.

// Test helpers outside #[test] functions may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::{collections::BTreeMap, process::Command, time::Duration};

use k8s_openapi::api::batch::v1::Job;
use kmm_agents::{
    AgentHandle, Kubelet, KubeletOptions, KubeletScript, NodeRegistration, Outcome, PodMatcher, ScriptRule,
};
use kmm_api::ManagedClusterModule;
use kmm_fleet_tests::images;
use kmm_hub::mcm_controller::desired::job::{BUILD_SCRIPT, JOB_TYPE_LABEL};
use kube::{Api, ResourceExt, api::ListParams};
use support::{
    fleet::{
        ClusterSpec, Fleet, HUB_NAMESPACE, HUB_USER, SPOKE_NAMESPACE, describe, serial, wait_reconciled,
    },
    kmod, run, scratch, start_registry,
};

const K1: &str = "6.1.0-28-cloud-amd64";

fn mcm_yaml(registry: &str, with_sign: bool) -> String {
    let sign = if with_sign {
        "            sign:\n              keySecret: {name: signing-key}\n              certSecret: {name: signing-cert}\n\
         \x20             filesToSign: ['/opt/lib/modules/${KERNEL_FULL_VERSION}/gpu_kmod.ko']\n"
    } else {
        ""
    };
    format!(
        "apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1\nkind: ManagedClusterModule\nmetadata: {{name: gpu}}\n\
         spec:\n  spokeNamespace: {SPOKE_NAMESPACE}\n  selector: {{env: prod}}\n  moduleSpec:\n    selector: {{}}\n\
         \x20   moduleLoader:\n      container:\n        modprobe: {{moduleName: gpu_kmod}}\n        kernelMappings:\n\
         \x20         - regexp: '^.+$'\n            containerImage: {registry}/kmm/gpu-kmod:${{KERNEL_FULL_VERSION}}\n\
         \x20           registryTLS: {{insecure: true}}\n            build:\n              dockerfileConfigMap: {{name: gpu-dockerfile}}\n{sign}"
    )
}

/// Whether the works of clusters a and b both carry a Module whose text holds `text`.
async fn works_carry(fleet: &Fleet, text: &str) -> bool {
    let mut ok = true;
    for c in ["a", "b"] {
        let w = fleet.work(c, "gpu").await;
        ok &= w.is_some_and(|w| w.spec.workload.manifests[0].to_string().contains(text));
    }
    ok
}

async fn jobs(fleet: &Fleet) -> Vec<Job> {
    Api::<Job>::namespaced(fleet.hub.client(), HUB_NAMESPACE)
        .list(&ListParams::default().labels(JOB_TYPE_LABEL))
        .await
        .unwrap()
        .items
}

/// The hub's kubelet: one node, pods run as `options` says (the Job controller and the
/// scheduler are the control plane's own).
fn hub_kubelet(fleet: &Fleet, options: KubeletOptions) -> AgentHandle {
    Kubelet::spawn(
        fleet.hub.client(),
        KubeletOptions {
            nodes: vec![NodeRegistration::new("hub-node", "6.1.0-hub")],
            daemonsets: false,
            jobs: false,
            ..options
        },
    )
}

async fn hub_setup(fleet: &Fleet, script: KubeletScript) -> AgentHandle {
    fleet
        .hub
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: gpu-dockerfile, namespace: {HUB_NAMESPACE}}}\n\
             data: {{dockerfile: \"FROM scratch\\nCOPY gpu_kmod.ko /opt/lib/modules/$KERNEL_FULL_VERSION/\\n\"}}\n"
        ))
        .await
        .unwrap();
    hub_kubelet(
        fleet,
        KubeletOptions {
            script,
            ..Default::default()
        },
    )
}

/// Jobs the hub created (`create jobs` answered 201), from the audit log from `mark` on.
async fn jobs_created(fleet: &Fleet, mark: usize) -> Vec<String> {
    let audit = fleet.audit().await;
    audit[mark.min(audit.len())..]
        .iter()
        .filter(|e| {
            e.user.username == HUB_USER && e.verb == "create" && e.resource() == "jobs" && e.code() == 201
        })
        .map(describe)
        .collect()
}

/// Two hub-only clusters `a` and `b` on kernel K1.
async fn two_clusters(fleet: &Fleet) {
    fleet.add_cluster(&ClusterSpec::prod("a", &[K1])).await;
    fleet.add_cluster(&ClusterSpec::prod("b", &[K1])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_on_one_kernel_cause_one_build_and_one_sign() {
    let _serial = serial().await;
    let fleet = Fleet::start("build-sign").await;
    two_clusters(&fleet).await;
    // The kubelet lets every Job pod succeed; the test pushes what each step would have pushed.
    let _kubelet = hub_setup(&fleet, KubeletScript::new()).await;
    let hub = fleet.start_hub(
        "hub-0",
        &["--leader-election", "false", "--job-gc-delay-seconds", "3600"],
    );
    let mcm: ManagedClusterModule = serde_saphyr::from_str(&mcm_yaml(&fleet.registry.host, true)).unwrap();
    fleet.create_mcm(&mcm).await;

    hub.wait("one build Job", Duration::from_secs(120))
        .eventually(|| async { !jobs(&fleet).await.is_empty() })
        .await;
    let build = jobs(&fleet).await.remove(0);
    assert_eq!(build.labels()[JOB_TYPE_LABEL], "build");
    let unsigned = format!("kmm/gpu-kmod:{K1}-{SPOKE_NAMESPACE}_gpu_kmm_unsigned");
    assert_eq!(
        build.annotations()["hub.kmm.sigs.x-k8s.io/image"],
        format!("{}/{unsigned}", fleet.registry.host),
        "build+sign builds the unsigned intermediate"
    );
    hub.wait("clusters wait for the build", Duration::from_secs(120))
        .eventually(|| async {
            fleet
                .mcm("gpu")
                .await
                .unwrap()
                .status
                .is_some_and(|s| s.number_blocked == 2 && s.problems.iter().all(|p| p.reason == "Building"))
        })
        .await;
    fleet.registry.push_labelled(&unsigned).unwrap();
    // The signing Secrets are missing, then one lacks its key: no sign Job, a clear problem.
    let problem = |needle: &'static str| {
        let client = fleet.hub.client();
        async move {
            Api::<ManagedClusterModule>::all(client)
                .get("gpu")
                .await
                .unwrap()
                .status
                .is_some_and(|s| {
                    s.problems
                        .iter()
                        .all(|p| p.reason == "BuildInputMissing" && p.message.contains(needle))
                        && s.problems.len() == 2
                })
        }
    };
    hub.wait("the missing key Secret reported", Duration::from_secs(120))
        .eventually(|| {
            problem("Secret kmm-hub/signing-key (spec.moduleSpec...sign.keySecret) does not exist")
        })
        .await;
    fleet
        .hub
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: signing-key, namespace: {HUB_NAMESPACE}, annotations: {{hub.kmm.sigs.x-k8s.io/allowed-modules: \"*\"}}}}\ndata: {{key: aw==}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: signing-cert, namespace: {HUB_NAMESPACE}, annotations: {{hub.kmm.sigs.x-k8s.io/allowed-modules: \"*\"}}}}\ndata: {{tls.crt: Yw==}}\n"
        ))
        .await
        .unwrap();
    hub.wait("the cert Secret's missing key reported", Duration::from_secs(120))
        .eventually(|| {
            problem("Secret kmm-hub/signing-cert (spec.moduleSpec...sign.certSecret) has no key \"cert\"")
        })
        .await;
    assert!(
        jobs(&fleet)
            .await
            .iter()
            .all(|j| j.labels()[JOB_TYPE_LABEL] == "build"),
        "no sign Job without its inputs"
    );
    fleet
        .hub
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: signing-cert, namespace: {HUB_NAMESPACE}, annotations: {{hub.kmm.sigs.x-k8s.io/allowed-modules: \"*\"}}}}\ndata: {{cert: Yw==}}\n"
        ))
        .await
        .unwrap();
    hub.wait("one sign Job after the build", Duration::from_secs(120))
        .eventually(|| async {
            jobs(&fleet)
                .await
                .iter()
                .any(|j| j.labels()[JOB_TYPE_LABEL] == "sign")
        })
        .await;
    let sign = jobs(&fleet)
        .await
        .into_iter()
        .find(|j| j.labels()[JOB_TYPE_LABEL] == "sign")
        .unwrap();
    let args = sign.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(
        args.contains(&format!("--unsigned-image={}/{unsigned}", fleet.registry.host)),
        "{args:?}"
    );
    let digest = fleet
        .registry
        .push_labelled(&format!("kmm/gpu-kmod:{K1}"))
        .unwrap();
    hub.wait(
        "both clusters get the signed image, pinned",
        Duration::from_secs(30),
    )
    .eventually(|| works_carry(&fleet, &digest))
    .await;
    let created = jobs_created(&fleet, 0).await;
    assert_eq!(
        created.len(),
        2,
        "one build and one sign for two clusters: {created:#?}"
    );
    assert_eq!(
        jobs(&fleet).await.len(),
        2,
        "succeeded Jobs are kept for the GC delay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_build_is_reported_kept_and_not_retried_even_across_a_restart() {
    let _serial = serial().await;
    let fleet = Fleet::start("build-fail").await;
    fleet.add_cluster(&ClusterSpec::prod("a", &[K1])).await;
    let fail = ScriptRule {
        matcher: PodMatcher {
            labels: BTreeMap::from([(JOB_TYPE_LABEL.to_string(), "build".to_string())]),
            ..Default::default()
        },
        outcomes: vec![Outcome::failed(2, "make: *** [Makefile:3: all] Error 2")],
    };
    let _kubelet = hub_setup(&fleet, KubeletScript { rules: vec![fail] }).await;
    let hub = fleet.start_hub("hub-0", &["--leader-election", "false"]);
    let mcm: ManagedClusterModule = serde_saphyr::from_str(&mcm_yaml(&fleet.registry.host, false)).unwrap();
    fleet.create_mcm(&mcm).await;
    hub.wait("the failure shows in status", Duration::from_secs(120))
        .eventually(|| async {
            fleet.mcm("gpu").await.unwrap().status.is_some_and(|s| {
                s.problems.iter().any(|p| {
                    p.reason == "BuildFailed" && p.message.contains("make: *** [Makefile:3: all] Error 2")
                })
            })
        })
        .await;
    // The real Job controller marks the Job Failed (backoffLimit 0: one pod, no retry).
    hub.wait("the Job Failed", Duration::from_secs(120))
        .eventually(|| async {
            jobs(&fleet).await.iter().any(|j| {
                j.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Failed" && c.status == "True"))
            })
        })
        .await;
    // Several retry periods (1 s) later: still the one Job, nothing started again.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let created = jobs_created(&fleet, 0).await;
    assert_eq!(created.len(), 1, "{created:#?}");
    assert_eq!(
        jobs(&fleet).await.len(),
        1,
        "the failed Job is kept for inspection"
    );
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(fleet.hub.client(), HUB_NAMESPACE)
        .list(&ListParams::default().labels(JOB_TYPE_LABEL))
        .await
        .unwrap()
        .items;
    assert_eq!(pods.len(), 1, "its failed pod too");
    drop(hub);
    let mark = fleet.audit().await.len();
    let again = fleet.start_hub("hub-1", &["--leader-election", "false"]);
    wait_reconciled(&again).await;
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let created = jobs_created(&fleet, mark).await;
    assert!(created.is_empty(), "no second Job after a restart: {created:#?}");
    assert_eq!(jobs(&fleet).await.len(), 1);
    again
        .wait("the failure still shows in status", Duration::from_secs(60))
        .eventually(|| async {
            fleet
                .mcm("gpu")
                .await
                .unwrap()
                .status
                .is_some_and(|s| s.problems.iter().any(|p| p.reason == "BuildFailed"))
        })
        .await;
}

/// The build Job's exact command, run here with buildah: FROM scratch, copying a compiled .ko,
/// pushed to the real registry and read back with skopeo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_build_jobs_command_builds_and_pushes_with_buildah() {
    let registry = start_registry("buildah");
    let mcm: ManagedClusterModule = serde_saphyr::from_str(&mcm_yaml(&registry.host, false)).unwrap();
    let pins = BTreeMap::from([(
        format!("{}/kmm/gpu-kmod:{K1}", registry.host),
        kmm_hub::mcm_controller::desired::plan::Pin::Missing,
    )]);
    let resolved = kmm_hub::mcm_controller::desired::job::resolve(&mcm, K1).unwrap();
    let step = kmm_hub::mcm_controller::desired::job::step_for(&mcm, &resolved, &pins).unwrap();
    let settings =
        kmm_hub::mcm_controller::desired::job::JobSettings::new(HUB_NAMESPACE, "buildah", "kmm-hub");
    let job = kmm_hub::mcm_controller::desired::job::job(&mcm, &step, None, &settings);
    let container = job.spec.unwrap().template.spec.unwrap().containers.remove(0);
    let args = container.args.unwrap();
    assert_eq!(args[1], BUILD_SCRIPT);

    // What the pod would have mounted: the Dockerfile ConfigMap at the workspace, plus the module.
    let ws = scratch("buildah-ws");
    std::fs::write(
        ws.join("dockerfile"),
        "FROM scratch\nARG KERNEL_FULL_VERSION\nCOPY gpu_kmod.ko /opt/lib/modules/${KERNEL_FULL_VERSION}/\n",
    )
    .unwrap();
    std::fs::write(ws.join("gpu_kmod.ko"), kmod::unsigned_module()).unwrap();
    let storage = scratch("buildah-storage");
    let mut cmd = Command::new(&container.command.unwrap()[0]);
    cmd.args(&args)
        .env("KMM_WORKSPACE", &ws)
        .env("KMM_STORAGE_ROOT", &storage);
    for e in container.env.unwrap() {
        cmd.env(e.name, e.value.unwrap_or_default());
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "build failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let dest = format!("docker://{}/kmm/gpu-kmod:{K1}", registry.host);
    let inspect: serde_json::Value = serde_json::from_str(&run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &dest,
    ])))
    .unwrap();
    assert!(inspect["Digest"].as_str().unwrap().starts_with("sha256:"));
    // The layer holds the module at the path the kernel mapping promises.
    let bundle = images::unpack(&dest, &scratch("buildah-readback")).unwrap();
    let shipped = std::fs::read(bundle.join(format!("opt/lib/modules/{K1}/gpu_kmod.ko"))).unwrap();
    assert_eq!(shipped, kmod::unsigned_module());
    let _ = std::fs::remove_dir_all(&storage);
}

/// An image holding only `/gpu_kmod.ko`, the "sources" a multi-stage build copies from.
fn push_module_image(registry: &support::Registry, repo_tag: &str) {
    let dir = scratch("src-image");
    std::fs::write(dir.join("gpu_kmod.ko"), kmod::unsigned_module()).unwrap();
    registry.push_dir(repo_tag, &dir).unwrap();
}

/// The whole pipeline for real: the kubelet runs the build Job's buildah command on this machine
/// and the sign Job from the kmm-hub image `scripts/images` built (pushed to the registry, pulled,
/// `kmm-hub sign-image` run chrooted in it: no kmm-hub is on that PATH but the image's); both
/// clusters end up with the signed image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_and_sign_really_run_and_the_clusters_get_signed_modules() {
    let _serial = serial().await;
    let fleet = Fleet::start("real-pipeline").await;
    two_clusters(&fleet).await;
    let host = fleet.registry.host.clone();
    push_module_image(&fleet.registry, "kmm/gpu-src:1");
    let keys = scratch("pipeline-keys");
    let key = kmod::make_rsa_key(&keys, "fleet", 2048, "kmm fleet test key");
    let b64 = |p: &std::path::Path| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap())
    };
    fleet
        .hub
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: gpu-dockerfile, namespace: {HUB_NAMESPACE}}}\n\
             data: {{dockerfile: \"FROM {host}/kmm/gpu-src:1 AS src\\nFROM scratch\\nARG KERNEL_FULL_VERSION\\n\
             COPY --from=src /gpu_kmod.ko /opt/lib/modules/${{KERNEL_FULL_VERSION}}/gpu_kmod.ko\\n\"}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: signing-key, namespace: {HUB_NAMESPACE}, annotations: {{hub.kmm.sigs.x-k8s.io/allowed-modules: \"*\"}}}}\ndata: {{key: {}}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: signing-cert, namespace: {HUB_NAMESPACE}, annotations: {{hub.kmm.sigs.x-k8s.io/allowed-modules: \"*\"}}}}\ndata: {{cert: {}}}\n",
            b64(&key.pkcs8_pem),
            b64(&key.cert_pem)
        ))
        .await
        .unwrap();
    let storage = scratch("pipeline-buildah");
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_kmm-hub"))
        .parent()
        .unwrap()
        .display()
        .to_string();
    let exec_env = BTreeMap::from([
        (
            "PATH".to_string(),
            format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default()),
        ),
        ("KMM_STORAGE_ROOT".to_string(), storage.display().to_string()),
    ]);
    // The hub's image, by digest, as KMM_HUB_IMAGE names it in a release.
    let images = kmm_test_kit::target_dir().unwrap().join("images-test");
    images::build_product_images(&images, &["kmm-hub"]).unwrap();
    let hub_image =
        images::push_layout(&fleet.registry, &images.join("kmm-hub"), "kmm-fleet/kmm-hub:test").unwrap();
    let pulls_before = fleet.registry.manifest_requests("kmm-fleet/kmm-hub");
    let scratch_pods = scratch("pipeline-pods");
    let everything = ScriptRule {
        matcher: PodMatcher::any(),
        outcomes: vec![Outcome::Exec],
    };
    let _kubelet = hub_kubelet(
        &fleet,
        KubeletOptions {
            script: KubeletScript {
                rules: vec![everything],
            },
            exec_root: Some(scratch_pods.clone()),
            exec_images: Some(kmm_agents::kubelet::images::ImageOptions {
                cache: scratch("pipeline-image-cache"),
                insecure: true,
            }),
            exec_main_images: Some(kmm_agents::kubelet::images::MainImages {
                prefixes: vec![format!("{host}/kmm-fleet/kmm-hub@")],
                host_paths: Vec::new(),
            }),
            exec_env,
            exec_timeout: std::time::Duration::from_secs(240),
            ..Default::default()
        },
    );
    let hub = fleet.start_hub(
        "hub-0",
        &["--leader-election", "false", "--hub-image", &hub_image],
    );
    let yaml = mcm_yaml(&host, true)
        .replace("              dockerfileConfigMap: {name: gpu-dockerfile}\n", "              dockerfileConfigMap: {name: gpu-dockerfile}\n              baseImageRegistryTLS: {insecure: true}\n")
        .replace("              certSecret: {name: signing-cert}\n", "              certSecret: {name: signing-cert}\n              unsignedImageRegistryTLS: {insecure: true}\n");
    let mcm: ManagedClusterModule = serde_saphyr::from_str(&yaml).unwrap();
    fleet.create_mcm(&mcm).await;

    let final_repo = format!("{host}/kmm/gpu-kmod");
    let pinned = format!("{final_repo}@sha256:");
    hub.wait(
        "both clusters get the built and signed image, pinned",
        Duration::from_secs(300),
    )
    .eventually(|| works_carry(&fleet, &pinned))
    .await;
    let created = jobs_created(&fleet, 0).await;
    assert_eq!(
        created.len(),
        2,
        "one build and one sign for two clusters: {created:#?}"
    );

    // The shipped image holds the module, signed with our key.
    let dest = format!("docker://{final_repo}:{K1}");
    let bundle = images::unpack(&dest, &scratch("pipeline-readback")).unwrap();
    let module = bundle.join(format!("opt/lib/modules/{K1}/gpu_kmod.ko"));
    assert_eq!(kmod::modinfo(&module, "signer"), "kmm fleet test key");
    assert_eq!(kmod::modinfo(&module, "sig_hashalgo"), "sha256");
    // One pod (the sign Job's) ran from the kmm-hub image the kubelet pulled (the registry's
    // access log), unpacked in its folder; the build pod ran buildah here.
    let from_image: Vec<_> = std::fs::read_dir(scratch_pods)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|pod| pod.join("main/rootfs/usr/local/bin/kmm-hub").is_file())
        .collect();
    assert_eq!(from_image.len(), 1, "{from_image:?}");
    assert!(fleet.registry.manifest_requests("kmm-fleet/kmm-hub") > pulls_before);
    let _ = std::fs::remove_dir_all(&storage);
}
