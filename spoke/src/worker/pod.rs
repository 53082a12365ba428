//! The worker pod: one short-lived privileged pod per (node, module, action), pinned with
//! `nodeName` (reference 3.6, with the differences listed in docs/spoke.md).
//!
//! The init container `image-extractor` runs the Module's (digest-pinned) kmod image itself, so
//! the kubelet pulls it with the node's mirrors and credentials and the Module's pull secret,
//! and copies `<dirName>/lib/modules/<kernel>` (and the firmware) into a shared emptyDir. The
//! container `worker` runs `kmm-spoke worker load|unload` from the spoke's own image on that copy.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Capabilities, Container, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource,
        EnvVar, HostPathVolumeSource, LocalObjectReference, ObjectFieldSelector, Pod, PodSpec,
        ResourceRequirements, SELinuxOptions, SecurityContext, Volume, VolumeMount,
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{ObjectMeta, OwnerReference},
    },
};
use kmm_api::nmc::{ModuleConfig, ModuleItem};

use super::{modprobe, run::Action};

/// Label with the Module's name, on worker and device plugin pods (upstream's key).
pub const MODULE_NAME_LABEL: &str = "kmm.node.kubernetes.io/module.name";
/// Label with the worker's action (`Load` or `Unload`).
pub const WORKER_ACTION_LABEL: &str = "kmm.node.kubernetes.io/worker-action";
/// Annotation holding the worker configuration (YAML), projected into the pod as a file.
pub const WORKER_CONFIG_ANNOTATION: &str = "kmm.node.kubernetes.io/worker-config";
/// Annotation counting consecutive failed attempts before this pod (backoff).
pub const WORKER_ATTEMPT_ANNOTATION: &str = "kmm.node.kubernetes.io/worker-attempt";
/// Annotation on a retry: the previous attempt's one-line reason (so the Module keeps reporting
/// the failure while the retry runs).
pub const WORKER_LAST_FAILURE_ANNOTATION: &str = "kmm.node.kubernetes.io/worker-last-failure";
/// Longest reason kept in that annotation.
const MAX_LAST_FAILURE: usize = 512;
/// Annotation with the module version a load pod loads (read back into the node record).
pub const WORKER_VERSION_ANNOTATION: &str = "kmm.node.kubernetes.io/worker-module-version";
/// Where the firmware class path lives in sysfs.
pub const FIRMWARE_CLASS_PATH_DIR: &str = "/sys/module/firmware_class/parameters";

/// Settings of the spoke that shape every worker pod.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerPodSettings {
    /// The spoke's own image (it holds `kmm-spoke` and modprobe).
    pub image: String,
    /// Path of the `kmm-spoke` binary in that image.
    pub binary: String,
    /// Host firmware directory the worker copies firmware into.
    pub firmware_host_path: String,
    /// Point the kernel's firmware class path at `firmware_host_path` when a Module has a
    /// `firmwarePath` (upstream always does; on by default).
    pub set_firmware_class_path: bool,
    /// Appended to every worker's arguments (for example `--dry-run`).
    pub extra_args: Vec<String>,
}

impl Default for WorkerPodSettings {
    fn default() -> Self {
        Self {
            image: "kmm-spoke:latest".into(),
            binary: "/usr/local/bin/kmm-spoke".into(),
            firmware_host_path: "/var/lib/firmware".into(),
            set_firmware_class_path: true,
            extra_args: Vec::new(),
        }
    }
}

/// Everything one worker pod is made from.
#[derive(Debug, Clone)]
pub struct WorkerPodInput<'a> {
    pub node: &'a str,
    pub action: Action,
    pub item: &'a ModuleItem,
    pub config: &'a ModuleConfig,
    /// The node's NodeModulesConfig (name, uid): the pod's controller, so it goes with the node.
    pub owner: Option<(&'a str, &'a str)>,
    /// Failed attempts before this one.
    pub attempt: u32,
    /// The previous attempt's reason, on a retry.
    pub last_failure: Option<&'a str>,
}

/// Name of the worker pod for a module on a node (one at a time, whatever the action).
pub fn pod_name(node: &str, module: &str) -> String {
    let name = format!("kmm-worker-{node}-{module}");
    if name.len() <= 253 {
        return name;
    }
    format!("kmm-worker-{:016x}", fnv1a(&name))
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Action label value.
pub fn action_label(action: Action) -> &'static str {
    match action {
        Action::Load => "Load",
        Action::Unload => "Unload",
    }
}

/// The worker configuration file as the pod carries it.
pub fn config_yaml(config: &ModuleConfig) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(config)
}

