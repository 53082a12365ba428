//! `ManagedClusterModule` (`hub.kmm.sigs.x-k8s.io/v1beta1`): one Module spec for every selected
//! cluster of an Open Cluster Management fleet.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::{labels::MAX_NAMESPACE_AND_NAME_LEN, module::ModuleSpec, schema::conditions};

/// A Module to deliver to every ManagedCluster that `selector` picks.
// Each printcolumn(...) repeats the same keys, which clippy reads as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "hub.kmm.sigs.x-k8s.io",
    version = "v1beta1",
    kind = "ManagedClusterModule",
    shortname = "mcm",
    status = "ManagedClusterModuleStatus",
    derive = "Default",
    derive = "PartialEq",
    validation = Rule::new(
        "size(self.metadata.name) + size(self.spec.spokeNamespace) <= 41"
    ).message(Message::Expression(
        "'metadata.name and spec.spokeNamespace together must be at most 41 characters (they are ' + string(size(self.metadata.name) + size(self.spec.spokeNamespace)) + '), so that the node label keys written on the spokes fit'".into()
    )),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".status.numberDesired",
        description = "Clusters that should run the Module"),
    printcolumn(name = "Applied", type_ = "integer", json_path = ".status.numberApplied",
        description = "Clusters where the Module is applied"),
    printcolumn(name = "Degraded", type_ = "integer", json_path = ".status.numberDegraded",
        description = "Clusters where applying or loading fails"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterModuleSpec {
    /// The Module to create on each selected cluster (named like this object).
    pub module_spec: ModuleSpec,

    /// Namespace of the Module on the spoke clusters.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub spoke_namespace: String,

    /// ManagedCluster labels that select the clusters; `{}` selects every cluster.
    pub selector: BTreeMap<String, String>,
}

/// Fleet-wide state of a ManagedClusterModule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterModuleStatus {
    /// Clusters selected, each with a ManifestWork.
    #[serde(default)]
    pub number_desired: i32,

    /// Clusters whose ManifestWork is applied at its latest generation.
    #[serde(default)]
    pub number_applied: i32,

    /// Clusters where applying the Module or loading the kernel module fails.
    #[serde(default)]
    pub number_degraded: i32,

    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Fleet-wide conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions")]
    pub conditions: Vec<Condition>,

    /// Per-cluster detail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub clusters: Vec<ClusterModuleStatus>,
}

/// How one selected cluster is doing.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterModuleStatus {
    /// ManagedCluster name.
    pub name: String,

    /// One word: for example `Applied`, `Pending`, `Degraded`, `Unknown`.
    pub state: String,

    /// Machine-readable cause of the state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// What is wrong and how to fix it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// Kernel versions the cluster reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<String>,

    /// Nodes where the module should be loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_desired: Option<i64>,

    /// Nodes where the module is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_loaded: Option<i64>,
}

/// Longest `metadata.name` + `spec.spokeNamespace` (see [`crate::labels`]).
pub const MAX_NAME_AND_SPOKE_NAMESPACE_LEN: usize = MAX_NAMESPACE_AND_NAME_LEN;
