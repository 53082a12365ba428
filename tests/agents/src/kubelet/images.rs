//! Init containers of `Exec` pods, run for real: each init container's image is pulled from its
//! registry with skopeo, unpacked with umoci, and its command runs chrooted in that filesystem.
//! emptyDir volumes are folders shared by the containers that mount them, so what an init
//! container copies into one is what the main container then reads (its mount path is rewritten
//! to the folder, as for ConfigMap and Secret volumes).
//!
//! Needs root (chroot), `skopeo` and `umoci`; the image must hold what its command runs
//! (`/bin/sh`, `cp`, ...), as it would on a node.
//!
//! Main containers of the images a test lists ([`MainImages`]) run the same way
//! ([`run_main_container`]): chrooted in their image, in a private mount namespace with their
//! volumes bound in, as their securityContext's or the image's user.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use tokio::process::Command;

/// Where images are cached and how registries are reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageOptions {
    /// OCI layouts of pulled images, one per image reference, kept between pods.
    pub cache: PathBuf,
    /// Pull over plain HTTP / without verifying TLS (a loopback test registry).
    pub insecure: bool,
}

/// An init container that did not run to success: its exit code and termination message (what
/// it wrote to its termination message file, else its log's tail for `FallbackToLogsOnError`;
/// for an image that could not be pulled, the pull error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitFailure {
    pub container: String,
    pub exit_code: i32,
    pub message: String,
}

/// Runs the pod's init containers in order under `pod_dir`; on success returns the
/// `(mount path, folder)` pairs of the emptyDir volumes the main container mounts.
pub async fn run_init_containers(
    pod: &Pod,
    pod_dir: &Path,
    opts: &ImageOptions,
    timeout: Duration,
) -> Result<Vec<(String, String)>, InitFailure> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(Vec::new());
    };
    let empty_dirs: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.empty_dir.is_some())
        .map(|v| v.name.as_str())
        .collect();
    // Folder of each emptyDir: inside the first init container that mounts it (so its chrooted
    // command sees it at its mount path), else a plain folder of the pod.
    let mut folders: BTreeMap<&str, PathBuf> = BTreeMap::new();
    let inits = spec.init_containers.as_deref().unwrap_or_default();
    for (i, c) in inits.iter().enumerate() {
        for m in c.volume_mounts.iter().flatten() {
            if empty_dirs.contains(&m.name.as_str()) && !folders.contains_key(m.name.as_str()) {
                let at = rootfs(pod_dir, i).join(m.mount_path.trim_start_matches('/'));
                folders.insert(m.name.as_str(), at);
            }
        }
    }
    for name in &empty_dirs {
        folders
            .entry(name)
            .or_insert_with(|| pod_dir.join("empty-dir").join(name));
    }

    for (i, c) in inits.iter().enumerate() {
        let fail = |exit_code: i32, message: String| InitFailure {
            container: c.name.clone(),
            exit_code,
            message,
        };
        let image = c.image.as_deref().unwrap_or_default();
        let root = rootfs(pod_dir, i);
        pull_and_unpack(image, &root, opts)
            .await
            .map_err(|e| fail(128, format!("pulling {image}: {e}")))?;
        for m in c.volume_mounts.iter().flatten() {
            let inside = root.join(m.mount_path.trim_start_matches('/'));
            if folders.get(m.name.as_str()) != Some(&inside) && empty_dirs.contains(&m.name.as_str()) {
                return Err(fail(
                    128,
                    format!(
                        "emptyDir {} is shared by two init containers: not supported here",
                        m.name
                    ),
                ));
            }
            std::fs::create_dir_all(&inside).map_err(|e| fail(128, format!("{}: {e}", inside.display())))?;
        }
        if let Err((code, log)) = run_chrooted(c, &root, timeout).await {
            // The termination message file is the one the chrooted command wrote, if any.
            let path = c
                .termination_message_path
                .as_deref()
                .unwrap_or("/dev/termination-log");
            let written = std::fs::read(root.join(path.trim_start_matches('/'))).unwrap_or_default();
            return Err(fail(
                code,
                super::status::termination_message(
                    &written,
                    super::status::falls_back_to_logs(c),
                    code,
                    &log,
                ),
            ));
        }
    }

    let main = spec.containers.first();
    let mut pairs: Vec<(String, String)> = main
        .into_iter()
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .filter_map(|m| {
            let folder = folders.get(m.name.as_str())?;
            std::fs::create_dir_all(folder).ok()?;
            Some((m.mount_path.clone(), folder.display().to_string()))
        })
        .collect();
    pairs.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
    Ok(pairs)
}

