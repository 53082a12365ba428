//! Images of the fleet, built from folders with umoci and pushed with skopeo. Module images
//! hold busybox (`/bin/sh`, `cp`, `mkdir`: the worker pod's init container runs them) and the
//! module tree under `/opt`, as a driver team's image would.
//! The product images (kmm-hub, kmm-spoke) are built by `scripts/images` and pushed from their OCI
//! layouts.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;

use crate::{fresh_dir, kmod, registry::Registry, run};

/// Folder where the images' root filesystems are staged.
pub struct ImageBuilder {
    dir: PathBuf,
    ko: PathBuf,
}

impl ImageBuilder {
    /// Compiles the test module once; images are staged under `dir`.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ko = kmod::build(&dir.join("kmod-build"))?;
        Ok(Self {
            dir: dir.to_owned(),
            ko,
        })
    }

    fn rootfs(&self, name: &str) -> anyhow::Result<PathBuf> {
        let root = fresh_dir(&self.dir, &format!("rootfs-{name}"))?;
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin)?;
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .context("busybox is missing (Debian busybox-static; run `just deps`)")?;
        std::fs::copy(busybox, bin.join("busybox"))?;
        for applet in ["sh", "cp", "mkdir", "ls", "cat"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
        Ok(root)
    }

    /// A prebuilt module image for one kernel: busybox and `/opt/lib/modules/<kernel>`.
    pub fn module_image(&self, registry: &Registry, repo_tag: &str, kernel: &str) -> anyhow::Result<String> {
        let root = self.rootfs(&repo_tag.replace(['/', ':'], "-"))?;
        kmod::tree(&root.join("opt"), kernel, &self.ko)?;
        registry.push_dir(repo_tag, &root)
    }

    /// The "sources" a build copies from: `/trees/<kernel>/lib/modules/<kernel>` per kernel.
    pub fn source_image(
        &self,
        registry: &Registry,
        repo_tag: &str,
        kernels: &[&str],
    ) -> anyhow::Result<String> {
        let root = fresh_dir(&self.dir, "rootfs-sources")?;
        for kernel in kernels {
            kmod::tree(&root.join("trees").join(kernel), kernel, &self.ko)?;
        }
        registry.push_dir(repo_tag, &root)
    }

    /// A base image with busybox only (what a build starts from).
    pub fn base_image(&self, registry: &Registry, repo_tag: &str) -> anyhow::Result<String> {
        let root = self.rootfs("base")?;
        registry.push_dir(repo_tag, &root)
    }
}

/// The Dockerfile the fleet's MCMs build with: the base image plus the source image's tree for
/// the kernel being built.
pub fn dockerfile(host: &str) -> String {
    format!(
        "FROM {host}/kmm/fleet-src:1 AS src\nFROM {host}/kmm/fleet-base:1\nARG KERNEL_FULL_VERSION\nCOPY --from=src /trees/${{KERNEL_FULL_VERSION}}/ /opt/\n"
    )
}

/// Pulls `image` (a `docker://` reference, plain HTTP allowed) into `dir` and unpacks it; the
/// root filesystem, to read what an image really ships.
pub fn unpack(image: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let layout = fresh_dir(dir, "oci")?.join("layout");
    let tagged = format!("{}:v", layout.display());
    run(Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false", image])
        .arg(format!("oci:{tagged}")))?;
    let bundle = dir.join("bundle");
    let _ = std::fs::remove_dir_all(&bundle);
    run(Command::new("umoci")
        .args(["raw", "unpack", "--rootless", "--image", &tagged])
        .arg(&bundle))?;
    Ok(bundle)
}

/// Builds the kmm-hub and kmm-spoke images (`names`) with `scripts/images` from the binaries
/// cargo built for the tests (the profile folder the test runs from) into `out`, as OCI layouts
/// `out/<name>`. The script skips an image whose inputs did not change, so a kept `out` is a
/// cache between runs.
pub fn build_product_images(out: &Path, names: &[&str]) -> anyhow::Result<()> {
    let mut bin_dir = None;
    for name in names {
        let bin = kmm_test_kit::workspace_bin(name)?;
        bin_dir = bin.parent().map(Path::to_path_buf);
    }
    let bin_dir = bin_dir.context("no image named")?;
    run(Command::new(crate::repo_root().join("scripts/images"))
        .env("KMM_IMAGE_PROFILE", "debug")
        .env("KMM_IMAGE_NO_BUILD", "1")
        .env("KMM_IMAGE_BIN_DIR", &bin_dir)
        .env("KMM_IMAGE_OUT", out)
        .env("KMM_IMAGES", names.join(" ")))?;
    Ok(())
}

/// Where the tests keep the product images' OCI layouts between runs (`target/images-test`):
/// the first test builds them, later ones find them unchanged.
pub fn product_images_cache() -> anyhow::Result<PathBuf> {
    Ok(kmm_test_kit::target_dir()?.join("images-test"))
}

/// Builds the product image `name` (kmm-hub or kmm-spoke) into the cache when its inputs
/// changed, and pushes it to `registry` as `kmm-fleet/<name>:<tag>`; the reference pinned by
/// the digest the registry stored.
pub fn push_product_image(registry: &Registry, name: &str, tag: &str) -> anyhow::Result<String> {
    let cache = product_images_cache()?;
    build_product_images(&cache, &[name])?;
    push_layout(registry, &cache.join(name), &format!("kmm-fleet/{name}:{tag}"))
}

/// The manifest digest of the tag `latest` in the OCI layout `layout`.
pub fn layout_digest(layout: &Path) -> anyhow::Result<String> {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "latest")
        .and_then(|m| m["digest"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("{} has no tag latest", layout.display()))
}

/// Pushes the layout's `latest` to `registry` as `repo_tag`; the reference pinned by the
/// digest the registry answers for it.
pub fn push_layout(registry: &Registry, layout: &Path, repo_tag: &str) -> anyhow::Result<String> {
    run(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{}/{repo_tag}", registry.host)))?;
    let digest = registry
        .digest(repo_tag)
        .with_context(|| format!("{repo_tag} was pushed but cannot be inspected"))?;
    let repo = repo_tag.split_once(':').map_or(repo_tag, |(r, _)| r);
    Ok(format!("{}/{repo}@{digest}", registry.host))
}

/// Unpacks the layout's `latest` into `dir/rootfs` (replaced); that folder.
pub fn unpack_layout(layout: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    std::fs::create_dir_all(dir)?;
    run(Command::new("umoci")
        .args(["raw", "unpack", "--rootless", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .arg(&rootfs))?;
    Ok(rootfs)
}
