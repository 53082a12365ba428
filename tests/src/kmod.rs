//! The fleet's test kernel module `kmm_fleet` (built and laid out by [`kmm_test_kit::kmod`]):
//! what the fleet's module images carry at `/opt/lib/modules/<kernel>/extra/kmm_fleet.ko`.

use std::path::{Path, PathBuf};

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

/// Compiles `kmm_fleet.ko` in `dir`; returns its path.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    kmm_test_kit::kmod::build(dir, &[(MODULE, SOURCE)])?;
    Ok(dir.join("kmm_fleet.ko"))
}

/// Lays out `<root>/lib/modules/<kernel>/extra/kmm_fleet.ko` and runs depmod on it.
pub fn tree(root: &Path, kernel: &str, ko: &Path) -> anyhow::Result<()> {
    kmm_test_kit::kmod::tree(root, kernel, "extra", &[(ko.to_path_buf(), "kmm_fleet.ko")])
}
