//! The Module's status (pure): node counts for the loader and the device plugin, and the
//! conditions the spoke reports (build/sign ignored in managed mode, invalid kernel mappings,
//! worker pods failing).

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Node, Pod},
    },
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

use crate::{
    reason::Reason,
    targeting::targets,
    worker::{
        pod::{WORKER_ACTION_LABEL, WORKER_LAST_FAILURE_ANNOTATION},
        pod_state::termination,
    },
};

/// Condition: the Module asks for a build or signing, which a managed spoke never does.
pub const BUILD_SIGN_IGNORED: &str = "BuildSignIgnored";
/// Condition: the kernel mappings cannot be used (for example an invalid regexp).
pub const KERNEL_MAPPINGS_INVALID: &str = "KernelMappingsInvalid";

/// Condition: a module name or path of `modprobe` is one the worker refuses (no worker runs).
pub const WORKER_INPUT_INVALID: &str = "WorkerInputInvalid";

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

/// Condition type: worker pods of the Module failed on some nodes and wait for their retry. The
/// hub reads its message back through the ManifestWork, so the MCM status names the reason.
pub const WORKERS_FAILING: &str = "WorkersFailing";

/// Longest message of the `WorkersFailing` condition.
const MAX_FAILURE_MESSAGE: usize = 400;

/// A worker pod of the Module that failed: its node and one-line reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerFailure {
    pub node: String,
    pub reason: String,
}

