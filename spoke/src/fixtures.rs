//! Builders shared by the spoke's unit tests: Modules from YAML and Nodes.

#![allow(clippy::unwrap_used)] // test builders: a panic is a failed test

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeStatus, NodeSystemInfo};
use kmm_api::Module;

/// The kernel of the nodes [`mk_node`] builds, and the one [`loader`] maps.
pub const KERNEL: &str = "6.1.0-18-cloud-amd64";

/// `spec.moduleLoader` loading `kmm_m` with `parameters` from one digest-pinned image on
/// [`KERNEL`]. Lines added after it continue at their own indentation: six spaces go under
/// `container`, two under `spec`.
pub fn loader(parameters: &str) -> String {
    format!(
        "  moduleLoader:\n    container:\n      modprobe: {{moduleName: kmm_m, parameters: [{parameters}]}}\n\
         \x20     kernelMappings:\n        - literal: {KERNEL}\n          containerImage: registry.example/m@sha256:{}\n",
        "1".repeat(64)
    )
}

/// Module `namespace/m` (uid `u-1`, generation 3) selecting nodes labelled `role: gpu`; `spec`
/// holds its further lines under `spec:` (two spaces in).
pub fn mk_module_in(namespace: &str, spec: &str) -> Module {
    serde_saphyr::from_str(&format!(
        "apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: Module\n\
         metadata: {{name: m, namespace: {namespace}, uid: u-1, generation: 3}}\n\
         spec:\n  selector: {{role: gpu}}\n{spec}"
    ))
    .unwrap()
}

/// [`mk_module_in`] the namespace `drivers`.
pub fn mk_module(spec: &str) -> Module {
    mk_module_in("drivers", spec)
}

/// Node `node-a` with `labels`, running [`KERNEL`] in the boot `boot`.
pub fn mk_node(labels: &[(&str, &str)], boot: &str) -> Node {
    let mut node = mk_bare_node(Some(KERNEL));
    node.metadata.name = Some("node-a".into());
    node.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    );
    if let Some(info) = node.status.as_mut().and_then(|s| s.node_info.as_mut()) {
        info.boot_id = boot.into();
    }
    node
}

/// A Node with no name or labels that reports `kernel` (or no node info at all).
pub fn mk_bare_node(kernel: Option<&str>) -> Node {
    Node {
        status: Some(NodeStatus {
            node_info: kernel.map(|k| NodeSystemInfo {
                kernel_version: k.into(),
                operating_system: "linux".into(),
                architecture: "amd64".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
