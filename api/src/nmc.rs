//! `NodeModulesConfig` (`kmm.sigs.x-k8s.io/v1beta1`, cluster-scoped, one per node, named like the
//! node): kmm-spoke's durable record of which modules should be loaded on a node (spec) and which
//! are (status), so a module can be unloaded even after its Module is gone or the spoke restarted.

use k8s_openapi::{
    api::core::v1::{LocalObjectReference, Toleration},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::module::ModprobeSpec;

/// Most entries in `spec.modules` and in `status.modules`: one per Module that targets the node. A
/// node loads a few hundred kernel modules in all, nearly all of them in-tree, so no node runs
/// this many Modules. Bounded because the CEL rules on each entry's `modprobe` run once per entry,
/// and the API server refuses them when the list is unbounded.
pub const MAX_MODULES_PER_NODE: usize = 1024;

/// Modules that should be loaded on one node.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kmm.sigs.x-k8s.io",
    version = "v1beta1",
    kind = "NodeModulesConfig",
    shortname = "nmc",
    status = "NodeModulesConfigStatus",
    derive = "Default",
    derive = "PartialEq",
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct NodeModulesConfigSpec {
    /// One entry per Module that targets this node; at most 1024.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["namespace".into(), "name".into()]))]
    #[schemars(length(max = MAX_MODULES_PER_NODE))]
    pub modules: Vec<NodeModuleSpec>,
}

/// Which Module an entry belongs to and how its worker pods run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModuleItem {
    /// Module name.
    pub name: String,
    /// Module namespace.
    pub namespace: String,
    /// Service account of the worker pods.
    pub service_account_name: String,
    /// Pull secret for the kernel module image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_repo_secret: Option<LocalObjectReference>,
    /// Tolerations of the worker pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Module version (ordered upgrade).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Desired module on the node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeModuleSpec {
    #[serde(flatten)]
    pub item: ModuleItem,
    /// What the worker loads.
    pub config: ModuleConfig,
}

/// Observed module on the node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeModuleStatus {
    #[serde(flatten)]
    pub item: ModuleItem,
    /// The configuration last loaded successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ModuleConfig>,
    /// Boot ID of the node when it was loaded; a new boot means it must be loaded again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// When the entry last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

/// Modules loaded on the node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeModulesConfigStatus {
    /// One entry per module kmm-spoke loaded and has not unloaded yet; at most 1024.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["namespace".into(), "name".into()]))]
    #[schemars(length(max = MAX_MODULES_PER_NODE))]
    pub modules: Vec<NodeModuleStatus>,
}

/// What a worker loads: also the worker's configuration file format.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModuleConfig {
    /// Kernel version of the node.
    pub kernel_version: String,
    /// Kernel module image for that kernel.
    pub container_image: String,
    /// Pull the image over plain HTTP or without verifying TLS.
    #[serde(default)]
    pub insecure_pull: bool,
    /// modprobe settings.
    pub modprobe: ModprobeSpec,
    /// Pull policy of the image.
    #[serde(default = "default_pull_policy")]
    #[schemars(extend("default" = "IfNotPresent"))]
    pub image_pull_policy: String,
    /// In-tree modules to unload first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_tree_modules_to_remove: Option<Vec<String>>,
    /// Deprecated single in-tree module to unload first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_tree_module_to_remove: Option<String>,
}

fn default_pull_policy() -> String {
    "IfNotPresent".to_owned()
}
