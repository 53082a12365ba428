//! Long-running pods of images built in this workspace, run as the workspace's binaries: a pod
//! whose first container's image belongs to a mapped repository (say
//! `quay.io/kmm-fleet/kmm-spoke`) and whose `restartPolicy` is `Always` (a Deployment's pod) runs
//! that image's binary on this machine with the container's command and args, its environment
//! (literal values, `valueFrom` field, ConfigMap and Secret references, `envFrom`), its ConfigMap
//! and Secret volumes, and the pod's ServiceAccount credentials, until the pod is deleted.
//!
//! Credentials: a token from the TokenRequest API for the pod's ServiceAccount, bound to the pod
//! (it stops working once the pod is gone), as the projected `kube-api-access` volume holds.
//! kube-rs reads in-cluster credentials from fixed paths under `/var/run/secrets`, which a
//! process here cannot be given per pod, so the token and `ca.crt` go into a kubeconfig in the
//! pod's folder and `KUBECONFIG` points at it; kube-rs's config inference takes it first.
//!
//! What stands in for the node: every pod shares this machine's network, so a mapped image may
//! override environment (a listen address) and append arguments (paths under the test's folder
//! for the workers the binary starts). A process that exits is started again in the same pod,
//! as the kubelet restarts a container.
//!
//! A mapped image may name a real image instead ([`FromImage`], as a registry mirror would
//! serve the repository): the pod's container then runs chrooted in that image, pulled and
//! unpacked as [`super::images`] does, with its own command, as the UID its securityContext
//! (else the image) says, its volumes and the pod's folder (kubeconfig, token, CA) bound in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Pod, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

use super::{ExecReport, Outcome, PodLogSink, images, pods};

/// A repository whose long-running pods run a binary of this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryImage {
    /// The image reference without tag or digest, e.g. `quay.io/kmm-fleet/kmm-spoke`.
    pub repository: String,
    /// What the container's command names (its first word is replaced by this path).
    pub binary: PathBuf,
    /// Appended to the container's args (the node's side of the test: paths, dry-run workers).
    pub extra_args: Vec<String>,
    /// Set over the container's environment (pods share one network here: listen addresses).
    pub env: BTreeMap<String, String>,
    /// Run the pod from this image instead of `binary`.
    pub from_image: Option<FromImage>,
}

/// The image a mapped repository's pods run from, whatever tag or digest they name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromImage {
    /// The reference pulled (e.g. pinned in a test registry).
    pub image: String,
    pub pull: images::ImageOptions,
}

/// Settings of the binary runner.
#[derive(Debug, Clone)]
pub struct BinaryOptions {
    pub images: Vec<BinaryImage>,
    /// The API server URL and CA file the pods' kubeconfigs point at.
    pub server: String,
    pub ca: PathBuf,
    /// One folder per pod (kubeconfig, volumes, the container's log).
    pub root: PathBuf,
}

impl BinaryOptions {
    /// The mapped image `pod` runs as a binary, if any.
    pub fn image_for(&self, pod: &Pod) -> Option<&BinaryImage> {
        let spec = pod.spec.as_ref()?;
        if spec.restart_policy.as_deref().is_some_and(|p| p != "Always") {
            return None;
        }
        let image = spec.containers.first()?.image.as_deref()?;
        self.images.iter().find(|b| b.repository == repository(image))
    }
}

/// The repository of an image reference: without `@digest` and without a `:tag` after the last
/// `/` (a registry's `:port` is kept).
pub fn repository(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(r, _)| r);
    match image.rfind(':') {
        Some(colon) if !image[colon..].contains('/') => &image[..colon],
        _ => image,
    }
}

/// A `fieldRef` value of `pod`, for the paths the downward API serves as env.
pub fn field_value(pod: &Pod, path: &str) -> Option<String> {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    match path {
        "metadata.name" => Some(pod.name_any()),
        "metadata.namespace" => pod.namespace(),
        "metadata.uid" => pod.uid(),
        "spec.nodeName" => spec?.node_name.clone(),
        "spec.serviceAccountName" => spec?.service_account_name.clone(),
        "status.hostIP" => status?.host_ip.clone(),
        "status.podIP" => status?.pod_ip.clone(),
        other => {
            let key = other
                .strip_prefix("metadata.labels['")
                .map(|k| (k, true))
                .or_else(|| other.strip_prefix("metadata.annotations['").map(|k| (k, false)))?;
            let (name, labels) = (key.0.strip_suffix("']")?, key.1);
            let map = if labels {
                pod.metadata.labels.as_ref()
            } else {
                pod.metadata.annotations.as_ref()
            };
            map?.get(name).cloned()
        }
    }
}

