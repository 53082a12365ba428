//! `ManagedClusterModule` (`hub.kmm.sigs.x-k8s.io/v1beta1`): one Module spec for every selected
//! cluster of an Open Cluster Management fleet.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::{apis::meta::v1::Condition, util::intstr::IntOrString};
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
    // The message uses `format` rather than `+ string(...)`: the API server's cost estimator cannot
    // bound the length of `string(int)`, so a concatenation with it is refused as too costly.
    validation = Rule::new(
        "size(self.metadata.name) + size(self.spec.spokeNamespace) <= 41"
    ).message(Message::Expression(
        "'metadata.name and spec.spokeNamespace together must be at most 41 characters (they are %d), so that the node label keys written on the spokes fit'.format([size(self.metadata.name) + size(self.spec.spokeNamespace)])".into()
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

    /// How a change of the Module reaches the clusters: `All` at once (the default) or
    /// `Progressive` in waves, canaries first. OCM's rollout vocabulary; see docs/rollout.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_strategy: Option<RolloutStrategy>,
}

/// Fleet-wide state of a ManagedClusterModule. It stays small at any fleet size: counts, a
/// per-kernel summary and a bounded list of the clusters that need attention. Per-cluster detail
/// lives on each cluster's ManifestWork (see `kmm-hub status`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterModuleStatus {
    /// Clusters the selector picks.
    #[serde(default)]
    pub number_desired: i32,

    /// Clusters whose ManifestWork is applied at its latest generation.
    #[serde(default)]
    pub number_applied: i32,

    /// Clusters where applying the Module or loading the kernel module fails.
    #[serde(default)]
    pub number_degraded: i32,

    /// Clusters the hub cannot render a Module for yet (no kernel claim, no mapping, image missing,
    /// registry error); see `problems`.
    #[serde(default)]
    pub number_blocked: i32,

    /// Nodes, over all clusters, where the module should be loaded (from the spokes' feedback).
    #[serde(default)]
    pub nodes_desired: i64,

    /// Nodes, over all clusters, where the module is loaded.
    #[serde(default)]
    pub nodes_loaded: i64,

    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Fleet-wide conditions: `Ready`, `Progressing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions")]
    pub conditions: Vec<Condition>,

    /// One entry per kernel version seen in the selected clusters, the kernels run by the most
    /// clusters first (then by name); at most 256.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["kernel".into()]))]
    #[schemars(length(max = 256))]
    pub kernels: Vec<KernelSummary>,

    /// The first clusters (by name) that are blocked or degraded, with why; at most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["cluster".into()]))]
    #[schemars(length(max = 20))]
    pub problems: Vec<ClusterProblem>,

    /// Blocked or degraded clusters not listed in `problems`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub problems_omitted: i32,

    /// Kernel versions not listed in `kernels` (each run by as few clusters as the last listed
    /// one, or fewer).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub kernels_omitted: i32,

    /// Where the rollout of the Module's latest revision stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,

    /// Per kernel seen in the selected clusters: whether its image existed when the first node
    /// reported it (built ahead, e.g. by a ManagedClusterPreflight) or had to be made after; at
    /// most 256, newest kernels first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["kernel".into()]))]
    #[schemars(length(max = 256))]
    pub kernel_readiness: Vec<KernelReadiness>,
}

/// Whether a kernel's image was there before the fleet needed it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KernelReadiness {
    /// Kernel version, as the nodes report it (trailing `+` trimmed).
    pub kernel: String,

    /// True when the image was pinned in the reconcile that first saw a node with this kernel.
    pub ready_before_first_node: bool,

    /// When the hub first saw a selected cluster report this kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// One kernel version of the fleet and what it gets.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KernelSummary {
    /// Kernel version, as the nodes report it (trailing `+` trimmed).
    pub kernel: String,

    /// Image shipped for it, pinned by digest; empty when it cannot be resolved.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,

    /// Selected clusters running this kernel on at least one node.
    #[serde(default)]
    pub clusters: i32,
}

/// A cluster that needs attention.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterProblem {
    /// ManagedCluster name.
    pub cluster: String,

    /// `Blocked` (the hub cannot render its Module), `Degraded` (the spoke fails) or
    /// `Unreachable` (OCM reports the cluster unavailable; its last feedback is not counted).
    pub state: String,

    /// Machine-readable cause, e.g. `NoKernelClaim`, `NoKernelMapping`, `ImageNotFound`,
    /// `RegistryError`, `ApplyFailed`, `LoadFailed` (the spoke's workers fail; see the message),
    /// `ClusterUnavailable`.
    pub reason: String,

    /// What is wrong and how to fix it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Longest `metadata.name` + `spec.spokeNamespace` (see [`crate::labels`]).
pub const MAX_NAME_AND_SPOKE_NAMESPACE_LEN: usize = MAX_NAMESPACE_AND_NAME_LEN;

/// `spec.rolloutStrategy`: OCM's rollout vocabulary applied to the clusters an MCM selects.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'Progressive' || !has(self.progressive)")
    .message("progressive settings need type: Progressive"))]
pub struct RolloutStrategy {
    /// `All` (every cluster at once) or `Progressive` (waves, canaries first).
    #[serde(default, rename = "type")]
    pub type_: RolloutType,

    /// Settings of a `Progressive` rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progressive: Option<ProgressiveRollout>,

    /// Stop moving clusters to the new revision (those moved keep it); unset it to go on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

/// The rollout types kmm-fleet offers (OCM's `ProgressivePerGroup` has no placement groups here).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RolloutType {
    #[default]
    All,
    Progressive,
}

/// Waves of at most `maxConcurrency` clusters; each moves on once the previous one succeeded.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProgressiveRollout {
    /// Clusters moving at once: a count or a percentage of the selected clusters (rounded down,
    /// at least 1). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::mcm::int_or_percent")]
    pub max_concurrency: Option<IntOrString>,

    /// How long a cluster must stay loaded before it counts as succeeded (`90s`, `5m`, `1h`).
    /// Default `0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+[hms]|0)$"))]
    pub min_success_time: Option<String>,

    /// How long a moved cluster may take to load before it counts as failed; `None` (the
    /// default) waits for ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+[hms]|None)$"))]
    pub progress_deadline: Option<String>,

    /// Failed clusters tolerated before the rollout halts: a count or a percentage of the
    /// selected clusters. Default 0: the first failure halts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::mcm::int_or_percent")]
    pub max_failures: Option<IntOrString>,

    /// Clusters that take the new revision first, before any other moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryClusters>,
}