fn rootfs(pod_dir: &Path, index: usize) -> PathBuf {
    pod_dir.join(format!("init-{index}")).join("rootfs")
}

/// Cache folder name of an image reference.
fn cache_key(image: &str) -> String {
    image
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Pulls `image` into the cache (once) and unpacks it at `root`, whose parent folder is
/// replaced.
pub(super) async fn pull_and_unpack(image: &str, root: &Path, opts: &ImageOptions) -> Result<(), String> {
    if image.is_empty() {
        return Err("the container names no image".into());
    }
    let layout = opts.cache.join(cache_key(image));
    let tagged = format!("{}:image", layout.display());
    if !layout.join("index.json").exists() {
        std::fs::create_dir_all(&opts.cache).map_err(|e| e.to_string())?;
        let partial = opts
            .cache
            .join(format!("{}.partial-{}", cache_key(image), fastrand::u64(..)));
        let mut copy = Command::new("skopeo");
        copy.arg("copy");
        if opts.insecure {
            copy.arg("--src-tls-verify=false");
        }
        copy.arg(format!("docker://{image}"))
            .arg(format!("oci:{}:image", partial.display()));
        output(&mut copy).await?;
        // Another pod may have cached it meanwhile; either copy is the same image.
        if std::fs::rename(&partial, &layout).is_err() {
            let _ = std::fs::remove_dir_all(&partial);
        }
    }
    let bundle = root.parent().ok_or("a rootfs has a parent")?;
    let _ = std::fs::remove_dir_all(bundle);
    std::fs::create_dir_all(bundle).map_err(|e| e.to_string())?;
    output(
        Command::new("umoci")
            .args(["raw", "unpack", "--rootless", "--image", &tagged])
            .arg(root),
    )
    .await?;
    Ok(())
}

async fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("{:?}: {e}", cmd.as_std().get_program()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{:?} failed: {}",
            cmd.as_std().get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs the container's command chrooted in `root`; `(exit code, output)` on failure.
async fn run_chrooted(c: &Container, root: &Path, timeout: Duration) -> Result<(), (i32, String)> {
    let argv = super::pods::argv(c);
    let Some((program, args)) = argv.split_first() else {
        return Err((128, format!("init container {} has no command", c.name)));
    };
    let mut cmd = Command::new("chroot");
    cmd.arg(root)
        .arg(program.as_str())
        .args(args.iter().map(|a| a.as_str()))
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(
            c.env
                .iter()
                .flatten()
                .filter_map(|e| Some((e.name.clone(), e.value.clone()?))),
        )
        .kill_on_drop(true);
    match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => Err((
            137,
            format!("init container {} did not finish within {timeout:?}", c.name),
        )),
        Ok(Err(e)) => Err((128, format!("chroot {}: {e}", root.display()))),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Err((out.status.code().unwrap_or(137), text))
        }
    }
}

/// Which `Exec` pods' main containers run chrooted in their own image (pulled and unpacked as
/// init containers are) instead of as a command of this machine, so what they run (the binary,
/// `modprobe`, their libraries, the UID) is the image's.
#[derive(Debug, Clone, Default)]
pub struct MainImages {
    /// Image reference prefixes: a main container whose image starts with one runs from it.
    pub prefixes: Vec<String>,
    /// Folders of this machine bound at the same path inside the image (what a test hands the
    /// container as arguments: a module tree, a stand-in host root).
    pub host_paths: Vec<PathBuf>,
}

