//! Step 2 (pure): the record's spec, one entry per Module that belongs on the node, from its
//! kernel mapping and upstream's load/unload/leave rule ([`super::decision`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kmm_api::{
    Module,
    kernel::KernelMapper,
    labels,
    nmc::{ModuleConfig, ModuleItem, NodeModuleSpec, NodeModuleStatus, NodeModulesConfig},
};
use kube::ResourceExt;

use super::{
    ModuleKey, NodeSettings,
    decision::{NodeDecision, node_decision, worker_service_account},
    key_of,
};
use crate::targeting::targets;

/// The record entry a Module wants on a node with `kernel`, or why there is none.
pub enum Mapping {
    Entry(Box<NodeModuleSpec>),
    NoMapping,
    Error(String),
}

/// The entry for `module` on a node running `kernel`.
pub fn module_entry(module: &Module, kernel: &str, settings: &NodeSettings) -> Mapping {
    let (name, namespace) = (module.name_any(), module.namespace().unwrap_or_default());
    let Some(loader) = module.spec.module_loader.as_ref() else {
        return Mapping::NoMapping;
    };
    let mapper = match KernelMapper::new(&module.spec, &name, &namespace) {
        Ok(m) => m,
        Err(e) => return Mapping::Error(e.to_string()),
    };
    let resolved = match mapper.resolve(kernel) {
        Ok(r) => r,
        Err(e) if e.is_no_mapping() => return Mapping::NoMapping,
        Err(e) => return Mapping::Error(e.to_string()),
    };
    let container = &loader.container;
    let sa = worker_service_account(
        loader.service_account_name.as_deref(),
        &namespace,
        &settings.operator_namespace,
        &settings.operator_module_loader_sa,
    );
    let entry = NodeModuleSpec {
        item: ModuleItem {
            name,
            namespace,
            service_account_name: sa.to_owned(),
            image_repo_secret: module.spec.image_repo_secret.clone(),
            tolerations: module.spec.tolerations.clone().unwrap_or_default(),
            version: container.version.clone().filter(|v| !v.is_empty()),
        },
        config: ModuleConfig {
            kernel_version: resolved.kernel,
            container_image: resolved.container_image,
            insecure_pull: resolved.registry_tls.insecure || resolved.registry_tls.insecure_skip_tls_verify,
            modprobe: container.modprobe.clone(),
            image_pull_policy: container
                .image_pull_policy
                .clone()
                .unwrap_or_else(|| "IfNotPresent".into()),
            in_tree_modules_to_remove: (!resolved.in_tree_modules_to_remove.is_empty())
                .then_some(resolved.in_tree_modules_to_remove),
            in_tree_module_to_remove: None,
        },
    };
    // Never a record entry (so never a worker) for what the worker would refuse; the Module's
    // `WorkerInputInvalid` condition says why.
    match crate::worker::input::check_config(&entry.config) {
        Ok(()) => Mapping::Entry(Box::new(entry)),
        Err(e) => Mapping::Error(e.to_string()),
    }
}

/// The record's current spec entries, by Module.
pub fn current_spec(nmc: Option<&NodeModulesConfig>) -> BTreeMap<ModuleKey, &NodeModuleSpec> {
    nmc.map(|n| n.spec.modules.iter())
        .into_iter()
        .flatten()
        .map(|e| (key_of(&e.item.namespace, &e.item.name), e))
        .collect()
}

/// The record's current status entries (what is loaded), by Module.
pub fn current_status(nmc: Option<&NodeModulesConfig>) -> BTreeMap<ModuleKey, NodeModuleStatus> {
    nmc.and_then(|n| n.status.as_ref())
        .map(|s| s.modules.iter())
        .into_iter()
        .flatten()
        .map(|e| (key_of(&e.item.namespace, &e.item.name), e.clone()))
        .collect()
}

/// The record's spec from every Module; `current` is what it holds now.
pub fn spec(
    node: &Node,
    kernel: Option<&str>,
    modules: &[Module],
    current: &BTreeMap<ModuleKey, &NodeModuleSpec>,
    settings: &NodeSettings,
) -> BTreeMap<ModuleKey, NodeModuleSpec> {
    let node_labels = node.labels();
    let mut spec = BTreeMap::new();
    for module in modules {
        if module.metadata.deletion_timestamp.is_some() || module.spec.module_loader.is_none() {
            continue;
        }
        let key = key_of(&module.namespace().unwrap_or_default(), &module.name_any());
        let version = module
            .spec
            .module_loader
            .as_ref()
            .and_then(|l| l.container.version.as_deref())
            .filter(|v| !v.is_empty());
        let current = current.get(&key).copied();
        let mapping = match kernel {
            Some(kernel) => module_entry(module, kernel, settings),
            None => Mapping::Error("the node reports no kernel version".into()),
        };
        let entry = match mapping {
            Mapping::Entry(entry) => Some(*entry),
            Mapping::NoMapping => None,
            Mapping::Error(_) => {
                // Leave the record as it is until the Module is fixed (its status says why).
                if let Some(current) = current {
                    spec.insert(key, current.clone());
                }
                continue;
            }
        };
        let worker_label = node_labels
            .get(&labels::version_worker_pod(&key.0, &key.1))
            .map(String::as_str);
        match node_decision(
            targets(module, node),
            entry.is_some(),
            current.is_some(),
            version,
            worker_label,
        ) {
            NodeDecision::Load => {
                if let Some(entry) = entry {
                    spec.insert(key, entry);
                }
            }
            NodeDecision::Leave => {
                if let Some(current) = current {
                    spec.insert(key, current.clone());
                }
            }
            NodeDecision::Unload => {}
        }
    }
    spec
}
