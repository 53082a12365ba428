//! The spoke's test kernel modules (built and laid out by [`kmm_test_kit::kmod`]): `kmm_a`
//! depends on `kmm_b` and takes a parameter `p`; `kmm_c` stands alone.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use kmm_test_kit::kmod;

const MOD_A: &str = r#"#include <linux/module.h>
MODULE_LICENSE("GPL");
extern int kmm_b_value(void);
static int p = 1;
module_param(p, int, 0444);
static int __init a_init(void) { return kmm_b_value() - 42; }
static void __exit a_exit(void) {}
module_init(a_init);
module_exit(a_exit);
"#;
const MOD_B: &str = r#"#include <linux/module.h>
MODULE_LICENSE("GPL");
int kmm_b_value(void) { return 42; }
EXPORT_SYMBOL(kmm_b_value);
static int __init b_init(void) { return 0; }
static void __exit b_exit(void) {}
module_init(b_init);
module_exit(b_exit);
"#;
const MOD_C: &str = r#"#include <linux/module.h>
MODULE_LICENSE("GPL");
static int __init c_init(void) { return 0; }
static void __exit c_exit(void) {}
module_init(c_init);
module_exit(c_exit);
"#;

/// (kernel version, dir holding kmm_a.ko, kmm_b.ko, kmm_c.ko), built once per test binary.
pub fn built_modules() -> &'static (String, PathBuf) {
    static BUILT: OnceLock<(String, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let kernel = kmod::headers_kernel().unwrap();
        let dir = std::env::temp_dir().join(format!("kmm-spoke-kmod-{}", std::process::id()));
        kmod::build(&dir, &[("kmm_a", MOD_A), ("kmm_b", MOD_B), ("kmm_c", MOD_C)]).unwrap();
        (kernel, dir)
    })
}

/// Lays out what a worker pod's init container copies for `dirName` `/opt`:
/// `<shared>/opt/lib/modules/<kernel>/extra/{kmm_a,kmm_b,kmm_c}.ko`, depmod'ed; the kernel.
pub fn kmod_tree(shared: &Path) -> String {
    let (kernel, built) = built_modules();
    let kos = ["kmm_a.ko", "kmm_b.ko", "kmm_c.ko"].map(|m| (built.join(m), m));
    kmod::tree(&shared.join("opt"), kernel, "extra", &kos).unwrap();
    kernel.clone()
}
