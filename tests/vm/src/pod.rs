//! A stand-in kubelet for worker pods inside the VM.
//!
//! The VM's root filesystem is at once the node (its `/lib/modules`, `/var/lib/firmware`,
//! `/sys`), the kmod image (its `<dirName>/lib/modules/<kernel>` and `firmwarePath`, as the
//! init container sees them) and the spoke image (`kmm-spoke` at the path the pod names,
//! `modprobe`). So a pod built by the spoke runs here as the kubelet would run it, with every
//! hostPath mounted at its own path:
//!
//! - `downwardAPI` volumes: the projected annotations are written at the mount path;
//! - `emptyDir` volumes: emptied (each pod gets a new one);
//! - `hostPath` volumes: `DirectoryOrCreate` created, `Directory` required to exist;
//! - the init containers' commands run, then the container's command and args.
//!
//! What it does not do: read-only mounts, capabilities and the security context (the VM runs
//! everything as root with every capability), images, resources.

use std::fmt::Write as _;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Container, Pod};

use crate::vm::Step;

/// Two steps for a pod, named `<name>-init` (its init containers, one after the other) and
/// `<name>` (its one container), as shell scripts.
pub fn steps(name: &str, pod: &Pod) -> anyhow::Result<[Step; 2]> {
    let spec = pod.spec.as_ref().context("pod without spec")?;
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let [container] = spec.containers.as_slice() else {
        bail!("the stand-in kubelet runs pods of one container");
    };
    let mut volumes = String::new();
    for mount in container.volume_mounts.iter().flatten() {
        let Some(volume) = spec.volumes.iter().flatten().find(|v| v.name == mount.name) else {
            bail!("mount of unknown volume {}", mount.name);
        };
        let path = &mount.mount_path;
        if let Some(host) = &volume.host_path {
            if &host.path != path {
                bail!(
                    "hostPath {} mounted at {path}: only same-path mounts are supported",
                    host.path
                );
            }
            match host.type_.as_deref() {
                Some("DirectoryOrCreate") => {
                    let _ = writeln!(volumes, "mkdir -p {}", quote(path));
                }
                Some("Directory") => {
                    let _ = writeln!(
                        volumes,
                        "[ -d {p} ] || {{ echo 'hostPath {p} is not a directory'; exit 90; }}",
                        p = quote(path)
                    );
                }
                other => bail!("hostPath type {other:?} not supported"),
            }
        } else if volume.empty_dir.is_some() {
            let _ = writeln!(volumes, "rm -rf {p}; mkdir -p {p}", p = quote(path));
        } else if let Some(downward) = &volume.downward_api {
            let _ = writeln!(volumes, "mkdir -p {}", quote(path));
            for item in downward.items.iter().flatten() {
                let field = item
                    .field_ref
                    .as_ref()
                    .map(|f| f.field_path.as_str())
                    .context("downwardAPI item without fieldRef")?;
                let key = field
                    .strip_prefix("metadata.annotations['")
                    .and_then(|k| k.strip_suffix("']"))
                    .with_context(|| format!("downwardAPI field {field} not supported"))?;
                let value = annotations
                    .get(key)
                    .with_context(|| format!("the pod has no annotation {key}"))?;
                let _ = writeln!(
                    volumes,
                    "printf '%s' {} > {}",
                    quote(value),
                    quote(&format!("{}/{}", path.trim_end_matches('/'), item.path))
                );
            }
        } else {
            bail!("volume {} of an unsupported kind", volume.name);
        }
    }
    // The init containers get their own mounts (emptyDir only, here), prepared with the rest.
    let mut init = volumes.clone();
    for container in spec.init_containers.iter().flatten() {
        let _ = writeln!(
            init,
            "( {}{} ) || exit $?",
            exports(container)?,
            command_line(container)?
        );
    }
    let main = format!("{}exec {}\n", exports(container)?, command_line(container)?);
    Ok([
        Step {
            name: format!("{name}-init"),
            script: init,
        },
        Step {
            name: name.to_owned(),
            script: main,
        },
    ])
}