impl MainImages {
    /// Whether the pod's first container runs from its image.
    pub fn runs_from_image(&self, pod: &Pod) -> bool {
        let image = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.as_deref())
            .unwrap_or_default();
        !image.is_empty() && self.prefixes.iter().any(|p| image.starts_with(p.as_str()))
    }
}

/// Binds the `(source, target)` pairs after the root and the user into the root (in the
/// private mount namespace `unshare` made, so nothing outlives the process), gives it `/proc`,
/// `/sys` and a `/dev` of the usual devices, then runs the command chrooted as that user.
const CHROOT_SCRIPT: &str = r#"root=$1; user=$2; shift 2
mkdir -p "$root/proc" "$root/sys" "$root/dev" && mount --bind /proc "$root/proc" && mount --rbind /sys "$root/sys" \
  && mount -t tmpfs -o mode=755 kubelet-dev "$root/dev" || exit 126
for d in null zero full random urandom; do : > "$root/dev/$d" && mount --bind "/dev/$d" "$root/dev/$d" || exit 126; done
while [ "$1" != "--" ]; do
  if [ -d "$1" ]; then mkdir -p "$root$2"; else mkdir -p "$(dirname "$root$2")" && { [ -e "$root$2" ] || : > "$root$2"; }; fi
  mount --bind "$1" "$root$2" || exit 126
  shift 2
done
shift
exec chroot --userspec="$user" "$root" "$@""#;

/// Runs the pod's first container chrooted in its unpacked image (`pod_dir/main/rootfs`): its
/// volumes (`mounts`: mount path and the folder or file standing in for it), its hostPath
/// volumes and `main.host_paths` bound in; as the UID and GID of its securityContext, else the
/// pod's, else the image's `USER`, as the kubelet does; with the image's `PATH`.
pub async fn run_main_container(
    pod: &Pod,
    pod_dir: &Path,
    opts: &ImageOptions,
    main: &MainImages,
    mounts: &[(String, String)],
    timeout: Duration,
) -> super::pods::ExecResult {
    use super::pods::{ExecResult, exec_command, run_to_result};
    use super::script::Outcome;
    let fail = |code: i32, msg: String| ExecResult {
        output: msg.clone(),
        outcome: Outcome::failed(code, msg),
    };
    let (argv, env) = match exec_command(pod) {
        Ok(found) => found,
        Err(e) => return fail(127, e),
    };
    let Some((spec, c)) = pod.spec.as_ref().and_then(|s| Some((s, s.containers.first()?))) else {
        return fail(127, "the pod has no container".into());
    };
    let image = c.image.as_deref().unwrap_or_default();
    let root = pod_dir.join("main").join("rootfs");
    if let Err(e) = pull_and_unpack(image, &root, opts).await {
        return ExecResult {
            output: format!("pulling {image}: {e}"),
            outcome: Outcome::Failed {
                exit_code: 128,
                message: format!("pulling {image}: {e}"),
                reason: "StartError".into(),
            },
        };
    }
    let config = cached_image_config(image, opts);
    let user = run_as(pod, &config);

    let mut binds: Vec<(String, String)> = mounts
        .iter()
        .map(|(at, from)| (from.clone(), at.clone()))
        .collect();
    for m in c.volume_mounts.iter().flatten() {
        let host = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .and_then(|v| v.host_path.as_ref());
        if let Some(h) = host.filter(|h| Path::new(&h.path).exists()) {
            binds.push((h.path.clone(), m.mount_path.clone()));
        }
    }
    for p in &main.host_paths {
        binds.push((p.display().to_string(), p.display().to_string()));
    }
    let mut cmd = chroot_command(&root, user, binds, &argv);
    cmd.env("PATH", image_path(&config)).env("HOME", "/").envs(env);
    run_to_result(cmd, &argv[0], timeout).await
}

