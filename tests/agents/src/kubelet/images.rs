//! Init containers of `Exec` pods, run for real: each init container's image is pulled from its
//! registry with skopeo, unpacked with umoci, and its command runs chrooted in that filesystem.
//! emptyDir volumes are folders shared by the containers that mount them, so what an init
//! container copies into one is what the main container then reads (its mount path is rewritten
//! to the folder, as for ConfigMap and Secret volumes).
//!
//! Needs root (chroot), `skopeo` and `umoci`; the image must hold what its command runs
//! (`/bin/sh`, `cp`, ...), as it would on a node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use tokio::process::Command;

/// Where images are cached and how registries are reached.
#[derive(Debug, Clone)]
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

async fn pull_and_unpack(image: &str, root: &Path, opts: &ImageOptions) -> Result<(), String> {
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
    let argv: Vec<&String> = c
        .command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .collect();
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