/// The container's `env` (literal values only), as `export` commands ending in `; `: the
/// copy script of the image extractor takes its paths from there.
fn exports(container: &Container) -> anyhow::Result<String> {
    let mut out = String::new();
    for var in container.env.iter().flatten() {
        if var.name.is_empty() || !var.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!(
                "container {}: env name {:?} not supported",
                container.name,
                var.name
            );
        }
        let Some(value) = &var.value else {
            bail!(
                "container {}: env {} without a literal value",
                container.name,
                var.name
            );
        };
        let _ = write!(out, "export {}={}; ", var.name, quote(value));
    }
    Ok(out)
}

fn command_line(container: &Container) -> anyhow::Result<String> {
    let words: Vec<&String> = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .collect();
    if words.is_empty() {
        bail!(
            "container {} has no command (image entrypoints are not known here)",
            container.name
        );
    }
    Ok(words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" "))
}

/// A shell word, single-quoted.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvVar, HostPathVolumeSource,
        ObjectFieldSelector, PodSpec, Volume, VolumeMount,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn mount(name: &str, path: &str) -> VolumeMount {
        VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_becomes_an_init_step_and_a_worker_step() {
        let pod = Pod {
            metadata: ObjectMeta {
                annotations: Some([("a/config".to_owned(), "k: 'v'\n".to_owned())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                init_containers: Some(vec![Container {
                    name: "init".into(),
                    command: Some(vec![
                        "/bin/sh".into(),
                        "-c".into(),
                        "cp -R /opt/x /tmp/opt;".into(),
                    ]),
                    env: Some(vec![EnvVar {
                        name: "KMM_X".into(),
                        value: Some("it's".into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }]),
                containers: vec![Container {
                    name: "worker".into(),
                    command: Some(vec!["/usr/local/bin/kmm-spoke".into()]),
                    args: Some(vec!["worker".into(), "load".into()]),
                    volume_mounts: Some(vec![
                        mount("config", "/etc/kmm-worker"),
                        mount("fw", "/var/lib/firmware"),
                        mount("tmp", "/tmp"),
                    ]),
                    ..Default::default()
                }],
                volumes: Some(vec![
                    Volume {
                        name: "config".into(),
                        downward_api: Some(DownwardAPIVolumeSource {
                            items: Some(vec![DownwardAPIVolumeFile {
                                path: "config.yaml".into(),
                                field_ref: Some(ObjectFieldSelector {
                                    field_path: "metadata.annotations['a/config']".into(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    Volume {
                        name: "fw".into(),
                        host_path: Some(HostPathVolumeSource {
                            path: "/var/lib/firmware".into(),
                            type_: Some("DirectoryOrCreate".into()),
                        }),
                        ..Default::default()
                    },
                    Volume {
                        name: "tmp".into(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let [init, main] = steps("load", &pod).unwrap();
        assert_eq!(init.name, "load-init");
        assert_eq!(
            init.script,
            "mkdir -p '/etc/kmm-worker'\n\
             printf '%s' 'k: '\\''v'\\''\n' > '/etc/kmm-worker/config.yaml'\n\
             mkdir -p '/var/lib/firmware'\n\
             rm -rf '/tmp'; mkdir -p '/tmp'\n\
             ( export KMM_X='it'\\''s'; '/bin/sh' '-c' 'cp -R /opt/x /tmp/opt;' ) || exit $?\n"
        );
        assert_eq!(main.name, "load");
        assert_eq!(main.script, "exec '/usr/local/bin/kmm-spoke' 'worker' 'load'\n");

        let mut from_secret = pod.clone();
        let spec = from_secret.spec.as_mut().unwrap();
        spec.containers[0].env = Some(vec![EnvVar {
            name: "TOKEN".into(),
            ..Default::default()
        }]);
        assert!(steps("load", &from_secret).is_err());
    }
}
