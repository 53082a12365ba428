//! Scenarios against the real kernel in a VM (docs/vm-tests.md).

use std::{path::Path, time::Duration};

use kmm_vm_tests::{Env, Scenario, add_kmod_image, node_initramfs};

/// A guard against a hung guest (a boot takes a few seconds), not a measurement.
const VM_TIMEOUT: Duration = Duration::from_secs(180);

fn env() -> &'static Env {
    match kmm_vm_tests::env(Path::new(env!("CARGO_TARGET_TMPDIR"))) {
        Ok(env) => env,
        Err(err) => panic!("VM test environment: {err}"),
    }
}

/// The worker pod's init container script: copies the image's tree into the shared `/tmp`.
fn init_container(kernel: &str) -> String {
    format!("mkdir -p /tmp/opt/lib/modules; cp -R /opt/lib/modules/{kernel} /tmp/opt/lib/modules;")
}

#[test]
fn modprobe_loads_a_module_with_parameters_and_unloads_it() {
    let env = env();
    let mut fs = node_initramfs(&env.kernel, &[]).unwrap();
    add_kmod_image(
        &mut fs,
        &env.kernel,
        &env.modules,
        &["kmm_vm_params"],
        "/opt",
        None,
        &[],
    )
    .unwrap();
    let scenario = Scenario {
        watch_modules: vec!["kmm_vm_params".into()],
        ..Default::default()
    }
    .step("init-container", init_container(&env.kernel.version))
    .step(
        "load",
        "/usr/sbin/modprobe -vd /tmp/opt kmm_vm_params greeting=hello count=7 levels=1,2,3",
    )
    .step("unload", "/usr/sbin/modprobe -rvd /tmp/opt kmm_vm_params");
    let report = kmm_vm_tests::vm::run(&env.kernel, &fs, &scenario, VM_TIMEOUT).unwrap();

    assert_eq!(report.step("init-container").exit, Some(0));
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
    assert!(unload.params.is_empty());
    assert!(
        unload.dmesg_index("kmm_vm_params: exit").is_some(),
        "{:?}",
        unload.dmesg
    );
}
