//! VM tests of the kmm-spoke worker: the real Debian cloud kernel, booted by QEMU from an
//! initramfs holding busybox, kmod, the `kmm-spoke` binary cargo built, test modules compiled
//! against the kernel's headers, and the module tree laid out as a worker pod sees it.
//! See docs/vm-tests.md.

pub mod initramfs;
pub mod kernel;
pub mod kmod;
pub mod oci;
pub mod pod;
pub mod vm;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Pod;
use kmm_api::nmc::{ModuleConfig, ModuleItem};
use kmm_spoke::worker::{
    pod::{WorkerPodInput, WorkerPodSettings},
    run::Action,
};

pub use crate::{
    initramfs::Initramfs,
    kernel::Kernel,
    kmod::Modules,
    vm::{Report, Scenario, StepResult},
};

/// The root of the workspace.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What every VM test needs, prepared once per test process.
#[derive(Debug)]
pub struct Env {
    pub kernel: Kernel,
    /// The test modules of tests/fixtures/kmod-vm, compiled for `kernel`.
    pub modules: Modules,
}

/// The value, or a panic showing the whole error chain (test helpers are not `#[test]`
/// functions, so they cannot return the error).
pub fn ok<T>(result: anyhow::Result<T>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("{what}: {err:#}"),
    }
}

/// The kernel and the compiled test modules (built on first use, cached under `cache`).
pub fn env(cache: &Path) -> Result<&'static Env, String> {
    static ENV: OnceLock<Result<Env, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let kernel = Kernel::find().map_err(|e| format!("{e:#}"))?;
        let modules = kmod::build(&kernel, &kmod::fixtures_dir(), cache).map_err(|e| format!("{e:#}"))?;
        Ok(Env { kernel, modules })
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The `kmm-spoke` binary as cargo builds it for this workspace (the same profile as the
/// tests): `cargo build -p kmm-spoke --bin kmm-spoke`, which is a no-op when `cargo test` has
/// already built it. Built once per test process.
pub fn spoke_binary() -> Result<&'static Path, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        let started = std::time::Instant::now();
        let built = build_spoke().map_err(|e| format!("{e:#}"));
        eprintln!(
            "cargo build -p kmm-spoke: {:.1} s",
            started.elapsed().as_secs_f64()
        );
        built
    })
    .as_deref()
    .map_err(Clone::clone)
}