/// The `PATH` of an image config (`config` of the OCI image config), else the usual one.
pub(super) fn image_path(config: &serde_json::Value) -> String {
    config["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str()?.strip_prefix("PATH="))
        .next()
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .to_owned()
}

/// `(uid, gid)` the pod's first container runs as: its securityContext's, else the pod's,
/// else the image's `USER` (from its config), as the kubelet decides.
pub(super) fn run_as(pod: &Pod, config: &serde_json::Value) -> (i64, i64) {
    let (image_uid, image_gid) = user_ids(config["User"].as_str().unwrap_or_default());
    let spec = pod.spec.as_ref();
    let sc = spec
        .and_then(|s| s.containers.first())
        .and_then(|c| c.security_context.as_ref());
    let psc = spec.and_then(|s| s.security_context.as_ref());
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| psc.and_then(|s| s.run_as_user))
        .unwrap_or(image_uid);
    let gid = sc
        .and_then(|s| s.run_as_group)
        .or_else(|| psc.and_then(|s| s.run_as_group))
        .unwrap_or(image_gid);
    (uid, gid)
}

/// The command running `argv` chrooted in `root` as `user` (uid, gid), in a private mount
/// namespace with `binds` (source of this machine, target inside the root) bound in, shorter
/// targets first so a bind inside another bind's folder lands on top of it. Its environment is
/// empty: the caller sets it.
pub(super) fn chroot_command(
    root: &Path,
    user: (i64, i64),
    mut binds: Vec<(String, String)>,
    argv: &[String],
) -> Command {
    binds.sort_by_key(|(_, at)| at.len());
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        CHROOT_SCRIPT,
        "sh",
    ])
    .arg(root)
    .arg(format!("{}:{}", user.0, user.1));
    for (from, at) in &binds {
        cmd.arg(from).arg(at);
    }
    cmd.arg("--").args(argv).env_clear();
    cmd
}

/// The image config (`config` of the OCI image config) of `image`, pulled into the cache.
pub(super) fn cached_image_config(image: &str, opts: &ImageOptions) -> serde_json::Value {
    image_config(&opts.cache.join(cache_key(image))).unwrap_or_default()
}

/// The image config (`config` of the OCI image config) of the cached layout's image.
fn image_config(layout: &Path) -> Option<serde_json::Value> {
    let blob = |digest: &str| -> Option<serde_json::Value> {
        let path = layout.join("blobs/sha256").join(digest.strip_prefix("sha256:")?);
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    };
    let index =
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(layout.join("index.json")).ok()?).ok()?;
    let manifest = blob(index["manifests"][0]["digest"].as_str()?)?;
    Some(blob(manifest["config"]["digest"].as_str()?)?["config"].clone())
}

/// Numeric `uid[:gid]` of an image's `USER`; a name, a missing part or nothing is 0 (the
/// stand-in does not look names up in the image's passwd).
fn user_ids(user: &str) -> (i64, i64) {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    (u.parse().unwrap_or(0), g.parse().unwrap_or(0))
}

#[cfg(test)]
mod main_image_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_image_user_is_numeric_uid_and_gid_else_root() {
        assert_eq!(user_ids("65532:65532"), (65532, 65532));
        assert_eq!(user_ids("1000"), (1000, 0));
        assert_eq!(user_ids("nonroot"), (0, 0));
        assert_eq!(user_ids(""), (0, 0));
    }

    #[test]
    fn only_main_containers_of_the_listed_images_run_from_their_image() {
        let pod = |image: &str| -> Pod {
            serde_json::from_value(json!({"spec": {"containers": [{"name": "c", "image": image}]}})).unwrap()
        };
        let main = MainImages {
            prefixes: vec!["127.0.0.1:5000/kmm-fleet/kmm-spoke@".into()],
            host_paths: Vec::new(),
        };
        assert!(main.runs_from_image(&pod("127.0.0.1:5000/kmm-fleet/kmm-spoke@sha256:ab")));
        assert!(!main.runs_from_image(&pod("quay.io/buildah/stable:v1.39")));
        assert!(!main.runs_from_image(&pod("")));
        assert!(!MainImages::default().runs_from_image(&pod("127.0.0.1:5000/kmm-fleet/kmm-spoke@sha256:ab")));
    }
}
