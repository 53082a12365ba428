//! `kmm-spoke worker` against the real kmod tools: modules compiled here against the Debian
//! headers, depmod'ed, and loaded/unloaded with real `modprobe --dry-run` (nothing touches the
//! running kernel). Needs kmod, gcc, make and linux-headers-cloud-amd64 (scripts/test-deps).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

mod common;

use common::kmod::{built_modules, kmod_tree};
use kmm_test_kit::kmod;

struct Node {
    _tmp: tempfile::TempDir,
    kernel: String,
    shared: PathBuf,
    host: PathBuf,
    firmware: PathBuf,
    class_path: PathBuf,
    conf_dir: PathBuf,
    termination: PathBuf,
}

/// A node as a worker pod sees it: the init container's copy under `shared` (`/opt` tree,
/// depmod'ed, and `/firmware`), a host module tree with an in-tree `kmm_intree.ko`.
fn node_files() -> Node {
    let (kernel, built) = built_modules();
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    kmod_tree(&shared);
    fs::create_dir_all(shared.join("firmware/vendor")).unwrap();
    fs::write(shared.join("firmware/vendor/fw.bin"), b"firmware").unwrap();
    let host = tmp.path().join("host");
    kmod::tree(
        &host,
        kernel,
        "kernel/drivers",
        &[(built.join("kmm_c.ko"), "kmm_intree.ko")],
    )
    .unwrap();
    let firmware = tmp.path().join("host-firmware");
    fs::create_dir_all(&firmware).unwrap();
    fs::write(firmware.join("unrelated.bin"), b"keep").unwrap();
    let class_path = tmp.path().join("firmware_class_path");
    fs::write(&class_path, "\n").unwrap();
    Node {
        kernel: kernel.clone(),
        shared,
        host,
        firmware,
        class_path,
        conf_dir: tmp.path().join("modprobe.d"),
        termination: tmp.path().join("termination-log"),
        _tmp: tmp,
    }
}

fn worker(node: &Node, action: &str, config: &str) -> (bool, String) {
    let path = node.shared.parent().unwrap().join(format!("{action}.yaml"));
    fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kmm-spoke"))
        .args(["worker", action, "--dry-run", "--config"])
        .arg(&path)
        .arg("--shared-root")
        .arg(&node.shared)
        .arg("--host-root")
        .arg(&node.host)
        .arg("--firmware-host-path")
        .arg(&node.firmware)
        .arg("--firmware-class-path-file")
        .arg(&node.class_path)
        .arg("--modprobe-conf-dir")
        .arg(&node.conf_dir)
        .arg("--termination-log")
        .arg(&node.termination)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn full_config(kernel: &str) -> String {
    format!(
        "kernelVersion: {kernel}\ncontainerImage: registry.example/kmm/a@sha256:{}\n\
         inTreeModulesToRemove: [kmm_intree, not_on_this_host]\n\
         modprobe:\n  moduleName: kmm_a\n  dirName: /opt\n  parameters: [p=3]\n  firmwarePath: /firmware\n\
         \x20 modulesLoadingOrder: [kmm_a, kmm_c]\n  args: {{load: [--first-time], unload: [--verbose]}}\n",
        "0".repeat(64)
    )
}

fn insmods(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("modprobe: insmod "))
        .map(|l| {
            let (path, params) = l.split_once(' ').unwrap_or((l, ""));
            let file = Path::new(path)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            format!("{file} {}", params.trim()).trim().to_owned()
        })
        .collect()
}

