//! Build and sign Jobs (pure): the Job that runs a [`Step`], and reading how it went.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        batch::v1::{Job, JobSpec},
        core::v1::{
            Capabilities, ConfigMapVolumeSource, Container, EnvVar, KeyToPath, PodSecurityContext, PodSpec,
            PodTemplateSpec, ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext,
            Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};
use kmm_api::{ManagedClusterModule, labels::MCM_NAME_LABEL, module::TlsOptions};
use kube::ResourceExt;

// The Job renders a Step; the step's names stay reachable from here.
pub use super::step::{Step, StepKind, intermediate_image, resolve, step_for};

/// Label on every Job: `build` or `sign`.
pub const JOB_TYPE_LABEL: &str = "hub.kmm.sigs.x-k8s.io/job-type";
/// Annotation on every Job: the image it produces.
pub const JOB_IMAGE_ANNOTATION: &str = "hub.kmm.sigs.x-k8s.io/image";
/// Annotation on every Job: the kernel it is for.
pub const JOB_KERNEL_ANNOTATION: &str = "hub.kmm.sigs.x-k8s.io/kernel";

/// Hub-wide settings of the Jobs.
#[derive(Clone, Debug)]
pub struct JobSettings {
    /// Namespace the Jobs, Dockerfile ConfigMaps and Secrets live in.
    pub namespace: String,
    /// Image with buildah, for builds.
    pub buildah_image: String,
    /// Image of kmm-hub itself, for `kmm-hub sign-image`.
    pub hub_image: String,
    /// CPU and memory each Job container requests.
    pub requests: Resources,
    /// CPU and memory each Job container may use at most.
    pub limits: Resources,
    /// Seconds a Job may run before Kubernetes stops it.
    pub deadline_seconds: i64,
}

/// A CPU and a memory quantity (`250m`, `512Mi`); empty means unset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu: String,
    pub memory: String,
}

/// Defaults of the hub's `--job-*` flags.
pub mod defaults {
    pub const CPU_REQUEST: &str = "250m";
    pub const MEMORY_REQUEST: &str = "512Mi";
    pub const CPU_LIMIT: &str = "2";
    pub const MEMORY_LIMIT: &str = "4Gi";
    pub const DEADLINE_SECONDS: i64 = 3600;
}

impl JobSettings {
    /// Settings with the default resources and deadline.
    pub fn new(namespace: &str, buildah_image: &str, hub_image: &str) -> Self {
        Self {
            namespace: namespace.into(),
            buildah_image: buildah_image.into(),
            hub_image: hub_image.into(),
            requests: Resources {
                cpu: defaults::CPU_REQUEST.into(),
                memory: defaults::MEMORY_REQUEST.into(),
            },
            limits: Resources {
                cpu: defaults::CPU_LIMIT.into(),
                memory: defaults::MEMORY_LIMIT.into(),
            },
            deadline_seconds: defaults::DEADLINE_SECONDS,
        }
    }
}

impl Resources {
    fn quantities(&self) -> Option<BTreeMap<String, Quantity>> {
        let map: BTreeMap<String, Quantity> = [("cpu", &self.cpu), ("memory", &self.memory)]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), Quantity(v.clone())))
            .collect();
        (!map.is_empty()).then_some(map)
    }
}

/// Key material is readable by the Job's user only.
const KEY_MODE: i32 = 0o400;

/// Key of the Dockerfile in the `dockerfileConfigMap` (as upstream).
pub const DOCKERFILE_KEY: &str = "dockerfile";

/// The shell script of a build Job. Positional arguments are buildah's `--build-arg`s; paths come
/// from the environment so the same command runs outside a pod (tests run it with buildah here).
pub const BUILD_SCRIPT: &str = r#"set -eu
ws="${KMM_WORKSPACE:-/workspace}"
auth=""
if [ -f "${KMM_AUTH_FILE:-/run/kmm/auth/config.json}" ]; then auth="--authfile=${KMM_AUTH_FILE:-/run/kmm/auth/config.json}"; fi
storage="--storage-driver=vfs"
if [ -n "${KMM_STORAGE_ROOT:-}" ]; then storage="$storage --root=$KMM_STORAGE_ROOT --runroot=$KMM_STORAGE_ROOT/run"; fi
buildah $storage bud --isolation=chroot --tls-verify="$KMM_BASE_TLS_VERIFY" $auth "$@" -f "$ws/dockerfile" -t "$KMM_IMAGE" "$ws"
buildah $storage push --tls-verify="$KMM_PUSH_TLS_VERIFY" $auth "$KMM_IMAGE" "docker://$KMM_IMAGE"
"#;

