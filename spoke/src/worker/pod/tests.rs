//! The worker pod as rendered: mounts, security, owner, names and annotations.

use k8s_openapi::api::core::v1::Toleration;
use kmm_api::module::ModprobeSpec;

use super::*;

fn mk_item() -> ModuleItem {
    ModuleItem {
        name: "m".into(),
        namespace: "drivers".into(),
        service_account_name: "loader".into(),
        image_repo_secret: Some(LocalObjectReference { name: "pull".into() }),
        tolerations: vec![Toleration {
            key: Some("gpu".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }],
        version: Some("v2".into()),
    }
}

fn mk_config(firmware: Option<&str>) -> ModuleConfig {
    ModuleConfig {
        kernel_version: "6.1.0-18-cloud-amd64".into(),
        container_image: format!("registry.example/m@sha256:{}", "1".repeat(64)),
        image_pull_policy: "IfNotPresent".into(),
        modprobe: ModprobeSpec {
            module_name: Some("kmm_m".into()),
            dir_name: "/opt".into(),
            firmware_path: firmware.map(str::to_owned),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn build(action: Action, firmware: Option<&str>, settings: &WorkerPodSettings) -> Pod {
    worker_pod(
        &WorkerPodInput {
            node: "node-a",
            action,
            item: &mk_item(),
            config: &mk_config(firmware),
            owner: Some(("node-a", "uid-1")),
            attempt: 2,
            last_failure: Some("modprobe: FATAL: Module m not found\nsecond line"),
        },
        settings,
    )
    .unwrap()
}

fn mounts(c: &Container) -> Vec<(String, String, bool)> {
    c.volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.clone(), m.mount_path.clone(), m.read_only == Some(true)))
        .collect()
}

fn owned(items: &[(&str, &str, bool)]) -> Vec<(String, String, bool)> {
    items
        .iter()
        .map(|(n, p, ro)| (n.to_string(), p.to_string(), *ro))
        .collect()
}

#[test]
fn load_pod_without_firmware_field_by_field() {
    let pod = build(Action::Load, None, &WorkerPodSettings::default());
    let meta = &pod.metadata;
    assert_eq!(meta.name.as_deref(), Some("kmm-worker-node-a-m"));
    assert_eq!(meta.namespace.as_deref(), Some("drivers"));
    let labels = meta.labels.as_ref().unwrap();
    assert_eq!(labels[MODULE_NAME_LABEL], "m");
    assert_eq!(labels[WORKER_ACTION_LABEL], "Load");
    let annotations = meta.annotations.as_ref().unwrap();
    assert_eq!(annotations[WORKER_ATTEMPT_ANNOTATION], "2");
    assert_eq!(
        annotations[WORKER_LAST_FAILURE_ANNOTATION], "modprobe: FATAL: Module m not found",
        "one line"
    );
    assert_eq!(annotations[WORKER_VERSION_ANNOTATION], "v2");
    let config: ModuleConfig = serde_saphyr::from_str(&annotations[WORKER_CONFIG_ANNOTATION]).unwrap();
    assert_eq!(config, mk_config(None));
    let owner = &meta.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (
            owner.kind.as_str(),
            owner.name.as_str(),
            owner.uid.as_str(),
            owner.controller
        ),
        ("NodeModulesConfig", "node-a", "uid-1", Some(true))
    );

    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("node-a"));
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.service_account_name.as_deref(), Some("loader"));
    assert_eq!(spec.image_pull_secrets.as_ref().unwrap()[0].name, "pull");
    assert_eq!(spec.tolerations.as_ref().unwrap(), &mk_item().tolerations);

    let init = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.name, "image-extractor");
    assert_eq!(
        init.image.as_deref(),
        Some(mk_config(None).container_image.as_str())
    );
    assert_eq!(
        init.command.as_ref().unwrap()[..2],
        ["/bin/sh".to_owned(), "-c".to_owned()]
    );
    assert_eq!(mounts(init), owned(&[("tmp", "/tmp", false)]));
    let env: Vec<(&str, &str)> = init
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or_default()))
        .collect();
    assert_eq!(
        env,
        [
            ("KMM_SHARED_ROOT", "/tmp"),
            ("KMM_DIR_NAME", "/opt"),
            ("KMM_KERNEL", "6.1.0-18-cloud-amd64")
        ]
    );
    assert!(
        !init.command.as_ref().unwrap()[2].contains("6.1.0"),
        "the kernel is the script's data, not its text"
    );

    let worker = &spec.containers[0];
    assert_eq!(worker.image.as_deref(), Some("kmm-spoke:latest"));
    assert_eq!(
        worker.command.as_ref().unwrap(),
        &["/usr/local/bin/kmm-spoke".to_owned()]
    );
    assert_eq!(
        worker.args.as_ref().unwrap(),
        &["worker", "load", "--config", "/etc/kmm-worker/config.yaml"].map(str::to_owned)
    );
    let env = &worker.env.as_ref().unwrap()[0];
    assert_eq!(env.name, "KMM_WORKER_CONFIG");
    assert_eq!(
        env.value.as_deref(),
        Some(annotations[WORKER_CONFIG_ANNOTATION].as_str())
    );
    assert_eq!(
        mounts(worker),
        owned(&[
            ("config", "/etc/kmm-worker", true),
            ("lib-modules", "/lib/modules", true),
            ("tmp", "/tmp", true),
        ])
    );
    let sc = worker.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, None);
    assert_eq!(
        sc.capabilities.as_ref().unwrap().add.as_deref(),
        Some(&["SYS_MODULE".to_owned()][..])
    );
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(
        sc.se_linux_options.as_ref().unwrap().type_.as_deref(),
        Some("spc_t")
    );
    let volumes = spec.volumes.as_ref().unwrap();
    let lib_modules = volumes.iter().find(|v| v.name == "lib-modules").unwrap();
    assert_eq!(
        lib_modules.host_path,
        Some(HostPathVolumeSource {
            path: "/lib/modules".into(),
            type_: Some("Directory".into())
        })
    );
    assert_eq!(volumes.len(), 3);
}