/// Nodes whose worker for this Module is failing, sorted by node: a failed worker pod (its
/// reason), or a retry still under way (the previous attempt's reason, from its annotation).
pub fn worker_failures(pods: &[Pod]) -> Vec<WorkerFailure> {
    let mut out: Vec<WorkerFailure> = pods
        .iter()
        .filter(|p| p.labels().contains_key(WORKER_ACTION_LABEL))
        .filter_map(|p| {
            let reason = match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
                Some("Failed") => termination(p).1,
                Some("Succeeded") => return None,
                _ => p.annotations().get(WORKER_LAST_FAILURE_ANNOTATION)?.clone(),
            };
            Some(WorkerFailure {
                node: p
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
                reason: reason.lines().next().unwrap_or_default().trim().to_owned(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out.dedup_by(|a, b| a.node == b.node);
    out
}

/// `<n> node(s) failing; <first node>: <its reason>`, cut to a bounded length.
fn failure_message(failures: &[WorkerFailure]) -> Option<String> {
    let first = failures.first()?;
    let text = format!(
        "{} node(s) failing; {}: {}",
        failures.len(),
        first.node,
        first.reason
    );
    if text.len() > MAX_FAILURE_MESSAGE {
        return Some(format!("{}...", kmm_api::text::head(&text, MAX_FAILURE_MESSAGE)));
    }
    Some(text)
}

/// The status kmm-spoke reports for `module`; `failures` are its failed worker pods.
pub fn module_status(
    module: &Module,
    nodes: &[Node],
    nmcs: &[NodeModulesConfig],
    daemonsets: &[DaemonSet],
    failures: &[WorkerFailure],
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
            Reason::ManagedMode,
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
            Reason::InvalidKernelMapping,
            &e.to_string(),
            module.metadata.generation,
            now,
        ));
    }
    if let Some(Err(e)) = module
        .spec
        .module_loader
        .as_ref()
        .map(|l| crate::worker::input::check_modprobe(&l.container.modprobe))
    {
        conditions.push(condition(
            current,
            WORKER_INPUT_INVALID,
            Reason::InvalidWorkerInput,
            &e.to_string(),
            module.metadata.generation,
            now,
        ));
    }
    if let Some(message) = failure_message(failures) {
        conditions.push(condition(
            current,
            WORKERS_FAILING,
            Reason::WorkerFailed,
            &message,
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
    reason: Reason,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let since = current
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True" && reason == c.reason.as_str())
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DaemonSetStatus as K8sDaemonSetStatus;
    use kmm_api::nmc::{
        ModuleConfig, ModuleItem, NodeModuleSpec, NodeModuleStatus, NodeModulesConfigSpec,
        NodeModulesConfigStatus,
    };

    use super::*;
    use crate::fixtures::{loader, mk_module, mk_node};

    fn config(image: &str) -> ModuleConfig {
        ModuleConfig {
            kernel_version: "k".into(),
            container_image: image.into(),
            ..Default::default()
        }
    }

    fn mk_nmc(wanted: Option<&str>, loaded: Option<&str>) -> NodeModulesConfig {
        let item = ModuleItem {
            name: "m".into(),
            namespace: "drivers".into(),
            ..Default::default()
        };
        let mut nmc = NodeModulesConfig::new(
            "n",
            NodeModulesConfigSpec {
                modules: wanted
                    .map(|i| NodeModuleSpec {
                        item: item.clone(),
                        config: config(i),
                    })
                    .into_iter()
                    .collect(),
            },
        );
        nmc.status = Some(NodeModulesConfigStatus {
            modules: loaded
                .map(|i| NodeModuleStatus {
                    item: item.clone(),
                    config: Some(config(i)),
                    boot_id: None,
                    last_transition_time: None,
                })
                .into_iter()
                .collect(),
        });
        nmc
    }

    fn mk_ds(available: i32) -> DaemonSet {
        DaemonSet {
            status: Some(K8sDaemonSetStatus {
                number_available: Some(available),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Finding 9: a newline in the loading order is reported on the Module, by field.
    #[test]
    fn a_loading_order_entry_that_is_no_module_name_gets_a_condition() {
        let spec = loader("").replace(
            "modprobe: {moduleName: kmm_m, ",
            "modprobe: {moduleName: kmm_m, modulesLoadingOrder: [kmm_m, \"kmm_x\\ninstall kmm_m /bin/sh\"], ",
        );
        let module = mk_module(&spec);
        let status = module_status(&module, &[], &[], &[], &[], Timestamp::now());
        let condition = status
            .conditions
            .iter()
            .find(|c| c.type_ == WORKER_INPUT_INVALID)
            .expect("a WorkerInputInvalid condition");
        assert_eq!(condition.reason, "InvalidWorkerInput");
        assert!(
            condition.message.contains("modprobe.modulesLoadingOrder[1]"),
            "{}",
            condition.message
        );
    }

    #[test]
    fn counts_matching_desired_and_available_nodes() {
        let module = mk_module(&(loader("") + "  devicePlugin:\n    container: {image: plugin}\n"));
        let nodes = [
            mk_node(&[("role", "gpu")], "b1"),
            mk_node(&[("role", "gpu")], "b1"),
            mk_node(&[("role", "gpu")], "b1"),
            mk_node(&[("role", "cpu")], "b1"),
        ];
        let nmcs = [
            mk_nmc(Some("v2"), Some("v2")), // loaded
            mk_nmc(Some("v2"), Some("v1")), // still the old image
            mk_nmc(Some("v2"), None),       // not yet
            mk_nmc(None, Some("v1")),       // being unloaded: not desired
        ];
        let status = module_status(
            &module,
            &nodes,
            &nmcs,
            &[mk_ds(1), mk_ds(2)],
            &[],
            Timestamp::now(),
        );
        assert_eq!(
            status.module_loader,
            Some(DaemonSetStatus {
                nodes_matching_selector_number: 3,
                desired_number: 3,
                available_number: 1,
            })
        );
        assert_eq!(
            status.device_plugin,
            Some(DaemonSetStatus {
                nodes_matching_selector_number: 3,
                desired_number: 3,
                available_number: 3,
            })
        );
        assert!(status.conditions.is_empty());
    }

    #[test]
    fn build_or_sign_gets_a_managed_mode_condition_that_keeps_its_transition_time() {
        let mut module = mk_module(&loader(""));
        assert!(
            module_status(&module, &[], &[], &[], &[], Timestamp::now())
                .conditions
                .is_empty()
        );
        module
            .spec
            .module_loader
            .as_mut()
            .unwrap()
            .container
            .kernel_mappings[0]
            .build = Some(Default::default());
        let first = module_status(&module, &[], &[], &[], &[], Timestamp::UNIX_EPOCH);
        let c = &first.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            (BUILD_SIGN_IGNORED, "True", "ManagedMode")
        );
        assert_eq!(c.observed_generation, Some(3));
        module.status = Some(first.clone());
        let again = module_status(&module, &[], &[], &[], &[], Timestamp::now());
        assert_eq!(again, first, "unchanged status: no write, no hot loop");
    }

    fn failed_worker(node: &str, message: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("kmm-worker-{node}"), "labels": {WORKER_ACTION_LABEL: "Load"}},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": "Failed", "containerStatuses": [{
                "name": "worker", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 1, "message": message}}}]},
        }))
        .unwrap()
    }

    #[test]
    fn failing_workers_give_a_condition_naming_the_count_the_first_node_and_its_reason() {
        let module = mk_module(&loader(""));
        let mut running = failed_worker("node-c", "x");
        running.status.as_mut().unwrap().phase = Some("Running".into());
        let mut retrying = failed_worker("node-d", "x");
        retrying.status.as_mut().unwrap().phase = Some("Running".into());
        retrying.metadata.annotations = Some(
            [(
                WORKER_LAST_FAILURE_ANNOTATION.to_owned(),
                "loading m: Key was rejected by service".to_owned(),
            )]
            .into(),
        );
        let mut succeeded = retrying.clone();
        succeeded.spec.as_mut().unwrap().node_name = Some("node-e".into());
        succeeded.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let pods = [
            failed_worker("node-b", "loading kmm_ci_a: Required key not available\nmore"),
            failed_worker("node-a", "modprobe: FATAL: Module kmm_ci_a not found"),
            running,
            retrying,
            succeeded,
        ];
        let failures = worker_failures(&pods);
        assert_eq!(
            failures.iter().map(|f| f.node.as_str()).collect::<Vec<_>>(),
            ["node-a", "node-b", "node-d"],
            "a first run and a succeeded retry are not failures; a running retry still is"
        );
        assert_eq!(failures[2].reason, "loading m: Key was rejected by service");
        let status = module_status(&module, &[], &[], &[], &failures, Timestamp::now());
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == WORKERS_FAILING)
            .unwrap();
        assert_eq!(
            c.message,
            "3 node(s) failing; node-a: modprobe: FATAL: Module kmm_ci_a not found"
        );
        let long = [failed_worker("node-a", &"x".repeat(2000))];
        let status = module_status(&module, &[], &[], &[], &worker_failures(&long), Timestamp::now());
        assert!(status.conditions[0].message.len() <= MAX_FAILURE_MESSAGE + 3);
        let healthy = module_status(&module, &[], &[], &[], &[], Timestamp::now());
        assert!(healthy.conditions.iter().all(|c| c.type_ != WORKERS_FAILING));
    }

    #[test]
    fn without_sections_there_are_no_counts() {
        let mut module = mk_module(&loader(""));
        module.spec.module_loader = None;
        let status = module_status(
            &module,
            &[mk_node(&[("role", "gpu")], "b1")],
            &[],
            &[],
            &[],
            Timestamp::now(),
        );
        assert_eq!(status.module_loader, None);
        assert_eq!(status.device_plugin, None);
    }
}
