//! The kmm-spoke worker against the real kernel in a VM (docs/vm-tests.md).
//!
//! Each test boots the Debian cloud kernel once and runs, as a kubelet would, the worker pods
//! kmm-spoke builds (init container copying the kmod image's tree, then `kmm-spoke worker
//! load|unload`), then asserts on what the kernel reports after each pod: `/proc/modules`,
//! sysfs, the kernel log, the firmware directory, and the worker's exit status and
//! termination message.

use std::{path::Path, time::Duration};

use kmm_api::{
    module::{ModprobeArgs, ModprobeSpec},
    nmc::ModuleConfig,
};
use kmm_spoke::worker::{pod::WorkerPodSettings, run::Action};
use kmm_vm_tests::{Env, Initramfs, Report, Scenario, add_kmod_image, ok, pod, worker_initramfs, worker_pod};

/// A guard against a hung guest (a boot takes a few seconds), not a measurement.
const VM_TIMEOUT: Duration = Duration::from_secs(240);
/// Where worker pods write their one-line failure reason.
const TERMINATION_LOG: &str = "/dev/termination-log";
const FIRMWARE_HOST_PATH: &str = "/var/lib/firmware";
const FIRMWARE_NAME: &str = "kmm-vm/kmm_vm_fw.bin";
const FIRMWARE_TEXT: &str = "kmm-vm firmware v1";

