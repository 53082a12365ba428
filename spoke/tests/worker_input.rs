//! Finding 9 of the security review (issue 13), with the real kmod tools: what a Module's
//! modprobe settings can make the worker do on a node. Each test is the review's reproducer;
//! modprobe runs with `--dry-run`, so nothing touches the running kernel. Needs kmod, gcc, make
//! and linux-headers-cloud-amd64 (scripts/test-deps).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

mod common;

use common::kmod::kmod_tree;
use kmm_spoke::worker::modprobe::softdep_conf;

struct Node {
    tmp: tempfile::TempDir,
    kernel: String,
    shared: PathBuf,
    firmware: PathBuf,
    conf_dir: PathBuf,
    termination: PathBuf,
}

fn node_files() -> Node {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    let kernel = kmod_tree(&shared);
    fs::create_dir_all(shared.join("firmware/vendor")).unwrap();
    fs::write(shared.join("firmware/vendor/fw.bin"), b"firmware").unwrap();
    let firmware = tmp.path().join("host-firmware");
    fs::create_dir_all(&firmware).unwrap();
    Node {
        kernel,
        shared,
        firmware,
        conf_dir: tmp.path().join("modprobe.d"),
        termination: tmp.path().join("termination-log"),
        tmp,
    }
}

/// Runs `kmm-spoke worker load --dry-run` with `config`; (success, everything it printed).
fn load(node: &Node, config: &str) -> (bool, String) {
    let path = node.tmp.path().join("load.yaml");
    fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kmm-spoke"))
        .args(["worker", "load", "--dry-run", "--config"])
        .arg(&path)
        .arg("--shared-root")
        .arg(&node.shared)
        .arg("--host-root")
        .arg(node.tmp.path().join("host"))
        .arg("--firmware-host-path")
        .arg(&node.firmware)
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

fn config(kernel: &str, modprobe: &str) -> String {
    format!(
        "kernelVersion: {kernel}\ncontainerImage: registry.example/kmm/a@sha256:{}\nmodprobe:\n  moduleName: kmm_a\n  dirName: /opt\n{modprobe}",
        "0".repeat(64)
    )
}

/// `modprobe --dry-run -v` of kmm_a with the configuration in `conf_dir`.
fn modprobe_with(conf_dir: &Path, node: &Node) -> String {
    let out = Command::new("modprobe")
        .args(["--dry-run", "-v", "-C"])
        .arg(conf_dir)
        .arg("-d")
        .arg(node.shared.join("opt"))
        .args(["-S", &node.kernel, "kmm_a"])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const INJECTED: &str = "kmm_c\ninstall kmm_c /bin/sh -c 'echo injected'";

#[test]
fn a_newline_in_the_loading_order_writes_no_directive_modprobe_would_honour() {
    let node = node_files();

    // The witness: the softdep file the worker used to write for this order makes real
    // modprobe run the injected command in place of loading kmm_c (kmod ignores install
    // commands only of modules that have softdeps themselves, so the last one is the target).
    let witness = node.tmp.path().join("witness.d");
    fs::create_dir_all(&witness).unwrap();
    let order = ["kmm_a".to_owned(), INJECTED.to_owned()];
    fs::write(witness.join("softdep.conf"), softdep_conf(&order)).unwrap();
    let honoured = modprobe_with(&witness, &node);
    assert!(
        honoured.contains("install /bin/sh -c 'echo injected'"),
        "{honoured}"
    );

    // The worker refuses the order before writing anything or running modprobe.
    let modprobe = "  modulesLoadingOrder: [kmm_a, \"kmm_c\\ninstall kmm_c /bin/sh -c 'echo injected'\"]\n";
    let (ok, out) = load(&node, &config(&node.kernel, modprobe));
    assert!(!ok, "{out}");
    assert!(!out.contains("install /bin/sh"), "{out}");
    assert!(!out.contains("running "), "no modprobe ran: {out}");
    assert!(
        !node.conf_dir.join("softdep.conf").exists(),
        "no directive written"
    );
    let message = fs::read_to_string(&node.termination).unwrap();
    assert!(message.contains("modprobe.modulesLoadingOrder[1]"), "{message}");
    assert_eq!(message.lines().count(), 1, "{message:?}");

    // A real order still loads, in order, through the file it writes.
    let (ok, out) = load(
        &node,
        &config(&node.kernel, "  modulesLoadingOrder: [kmm_a, kmm_c]\n"),
    );
    assert!(ok, "{out}");
    assert_eq!(
        fs::read_to_string(node.conf_dir.join("softdep.conf")).unwrap(),
        "softdep kmm_a pre: kmm_c\n"
    );
}

#[test]
fn a_firmware_path_out_of_the_shared_root_copies_nothing() {
    let node = node_files();
    let outside = node.tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret.bin"), b"not the module's").unwrap();
    let (ok, out) = load(&node, &config(&node.kernel, "  firmwarePath: /../outside\n"));
    assert!(!ok, "{out}");
    assert!(!node.firmware.join("secret.bin").exists());
    let message = fs::read_to_string(&node.termination).unwrap();
    assert!(message.contains("modprobe.firmwarePath"), "{message}");
    assert!(!out.contains("insmod"), "{out}");
}

#[test]
fn a_host_symlink_cannot_redirect_a_firmware_write() {
    let node = node_files();
    let elsewhere = node.tmp.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, node.firmware.join("vendor")).unwrap();
    let (ok, out) = load(&node, &config(&node.kernel, "  firmwarePath: /firmware\n"));
    assert!(!ok, "{out}");
    assert!(!elsewhere.join("fw.bin").exists(), "written through the link");
    let message = fs::read_to_string(&node.termination).unwrap();
    assert!(message.contains("symbolic link"), "{message}");
    assert!(!out.contains("insmod"), "nothing loaded: {out}");
}

#[test]
fn a_symlink_in_the_images_firmware_is_not_followed() {
    let node = node_files();
    let secret = node.tmp.path().join("node-secret");
    fs::write(&secret, b"node secret").unwrap();
    std::os::unix::fs::symlink(&secret, node.shared.join("firmware/vendor/link.bin")).unwrap();
    let (ok, out) = load(&node, &config(&node.kernel, "  firmwarePath: /firmware\n"));
    assert!(!ok, "{out}");
    assert!(!node.firmware.join("vendor/link.bin").exists());
    assert!(
        fs::read_to_string(&node.termination)
            .unwrap()
            .contains("symbolic link")
    );
}
