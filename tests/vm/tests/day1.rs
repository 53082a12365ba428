//! Day-1 loading in the real kernel (docs/day1.md): the script `kmm-hub day1` generates runs
//! as the boot step, with the settings of the generated unit, before a stand-in "network"
//! step; the kernel's `/proc/modules` shows what the network would find.
//!
//! The node has no podman and no registry: the kmod image is a real OCI image, built with
//! umoci on the host into an OCI layout at `/srv/oci/<repository>` (tagged with the kernel's
//! version; `/opt/lib/modules/<kernel>/` with depmod's index files, `/firmware/`), and the
//! script's extract command (`KMM_DAY1_EXTRACT`) unpacks `<repository>:<tag>` from there with
//! umoci in the guest.

use std::{path::Path, time::Duration};

use kmm_hub::day1::{Day1, SCRIPT, SCRIPT_PATH, unit};
use kmm_vm_tests::{Env, Initramfs, Report, Scenario, node_initramfs, oci, ok};

/// A guard against a hung guest (a boot takes a few seconds), not a measurement.
const VM_TIMEOUT: Duration = Duration::from_secs(240);
/// An in-tree module of Debian's cloud kernel that is built as a module, not into the kernel.
const IN_TREE: &str = "dummy";
/// The out-of-tree module: it requests its firmware in its init, so loading it proves the
/// firmware was copied and the firmware class path points there.
const OOT: &str = "kmm_vm_fw";
const FIRMWARE_NAME: &str = "kmm-vm/kmm_vm_fw.bin";
const FIRMWARE_TEXT: &str = "kmm-vm firmware day1";
const REPO: &str = "registry.invalid/kmm/day1-kmod";
const LAYOUTS: &str = "/srv/oci";
const EXTRACT: &str = r#"/usr/bin/umoci raw unpack --image "/srv/oci/$1" "$2""#;

fn env() -> &'static Env {
    match kmm_vm_tests::env(Path::new(env!("CARGO_TARGET_TMPDIR"))) {
        Ok(env) => env,
        Err(err) => panic!("VM test environment: {err}"),
    }
}

fn spec(image: &str, module: &str) -> Day1 {
    let spec = Day1 {
        image: image.to_owned(),
        module: module.to_owned(),
        in_tree_remove: vec![IN_TREE.to_owned()],
        firmware_path: Some("/firmware".to_owned()),
        pool: "worker".to_owned(),
    };
    assert_eq!(spec.validate(), Ok(()));
    spec
}

/// The boot step: the generated unit's `Environment=` exported, as systemd would, plus the
/// local extract command, then the generated script at the path the unit runs.
fn boot_step(spec: &Day1) -> String {
    let mut script = String::new();
    for (name, value) in unit::environment(&unit::unit(spec)) {
        script.push_str(&format!("export {name}='{value}'\n"));
    }
    script.push_str(&format!("export KMM_DAY1_EXTRACT='{EXTRACT}'\n{SCRIPT_PATH}\n"));
    script
}

/// The stand-in for NetworkManager: it only reports what it finds loaded when it starts.
const NETWORK: &str = "for m in dummy kmm_vm_fw; do\n\
    if grep -q \"^$m \" /proc/modules; then echo \"network sees $m\"; fi\n\
    done";

/// The node (with `dummy`), the generated script, umoci, and the kmod image for the running
/// kernel as an OCI layout holding only `kmm_vm_first` and `kmm_vm_fw`, with the test firmware.
fn initramfs() -> Initramfs {
    let env = env();
    let mut fs = ok(node_initramfs(&env.kernel, &[IN_TREE]), "node");
    fs.bytes(SCRIPT_PATH, SCRIPT, 0o755);
    ok(
        oci::umoci().and_then(|umoci| fs.binary("/usr/bin/umoci", &umoci).map(|_| ())),
        "umoci",
    );
    let work = ok(tempfile::tempdir().map_err(Into::into), "scratch directory");
    let layout = ok(
        oci::kmod_layout(
            &env.kernel,
            &env.modules,
            &["kmm_vm_first", OOT],
            &[(FIRMWARE_NAME, &format!("{FIRMWARE_TEXT}\n"))],
            work.path(),
        ),
        "kmod image",
    );
    ok(
        fs.tree(&format!("{LAYOUTS}/{REPO}"), &layout).map(|_| ()),
        "kmod image layout",
    );
    fs
}