#[test]
fn firmware_makes_the_pod_privileged_and_sets_the_class_path_unless_turned_off() {
    let pod = build(Action::Load, Some("/firmware"), &WorkerPodSettings::default());
    let spec = pod.spec.as_ref().unwrap();
    let worker = &spec.containers[0];
    assert_eq!(
        worker.args.as_ref().unwrap()[4..],
        [
            "--firmware-host-path",
            "/var/lib/firmware",
            "--firmware-class-path-file",
            "/sys/module/firmware_class/parameters/path"
        ]
        .map(str::to_owned)
    );
    assert_eq!(
        mounts(worker)[3..],
        owned(&[
            ("lib-firmware", "/var/lib/firmware", false),
            ("firmware-class", FIRMWARE_CLASS_PATH_DIR, false),
        ])
    );
    let sc = worker.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(true));
    assert_eq!(sc.capabilities, None);
    let fw = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "lib-firmware")
        .unwrap();
    assert_eq!(
        fw.host_path.as_ref().unwrap().type_.as_deref(),
        Some("DirectoryOrCreate")
    );

    let off = WorkerPodSettings {
        set_firmware_class_path: false,
        extra_args: vec!["--dry-run".into()],
        ..Default::default()
    };
    let pod = build(Action::Load, Some("/firmware"), &off);
    let worker = &pod.spec.as_ref().unwrap().containers[0];
    let args = worker.args.as_ref().unwrap();
    assert!(
        !args.iter().any(|a| a == "--firmware-class-path-file"),
        "{args:?}"
    );
    assert_eq!(args.last().map(String::as_str), Some("--dry-run"));
    assert_eq!(mounts(worker).len(), 4);
}

#[test]
fn unload_pods_clean_firmware_without_touching_the_class_path() {
    let pod = build(Action::Unload, Some("/firmware"), &WorkerPodSettings::default());
    let meta = &pod.metadata;
    assert_eq!(meta.labels.as_ref().unwrap()[WORKER_ACTION_LABEL], "Unload");
    assert!(
        !meta
            .annotations
            .as_ref()
            .unwrap()
            .contains_key(WORKER_VERSION_ANNOTATION)
    );
    let args = pod.spec.as_ref().unwrap().containers[0].args.clone().unwrap();
    assert_eq!(
        args,
        [
            "worker",
            "unload",
            "--config",
            "/etc/kmm-worker/config.yaml",
            "--firmware-host-path",
            "/var/lib/firmware"
        ]
        .map(str::to_owned)
    );
}

#[test]
fn long_pod_names_are_hashed_within_the_limit() {
    assert_eq!(pod_name("n", "m"), "kmm-worker-n-m");
    let long = pod_name(&"n".repeat(200), &"m".repeat(100));
    assert!(long.len() <= 253 && long.starts_with("kmm-worker-"), "{long}");
    assert_ne!(long, pod_name(&"n".repeat(200), &"m".repeat(101)));
}