fn build_spoke() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root())
        .args(["build", "--quiet", "-p", "kmm-spoke", "--bin", "kmm-spoke"])
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let output = command.output().context("running cargo build -p kmm-spoke")?;
    if !output.status.success() {
        bail!(
            "cargo build -p kmm-spoke failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact"
            && message["target"]["name"] == "kmm-spoke"
            && let Some(exe) = message["executable"].as_str()
        {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("cargo build -p kmm-spoke reported no kmm-spoke executable")
}

/// Where `kmod` links the usual module tools in the VM.
pub const KMOD_TOOLS: [&str; 6] = ["modprobe", "insmod", "rmmod", "lsmod", "depmod", "modinfo"];

/// The part of every VM's initramfs that stands for the node: busybox (its applets are linked
/// at boot), `kmod` with its libraries and tool links in /usr/sbin, and the kernel's own module
/// tree `/lib/modules/<kernel>`: Debian's index files as installed (modules.dep, modules.builtin,
/// ...) and the `.ko` files of `in_tree` and of everything they depend on.
pub fn node_initramfs(kernel: &Kernel, in_tree: &[&str]) -> anyhow::Result<Initramfs> {
    let mut fs = Initramfs::new();
    fs.binary("/bin/busybox", Path::new("/bin/busybox"))
        .context("busybox (scripts/test-deps installs busybox-static)")?;
    let kmod = ["/usr/bin/kmod", "/bin/kmod"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("no kmod binary (scripts/test-deps installs kmod)")?;
    fs.binary("/usr/bin/kmod", kmod)?;
    for tool in KMOD_TOOLS {
        fs.symlink(&format!("/usr/sbin/{tool}"), "/usr/bin/kmod");
    }
    fs.symlink("/bin/sh", "/bin/busybox");
    for dir in [
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/run",
        "/root",
        "/etc/modprobe.d",
    ] {
        fs.dir(dir);
    }
    let tree = format!("/lib/modules/{}", kernel.version);
    for entry in
        fs::read_dir(&kernel.modules).with_context(|| format!("listing {}", kernel.modules.display()))?
    {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("modules.") && entry.file_type()?.is_file() {
            fs.file(&format!("{tree}/{name}"), &entry.path())?;
        }
    }
    let deps = fs::read_to_string(kernel.modules.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", kernel.modules.display()))?;
    for rel in in_tree_closure(&deps, in_tree)? {
        fs.file(&format!("{tree}/{rel}"), &kernel.modules.join(&rel))?;
    }
    Ok(fs)
}

/// The module files (relative to the tree) of `names` and everything they depend on, from the
/// text of `modules.dep`.
pub fn in_tree_closure(modules_dep: &str, names: &[&str]) -> anyhow::Result<BTreeSet<String>> {
    let mut by_name: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in modules_dep.lines() {
        let Some((file, deps)) = line.split_once(':') else {
            continue;
        };
        by_name.insert(
            module_name(file),
            (
                file.to_owned(),
                deps.split_whitespace().map(str::to_owned).collect(),
            ),
        );
    }
    let mut files = BTreeSet::new();
    let mut todo: Vec<String> = names.iter().map(|n| n.replace('-', "_")).collect();
    while let Some(name) = todo.pop() {
        let Some((file, deps)) = by_name.get(&name) else {
            bail!("{name} is not in the kernel's modules.dep");
        };
        if files.insert(file.clone()) {
            todo.extend(deps.iter().map(|d| module_name(d)));
        }
    }
    Ok(files)
}

/// `kernel/lib/crc-itu-t.ko` -> `crc_itu_t`.
fn module_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// The worker pod the spoke would create on a node for `config` (built by kmm-spoke itself).
pub fn worker_pod(
    action: Action,
    config: &ModuleConfig,
    settings: &WorkerPodSettings,
) -> anyhow::Result<Pod> {
    let item = ModuleItem {
        name: config
            .modprobe
            .module_name
            .clone()
            .unwrap_or_else(|| "kmm-vm".to_owned()),
        namespace: "default".to_owned(),
        service_account_name: "default".to_owned(),
        ..Default::default()
    };
    let input = WorkerPodInput {
        node: "vm",
        action,
        item: &item,
        config,
        owner: None,
        attempt: 0,
        last_failure: None,
    };
    kmm_spoke::worker::pod::worker_pod(&input, settings).context("building the worker pod")
}

/// The node's initramfs ([`node_initramfs`]) plus the spoke image's part: the `kmm-spoke`
/// binary cargo built ([`spoke_binary`]) at the path the worker pods run it from.
pub fn worker_initramfs(
    kernel: &Kernel,
    in_tree: &[&str],
    settings: &WorkerPodSettings,
) -> anyhow::Result<Initramfs> {
    let mut fs = node_initramfs(kernel, in_tree)?;
    let spoke = spoke_binary().map_err(anyhow::Error::msg)?;
    fs.binary(&settings.binary, spoke)?;
    Ok(fs)
}

/// A kmod image's files, as a `Dockerfile` building one would leave them: the modules under
/// `<dir_name>/lib/modules/<kernel>/` with depmod's index files (`depmod -b <dir_name>
/// <kernel>`), and `firmware` files (relative path, contents) under `firmware_path`.
pub fn add_kmod_image(
    fs: &mut Initramfs,
    kernel: &Kernel,
    modules: &Modules,
    names: &[&str],
    dir_name: &str,
    firmware_path: Option<&str>,
    firmware: &[(&str, &str)],
) -> anyhow::Result<()> {
    let stage = tempfile::tempdir().context("creating a staging directory")?;
    stage_modules(kernel, modules, names, stage.path())?;
    let tree = stage.path().join("lib/modules").join(&kernel.version);
    let dir_name = dir_name.trim_end_matches('/');
    fs.tree(&format!("{dir_name}/lib/modules/{}", kernel.version), &tree)?;
    if let Some(path) = firmware_path {
        let path = path.trim_end_matches('/');
        for (rel, contents) in firmware {
            fs.bytes(&format!("{path}/{rel}"), *contents, 0o644);
        }
    }
    Ok(())
}

/// Copies the compiled test modules `names` to `<root>/lib/modules/<kernel>/` and runs
/// `depmod -b <root> <kernel>` there, as a kmod image's build does under its `/opt`.
pub fn stage_modules(kernel: &Kernel, modules: &Modules, names: &[&str], root: &Path) -> anyhow::Result<()> {
    let tree = root.join("lib/modules").join(&kernel.version);
    fs::create_dir_all(&tree)?;
    for name in names {
        let ko = modules.ko(name);
        fs::copy(&ko, tree.join(format!("{name}.ko")))
            .with_context(|| format!("copying {}", ko.display()))?;
    }
    let output = Command::new("depmod")
        .arg("-b")
        .arg(root)
        .arg(&kernel.version)
        .output()
        .context("running depmod (scripts/test-deps installs kmod)")?;
    if !output.status.success() {
        bail!("depmod failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_tree_closure_follows_dependencies() {
        let dep = "kernel/drivers/net/dummy.ko:\n\
                   kernel/a/x-y.ko: kernel/lib/crc-itu-t.ko kernel/b/z.ko\n\
                   kernel/lib/crc-itu-t.ko:\n\
                   kernel/b/z.ko: kernel/lib/crc-itu-t.ko\n";
        let files = in_tree_closure(dep, &["x-y"]).unwrap();
        assert_eq!(
            files.into_iter().collect::<Vec<_>>(),
            ["kernel/a/x-y.ko", "kernel/b/z.ko", "kernel/lib/crc-itu-t.ko"]
        );
        assert!(in_tree_closure(dep, &["nope"]).is_err());
    }
}
