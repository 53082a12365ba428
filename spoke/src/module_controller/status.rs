//! The Module's status (pure): node counts for the loader and the device plugin, and the
//! conditions the spoke reports (build/sign ignored in managed mode, invalid kernel mappings).

use k8s_openapi::{
    api::{apps::v1::DaemonSet, core::v1::Node},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kmm_api::{
    Module,
    kernel::KernelMapper,
    module::{DaemonSetStatus, ModuleStatus},
    nmc::NodeModulesConfig,
};
use kube::ResourceExt;

use crate::node_controller::desired::targets;

/// Condition: the Module asks for a build or signing, which a managed spoke never does.
pub const BUILD_SIGN_IGNORED: &str = "BuildSignIgnored";
/// Condition: the kernel mappings cannot be used (for example an invalid regexp).
pub const KERNEL_MAPPINGS_INVALID: &str = "KernelMappingsInvalid";

/// Whether the Module asks for a build or signing anywhere.
pub fn wants_build_or_sign(module: &Module) -> bool {
    module.spec.module_loader.as_ref().is_some_and(|l| {
        let c = &l.container;
        c.build.is_some()
            || c.sign.is_some()
            || c.kernel_mappings
                .iter()
                .any(|m| m.build.is_some() || m.sign.is_some())
    })
}

/// The status kmm-spoke reports for `module`.
pub fn module_status(
    module: &Module,
    nodes: &[Node],
    nmcs: &[NodeModulesConfig],
    daemonsets: &[DaemonSet],
    now: Timestamp,
) -> ModuleStatus {
    let (ns, name) = (module.namespace().unwrap_or_default(), module.name_any());
    let matching = i32::try_from(nodes.iter().filter(|n| targets(module, n)).count()).unwrap_or(i32::MAX);
    let module_loader = module.spec.module_loader.as_ref().map(|_| {
        let mut desired = 0;
        let mut available = 0;
        for nmc in nmcs {
            let Some(spec) = nmc
                .spec
                .modules
                .iter()
                .find(|e| e.item.namespace == ns && e.item.name == name)
            else {
                continue;
            };
            desired += 1;
            let loaded = nmc
                .status
                .as_ref()
                .and_then(|s| {
                    s.modules
                        .iter()
                        .find(|e| e.item.namespace == ns && e.item.name == name)
                })
                .and_then(|e| e.config.as_ref());
            if loaded == Some(&spec.config) {
                available += 1;
            }
        }
        DaemonSetStatus {
            nodes_matching_selector_number: matching,
            desired_number: desired,
            available_number: available,
        }
    });
    let device_plugin = module.spec.device_plugin.as_ref().map(|_| DaemonSetStatus {
        nodes_matching_selector_number: matching,
        desired_number: matching,
        available_number: daemonsets
            .iter()
            .filter_map(|d| d.status.as_ref()?.number_available)
            .sum(),
    });

    let current = module
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let mut conditions = Vec::new();
    if wants_build_or_sign(module) {
        conditions.push(condition(
            current,
            BUILD_SIGN_IGNORED,
            "ManagedMode",
            "kmm-spoke runs in managed mode and never builds or signs: spec.moduleLoader.container \
             build/sign are ignored and each kernel mapping's containerImage is loaded as given \
             (the hub builds and signs)",
            module.metadata.generation,
            now,
        ));
    }
    if let Err(e) = KernelMapper::new(&module.spec, &name, &ns)
        && module.spec.module_loader.is_some()
    {
        conditions.push(condition(
            current,
            KERNEL_MAPPINGS_INVALID,
            "InvalidKernelMapping",
            &e.to_string(),
            module.metadata.generation,
            now,
        ));
    }
    ModuleStatus {
        module_loader,
        device_plugin,
        dra: None,
        image_rebuild_trigger_generation: module.spec.image_rebuild_trigger_generation,
        conditions,
    }
}

/// A True condition that keeps its transition time while nothing about it changes.
fn condition(
    current: &[Condition],
    type_: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let since = current
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True" && c.reason == reason)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status: "True".into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: since,
    }
}
