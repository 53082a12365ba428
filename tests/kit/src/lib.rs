//! The helpers every test crate of the workspace shares, defined once: waiting for a condition
//! ([`eventually`], [`Wait`]), loopback ports, the repository's and the target folder's
//! paths, running a command, child processes killed on drop ([`KilledOnDrop`]), and the test
//! kernel modules ([`kmod`]).
//!
//! It depends on nothing of the workspace, so the simulator's and the agents' own tests can use
//! it as well as `kmm-fleet-tests` (which re-exports it) and the hub's and spoke's tests.

mod child;
pub mod kmod;
mod wait;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

pub use child::KilledOnDrop;
pub use wait::{Check, Done, Value, Wait, eventually};

/// The repository root.
pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// `manifests/crds`: KMM's CRDs.
pub fn crds_dir() -> PathBuf {
    repo_root().join("manifests/crds")
}

/// The cargo target folder: `$CARGO_TARGET_DIR`, or the one holding the running executable
/// (tests run from `target/<profile>/deps`, binaries from `target/<profile>`).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        return Ok(if dir.is_absolute() {
            dir
        } else {
            repo_root().join(dir)
        });
    }
    Ok(profile_dir()?
        .parent()
        .context("the profile folder has a parent")?
        .to_path_buf())
}

/// `target/<profile>`, from the running executable.
fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe.parent().context("the executable has a folder")?;
    if dir.ends_with("deps") {
        dir = dir.parent().context("deps has a parent")?;
    }
    Ok(dir.to_path_buf())
}

/// Where `scripts/controlplane-build` leaves `kmm-controlplane` and the CRDs it copies:
/// the folder of `$KMM_CONTROLPLANE_BIN`, or `<target>/controlplane`.
pub fn controlplane_dir() -> anyhow::Result<PathBuf> {
    match std::env::var("KMM_CONTROLPLANE_BIN") {
        Ok(bin) => Ok(Path::new(&bin)
            .parent()
            .context("$KMM_CONTROLPLANE_BIN has a folder")?
            .to_path_buf()),
        Err(_) => Ok(target_dir()?.join("controlplane")),
    }
}

/// OCM's CRDs as `scripts/controlplane-build` copies them from the `open-cluster-management.io/api`
/// module: `hub/`, `spoke/` and `all/`.
pub fn ocm_crds() -> anyhow::Result<PathBuf> {
    let dir = controlplane_dir()?.join("crds/ocm");
    anyhow::ensure!(
        dir.is_dir(),
        "{} is missing: run scripts/controlplane-build",
        dir.display()
    );
    Ok(dir)
}

/// The folder the workspace's binaries are taken from: `$KMM_BIN_DIR` when set (`just bench`
/// runs the release binaries, what ships, from harnesses built in the quick dev profile), else
/// the running executable's target folder.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    match std::env::var_os("KMM_BIN_DIR") {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => profile_dir(),
    }
}

/// The cargo profile the workspace's binaries were built with (`release` or `debug`, from their
/// folder's name, `debug` or `release`), for benchmark lines.
pub fn bin_profile() -> String {
    bin_dir()
        .ok()
        .and_then(|dir| Some(dir.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "debug".to_owned())
}

/// A binary of this workspace, from [`bin_dir`].
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let bin = bin_dir()?.join(name);
    if !bin.exists() {
        bail!(
            "{} is missing: build it first (`cargo build --bins`)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A free TCP port on loopback.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs a command to success; its stdout, or an error with its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("{cmd:?} (run `just deps` to install the test tools)"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
