//! The fleet's test kernel module `kmm_fleet`, compiled against the installed Debian cloud
//! headers (make, gcc, linux-headers-cloud-amd64; see scripts/test-deps), and module trees laid
//! out as a kmod image carries them: `<dir>/lib/modules/<kernel>/extra/kmm_fleet.ko`, depmod'ed.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;

/// The module's name (what `modprobe` loads).
pub const MODULE: &str = "kmm_fleet";

const SOURCE: &str = r#"#include <linux/module.h>
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmm-fleet end-to-end test module");
static int __init kmm_fleet_init(void) { return 0; }
static void __exit kmm_fleet_exit(void) {}
module_init(kmm_fleet_init);
module_exit(kmm_fleet_exit);
"#;

/// The installed `/usr/src/linux-headers-*-cloud-amd64`.
fn headers() -> anyhow::Result<PathBuf> {
    std::fs::read_dir("/usr/src")
        .context("/usr/src")?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-headers-") && n.ends_with("-cloud-amd64"))
        })
        .context("no /usr/src/linux-headers-*-cloud-amd64: run `just deps`")
}

/// Compiles `kmm_fleet.ko` in `dir`; returns its path.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("kmm_fleet_main.c"), SOURCE)?;
    std::fs::write(
        dir.join("Kbuild"),
        "obj-m := kmm_fleet.o\nkmm_fleet-y := kmm_fleet_main.o\n",
    )?;
    crate::run(
        Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(headers()?)
            .arg(format!("M={}", dir.display()))
            .arg("modules"),
    )?;
    Ok(dir.join("kmm_fleet.ko"))
}

/// Lays out `<root>/lib/modules/<kernel>/extra/kmm_fleet.ko` and runs depmod on it.
pub fn tree(root: &Path, kernel: &str, ko: &Path) -> anyhow::Result<()> {
    let extra = root.join("lib/modules").join(kernel).join("extra");
    std::fs::create_dir_all(&extra)?;
    std::fs::copy(ko, extra.join("kmm_fleet.ko"))?;
    crate::run(Command::new("depmod").arg("-b").arg(root).arg(kernel))?;
    Ok(())
}