/// The canary clusters of a progressive rollout.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CanaryClusters {
    /// ManagedCluster labels that pick the canaries among the selected clusters.
    pub cluster_selector: BTreeMap<String, String>,
}

/// `status.rollout`: counts of the selected clusters against the target revision.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Revision (content hash of the Module) the rollout moves the clusters to.
    #[serde(default)]
    pub target_revision: String,

    /// Revision the clusters not yet moved stay on; empty when there is none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub previous_revision: String,

    /// Clusters at the target revision and succeeded.
    #[serde(default)]
    pub updated: i32,

    /// Clusters moved to the target revision and not yet succeeded.
    #[serde(default)]
    pub in_progress: i32,

    /// Clusters at the target revision that failed (LoadFailed, degraded, deadline passed).
    #[serde(default)]
    pub failed: i32,

    /// Clusters still waiting for their wave.
    #[serde(default)]
    pub pending: i32,

    /// Waves started so far for this target (the canary wave is wave 1 when there are canaries).
    #[serde(default)]
    pub wave: i32,

    /// `Progressing`, `Succeeded`, `Halted` or `Paused`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
}

/// A count or a percentage, as OCM spells it: `2`, `"2"`, `"25%"`.
pub fn int_or_percent(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "pattern": "^((100|[0-9]{1,2})%|[0-9]+)$",
        "x-kubernetes-int-or-string": true,
    })
}