/// The worker pod.
pub fn worker_pod(
    input: &WorkerPodInput<'_>,
    settings: &WorkerPodSettings,
) -> Result<Pod, serde_saphyr::SerializeError> {
    let WorkerPodInput {
        node,
        action,
        item,
        config,
        owner,
        attempt,
        last_failure,
    } = input;
    let firmware = config
        .modprobe
        .firmware_path
        .as_deref()
        .filter(|f| !f.trim_matches('/').is_empty());
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "kmm".to_owned()),
        ("app.kubernetes.io/component".to_owned(), "worker".to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "kmm".to_owned()),
        (MODULE_NAME_LABEL.to_owned(), item.name.clone()),
        (WORKER_ACTION_LABEL.to_owned(), action_label(*action).to_owned()),
    ]);
    let mut annotations = BTreeMap::from([
        (WORKER_CONFIG_ANNOTATION.to_owned(), config_yaml(config)?),
        (WORKER_ATTEMPT_ANNOTATION.to_owned(), attempt.to_string()),
    ]);
    if let Some(reason) = last_failure {
        let line = reason.lines().next().unwrap_or_default();
        annotations.insert(
            WORKER_LAST_FAILURE_ANNOTATION.to_owned(),
            kmm_api::text::head(line, MAX_LAST_FAILURE).to_owned(),
        );
    }
    if let (Action::Load, Some(version)) = (action, item.version.as_ref()) {
        annotations.insert(WORKER_VERSION_ANNOTATION.to_owned(), version.clone());
    }

    let mut args = vec![
        "worker".to_owned(),
        match action {
            Action::Load => "load",
            Action::Unload => "unload",
        }
        .to_owned(),
        "--config".to_owned(),
        super::run::CONFIG_PATH.to_owned(),
    ];
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: "config.yaml".into(),
                    field_ref: Some(ObjectFieldSelector {
                        field_path: format!("metadata.annotations['{WORKER_CONFIG_ANNOTATION}']"),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        host_path_volume("lib-modules", "/lib/modules", "Directory"),
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ];
    let mut mounts = vec![
        mount("config", "/etc/kmm-worker", true),
        mount("lib-modules", "/lib/modules", true),
        mount("tmp", modprobe::SHARED_ROOT, true),
    ];
    if firmware.is_some() {
        args.extend([
            "--firmware-host-path".to_owned(),
            settings.firmware_host_path.clone(),
        ]);
        volumes.push(host_path_volume(
            "lib-firmware",
            &settings.firmware_host_path,
            "DirectoryOrCreate",
        ));
        mounts.push(mount("lib-firmware", &settings.firmware_host_path, false));
        if settings.set_firmware_class_path && *action == Action::Load {
            args.extend([
                "--firmware-class-path-file".to_owned(),
                format!("{FIRMWARE_CLASS_PATH_DIR}/path"),
            ]);
            volumes.push(host_path_volume(
                "firmware-class",
                FIRMWARE_CLASS_PATH_DIR,
                "Directory",
            ));
            mounts.push(mount("firmware-class", FIRMWARE_CLASS_PATH_DIR, false));
        }
    }

    args.extend(settings.extra_args.iter().cloned());

    let resources = ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("500m".into())),
            ("memory".to_owned(), Quantity("64Mi".into())),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("1".into())),
            ("memory".to_owned(), Quantity("128Mi".into())),
        ])),
        ..Default::default()
    };
    let security = if firmware.is_some() {
        // Writing the host firmware dir (and sysfs) needs more than CAP_SYS_MODULE.
        SecurityContext {
            privileged: Some(true),
            ..Default::default()
        }
    } else {
        SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["SYS_MODULE".into()]),
                ..Default::default()
            }),
            run_as_user: Some(0),
            se_linux_options: Some(SELinuxOptions {
                type_: Some("spc_t".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    };

    let (script, copy_env) =
        modprobe::copy_command(&config.modprobe, &config.kernel_version, modprobe::SHARED_ROOT);
    let extractor = Container {
        name: "image-extractor".into(),
        image: Some(config.container_image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        // A fixed script; the Module's values are its environment, never its text.
        command: Some(vec!["/bin/sh".into(), "-c".into(), script]),
        env: Some(
            copy_env
                .into_iter()
                .map(|(name, value)| EnvVar {
                    name: name.into(),
                    value: Some(value),
                    ..Default::default()
                })
                .collect(),
        ),
        resources: Some(resources.clone()),
        volume_mounts: Some(vec![mount("tmp", modprobe::SHARED_ROOT, false)]),
        ..Default::default()
    };
    let worker = Container {
        name: "worker".into(),
        image: Some(settings.image.clone()),
        command: Some(vec![settings.binary.clone()]),
        args: Some(args),
        // The config again, literally: what the worker reads first, so it runs wherever the
        // downward-API file is not there (a kubelet stand-in, a debugging copy of the pod).
        env: Some(vec![EnvVar {
            name: super::run::CONFIG_ENV.into(),
            value: Some(config_yaml(config)?),
            ..Default::default()
        }]),
        resources: Some(resources),
        security_context: Some(security),
        termination_message_path: Some("/dev/termination-log".into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };

    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(node, &item.name)),
            namespace: Some(item.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: owner.map(|(name, uid)| {
                vec![OwnerReference {
                    api_version: "kmm.sigs.x-k8s.io/v1beta1".into(),
                    kind: "NodeModulesConfig".into(),
                    name: name.to_owned(),
                    uid: uid.to_owned(),
                    controller: Some(true),
                    block_owner_deletion: Some(false),
                }]
            }),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some((*node).to_owned()),
            restart_policy: Some("Never".into()),
            service_account_name: Some(item.service_account_name.clone()),
            image_pull_secrets: item
                .image_repo_secret
                .as_ref()
                .map(|s: &LocalObjectReference| vec![s.clone()]),
            tolerations: (!item.tolerations.is_empty()).then(|| item.tolerations.clone()),
            priority_class_name: Some("system-node-critical".into()),
            init_containers: Some(vec![extractor]),
            containers: vec![worker],
            volumes: Some(volumes),
            ..Default::default()
        }),
        status: None,
    })
}

fn host_path_volume(name: &str, path: &str, type_: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some(type_.into()),
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
