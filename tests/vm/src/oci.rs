//! Real OCI images for the VM: a kmod image built with umoci into an OCI layout on the host,
//! so a guest can extract it with umoci as a node would with its container tools.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::{Kernel, Modules, stage_modules};

/// umoci on the host (scripts/test-deps installs it), for copying into a guest.
pub fn umoci() -> anyhow::Result<PathBuf> {
    let path = Path::new("/usr/bin/umoci");
    if !path.is_file() {
        bail!("no /usr/bin/umoci (scripts/test-deps installs umoci)");
    }
    Ok(path.to_owned())
}

fn run(args: &[&str], dir: &Path) -> anyhow::Result<()> {
    let output = Command::new("umoci")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running umoci (scripts/test-deps installs umoci)")?;
    if !output.status.success() {
        bail!(
            "umoci {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Builds, in `work`, an OCI layout `layout` whose image tagged with the kernel's version holds
/// the test modules `names` under `/opt/lib/modules/<kernel>/` (with depmod's index files) and
/// `firmware` files (relative path, contents) under `/firmware/`. Returns the layout's path.
pub fn kmod_layout(
    kernel: &Kernel,
    modules: &Modules,
    names: &[&str],
    firmware: &[(&str, &str)],
    work: &Path,
) -> anyhow::Result<PathBuf> {
    let image = format!("layout:{}", kernel.version);
    run(&["init", "--layout", "layout"], work)?;
    run(&["new", "--image", &image], work)?;
    run(&["unpack", "--image", &image, "bundle"], work)?;
    let rootfs = work.join("bundle/rootfs");
    stage_modules(kernel, modules, names, &rootfs.join("opt"))?;
    for (rel, contents) in firmware {
        let path = rootfs.join("firmware").join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    run(&["repack", "--image", &image, "bundle"], work)?;
    Ok(work.join("layout"))
}
