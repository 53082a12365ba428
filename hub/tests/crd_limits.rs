//! Issue 13 on a real kube-apiserver: the shipped CRDs refuse, when it is written, what the hub or
//! the spoke would refuse later: a kernel mapping regexp longer than the per-Module budget
//! (finding 4), and worker input that is no module name or plain path (finding 9), in a
//! ManagedClusterModule and in a Module alike; ordinary values still pass.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kmm_api::kernel::MAX_REGEXP_BYTES;
use kmm_fleet_tests::controlplane::{ControlPlane, Options};

fn mcm(regexp: &str) -> String {
    format!(
        "apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1\nkind: ManagedClusterModule\nmetadata: {{name: gpu-{}}}\n\
         spec:\n  spokeNamespace: drivers\n  selector: {{env: prod}}\n  moduleSpec:\n    selector: {{}}\n\
         \x20   moduleLoader:\n      container:\n        modprobe: {{moduleName: gpu_kmod}}\n        kernelMappings:\n\
         \x20         - regexp: '{regexp}'\n            containerImage: registry.example/gpu:x\n",
        regexp.len()
    )
}

fn module(regexp: &str) -> String {
    format!(
        "apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: Module\nmetadata: {{name: m-{}, namespace: default}}\n\
         spec:\n  selector: {{role: gpu}}\n  moduleLoader:\n    container:\n      modprobe: {{moduleName: m}}\n      \
         kernelMappings:\n      - {{regexp: '{regexp}', containerImage: 'registry.example/m:x'}}\n",
        regexp.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regexp_over_the_budget_is_refused_when_written() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("crd-limits-regexp");
    let cp = ControlPlane::start(&dir, "hub", Options::hub()).await.unwrap();
    let root = kmm_fleet_tests::repo_root();
    assert_eq!(
        cp.install_crds_from_path(root.join("manifests/crds"))
            .await
            .unwrap(),
        4,
        "Module, ManagedClusterModule, ManagedClusterPreflight, NodeModulesConfig"
    );

    let longest = format!("^{}$", "a".repeat(MAX_REGEXP_BYTES - 2));
    let too_long = format!("^{}$", "a".repeat(MAX_REGEXP_BYTES - 1));
    for render in [mcm, module] {
        cp.apply_yaml(&render("^.+$")).await.unwrap();
        cp.apply_yaml(&render(&longest)).await.unwrap();
        let err = cp
            .apply_yaml(&render(&too_long))
            .await
            .expect_err("over the budget");
        let text = format!("{err:#}");
        assert!(text.contains("regexp"), "{text}");
        assert!(text.contains(&MAX_REGEXP_BYTES.to_string()), "{text}");
    }
}

fn module_with(name: &str, modprobe: &str) -> String {
    format!(
        "apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: Module\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  selector: {{role: gpu}}\n  moduleLoader:\n    container:\n      modprobe: {{moduleName: kmm_a, {modprobe}}}\n      \
         kernelMappings:\n      - {{regexp: '^.+$', containerImage: 'registry.example/m:x'}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_input_that_is_no_module_name_or_plain_path_is_refused_when_written() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("crd-worker-input");
    let cp = ControlPlane::start(&dir, "hub", Options::hub()).await.unwrap();
    let root = kmm_fleet_tests::repo_root();
    assert_eq!(
        cp.install_crds_from_path(root.join("manifests/crds"))
            .await
            .unwrap(),
        4,
        "Module, ManagedClusterModule, ManagedClusterPreflight, NodeModulesConfig"
    );

    cp.apply_yaml(&module_with(
        "ok",
        "modulesLoadingOrder: [kmm_a, kmm-b], dirName: /opt/, firmwarePath: /lib/firmware/.vendor",
    ))
    .await
    .unwrap();
    for (name, modprobe, field) in [
        (
            "newline",
            "modulesLoadingOrder: [kmm_a, \"kmm_b\\ninstall kmm_b /bin/sh -c id\"]",
            "modulesLoadingOrder",
        ),
        ("dotdot", "firmwarePath: /../outside", "firmwarePath"),
        ("shell", "dirName: \"/opt;id\"", "dirName"),
    ] {
        let err = cp.apply_yaml(&module_with(name, modprobe)).await.expect_err(name);
        let text = format!("{err:#}");
        assert!(text.contains(field), "{name}: {text}");
    }
}
