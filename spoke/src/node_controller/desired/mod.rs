//! What one node should look like (pure): its NodeModulesConfig spec and status, which worker
//! pods to start or remove, and the labels kmm-spoke owns on the node.
//!
//! Inputs are what `observe` read: the Node, its record, every Module, and the pods on the node
//! that carry the module-name label (workers and device plugins). Four steps, one file each:
//! [`pods`] reads finished workers back into the record's status, [`record`] derives its spec
//! from the Modules, [`workers`] picks the worker pod each Module needs, [`labels`] the node
//! labels.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::core::v1::{Node, NodeSystemInfo, Pod},
    jiff::Timestamp,
};
use kmm_api::{
    Module,
    nmc::{ModuleConfig, ModuleItem, NodeModuleSpec, NodeModuleStatus, NodeModulesConfig},
};

pub use self::{
    labels::version_label_modules,
    record::{Mapping, module_entry},
    workers::backoff,
};
use crate::{reason::Reason, worker::run::Action};

pub mod decision;
pub mod labels;
pub mod pods;
pub mod record;
pub mod workers;

/// `(namespace, name)` of a Module.
pub type ModuleKey = (String, String);

/// Settings that shape the decisions.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Namespace kmm-spoke runs in.
    pub operator_namespace: String,
    /// Worker service account of Modules in the operator's namespace.
    pub operator_module_loader_sa: String,
    /// First retry delay after a failed worker pod; doubled per failure.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            operator_namespace: "kmm-operator-system".into(),
            operator_module_loader_sa: "kmm-operator-module-loader".into(),
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// A worker pod to start.
#[derive(Debug, Clone, PartialEq)]
pub struct PodPlan {
    pub action: Action,
    pub item: ModuleItem,
    pub config: ModuleConfig,
    pub attempt: u32,
    /// The previous attempt's reason, on a retry.
    pub last_failure: Option<String>,
}

/// A Kubernetes Event about the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEvent {
    pub warning: bool,
    pub reason: Reason,
    pub note: String,
    /// Published once while this key (a pod uid) keeps coming back in the node's passes, rather
    /// than on every pass: for a state that lasts, not for a step that happened.
    pub once_per: Option<String>,
}

/// What `apply` makes true for one node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeDesired {
    /// The record's spec (sorted by namespace, name).
    pub spec: Vec<NodeModuleSpec>,
    /// The record's status (sorted).
    pub status: Vec<NodeModuleStatus>,
    /// Worker pods to delete first, `(namespace, name)`.
    pub delete_pods: Vec<(String, String)>,
    /// The failed worker pods among `delete_pods`, with their action (counted once deleted).
    pub failed_pods: Vec<((String, String), Action)>,
    /// Worker pods to create after the deletions.
    pub create_pods: Vec<PodPlan>,
    /// Every node label kmm-spoke owns, with its value (anything else it owned goes).
    pub labels: BTreeMap<String, String>,
    /// Come back after this long even without a change (failed worker backoff).
    pub requeue_after: Option<Duration>,
    /// Events to publish on the node.
    pub events: Vec<NodeEvent>,
}

/// The observed state of one node.
#[derive(Debug, Clone, Copy)]
pub struct NodeObserved<'a> {
    pub node: &'a Node,
    pub nmc: Option<&'a NodeModulesConfig>,
    pub modules: &'a [Module],
    /// Pods on the node carrying the module-name label.
    pub pods: &'a [Pod],
    pub now: Timestamp,
}

impl NodeEvent {
    /// A Normal Event about a step that happened.
    pub fn normal(reason: Reason, note: String) -> Self {
        Self {
            warning: false,
            reason,
            note,
            once_per: None,
        }
    }

    /// A Warning Event about a step that happened.
    pub fn warning(reason: Reason, note: String) -> Self {
        Self {
            warning: true,
            ..Self::normal(reason, note)
        }
    }
}

/// One field of the node's system info, when the kubelet reported it.
fn node_info(node: &Node, field: impl Fn(&NodeSystemInfo) -> &str) -> Option<&str> {
    let info = node.status.as_ref()?.node_info.as_ref()?;
    Some(field(info)).filter(|v| !v.is_empty())
}

fn key_of(namespace: &str, name: &str) -> ModuleKey {
    (namespace.to_owned(), name.to_owned())
}

/// The sooner of an optional wait and another one.
fn earliest(wait: Option<Duration>, other: Duration) -> Option<Duration> {
    Some(wait.map_or(other, |w| w.min(other)))
}

/// The worker's action as a gerund, for notes.
fn doing(action: Action) -> &'static str {
    match action {
        Action::Load => "loading",
        Action::Unload => "unloading",
    }
}

/// Everything `apply` should do for one node.
pub fn desired(observed: NodeObserved<'_>, settings: &NodeSettings) -> NodeDesired {
    let NodeObserved {
        node,
        nmc,
        modules,
        pods,
        now,
    } = observed;
    let boot_id = node_info(node, |i| &i.boot_id);
    let mut status = record::current_status(nmc);
    let read = pods::read_back(node, pods, &mut status, boot_id, now);
    let spec = record::spec(
        node,
        node_info(node, |i| &i.kernel_version),
        modules,
        &record::current_spec(nmc),
        settings,
    );
    let plan = workers::workers(&spec, &mut status, &read.states, boot_id, now, settings);
    let node_labels = labels::node_labels(node, modules, pods, &spec, &status);

    let mut delete_pods = read.finished;
    delete_pods.extend(plan.delete_pods);
    let mut events = read.events;
    events.extend(plan.events);
    let requeue_after = [read.wait, plan.wait, node_labels.recheck]
        .into_iter()
        .flatten()
        .min();
    NodeDesired {
        spec: spec.into_values().collect(),
        status: status.into_values().collect(),
        delete_pods,
        failed_pods: plan.failed_pods,
        create_pods: plan.create_pods,
        labels: node_labels.labels,
        requeue_after,
        events,
    }
}

#[cfg(test)]
mod tests;