fn tls_verify(tls: &TlsOptions) -> &'static str {
    if tls.insecure || tls.insecure_skip_tls_verify {
        "false"
    } else {
        "true"
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// A Secret volume, files at mode 0400; `items` limits it to the keys the Job reads.
fn secret_volume(volume: &str, secret: &str, items: Option<Vec<KeyToPath>>) -> Volume {
    Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items,
            default_mode: Some(KEY_MODE),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..Default::default()
    }
}

/// The Job running `step` for `mcm` (build args get the kernel variables and the MCM's names).
pub fn job(mcm: &ManagedClusterModule, step: &Step, trigger: Option<i64>, settings: &JobSettings) -> Job {
    let name = step.job_name(trigger);
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut envs = vec![env("KMM_IMAGE", step.target())];
    let auth = match step {
        Step::Build { auth, .. } | Step::Sign { auth, .. } => auth.clone(),
    };
    if let Some(secret) = &auth {
        let items = vec![KeyToPath {
            key: ".dockerconfigjson".into(),
            path: "config.json".into(),
            mode: Some(KEY_MODE),
        }];
        volumes.push(secret_volume("registry-auth", secret, Some(items)));
        mounts.push(mount("registry-auth", "/run/kmm/auth"));
    }
    let (container, node_selector) = match step {
        Step::Build {
            kernel,
            build,
            push_tls,
            ..
        } => {
            volumes.push(Volume {
                name: "dockerfile".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: build.dockerfile_config_map.name.clone(),
                    items: Some(vec![KeyToPath {
                        key: DOCKERFILE_KEY.into(),
                        path: "dockerfile".into(),
                        mode: None,
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            });
            mounts.push(mount("dockerfile", "/workspace"));
            // Volume names must be DNS labels (63 characters, no dots); Secret names are DNS
            // subdomains (253, dots allowed), so the volume is named by position, not by Secret.
            for (i, s) in build.secrets.iter().flatten().enumerate() {
                let volume = format!("build-secret-{i}");
                volumes.push(secret_volume(&volume, &s.name, None));
                mounts.push(mount(&volume, &format!("/run/secrets/{}", s.name)));
            }
            envs.push(env(
                "KMM_BASE_TLS_VERIFY",
                tls_verify(&build.base_image_registry_tls.clone().unwrap_or_default()),
            ));
            envs.push(env("KMM_PUSH_TLS_VERIFY", tls_verify(push_tls)));
            let mut args = vec![
                "-c".to_string(),
                BUILD_SCRIPT.to_string(),
                "kmm-build".to_string(),
            ];
            let builtin = [
                ("KERNEL_VERSION", kernel.clone()),
                ("KERNEL_FULL_VERSION", kernel.clone()),
                ("MOD_NAME", mcm.name_any()),
                ("MOD_NAMESPACE", mcm.spec.spoke_namespace.clone()),
            ];
            for (k, v) in builtin {
                args.push(format!("--build-arg={k}={v}"));
            }
            for a in build.build_args.iter().flatten() {
                args.push(format!("--build-arg={}={}", a.name, a.value));
            }
            let c = Container {
                name: "build".into(),
                image: Some(settings.buildah_image.clone()),
                command: Some(vec!["/bin/sh".into()]),
                args: Some(args),
                ..Default::default()
            };
            (c, build.selector.clone())
        }
        Step::Sign {
            source,
            target,
            sign,
            push_tls,
            ..
        } => {
            let only = |key: &str| {
                Some(vec![KeyToPath {
                    key: key.into(),
                    path: key.into(),
                    mode: Some(KEY_MODE),
                }])
            };
            volumes.push(secret_volume("signing-key", &sign.key_secret.name, only("key")));
            volumes.push(secret_volume(
                "signing-cert",
                &sign.cert_secret.name,
                only("cert"),
            ));
            mounts.push(mount("signing-key", "/run/kmm/signing-key"));
            mounts.push(mount("signing-cert", "/run/kmm/signing-cert"));
            let mut args = vec![
                "sign-image".to_string(),
                format!("--unsigned-image={source}"),
                format!("--image={target}"),
                "--key=/run/kmm/signing-key/key".to_string(),
                "--cert=/run/kmm/signing-cert/cert".to_string(),
            ];
            for f in sign.files_to_sign.iter().flatten() {
                args.push(format!("--file-to-sign={f}"));
            }
            let from_tls = sign.unsigned_image_registry_tls.clone().unwrap_or_default();
            for (set, flag) in [
                (from_tls.insecure, "--unsigned-image-insecure"),
                (
                    from_tls.insecure_skip_tls_verify,
                    "--unsigned-image-insecure-skip-tls-verify",
                ),
                (push_tls.insecure, "--insecure"),
                (push_tls.insecure_skip_tls_verify, "--insecure-skip-tls-verify"),
            ] {
                if set {
                    args.push(flag.to_string());
                }
            }
            if auth.is_some() {
                args.push("--docker-config=/run/kmm/auth/config.json".into());
            }
            let c = Container {
                name: "sign".into(),
                image: Some(settings.hub_image.clone()),
                command: Some(vec!["kmm-hub".into()]),
                args: Some(args),
                ..Default::default()
            };
            (c, None)
        }
    };
    let container = Container {
        env: Some(envs),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(security_context(step.kind())),
        resources: Some(ResourceRequirements {
            requests: settings.requests.quantities(),
            limits: settings.limits.quantities(),
            ..Default::default()
        }),
        ..container
    };
    let labels = BTreeMap::from([
        (MCM_NAME_LABEL.to_string(), mcm.name_any()),
        (JOB_TYPE_LABEL.to_string(), step.kind().to_string()),
    ]);
    let annotations = BTreeMap::from([
        (JOB_IMAGE_ANNOTATION.to_string(), step.target().to_string()),
        (JOB_KERNEL_ANNOTATION.to_string(), step.kernel().to_string()),
    ]);
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(JobSpec {
            // A failed build is kept for inspection and reported; it is not retried in a loop.
            backoff_limit: Some(0),
            active_deadline_seconds: Some(settings.deadline_seconds).filter(|s| *s > 0),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    // Neither buildah nor sign-image talks to the API server.
                    automount_service_account_token: Some(false),
                    containers: vec![container],
                    volumes: Some(volumes),
                    security_context: pod_security_context(step.kind()),
                    node_selector,
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The container's restrictions. The signer needs nothing: no capability, no privilege
/// escalation, the runtime's seccomp profile. buildah (`bud --isolation=chroot` as root) needs
/// root's capabilities to chroot and set file owners, so it only loses privilege escalation.
fn security_context(kind: StepKind) -> SecurityContext {
    match kind {
        StepKind::Sign => SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        StepKind::Build => SecurityContext {
            allow_privilege_escalation: Some(false),
            ..Default::default()
        },
    }
}

/// The user the kmm-hub image runs as (its `USER`, and `runAsUser` in manifests/hub).
pub const HUB_IMAGE_UID: i64 = 65532;

/// The signer runs as the kmm-hub image's non-root user; `fsGroup` makes the key and
/// certificate Secrets (mode 0400, owned by root) readable to it: the kubelet gives a Secret
/// volume's files the fsGroup and group read. buildah keeps the image's default (root).
fn pod_security_context(kind: StepKind) -> Option<PodSecurityContext> {
    match kind {
        StepKind::Sign => Some(PodSecurityContext {
            run_as_user: Some(HUB_IMAGE_UID),
            run_as_group: Some(HUB_IMAGE_UID),
            run_as_non_root: Some(true),
            fs_group: Some(HUB_IMAGE_UID),
            ..Default::default()
        }),
        StepKind::Build => None,
    }
}

/// How a Job ended, from its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    Running,
    Succeeded,
    Failed(String),
}

/// Reads a Job's outcome; `message` is the failed pod's termination message when known.
pub fn job_state(job: &Job, message: Option<&str>) -> JobState {
    let status = job.status.as_ref();
    let cond = |t: &str| {
        status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == t && c.status == "True"))
    };
    if cond("Complete") || status.and_then(|s| s.succeeded).unwrap_or(0) > 0 {
        JobState::Succeeded
    } else if cond("Failed") {
        let fallback = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Failed"))
            .and_then(|c| c.message.clone())
            .unwrap_or_else(|| "the Job failed".into());
        JobState::Failed(message.map_or(fallback, |m| m.trim().to_string()))
    } else {
        JobState::Running
    }
}

#[cfg(test)]
mod tests;