/// What a binary pod runs: argv and environment, ready to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub log: PathBuf,
    /// Run chrooted: the unpacked image, the user and the binds (source, target).
    pub chroot: Option<Chroot>,
}

/// A container run chrooted in its unpacked image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chroot {
    pub root: PathBuf,
    pub user: (i64, i64),
    pub binds: Vec<(String, String)>,
}

/// Reads the keys of a ConfigMap or Secret of `namespace` (`secret` picks which).
async fn data_of(
    client: &Client,
    namespace: &str,
    name: &str,
    secret: bool,
) -> Result<BTreeMap<String, String>, String> {
    if secret {
        let s = Api::<Secret>::namespaced(client.clone(), namespace)
            .get(name)
            .await
            .map_err(|e| format!("secret {name}: {e}"))?;
        Ok(s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect())
    } else {
        let c = Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .get(name)
            .await
            .map_err(|e| format!("configmap {name}: {e}"))?;
        Ok(c.data.unwrap_or_default().into_iter().collect())
    }
}

/// The container's environment as the kubelet builds it: `envFrom` first (in order, with its
/// prefix), then `env` (later entries win; `$(VAR)` references are not expanded).
async fn container_env(
    client: &Client,
    pod: &Pod,
    c: &Container,
) -> Result<BTreeMap<String, String>, String> {
    let ns = pod.namespace().unwrap_or_default();
    let mut env = BTreeMap::new();
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (name, secret, optional) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), _) => (r.name.clone(), false, r.optional.unwrap_or(false)),
            (None, Some(r)) => (r.name.clone(), true, r.optional.unwrap_or(false)),
            (None, None) => continue,
        };
        match data_of(client, &ns, &name, secret).await {
            Ok(data) => env.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v))),
            Err(_) if optional => {}
            Err(e) => return Err(e),
        }
    }
    for EnvVar {
        name,
        value,
        value_from,
    } in c.env.iter().flatten()
    {
        let v = match (value, value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    field_value(pod, &f.field_path)
                        .ok_or_else(|| format!("env {name}: no value for field {}", f.field_path))?
                } else if let Some(r) = &from.config_map_key_ref {
                    data_of(client, &ns, &r.name, false)
                        .await?
                        .remove(&r.key)
                        .unwrap_or_default()
                } else if let Some(r) = &from.secret_key_ref {
                    data_of(client, &ns, &r.name, true)
                        .await?
                        .remove(&r.key)
                        .unwrap_or_default()
                } else {
                    return Err(format!("env {name}: unsupported valueFrom"));
                }
            }
            (None, None) => String::new(),
        };
        env.insert(name.clone(), v);
    }
    Ok(env)
}

/// Writes a kubeconfig in `dir` with a token for the pod's ServiceAccount, bound to the pod.
async fn pod_kubeconfig(
    client: &Client,
    pod: &Pod,
    opts: &BinaryOptions,
    dir: &Path,
) -> Result<PathBuf, String> {
    let ns = pod.namespace().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".to_owned());
    let request: TokenRequest = serde_json::from_value(json!({"spec": {
        "audiences": [],
        "expirationSeconds": 3600,
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.name_any(), "uid": pod.uid()},
    }}))
    .map_err(|e| e.to_string())?;
    let token = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create_token_request(&sa, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("token for serviceaccount {ns}/{sa}: {e}"))?
        .status
        .ok_or("token request without status")?
        .token;
    let ca = dir.join("ca.crt");
    std::fs::copy(&opts.ca, &ca).map_err(|e| format!("copying {}: {e}", opts.ca.display()))?;
    // Readable by a non-root container user, as the projected volume's files are (mode 0644).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| format!("making {} readable: {e}", ca.display()))?;
    let token_file = dir.join("token");
    std::fs::write(&token_file, &token).map_err(|e| format!("writing the token: {e}"))?;
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": {"server": opts.server, "certificate-authority": ca}}],
        "users": [{"name": sa, "user": {"tokenFile": token_file}}],
        "contexts": [{"name": "pod", "context": {"cluster": "cluster", "user": sa, "namespace": ns}}],
        "current-context": "pod",
    });
    let path = dir.join("kubeconfig");
    std::fs::write(&path, kubeconfig.to_string()).map_err(|e| format!("writing the kubeconfig: {e}"))?;
    Ok(path)
}