fn env() -> &'static Env {
    match kmm_vm_tests::env(Path::new(env!("CARGO_TARGET_TMPDIR"))) {
        Ok(env) => env,
        Err(err) => panic!("VM test environment: {err}"),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn config(modprobe: ModprobeSpec) -> ModuleConfig {
    ModuleConfig {
        kernel_version: env().kernel.version.clone(),
        container_image:
            "registry.invalid/kmm-vm@sha256:0000000000000000000000000000000000000000000000000000000000000000"
                .to_owned(),
        modprobe,
        image_pull_policy: "IfNotPresent".to_owned(),
        ..Default::default()
    }
}

fn settings(set_firmware_class_path: bool) -> WorkerPodSettings {
    WorkerPodSettings {
        firmware_host_path: FIRMWARE_HOST_PATH.to_owned(),
        set_firmware_class_path,
        ..Default::default()
    }
}

/// The node (with the in-tree modules `in_tree`), the spoke image and a kmod image holding
/// `modules` under /opt (and the test firmware under /firmware).
fn initramfs(in_tree: &[&str], modules: &[&str]) -> Initramfs {
    let env = env();
    let mut fs = ok(
        worker_initramfs(&env.kernel, in_tree, &settings(false)),
        "node and spoke image",
    );
    ok(
        add_kmod_image(
            &mut fs,
            &env.kernel,
            &env.modules,
            modules,
            "/opt",
            Some("/firmware"),
            &[(FIRMWARE_NAME, &format!("{FIRMWARE_TEXT}\n"))],
        ),
        "kmod image",
    );
    fs
}

/// Adds the steps of the worker pod for (action, config, settings), named `name-init` and `name`.
fn with_pod(
    mut scenario: Scenario,
    name: &str,
    action: Action,
    config: &ModuleConfig,
    settings: &WorkerPodSettings,
) -> Scenario {
    let pod = ok(worker_pod(action, config, settings), "worker pod");
    scenario.steps.extend(ok(pod::steps(name, &pod), "pod steps"));
    scenario
}

fn scenario(kernel_args: &[&str], watch_modules: &[&str]) -> Scenario {
    Scenario {
        kernel_args: strings(kernel_args),
        watch_modules: strings(watch_modules),
        watch_dirs: strings(&[FIRMWARE_HOST_PATH]),
        termination_log: Some(TERMINATION_LOG.to_owned()),
        steps: Vec::new(),
    }
}

fn boot(fs: &Initramfs, scenario: &Scenario) -> Report {
    let report = ok(
        kmm_vm_tests::vm::run(&env().kernel, fs, scenario, VM_TIMEOUT),
        "VM",
    );
    for step in &report.steps {
        if let Some(reason) = &step.termination {
            eprintln!(
                "step {}: exit {:?}, termination message {reason:?}",
                step.name, step.exit
            );
        }
        if step.name.ends_with("-init") {
            assert_eq!(
                step.exit,
                Some(0),
                "init container of {}: {}",
                step.name,
                step.output_text()
            );
        }
    }
    report
}

fn firmware_file() -> String {
    format!("{FIRMWARE_HOST_PATH}/{FIRMWARE_NAME}")
}

#[test]
fn firmware_module_loads_with_the_firmware_class_path_and_unload_removes_module_and_firmware() {
    let config = config(ModprobeSpec {
        module_name: Some("kmm_vm_fw".into()),
        firmware_path: Some("/firmware".into()),
        ..Default::default()
    });
    let mut s = scenario(&[], &[]);
    s = with_pod(
        s,
        "load-without-class-path",
        Action::Load,
        &config,
        &settings(false),
    );
    s = with_pod(s, "load", Action::Load, &config, &settings(true));
    s = with_pod(s, "unload", Action::Unload, &config, &settings(true));
    let report = boot(&initramfs(&[], &["kmm_vm_fw"]), &s);

    // Without the class path the kernel does not look in /var/lib/firmware: the module's init
    // fails and the worker fails with modprobe's reason.
    let refused = report.step("load-without-class-path");
    assert_eq!(refused.exit, Some(1), "{}", refused.output_text());
    assert_eq!(refused.firmware_class_path.as_deref(), Some(""));
    assert!(refused.module("kmm_vm_fw").is_none(), "{:?}", refused.modules);
    assert!(
        refused
            .dmesg_index(&format!("kmm_vm_fw: firmware {FIRMWARE_NAME} not loaded: -2"))
            .is_some(),
        "{:?}",
        refused.dmesg
    );
    let reason = refused.termination.as_deref().unwrap_or_default();
    assert_eq!(reason.len(), 1, "{reason:?}");
    assert!(reason[0].contains("could not insert 'kmm_vm_fw'"), "{reason:?}");
    assert_eq!(
        refused.files.get(&firmware_file()).map(String::as_str),
        Some(FIRMWARE_TEXT)
    );

    let load = report.step("load");
    assert_eq!(load.exit, Some(0), "{}", load.output_text());
    assert_eq!(load.termination, None);
    assert_eq!(load.firmware_class_path.as_deref(), Some(FIRMWARE_HOST_PATH));
    assert!(load.is_live("kmm_vm_fw"), "{:?}", load.modules);
    assert!(
        load.dmesg_index(&format!(
            "kmm_vm_fw: firmware {FIRMWARE_NAME} loaded: {FIRMWARE_TEXT}"
        ))
        .is_some(),
        "{:?}",
        load.dmesg
    );
    assert_eq!(
        load.files.get(&firmware_file()).map(String::as_str),
        Some(FIRMWARE_TEXT)
    );

    let unload = report.step("unload");
    assert_eq!(unload.exit, Some(0), "{}", unload.output_text());
    assert!(unload.module("kmm_vm_fw").is_none(), "{:?}", unload.modules);
    assert!(
        unload.dmesg_index("kmm_vm_fw: exit").is_some(),
        "{:?}",
        unload.dmesg
    );
    assert!(
        unload.files.is_empty(),
        "firmware left behind: {:?}",
        unload.files
    );
}

#[test]
fn parameters_are_visible_in_sysfs_and_go_with_the_module() {
    let config = config(ModprobeSpec {
        module_name: Some("kmm_vm_params".into()),
        parameters: Some(strings(&["greeting=hello", "count=7", "levels=1,2,3"])),
        ..Default::default()
    });
    let mut s = scenario(&[], &["kmm_vm_params"]);
    s = with_pod(s, "load", Action::Load, &config, &settings(false));
    s = with_pod(s, "unload", Action::Unload, &config, &settings(false));
    let report = boot(&initramfs(&[], &["kmm_vm_params"]), &s);

    let load = report.step("load");
    assert_eq!(load.exit, Some(0), "{}", load.output_text());
    assert!(load.is_live("kmm_vm_params"), "{:?}", load.modules);
    assert_eq!(load.param("kmm_vm_params", "greeting"), Some("hello"));
    assert_eq!(load.param("kmm_vm_params", "count"), Some("7"));
    assert_eq!(load.param("kmm_vm_params", "levels"), Some("1,2,3"));
    assert!(
        load.dmesg_index("kmm_vm_params: init greeting=hello count=7 levels=3")
            .is_some(),
        "{:?}",
        load.dmesg
    );

    let unload = report.step("unload");
    assert_eq!(unload.exit, Some(0), "{}", unload.output_text());
    assert!(unload.module("kmm_vm_params").is_none(), "{:?}", unload.modules);
    assert!(unload.params.is_empty(), "{:?}", unload.params);
}

#[test]
fn loading_order_loads_the_soft_dependency_first_and_unload_reverses_it() {
    let config = config(ModprobeSpec {
        module_name: Some("kmm_vm_first".into()),
        modules_loading_order: Some(strings(&["kmm_vm_first", "kmm_vm_second"])),
        ..Default::default()
    });
    let kernel = &env().kernel.version;
    // Control: without the worker's softdep configuration nothing ties the two modules.
    let mut s = scenario(&[], &[])
        .step(
            "plain-modprobe",
            format!("/usr/sbin/modprobe -v -d /opt -S {kernel} kmm_vm_first"),
        )
        .step(
            "plain-modprobe-r",
            format!("/usr/sbin/modprobe -rv -d /opt -S {kernel} kmm_vm_first"),
        );
    s = with_pod(s, "load", Action::Load, &config, &settings(false));
    s = with_pod(s, "unload", Action::Unload, &config, &settings(false));
    let report = boot(&initramfs(&[], &["kmm_vm_first", "kmm_vm_second"]), &s);

    let plain = report.step("plain-modprobe");
    assert_eq!(plain.exit, Some(0), "{}", plain.output_text());
    assert!(plain.is_live("kmm_vm_first"), "{:?}", plain.modules);
    assert!(plain.module("kmm_vm_second").is_none(), "{:?}", plain.modules);
    let plain = report.step("plain-modprobe-r");
    assert_eq!(plain.exit, Some(0), "{}", plain.output_text());
    assert!(plain.module("kmm_vm_first").is_none(), "{:?}", plain.modules);

    let load = report.step("load");
    assert_eq!(load.exit, Some(0), "{}", load.output_text());
    assert!(
        load.is_live("kmm_vm_first") && load.is_live("kmm_vm_second"),
        "{:?}",
        load.modules
    );
    let second = load
        .dmesg_index("kmm_vm_second: init")
        .expect("kmm_vm_second loaded");
    let first = load
        .dmesg_index("kmm_vm_first: init")
        .expect("kmm_vm_first loaded");
    assert!(second < first, "loaded in the wrong order: {:?}", load.dmesg);
    // /proc/modules lists the newest first.
    let position = |name: &str| load.modules.iter().position(|m| m.name == name);
    assert!(
        position("kmm_vm_first") < position("kmm_vm_second"),
        "{:?}",
        load.modules
    );

    let unload = report.step("unload");
    assert_eq!(unload.exit, Some(0), "{}", unload.output_text());
    assert!(
        unload.module("kmm_vm_first").is_none() && unload.module("kmm_vm_second").is_none(),
        "{:?}",
        unload.modules
    );
    let first = unload
        .dmesg_index("kmm_vm_first: exit")
        .expect("kmm_vm_first unloaded");
    let second = unload
        .dmesg_index("kmm_vm_second: exit")
        .expect("kmm_vm_second unloaded");
    assert!(first < second, "unloaded in the wrong order: {:?}", unload.dmesg);
}

/// An in-tree module of the Debian kernel with no dependencies and no users once loaded.
const IN_TREE: &str = "dummy";

#[test]
fn in_tree_module_of_the_kernel_is_unloaded_before_the_load() {
    let mut config = config(ModprobeSpec {
        module_name: Some("kmm_vm_params".into()),
        ..Default::default()
    });
    config.in_tree_modules_to_remove = Some(strings(&[IN_TREE]));
    let mut s = scenario(&[], &[]).step("node-has-in-tree", format!("/usr/sbin/modprobe -v {IN_TREE}"));
    s = with_pod(s, "load", Action::Load, &config, &settings(false));
    let report = boot(&initramfs(&[IN_TREE], &["kmm_vm_params"]), &s);

    let before = report.step("node-has-in-tree");
    assert_eq!(before.exit, Some(0), "{}", before.output_text());
    assert!(before.is_live(IN_TREE), "{:?}", before.modules);
    assert!(
        before
            .output_text()
            .contains(&format!("/lib/modules/{}/kernel/", env().kernel.version))
    );

    let load = report.step("load");
    assert_eq!(load.exit, Some(0), "{}", load.output_text());
    assert!(
        load.module(IN_TREE).is_none(),
        "{IN_TREE} still loaded: {:?}",
        load.modules
    );
    assert!(load.is_live("kmm_vm_params"), "{:?}", load.modules);
}

#[test]
fn module_refused_by_the_kernel_fails_the_worker_with_the_kernels_reason() {
    let env = env();
    let config = config(ModprobeSpec {
        module_name: Some("kmm_vm_params".into()),
        ..Default::default()
    });
    let unsigned = format!("/opt/lib/modules/{}/kmm_vm_params.ko", env.kernel.version);
    let mut s = scenario(&["module.sig_enforce=1"], &["module"])
        // The kernel's own answer, without the worker: what insmod is told for this file.
        .step("insmod-unsigned", format!("/usr/sbin/insmod {unsigned}"))
        // Enforcement is real, not a blanket refusal: Debian's signed modules still load.
        .step("modprobe-signed", format!("/usr/sbin/modprobe -v {IN_TREE}"));
    s = with_pod(s, "load", Action::Load, &config, &settings(false));
    let report = boot(&initramfs(&[IN_TREE], &["kmm_vm_params"]), &s);

    let oracle = report.step("insmod-unsigned");
    assert_ne!(oracle.exit, Some(0), "{}", oracle.output_text());
    assert_eq!(oracle.param("module", "sig_enforce"), Some("Y"));
    let kernel_says = oracle
        .output
        .iter()
        .find_map(|l| l.rsplit_once(": ").map(|(_, m)| m.trim().to_owned()))
        .expect("insmod printed the kernel's error");
    // Linux 6.1 answers EKEYREJECTED for an unsigned module under enforcement; older kernels
    // (RHEL 8's 4.18, quoted in the seeds' troubleshooting section) answered ENOKEY.
    assert!(
        ["Key was rejected by service", "Required key not available"].contains(&kernel_says.as_str()),
        "{kernel_says}"
    );
    assert!(
        oracle
            .dmesg_index("Loading of unsigned module is rejected")
            .is_some(),
        "{:?}",
        oracle.dmesg
    );

    let signed = report.step("modprobe-signed");
    assert_eq!(signed.exit, Some(0), "{}", signed.output_text());
    assert!(signed.is_live(IN_TREE));

    let load = report.step("load");
    assert_eq!(load.exit, Some(1), "{}", load.output_text());
    assert!(load.module("kmm_vm_params").is_none(), "{:?}", load.modules);
    assert!(
        load.dmesg_index("Loading of unsigned module is rejected")
            .is_some(),
        "{:?}",
        load.dmesg
    );
    let reason = load.termination.as_deref().expect("a termination message");
    assert_eq!(reason.len(), 1, "one line: {reason:?}");
    assert!(
        reason[0].contains(&kernel_says),
        "{reason:?} lacks {kernel_says:?}"
    );
    assert!(
        reason[0].contains("could not insert 'kmm_vm_params'"),
        "{reason:?}"
    );
}

#[test]
fn repeated_pods_and_raw_args_in_the_real_kernel() {
    let with_greeting = |greeting: &str| {
        config(ModprobeSpec {
            module_name: Some("kmm_vm_params".into()),
            parameters: Some(vec![format!("greeting={greeting}")]),
            ..Default::default()
        })
    };
    let raw = config(ModprobeSpec {
        raw_args: Some(ModprobeArgs {
            load: Some(strings(&[
                "-v",
                "-d",
                "/tmp/opt",
                "kmm_vm_params",
                "greeting=raw",
            ])),
            unload: Some(strings(&["-rv", "-d", "/tmp/opt", "kmm_vm_params"])),
        }),
        ..Default::default()
    });
    let mut s = scenario(&[], &["kmm_vm_params"]);
    s = with_pod(
        s,
        "unload-not-loaded",
        Action::Unload,
        &with_greeting("one"),
        &settings(false),
    );
    s = with_pod(s, "load", Action::Load, &with_greeting("one"), &settings(false));
    s = with_pod(
        s,
        "load-changed",
        Action::Load,
        &with_greeting("two"),
        &settings(false),
    );
    s = with_pod(
        s,
        "unload",
        Action::Unload,
        &with_greeting("two"),
        &settings(false),
    );
    s = with_pod(s, "raw-load", Action::Load, &raw, &settings(false));
    s = with_pod(s, "raw-unload", Action::Unload, &raw, &settings(false));
    let report = boot(&initramfs(&[], &["kmm_vm_params"]), &s);

    // Unloading what is not loaded (say, after the node rebooted) succeeds.
    let idle = report.step("unload-not-loaded");
    assert_eq!(idle.exit, Some(0), "{}", idle.output_text());
    assert_eq!(idle.termination, None);

    let load = report.step("load");
    assert_eq!(load.exit, Some(0), "{}", load.output_text());
    assert_eq!(load.param("kmm_vm_params", "greeting"), Some("one"));
    // Loading again with other parameters succeeds without touching the loaded module: new
    // parameters need an unload first.
    let again = report.step("load-changed");
    assert_eq!(again.exit, Some(0), "{}", again.output_text());
    assert_eq!(again.param("kmm_vm_params", "greeting"), Some("one"));
    assert!(
        again.dmesg_index("kmm_vm_params: init").is_none(),
        "{:?}",
        again.dmesg
    );
    let unload = report.step("unload");
    assert_eq!(unload.exit, Some(0), "{}", unload.output_text());
    assert!(unload.module("kmm_vm_params").is_none(), "{:?}", unload.modules);

    // rawArgs are the whole modprobe command line.
    let raw_load = report.step("raw-load");
    assert_eq!(raw_load.exit, Some(0), "{}", raw_load.output_text());
    assert!(raw_load.is_live("kmm_vm_params"), "{:?}", raw_load.modules);
    assert_eq!(raw_load.param("kmm_vm_params", "greeting"), Some("raw"));
    let raw_unload = report.step("raw-unload");
    assert_eq!(raw_unload.exit, Some(0), "{}", raw_unload.output_text());
    assert!(
        raw_unload.module("kmm_vm_params").is_none(),
        "{:?}",
        raw_unload.modules
    );
}
