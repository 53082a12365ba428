//! `ManagedClusterPreflight` (`hub.kmm.sigs.x-k8s.io/v1beta1`): before the fleet (or part of it)
//! moves to new kernels, check every ManagedClusterModule that selects those clusters against
//! them, and have the hub build and sign missing images ahead. The fleet counterpart of upstream
//! KMM's `PreflightValidation` (v1beta2), whose field names it keeps where they carry over.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Most kernels one preflight checks: each may cost a registry lookup and a build per MCM.
pub const MAX_PREFLIGHT_KERNELS: usize = 16;

/// Most (MCM, kernel) entries the status lists; the rest are counted in `modulesOmitted`.
pub const MAX_PREFLIGHT_ENTRIES: usize = 512;

/// The ManagedClusterPreflight the hub keeps for the next kernels the clusters claim (the
/// `next-kernel-versions` ClusterClaim): created while some cluster an MCM selects announces a
/// kernel, deleted when none does. Users read it; its spec is the hub's.
pub const NEXT_KERNELS_PREFLIGHT: &str = "fleet-next-kernels";

/// Label on the generated preflight (value [`GENERATED_FROM_NEXT_KERNELS`]); a preflight without
/// it is a user's, which the hub never rewrites or deletes.
pub const GENERATED_LABEL: &str = "hub.kmm.sigs.x-k8s.io/generated-from";

/// Value of [`GENERATED_LABEL`] on the next-kernel preflight.
pub const GENERATED_FROM_NEXT_KERNELS: &str = "next-kernel-claims";

/// Most entries of `status.claimIssues`.
pub const MAX_CLAIM_ISSUES: usize = 16;

/// Kernels to check the ManagedClusterModules of some clusters against.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "hub.kmm.sigs.x-k8s.io",
    version = "v1beta1",
    kind = "ManagedClusterPreflight",
    shortname = "mcpf",
    status = "ManagedClusterPreflightStatus",
    derive = "Default",
    derive = "PartialEq",
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.numberReady",
        description = "(MCM, kernel) pairs whose image exists"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.numberFailed",
        description = "(MCM, kernel) pairs that cannot be made ready"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterPreflightSpec {
    /// Kernel versions the clusters move to, as `uname -r` prints them.
    #[schemars(length(min = 1, max = 16))]
    pub kernel_versions: Vec<String>,

    /// ManagedCluster labels that pick the clusters moving; absent or `{}` picks every cluster.
    /// Every ManagedClusterModule selecting at least one of them is checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_selector: Option<BTreeMap<String, String>>,

    /// Push what the preflight builds and signs, so the rollout of these kernels finds the
    /// images and starts no Job. When false a build only proves that the module compiles.
    #[serde(default)]
    pub push_built_image: bool,
}

/// The answer, per (ManagedClusterModule, kernel).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterPreflightStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Entries whose status is `Success`.
    #[serde(default)]
    pub number_ready: i32,

    /// Entries whose status is `Failure`.
    #[serde(default)]
    pub number_failed: i32,

    /// One entry per ManagedClusterModule and kernel, by MCM name then kernel; at most 512.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into(), "kernelVersion".into()]))]
    #[schemars(length(max = 512))]
    pub modules: Vec<PreflightModuleStatus>,

    /// Entries not listed in `modules`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub modules_omitted: i32,

    /// Generated preflight only: next-kernel claims the hub refused or cut (a line that is not a
    /// kernel, more kernels than a cluster or the fleet may ask for); at most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub claim_issues: Vec<String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// Where one ManagedClusterModule stands for one kernel.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PreflightModuleStatus {
    /// The ManagedClusterModule's name.
    pub name: String,

    /// The kernel version checked.
    pub kernel_version: String,

    /// `Success` (the image exists, or the build proved it compiles), `Failure` or `InProgress`.
    #[schemars(extend("enum" = ["Success", "Failure", "InProgress"]))]
    pub verification_status: String,

    /// How far it got: `Image` (finding the image), `Build`, `Sign`, `Done`.
    #[schemars(extend("enum" = ["Image", "Build", "Sign", "Done"]))]
    pub verification_stage: String,

    /// Why, in a sentence.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_reason: String,

    /// The image pinned by digest, once it exists.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,

    /// When `verificationStatus` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

/// `verificationStatus` values.
pub mod verification_status {
    pub const SUCCESS: &str = "Success";
    pub const FAILURE: &str = "Failure";
    pub const IN_PROGRESS: &str = "InProgress";
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    #[test]
    fn the_crd_is_cluster_scoped_with_upstream_field_names() {
        let crd = ManagedClusterPreflight::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("managedclusterpreflights.hub.kmm.sigs.x-k8s.io")
        );
        let yaml = serde_json::to_string(&crd).unwrap();
        for field in [
            "kernelVersions",
            "clusterSelector",
            "pushBuiltImage",
            "verificationStatus",
            "verificationStage",
            "statusReason",
        ] {
            assert!(yaml.contains(field), "{field}");
        }
    }

    #[test]
    fn the_committed_manifest_is_what_the_types_render() {
        let crd = ManagedClusterPreflight::crd();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../manifests/crds")
            .join(crate::crds::file_name(&crd));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            committed,
            crate::crds::to_yaml(&crd).unwrap(),
            "{} is stale: run `just gen`",
            path.display()
        );
    }

    #[test]
    fn a_minimal_object_reads_with_defaults() {
        let pf: ManagedClusterPreflight = serde_json::from_value(serde_json::json!({
            "apiVersion": "hub.kmm.sigs.x-k8s.io/v1beta1",
            "kind": "ManagedClusterPreflight",
            "metadata": {"name": "next"},
            "spec": {"kernelVersions": ["6.1.0-22-amd64"]}
        }))
        .unwrap();
        assert!(!pf.spec.push_built_image);
        assert_eq!(pf.spec.cluster_selector, None);
    }
}
