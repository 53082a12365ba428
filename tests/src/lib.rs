//! A whole kmm-fleet on one machine, for the end-to-end tests under `tests/tests/`, the hub's and
//! the spoke's integration tests, and `just demo`: a real control plane per cluster (hub and
//! spokes), OCM's own agents, a kubelet stand-in per cluster, a real registry, and the real
//! `kmm-hub` and `kmm-spoke` processes.
//!
//! - [`controlplane`]: `kmm-controlplane up` (tests/controlplane): etcd, kube-apiserver,
//!   kube-controller-manager and kube-scheduler, identities, server-side apply, the audit log.
//! - [`ocm`]: OCM's hub registration controller and klusterlet agents.
//! - [`registry`]: a CNCF distribution registry on loopback.
//! - [`images`]: module images (busybox plus a depmod'ed module tree) pushed with umoci/skopeo.
//! - [`kmod`]: the test kernel module, compiled against the installed headers.
//! - [`manifests`]: the install manifests as kustomize renders them (the manifests tests).
//! - [`nodes`]: a Node's readiness, taints and kernel; waiting for a node to be usable.
//! - [`process`]: `kmm-hub` / `kmm-spoke` child processes, their logs and metrics; other daemons.
//! - [`fleet`]: the clusters, agents and processes together.
//! - [`demo`]: the fleet `just demo` starts, and its status table.

pub mod controlplane;
pub mod demo;
pub mod demo_canary;
pub mod demo_preflight;
pub mod faults;
pub mod fleet;
pub mod images;
pub mod kmod;
pub mod manifests;
pub mod nodes;
pub mod ocm;
pub mod policy;
pub mod process;
pub mod registry;

use std::path::{Path, PathBuf};

use anyhow::Context;
/// The helpers every test crate shares (waiting, ports, paths, commands, kernel modules).
pub use kmm_test_kit as kit;
pub use kmm_test_kit::{Wait, eventually, free_port, repo_root, run, workspace_bin};

/// A fresh folder under `base`.
pub fn fresh_dir(base: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Where a test keeps its files: `dir`, unless that is under `/tmp` (a clone under /tmp puts the
/// target folder there), then the same path under `/var/tmp/kmm-fleet-tests/`. Worker pods
/// mount an emptyDir at `/tmp`, and the kubelet stand-in points every path under a mount path
/// into the pod's own folder, so the tests' own files must live elsewhere.
pub fn scratch_dir(dir: &Path) -> PathBuf {
    match dir.strip_prefix("/tmp") {
        Ok(rest) => Path::new("/var/tmp/kmm-fleet-tests").join(rest),
        Err(_) => dir.to_path_buf(),
    }
}

/// `path`, or, when it is under `/tmp`, a link to it in `dir` (outside /tmp): a worker pod's
/// command names the binary, and the kubelet stand-in would point a path under the pod's `/tmp`
/// mount into the pod's own folder.
pub fn outside_tmp(path: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    if !path.starts_with("/tmp") {
        return Ok(path.to_path_buf());
    }
    std::fs::create_dir_all(dir)?;
    let link = dir.join(path.file_name().context("a file path")?);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(path, &link).with_context(|| format!("linking {}", link.display()))?;
    Ok(link)
}