fn boot(scenario: Scenario) -> Report {
    let scenario = Scenario {
        watch_dirs: vec!["/var/lib/firmware".to_owned()],
        ..scenario
    };
    ok(
        kmm_vm_tests::vm::run(&env().kernel, &initramfs(), &scenario, VM_TIMEOUT),
        "VM",
    )
}

#[test]
fn day1_script_replaces_the_in_tree_module_before_the_network_step() {
    let report = boot(
        Scenario::default()
            .step("in-tree", format!("/usr/sbin/modprobe {IN_TREE}"))
            .step("day1", boot_step(&spec(REPO, OOT)))
            .step("network", NETWORK)
            .step("leftovers", "ls -d /tmp/kmm-day1.* 2>/dev/null; true"),
    );

    let before = report.step("in-tree");
    assert_eq!(before.exit, Some(0), "{}", before.output_text());
    assert!(before.is_live(IN_TREE), "{:?}", before.modules);
    assert!(before.module(OOT).is_none());

    let day1 = report.step("day1");
    assert_eq!(day1.exit, Some(0), "{}", day1.output_text());
    assert!(day1.is_live(OOT), "{:?}", day1.modules);
    assert!(day1.module(IN_TREE).is_none(), "{:?}", day1.modules);
    // The module got its firmware in its init: copied from the image, found by the kernel.
    assert!(
        day1.dmesg.iter().any(|l| l.contains(FIRMWARE_TEXT)),
        "{:?}",
        day1.dmesg
    );
    assert_eq!(
        day1.files
            .get(&format!("/var/lib/firmware/{FIRMWARE_NAME}"))
            .map(String::as_str),
        Some(FIRMWARE_TEXT)
    );
    assert_eq!(day1.firmware_class_path.as_deref(), Some("/var/lib/firmware"));
    assert!(
        day1.output_text().contains("removed in-tree module dummy"),
        "{}",
        day1.output_text()
    );
    // Only the named module was loaded from the image, and the extraction was cleaned up.
    assert!(day1.module("kmm_vm_first").is_none());
    let leftovers = report.step("leftovers");
    assert!(leftovers.output.is_empty(), "{}", leftovers.output_text());

    let network = report.step("network");
    assert_eq!(network.exit, Some(0), "{}", network.output_text());
    assert_eq!(
        network.output,
        ["network sees kmm_vm_fw"],
        "{}",
        network.output_text()
    );
}

#[test]
fn day1_script_fails_clearly_and_the_in_tree_module_stays_when_image_module_or_load_fails() {
    // The module is in the image but its init fails: the image has no firmware directory.
    let without_firmware = Day1 {
        firmware_path: Some("/no-firmware".to_owned()),
        ..spec(REPO, OOT)
    };
    let report = boot(
        Scenario::default()
            .step("in-tree", format!("/usr/sbin/modprobe {IN_TREE}"))
            .step("no-image", boot_step(&spec("registry.invalid/kmm/absent", OOT)))
            .step("no-module", boot_step(&spec(REPO, "kmm_vm_absent")))
            .step("load-fails", boot_step(&without_firmware))
            .step("network", NETWORK)
            .step("leftovers", "ls -d /tmp/kmm-day1.* 2>/dev/null; true"),
    );
    let version = &env().kernel.version;

    let no_image = report.step("no-image");
    assert_eq!(no_image.exit, Some(1), "{}", no_image.output_text());
    let expected = format!(
        "kmm-day1: error: image registry.invalid/kmm/absent:{version} could not be pulled or extracted; in-tree modules left as they are"
    );
    assert!(no_image.output.contains(&expected), "{}", no_image.output_text());
    assert!(no_image.is_live(IN_TREE), "{:?}", no_image.modules);
    assert!(no_image.module(OOT).is_none());

    let no_module = report.step("no-module");
    assert_eq!(no_module.exit, Some(1), "{}", no_module.output_text());
    let expected = format!(
        "kmm-day1: error: module kmm_vm_absent is not in image {REPO}:{version} (/opt/lib/modules/{version}); in-tree modules left as they are"
    );
    assert!(
        no_module.output.contains(&expected),
        "{}",
        no_module.output_text()
    );
    assert!(no_module.is_live(IN_TREE), "{:?}", no_module.modules);
    assert!(
        no_module.files.is_empty(),
        "no firmware copied: {:?}",
        no_module.files
    );

    let network = report.step("network");
    assert_eq!(
        network.output,
        ["network sees dummy"],
        "{}",
        network.output_text()
    );
    // Failures clean up their extraction too.
    let leftovers = report.step("leftovers");
    assert!(leftovers.output.is_empty(), "{}", leftovers.output_text());
}