#[test]
fn load_removes_in_tree_modules_copies_firmware_and_loads_in_order() {
    let node = node_files();
    let (ok, out) = worker(&node, "load", &full_config(&node.kernel));
    assert!(ok, "{out}");
    let commands: Vec<&str> = out.lines().filter(|l| l.starts_with("running ")).collect();
    assert_eq!(
        commands[0],
        format!(
            "running modprobe --dry-run -d {} -S {} -rv kmm_intree",
            node.host.display(),
            node.kernel
        ),
        "only the in-tree module present on the host is removed"
    );
    assert_eq!(
        commands[1],
        format!(
            "running modprobe --dry-run -C {} -S {} -vd {}/opt --first-time kmm_a p=3",
            node.conf_dir.display(),
            node.kernel,
            node.shared.display()
        )
    );
    // modprobe loads the symbol dependency kmm_b, then the softdep from modulesLoadingOrder
    // (kmm_c), then kmm_a with its parameters.
    assert_eq!(insmods(&out), ["kmm_b.ko", "kmm_c.ko", "kmm_a.ko p=3"], "{out}");
    assert_eq!(
        fs::read_to_string(node.conf_dir.join("softdep.conf")).unwrap(),
        "softdep kmm_a pre: kmm_c\n"
    );
    assert_eq!(
        fs::read(node.firmware.join("vendor/fw.bin")).unwrap(),
        b"firmware"
    );
    assert_eq!(
        fs::read_to_string(&node.class_path).unwrap(),
        node.firmware.display().to_string()
    );
}

#[test]
fn unload_names_the_loading_order_and_removes_only_its_firmware() {
    let node = node_files();
    let config = full_config(&node.kernel);
    assert!(worker(&node, "load", &config).0);
    let (ok, out) = worker(&node, "unload", &config);
    assert!(ok, "{out}");
    let command = out.lines().find(|l| l.starts_with("running ")).unwrap();
    assert_eq!(
        command,
        format!(
            "running modprobe --dry-run -C {} -S {} -rvd {}/opt --verbose kmm_a kmm_c",
            node.conf_dir.display(),
            node.kernel,
            node.shared.display()
        )
    );
    assert!(
        !node.firmware.join("vendor").exists(),
        "copied firmware and its dir are gone"
    );
    assert!(
        node.firmware.join("unrelated.bin").exists(),
        "other firmware stays"
    );
}

#[test]
fn raw_args_are_passed_as_given() {
    let node = node_files();
    let root = node.shared.join("opt");
    let config = format!(
        "kernelVersion: {k}\ncontainerImage: img:1\nmodprobe:\n  rawArgs:\n    load: [-d, {r}, -S, {k}, -v, kmm_b]\n    unload: [-d, {r}, -S, {k}, -rv, kmm_b]\n",
        k = node.kernel,
        r = root.display()
    );
    let (ok, out) = worker(&node, "load", &config);
    assert!(ok, "{out}");
    assert_eq!(insmods(&out), ["kmm_b.ko"]);
    assert!(out.contains(&format!(
        "running modprobe --dry-run -d {} -S {} -v kmm_b",
        root.display(),
        node.kernel
    )));
}

#[test]
fn a_failing_modprobe_exits_non_zero_with_a_one_line_reason() {
    let node = node_files();
    let config = format!(
        "kernelVersion: {}\ncontainerImage: img:1\nmodprobe:\n  moduleName: kmm_missing\n",
        node.kernel
    );
    let (ok, out) = worker(&node, "load", &config);
    assert!(!ok, "{out}");
    let message = fs::read_to_string(&node.termination).unwrap();
    assert_eq!(message.lines().count(), 1, "{message:?}");
    assert!(message.contains("kmm_missing"), "{message}");
    assert!(message.contains("not found"), "{message}");
}

#[test]
fn firmware_without_a_host_path_is_refused_before_loading() {
    let node = node_files();
    let config_path = node.shared.parent().unwrap().join("c.yaml");
    fs::write(&config_path, full_config(&node.kernel)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kmm-spoke"))
        .args(["worker", "load", "--dry-run", "--config"])
        .arg(&config_path)
        .arg("--shared-root")
        .arg(&node.shared)
        .arg("--host-root")
        .arg(&node.host)
        .arg("--termination-log")
        .arg(&node.termination)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let message = fs::read_to_string(&node.termination).unwrap();
    assert!(message.contains("--firmware-host-path"), "{message}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("insmod"));
}