/// Everything the container needs, written under the pod's folder.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    image: &BinaryImage,
    opts: &BinaryOptions,
) -> Result<Prepared, String> {
    let c = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .ok_or("pod without container")?;
    let dir = opts.root.join(pod.uid().unwrap_or_else(|| pod.name_any()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mounts = pods::materialize_volumes(client, pod, &opts.root).await?;
    let mut argv = pods::argv(c);
    if argv.is_empty() {
        return Err(format!(
            "container {} has no command (the image's entrypoint is not known here)",
            c.name
        ));
    }
    // From an image, the mount paths are bound where the container expects them; as a binary
    // of this machine, they are rewritten to the folders standing in for them.
    let rewrite = |text: &str| match image.from_image {
        Some(_) => text.to_owned(),
        None => pods::rewrite(text, &mounts),
    };
    if image.from_image.is_none() {
        argv[0] = image.binary.display().to_string();
    }
    let mut argv: Vec<String> = argv.iter().map(|a| rewrite(a)).collect();
    argv.extend(image.extra_args.iter().cloned());
    let mut env: BTreeMap<String, String> = container_env(client, pod, c)
        .await?
        .into_iter()
        .map(|(k, v)| (k, rewrite(&v)))
        .collect();
    env.insert("HOSTNAME".into(), pod.name_any());
    env.insert(
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    );
    env.insert(
        "KUBECONFIG".into(),
        pod_kubeconfig(client, pod, opts, &dir)
            .await?
            .display()
            .to_string(),
    );
    let chroot = match &image.from_image {
        Some(from) => {
            let root = dir.join("image").join("rootfs");
            images::pull_and_unpack(&from.image, &root, &from.pull)
                .await
                .map_err(|e| format!("pulling {}: {e}", from.image))?;
            let config = images::cached_image_config(&from.image, &from.pull);
            env.insert("PATH".into(), images::image_path(&config));
            // The volumes at their mount paths; the pod's folder (kubeconfig, token, CA) at
            // its own path, where KUBECONFIG points.
            let mut binds: Vec<(String, String)> = mounts
                .iter()
                .map(|(at, from)| (from.clone(), at.clone()))
                .collect();
            let own = dir.display().to_string();
            binds.push((own.clone(), own));
            Some(Chroot {
                root,
                user: images::run_as(pod, &config),
                binds,
            })
        }
        None => None,
    };
    env.extend(image.env.clone());
    Ok(Prepared {
        argv,
        env,
        log: dir.join(format!("{}.log", c.name)),
        chroot,
    })
}

/// Runs a binary pod: prepares it (retried every 2 s, the pod staying Pending, as a kubelet
/// retries a missing ConfigMap), reports it running on `progress`, and restarts the process
/// when it exits, after a delay doubling from 1 s to 20 s, as the kubelet restarts the container
/// of a `restartPolicy: Always` pod (the pod stays `Running`; its restart count is not kept).
/// Only a process that cannot be started ends the pod (`Failed`). Aborting the task kills the
/// process.
pub(super) async fn run(
    client: Client,
    pod: Pod,
    image: BinaryImage,
    opts: BinaryOptions,
    sink: Option<std::sync::Arc<dyn PodLogSink>>,
    progress: mpsc::UnboundedSender<ExecReport>,
) -> ExecReport {
    let prepared = loop {
        match prepare(&client, &pod, &image, &opts).await {
            Ok(p) => break p,
            Err(e) => {
                tracing::warn!(pod = %pod.name_any(), error = %e, "binary pod not ready to start");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let mut delay = Duration::from_secs(1);
    let mut reported = false;
    loop {
        let mut child = match spawn(&prepared) {
            Ok(c) => c,
            Err(message) => {
                return ExecReport {
                    pod,
                    outcome: Outcome::failed(128, message),
                    failed_init: None,
                    last: true,
                };
            }
        };
        if !reported {
            reported = true;
            let _ = progress.send(ExecReport {
                pod: pod.clone(),
                outcome: Outcome::Running,
                failed_init: None,
                last: false,
            });
        }
        let status = child.wait().await;
        let output = std::fs::read_to_string(&prepared.log).unwrap_or_default();
        if let Some(sink) = &sink {
            sink.pod_log(&pod.namespace().unwrap_or_default(), &pod.name_any(), &output);
        }
        tracing::info!(pod = %pod.name_any(), ?status, ?delay, "binary pod's process exited; restarting");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(20));
    }
}

/// Starts the prepared process, its output appended to its log.
fn spawn(prepared: &Prepared) -> Result<tokio::process::Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&prepared.log)
        .map_err(|e| format!("opening {}: {e}", prepared.log.display()))?;
    let log_err = log.try_clone().map_err(|e| format!("opening the log: {e}"))?;
    let mut cmd = match &prepared.chroot {
        Some(c) => images::chroot_command(&c.root, c.user, c.binds.clone(), &prepared.argv),
        None => {
            let mut cmd = tokio::process::Command::new(&prepared.argv[0]);
            cmd.args(&prepared.argv[1..]).env_clear();
            cmd
        }
    };
    cmd.envs(&prepared.env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("failed to start {:?}: {e}", prepared.argv[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_drops_tag_and_digest_but_keeps_a_port() {
        assert_eq!(
            repository("quay.io/kmm-fleet/kmm-spoke:latest"),
            "quay.io/kmm-fleet/kmm-spoke"
        );
        assert_eq!(
            repository("quay.io/kmm-fleet/kmm-spoke@sha256:ab"),
            "quay.io/kmm-fleet/kmm-spoke"
        );
        assert_eq!(
            repository("localhost:5000/kmm-spoke:v2"),
            "localhost:5000/kmm-spoke"
        );
        assert_eq!(repository("localhost:5000/kmm-spoke"), "localhost:5000/kmm-spoke");
        assert_eq!(repository("kmm-spoke"), "kmm-spoke");
    }

    fn pod(restart: Option<&str>, image: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "kmm-spoke-1", "namespace": "ns", "uid": "u1",
                         "labels": {"app": "spoke"}},
            "spec": {"restartPolicy": restart, "nodeName": "n1", "serviceAccountName": "sa",
                     "containers": [{"name": "c", "image": image}]},
            "status": {"podIP": "10.0.0.2"},
        }))
        .unwrap()
    }

    #[test]
    fn only_long_running_pods_of_a_mapped_repository_run_as_binaries() {
        let opts = BinaryOptions {
            images: vec![BinaryImage {
                repository: "quay.io/kmm-fleet/kmm-spoke".into(),
                binary: "/bin/true".into(),
                extra_args: vec![],
                env: BTreeMap::new(),
                from_image: None,
            }],
            server: String::new(),
            ca: PathBuf::new(),
            root: PathBuf::new(),
        };
        assert!(
            opts.image_for(&pod(Some("Always"), "quay.io/kmm-fleet/kmm-spoke:v2"))
                .is_some()
        );
        assert!(
            opts.image_for(&pod(None, "quay.io/kmm-fleet/kmm-spoke:v2"))
                .is_some()
        );
        // A worker pod of the same image runs to completion: not this runner's.
        assert!(
            opts.image_for(&pod(Some("Never"), "quay.io/kmm-fleet/kmm-spoke:v2"))
                .is_none()
        );
        assert!(
            opts.image_for(&pod(Some("Always"), "quay.io/other/kmm-spoke:v2"))
                .is_none()
        );
    }

    #[test]
    fn field_refs_read_the_pod() {
        let p = pod(None, "x");
        assert_eq!(field_value(&p, "metadata.name").as_deref(), Some("kmm-spoke-1"));
        assert_eq!(field_value(&p, "metadata.namespace").as_deref(), Some("ns"));
        assert_eq!(field_value(&p, "spec.nodeName").as_deref(), Some("n1"));
        assert_eq!(field_value(&p, "spec.serviceAccountName").as_deref(), Some("sa"));
        assert_eq!(field_value(&p, "status.podIP").as_deref(), Some("10.0.0.2"));
        assert_eq!(
            field_value(&p, "metadata.labels['app']").as_deref(),
            Some("spoke")
        );
        assert_eq!(field_value(&p, "metadata.labels['none']"), None);
        assert_eq!(field_value(&p, "spec.unknown"), None);
    }
}
