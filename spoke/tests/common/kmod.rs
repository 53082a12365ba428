//! Test kernel modules compiled against the installed Debian cloud headers (needs kmod, gcc,
//! make and linux-headers-cloud-amd64, see scripts/test-deps).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

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
        let headers = fs::read_dir("/usr/src")
            .expect("/usr/src")
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("linux-headers-") && n.ends_with("-cloud-amd64"))
            })
            .expect("no /usr/src/linux-headers-*-cloud-amd64: run scripts/test-deps");
        let kernel = headers
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("linux-headers-"))
            .expect("headers dir name")
            .to_owned();
        let dir = std::env::temp_dir().join(format!("kmm-spoke-kmod-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("a.c"), MOD_A).unwrap();
        fs::write(dir.join("b.c"), MOD_B).unwrap();
        fs::write(dir.join("c.c"), MOD_C).unwrap();
        fs::write(
            dir.join("Kbuild"),
            "obj-m := kmm_a.o kmm_b.o kmm_c.o\nkmm_a-y := a.o\nkmm_b-y := b.o\nkmm_c-y := c.o\n",
        )
        .unwrap();
        let out = Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(&headers)
            .arg(format!("M={}", dir.display()))
            .arg("modules")
            .output()
            .expect("make (install make and gcc)");
        assert!(
            out.status.success(),
            "module build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (kernel, dir)
    })
}

/// Lays out what a worker pod's init container copies for `dirName` `/opt`:
/// `<shared>/opt/lib/modules/<kernel>/extra/{kmm_a,kmm_b,kmm_c}.ko`, depmod'ed.
pub fn kmod_tree(shared: &Path) -> String {
    let (kernel, built) = built_modules();
    let tree = shared.join("opt/lib/modules").join(kernel).join("extra");
    fs::create_dir_all(&tree).unwrap();
    for m in ["kmm_a", "kmm_b", "kmm_c"] {
        fs::copy(built.join(format!("{m}.ko")), tree.join(format!("{m}.ko"))).unwrap();
    }
    let out = Command::new("depmod")
        .arg("-b")
        .arg(shared.join("opt"))
        .arg(kernel)
        .output()
        .expect("depmod (install kmod)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    kernel.clone()
}
