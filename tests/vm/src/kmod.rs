//! Compiling the test kernel modules (tests/fixtures/kmod-vm) against the kernel's headers.

use std::{
    collections::hash_map::DefaultHasher,
    fs,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::kernel::Kernel;

/// The directory of the test modules' C sources and Kbuild file.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/kmod-vm")
}

/// The compiled `.ko` files of one kernel.
#[derive(Debug, Clone)]
pub struct Modules {
    dir: PathBuf,
}

impl Modules {
    /// Path of `<name>.ko`.
    pub fn ko(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.ko"))
    }

    /// Names of every compiled module.
    pub fn names(&self) -> anyhow::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).with_context(|| format!("listing {}", self.dir.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "ko")
                && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
            {
                names.push(stem.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }
}

/// Compiles every module of `sources` with `make -C <headers> M=<copy> modules`, once per
/// (sources, kernel): the result is kept under `cache` (a directory named after a hash of both),
/// so test processes running in parallel or one after another share it.
pub fn build(kernel: &Kernel, sources: &Path, cache: &Path) -> anyhow::Result<Modules> {
    let files = source_files(sources)?;
    let mut hasher = DefaultHasher::new();
    kernel.version.hash(&mut hasher);
    for file in &files {
        file.file_name().hash(&mut hasher);
        fs::read(file)
            .with_context(|| format!("reading {}", file.display()))?
            .hash(&mut hasher);
    }
    let done = cache.join(format!("kmod-vm-{}-{:016x}", kernel.version, hasher.finish()));
    if done.is_dir() {
        return Ok(Modules { dir: done });
    }
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let work = tempfile::Builder::new()
        .prefix("kmod-vm-build-")
        .tempdir_in(cache)
        .context("creating a build directory")?;
    for file in &files {
        if let Some(name) = file.file_name() {
            fs::copy(file, work.path().join(name)).with_context(|| format!("copying {}", file.display()))?;
        }
    }
    let output = Command::new("make")
        .arg("-C")
        .arg(&kernel.headers)
        .arg(format!("M={}", work.path().display()))
        .arg("modules")
        .output()
        .context("running make (is build-essential installed?)")?;
    if !output.status.success() {
        bail!(
            "make -C {} M=... modules failed ({}):\n{}{}",
            kernel.headers.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let work = work.keep();
    if let Err(err) = fs::rename(&work, &done) {
        // Another process finished first: use its copy.
        let _ = fs::remove_dir_all(&work);
        if !done.is_dir() {
            return Err(err).with_context(|| format!("moving the build to {}", done.display()));
        }
    }
    Ok(Modules { dir: done })
}

fn source_files(sources: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(sources).with_context(|| format!("listing {}", sources.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name == "Kbuild" || name.ends_with(".c") || name.ends_with(".h") {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("no module sources in {}", sources.display());
    }
    Ok(files)
}
