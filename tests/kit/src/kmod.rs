//! Test kernel modules, compiled against the installed Debian cloud kernel headers (make, gcc,
//! kmod and linux-headers-cloud-amd64; see scripts/test-deps), and module trees laid out as a
//! kmod image carries them: `<root>/lib/modules/<kernel>/<subdir>/<name>.ko`, depmod'ed.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;

use crate::run;

/// The installed `/usr/src/linux-headers-*-cloud-amd64` (the last one, sorted).
pub fn headers() -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/src")
        .context("/usr/src")?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-headers-") && n.ends_with("-cloud-amd64"))
        })
        .collect();
    found.sort();
    found
        .pop()
        .context("no /usr/src/linux-headers-*-cloud-amd64: run `just deps`")
}

/// The kernel release the installed headers are for (what `modprobe` of their modules needs).
pub fn headers_kernel() -> anyhow::Result<String> {
    let headers = headers()?;
    headers
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("linux-headers-"))
        .map(str::to_owned)
        .context("the headers folder is named linux-headers-<kernel>")
}

/// Runs the kernel build (`make -C <headers> M=<dir> modules`) for the Kbuild file in `dir`.
pub fn make(dir: &Path) -> anyhow::Result<()> {
    run(Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(headers()?)
        .arg(format!("M={}", dir.display()))
        .arg("modules"))
    .map(drop)
}

/// Writes `sources` (file name, C text) and a Kbuild building `<name>.ko` from `<name>.c` for
/// each, into `dir`, and compiles them.
pub fn build(dir: &Path, sources: &[(&str, &str)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut kbuild = String::new();
    for (name, text) in sources {
        std::fs::write(dir.join(format!("{name}_main.c")), text)?;
        kbuild.push_str(&format!("obj-m += {name}.o\n{name}-y := {name}_main.o\n"));
    }
    std::fs::write(dir.join("Kbuild"), kbuild)?;
    make(dir)
}

/// Copies `modules` (built `.ko`, the name it gets) to `<root>/lib/modules/<kernel>/<subdir>/`
/// and runs depmod on `root`.
pub fn tree(root: &Path, kernel: &str, subdir: &str, modules: &[(PathBuf, &str)]) -> anyhow::Result<()> {
    let dest = root.join("lib/modules").join(kernel).join(subdir);
    std::fs::create_dir_all(&dest)?;
    for (ko, name) in modules {
        std::fs::copy(ko, dest.join(name)).with_context(|| format!("copying {}", ko.display()))?;
    }
    run(Command::new("depmod").arg("-b").arg(root).arg(kernel)).map(drop)
}
