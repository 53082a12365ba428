//! Step 4 (pure): the node labels kmm-spoke owns: a loaded module's ready (and version-ready)
//! label, the device plugin's target label, and the ordered-upgrade labels moved along by the
//! action table of [`crate::ordered_upgrade`].

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Node, Pod};
use kmm_api::{
    Module, labels,
    nmc::{NodeModuleSpec, NodeModuleStatus},
};
use kube::ResourceExt;

use super::{ModuleKey, key_of};
use crate::{
    ordered_upgrade::{NodeVersionState, VersionAction, next_action},
    targeting::targets,
    worker::{pod::MODULE_NAME_LABEL, pod_state},
};

/// How soon to look again while an ordered upgrade waits.
const UPGRADE_RECHECK: Duration = Duration::from_secs(5);

/// The labels, and whether an ordered upgrade wants another look soon.
#[derive(Debug, Default, PartialEq)]
pub struct NodeLabels {
    pub labels: BTreeMap<String, String>,
    pub recheck: Option<Duration>,
}

/// Every label kmm-spoke owns on `node`, from the record (`spec`, `status`), the Modules and
/// the node's pods.
pub fn node_labels(
    node: &Node,
    modules: &[Module],
    pods: &[Pod],
    spec: &BTreeMap<ModuleKey, NodeModuleSpec>,
    status: &BTreeMap<ModuleKey, NodeModuleStatus>,
) -> NodeLabels {
    let mut out = NodeLabels::default();
    for (key, s) in spec {
        let loaded = status.get(key).and_then(|st| st.config.as_ref()) == Some(&s.config);
        if loaded {
            out.labels
                .insert(labels::module_ready(&key.0, &key.1), String::new());
            if let Some(v) = status.get(key).and_then(|st| st.item.version.clone()) {
                out.labels.insert(labels::module_version_ready(&key.0, &key.1), v);
            }
        }
    }
    for module in modules {
        if module.metadata.deletion_timestamp.is_none()
            && module.spec.device_plugin.is_some()
            && targets(module, node)
        {
            let ns = module.namespace().unwrap_or_default();
            out.labels.insert(
                labels::device_plugin_target(&ns, &module.name_any()),
                String::new(),
            );
        }
    }
    let node_labels = node.labels();
    for (ns, name) in version_label_modules(node_labels) {
        let worker_key = labels::version_worker_pod(&ns, &name);
        let schedule_key = labels::version_schedule_pod(&ns, &name);
        let state = NodeVersionState {
            requested: node_labels
                .get(&labels::version_module(&ns, &name))
                .map(String::as_str),
            worker: node_labels.get(&worker_key).map(String::as_str),
            schedule: node_labels.get(&schedule_key).map(String::as_str),
            plugin_pod_running: pods.iter().any(|p| {
                p.namespace().as_deref() == Some(ns.as_str())
                    && p.labels().get(MODULE_NAME_LABEL) == Some(&name)
                    && pod_state::action(p).is_none()
                    && pod_state::phase(p) != "Succeeded"
                    && pod_state::phase(p) != "Failed"
            }),
            module_ready: node_labels.contains_key(&labels::module_ready(&ns, &name)),
        };
        let (mut w, mut s) = (state.worker.map(str::to_owned), state.schedule.map(str::to_owned));
        match next_action(state) {
            VersionAction::Keep => {}
            VersionAction::DeleteSchedule => s = None,
            VersionAction::DeleteWorker => w = None,
            VersionAction::SetWorker(v) => w = Some(v),
            VersionAction::SetSchedule(v) => s = Some(v),
            VersionAction::Requeue => out.recheck = Some(UPGRADE_RECHECK),
        }
        if let Some(w) = w {
            out.labels.insert(worker_key, w);
        }
        if let Some(s) = s {
            out.labels.insert(schedule_key, s);
        }
    }
    out
}

/// Modules named by any ordered-upgrade label on the node. A namespace holds no dot, so the
/// first dot after the prefix separates namespace and name (dotted Module names work).
pub fn version_label_modules(node_labels: &BTreeMap<String, String>) -> BTreeSet<ModuleKey> {
    let prefixes = [
        format!("{}/version-module.", labels::NODE_LABEL_PREFIX),
        format!("{}/version-worker-pod.", labels::BETA_LABEL_PREFIX),
        format!("{}/version-schedule-pod.", labels::BETA_LABEL_PREFIX),
    ];
    node_labels
        .keys()
        .filter_map(|k| {
            let rest = prefixes.iter().find_map(|p| k.strip_prefix(p.as_str()))?;
            let (ns, name) = rest.split_once('.')?;
            (!ns.is_empty() && !name.is_empty()).then(|| key_of(ns, name))
        })
        .collect()
}
