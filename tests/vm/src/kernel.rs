//! The installed Debian cloud kernel: its image, its module tree and its headers.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};

/// A kernel that can be booted and built against: the version, `/boot/vmlinuz-<version>`,
/// `/lib/modules/<version>` and `/usr/src/linux-headers-<version>` all exist.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-56-cloud-amd64`.
    pub version: String,
    /// The bootable image.
    pub vmlinuz: PathBuf,
    /// The kernel's own module tree (`/lib/modules/<version>`).
    pub modules: PathBuf,
    /// The headers the test modules are compiled against.
    pub headers: PathBuf,
}

impl Kernel {
    /// Finds the installed `*-cloud-amd64` kernel (`linux-image-cloud-amd64` carries an ABI
    /// number in its name, so it is looked up rather than named). With several, the newest.
    pub fn find() -> anyhow::Result<Self> {
        Self::find_in(Path::new("/"))
    }

    fn find_in(root: &Path) -> anyhow::Result<Self> {
        let boot = root.join("boot");
        let entries = fs::read_dir(&boot).with_context(|| {
            format!(
                "listing {} (is linux-image-cloud-amd64 installed?)",
                boot.display()
            )
        })?;
        let mut found = Vec::new();
        for entry in entries {
            let name = entry
                .with_context(|| format!("listing {}", boot.display()))?
                .file_name();
            let Some(version) = name.to_str().and_then(|n| n.strip_prefix("vmlinuz-")) else {
                continue;
            };
            if !version.ends_with("-cloud-amd64") {
                continue;
            }
            let kernel = Self {
                version: version.to_owned(),
                vmlinuz: boot.join(&name),
                modules: root.join("lib/modules").join(version),
                headers: root.join("usr/src").join(format!("linux-headers-{version}")),
            };
            if kernel.modules.is_dir() && kernel.headers.join("Makefile").is_file() {
                found.push(kernel);
            }
        }
        found.sort_by_key(|k| version_key(&k.version));
        match found.pop() {
            Some(kernel) => Ok(kernel),
            None => bail!(
                "no cloud-amd64 kernel with its module tree and headers under {} \
                 (scripts/test-deps installs linux-image-cloud-amd64 and linux-headers-cloud-amd64)",
                root.display()
            ),
        }
    }
}

/// Orders `6.1.0-9-...` before `6.1.0-56-...`: numbers compare as numbers.
fn version_key(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_cloud_kernel_that_has_headers_and_modules() {
        let root = tempfile::tempdir().unwrap();
        let add = |version: &str, headers: bool| {
            fs::create_dir_all(root.path().join("boot")).unwrap();
            fs::write(root.path().join(format!("boot/vmlinuz-{version}")), b"").unwrap();
            fs::create_dir_all(root.path().join("lib/modules").join(version)).unwrap();
            if headers {
                let dir = root.path().join(format!("usr/src/linux-headers-{version}"));
                fs::create_dir_all(&dir).unwrap();
                fs::write(dir.join("Makefile"), b"").unwrap();
            }
        };
        add("6.1.0-9-cloud-amd64", true);
        add("6.1.0-56-cloud-amd64", true);
        add("6.1.0-60-cloud-amd64", false);
        add("6.1.0-70-amd64", true);
        let kernel = Kernel::find_in(root.path()).unwrap();
        assert_eq!(kernel.version, "6.1.0-56-cloud-amd64");
        assert!(kernel.vmlinuz.ends_with("boot/vmlinuz-6.1.0-56-cloud-amd64"));
    }

    #[test]
    fn no_kernel_is_an_error_that_names_the_packages() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("boot")).unwrap();
        let err = Kernel::find_in(root.path()).unwrap_err().to_string();
        assert!(err.contains("linux-headers-cloud-amd64"), "{err}");
    }
}
