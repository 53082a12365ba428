//! `Module` (`kmm.sigs.x-k8s.io/v1beta1`): what kernel module to load, where, and from which image.
//!
//! Field names, JSON shapes and defaults follow upstream KMM v1beta1 so that every Module YAML in the
//! user documentation is accepted unchanged. Validation that upstream did in its webhook is carried
//! here as CEL rules (`x-kubernetes-validations`) so that the API server enforces it without one.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{EnvVar, LocalObjectReference, ResourceRequirements, Toleration, Volume, VolumeMount},
        resource::v1::{DeviceClassConfiguration, DeviceSelector},
    },
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::schema::conditions;

/// Most kernel mappings one Module may carry. CEL rules iterate over the list, and the API server
/// refuses rules whose worst-case cost is unbounded; a cluster runs far fewer kernels than this.
pub const MAX_KERNEL_MAPPINGS: usize = 500;

/// Longest `containerImage` (before `${VAR}` substitution). A CEL rule searches the string for `:`
/// and `@` once per kernel mapping, and the API server prices that search by the longest string the
/// schema allows. A valid image reference is at most about 520 characters (repository name 255, tag
/// 128, a sha512 digest 135), so 8 KiB leaves room for any reference, variables included.
pub const MAX_IMAGE_LEN: usize = 8192;

/// Longest `modprobe.moduleName`. The kernel limits module names to 55 characters
/// (`MODULE_NAME_LEN`) and modprobe finds a module as the file `<name>.ko`, which a filesystem
/// limits to 255 bytes. Bounded because the NodeModulesConfig carries the rule comparing it with
/// `modulesLoadingOrder[0]` once per Module on the node.
pub const MAX_MODULE_NAME_LEN: usize = 255;

/// Desired state of a kernel module on the nodes that `selector` picks.
// Each printcolumn(...) repeats the same keys, which clippy reads as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kmm.sigs.x-k8s.io",
    version = "v1beta1",
    kind = "Module",
    namespaced,
    status = "ModuleStatus",
    derive = "Default",
    derive = "PartialEq",
    printcolumn(
        name = "Loaded",
        type_ = "integer",
        json_path = ".status.moduleLoader.availableNumber",
        description = "Nodes where the module is loaded with the desired configuration"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.moduleLoader.desiredNumber",
        description = "Nodes where the module should be loaded"
    ),
    printcolumn(
        name = "Plugin",
        type_ = "integer",
        json_path = ".status.devicePlugin.availableNumber",
        description = "Nodes running the device plugin",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("!(has(self.devicePlugin) && has(self.dra))")
    .message("spec.dra and spec.devicePlugin are mutually exclusive"))]
#[serde(rename_all = "camelCase")]
pub struct ModuleSpec {
    /// How the kernel module is loaded. Leave it out for a Module that only runs a device plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_loader: Option<ModuleLoaderSpec>,

    /// Device plugin DaemonSet to run on nodes where the module is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_plugin: Option<DevicePluginSpec>,

    /// Dynamic Resource Allocation driver to run on nodes where the module is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dra: Option<DraSpec>,

    /// Pull secret for the kernel module and device plugin images (in the Module's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_repo_secret: Option<LocalObjectReference>,

    /// Node labels that select the nodes to act on; `{}` selects every node.
    pub selector: BTreeMap<String, String>,

    /// Tolerations for the worker and device plugin pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// Change this number to make KMM check (and if needed rebuild) every image again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_rebuild_trigger_generation: Option<i64>,
}

/// How and from which image the kernel module is loaded.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModuleLoaderSpec {
    // no doc - it's in the struct.
    pub container: ModuleLoaderContainerSpec,

    /// Service account of the worker pods; defaults to the namespace's `default` account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

/// The kernel module image per kernel, and how modprobe runs it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("!(has(self.inTreeModulesToRemove) && has(self.inTreeModuleToRemove))")
        .message("inTreeModuleToRemove is deprecated and cannot be combined with inTreeModulesToRemove"),
    validation = Rule::new(
        "(has(self.containerImage) && self.containerImage != '') || self.kernelMappings.all(m, has(m.containerImage) && m.containerImage != '')"
    ).message("every kernel mapping needs a containerImage when the container-level containerImage is not set"),
    validation = Rule::new(
        "self.kernelMappings.all(m, !(has(m.sign) || has(self.sign)) || has(m.build) || has(self.build) || (has(m.sign) && has(m.sign.unsignedImage) && m.sign.unsignedImage != '') || (has(self.sign) && has(self.sign.unsignedImage) && self.sign.unsignedImage != ''))"
    ).message("sign needs an image to sign: set build (the built image is signed) or sign.unsignedImage"),
    validation = Rule::new(
        "self.kernelMappings.all(m, !(has(m.inTreeModulesToRemove) && has(self.inTreeModuleToRemove)) && !(has(m.inTreeModuleToRemove) && has(self.inTreeModulesToRemove)))"
    ).message("do not combine the deprecated inTreeModuleToRemove with inTreeModulesToRemove across the container and a kernel mapping")
)]
#[serde(rename_all = "camelCase")]
pub struct ModuleLoaderContainerSpec {
    /// modprobe settings; the same for every kernel.
    pub modprobe: ModprobeSpec,

    /// Pull policy of the kernel module image (`Always`, `IfNotPresent` or `Never`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Always", "IfNotPresent", "Never"]))]
    pub image_pull_policy: Option<String>,

    /// Default image for kernel mappings that set none. May use `${KERNEL_FULL_VERSION}` and the
    /// other substitution variables. At most 8192 characters, far more than any image reference
    /// needs (bounded so that the API server can price the tag-or-digest rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_IMAGE_LEN))]
    #[x_kube(validation = Rule::new("self == '' || self.contains(':') || self.contains('@')")
        .message("containerImage must carry a tag (':') or a digest ('@')"))]
    pub container_image: Option<String>,

    /// Module version for ordered upgrades; nodes load it only once labelled
    /// `kmm.node.kubernetes.io/version-module.<namespace>.<name>=<version>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 63),
        regex(pattern = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
    )]
    pub version: Option<String>,

    /// Default build for kernel mappings (merged with each mapping's own build).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,

    /// Default signing for kernel mappings (merged with each mapping's own sign).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign: Option<Sign>,

    /// TLS settings for the registry holding the kernel module images.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "registryTLS")]
    pub registry_tls: Option<TlsOptions>,

    /// In-tree modules to unload before loading this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub in_tree_modules_to_remove: Option<Vec<String>>,

    /// Deprecated: use inTreeModulesToRemove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_tree_module_to_remove: Option<String>,

    /// Which image serves which kernel; the first mapping that matches a node's kernel wins.
    #[schemars(length(min = 1, max = MAX_KERNEL_MAPPINGS))]
    pub kernel_mappings: Vec<KernelMapping>,
}

/// One kernel (literal) or family of kernels (regexp) and its image.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new(
        "(has(self.literal) && self.literal != '') != (has(self.regexp) && self.regexp != '')"
    ).message("set exactly one of literal and regexp"),
    validation = Rule::new("!(has(self.inTreeModulesToRemove) && has(self.inTreeModuleToRemove))")
        .message("inTreeModuleToRemove is deprecated and cannot be combined with inTreeModulesToRemove")
)]
#[serde(rename_all = "camelCase")]
pub struct KernelMapping {
    /// Image for the matching kernels; defaults to the container-level containerImage. At most 8192
    /// characters, far more than any image reference needs (bounded so that the API server can
    /// price the tag-or-digest rule, checked once per mapping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_IMAGE_LEN))]
    #[x_kube(validation = Rule::new("self == '' || self.contains(':') || self.contains('@')")
        .message("containerImage must carry a tag (':') or a digest ('@')"))]
    pub container_image: Option<String>,

    /// Kernel version this mapping matches exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<String>,

    /// Regular expression (RE2, unanchored) over kernel versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regexp: Option<String>,

    /// Build for this mapping, merged over the container-level build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,

    /// Signing for this mapping, merged over the container-level sign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign: Option<Sign>,

    /// Registry TLS settings for this mapping's image; replaces the container-level value.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "registryTLS")]
    pub registry_tls: Option<TlsOptions>,

    /// In-tree modules to unload first; replaces the container-level list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub in_tree_modules_to_remove: Option<Vec<String>>,

    /// Deprecated: use inTreeModulesToRemove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_tree_module_to_remove: Option<String>,
}

/// An in-cluster image build from a Dockerfile.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Build {
    /// ConfigMap holding the Dockerfile under the key `dockerfile`.
    pub dockerfile_config_map: LocalObjectReference,

    /// Extra `--build-arg`s. KMM sets KERNEL_VERSION, KERNEL_FULL_VERSION, MOD_NAME and MOD_NAMESPACE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_args: Option<Vec<BuildArg>>,

    /// Secrets mounted into the build under `/run/secrets/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<LocalObjectReference>>,

    /// TLS settings for the registry of the Dockerfile's base images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "baseImageRegistryTLS")]
    pub base_image_registry_tls: Option<TlsOptions>,

    /// Kept for compatibility with older KMM releases; has no effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kaniko_params: Option<KanikoParams>,

    /// Node labels the build pod must run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
}

/// A `--build-arg` name and value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct BuildArg {
    // no doc - the names say it.
    pub name: String,
    pub value: String,
}

/// Kaniko settings from older KMM releases.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct KanikoParams {
    /// Kaniko image tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// Secure Boot signing of the module files in an image.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Sign {
    /// Image holding the unsigned modules; ignored when the mapping also builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsigned_image: Option<String>,

    /// TLS settings for the registry of the unsigned image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "unsignedImageRegistryTLS")]
    pub unsigned_image_registry_tls: Option<TlsOptions>,

    /// Secret with the private signing key under the key `key`.
    pub key_secret: LocalObjectReference,

    /// Secret with the public certificate under the key `cert`.
    pub cert_secret: LocalObjectReference,

    /// Absolute paths (globs allowed) of the module files to sign, under modprobe.dirName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_to_sign: Option<Vec<String>>,
}

/// Registry TLS settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TlsOptions {
    /// Talk plain HTTP to the registry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,

    /// Use TLS but do not verify the registry's certificate.
    #[serde(
        default,
        skip_serializing_if = "std::ops::Not::not",
        rename = "insecureSkipTLSVerify"
    )]
    pub insecure_skip_tls_verify: bool,
}

fn default_dir_name() -> String {
    "/opt".to_owned()
}

/// How modprobe loads and unloads the module.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new(
        "has(self.moduleName) && self.moduleName != '' ? !(has(self.rawArgs) && ((has(self.rawArgs.load) && size(self.rawArgs.load) > 0) || (has(self.rawArgs.unload) && size(self.rawArgs.unload) > 0))) : (has(self.rawArgs) && has(self.rawArgs.load) && size(self.rawArgs.load) > 0 && has(self.rawArgs.unload) && size(self.rawArgs.unload) > 0)"
    ).message("set moduleName, or rawArgs with both load and unload (not both)"),
    validation = Rule::new(
        "!has(self.modulesLoadingOrder) || (has(self.moduleName) && size(self.modulesLoadingOrder) >= 2 && self.modulesLoadingOrder[0] == self.moduleName)"
    ).message("modulesLoadingOrder needs at least two modules and must start with moduleName")
)]
#[serde(rename_all = "camelCase")]
pub struct ModprobeSpec {
    /// Kernel module to load (as modprobe names it). At most 255 characters, the longest file name;
    /// the kernel itself allows 55.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_MODULE_NAME_LEN))]
    pub module_name: Option<String>,

    /// Module parameters, `key=value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Vec<String>>,

    /// Directory in the image holding `lib/modules/<kernel>`.
    #[serde(default = "default_dir_name")]
    #[schemars(extend("default" = "/opt"))]
    pub dir_name: String,

    /// Extra modprobe arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<ModprobeArgs>,

    /// Complete modprobe command lines, used instead of moduleName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_args: Option<ModprobeArgs>,

    /// Directory in the image whose files are copied to the node's firmware directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_path: Option<String>,

    /// Modules to load in this order (first is moduleName) and unload in reverse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub modules_loading_order: Option<Vec<String>>,
}

impl Default for ModprobeSpec {
    fn default() -> Self {
        Self {
            module_name: None,
            parameters: None,
            dir_name: default_dir_name(),
            args: None,
            raw_args: None,
            firmware_path: None,
            modules_loading_order: None,
        }
    }
}

/// modprobe arguments for loading and unloading.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ModprobeArgs {
    /// Arguments when loading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub load: Option<Vec<String>>,

    /// Arguments when unloading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub unload: Option<Vec<String>>,
}

/// A device plugin DaemonSet scheduled on nodes where the module is loaded.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DevicePluginSpec {
    // no doc - it's in the struct.
    pub container: DevicePluginContainerSpec,

    /// Container run before the device plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_container: Option<DevicePluginContainerSpec>,

    /// Service account of the device plugin pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Volumes for the device plugin pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Volume>>,

    /// Whether the pods mount the service account token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
}

/// A container of a device plugin or DRA driver pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DevicePluginContainerSpec {
    /// Container image.
    pub image: String,

    /// Entrypoint override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,

    /// Arguments to the entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,

    /// Environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,

    /// Image pull policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Always", "IfNotPresent", "Never"]))]
    pub image_pull_policy: Option<String>,

    /// Compute resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Volume mounts, added to the ones KMM sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Vec<VolumeMount>>,
}

/// A Dynamic Resource Allocation driver DaemonSet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DraSpec {
    // no doc - it's in the struct.
    pub container: DevicePluginContainerSpec,

    /// Container run before the driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_container: Option<DevicePluginContainerSpec>,

    /// Service account of the driver pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Volumes for the driver pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Volume>>,

    /// Whether the pods mount the service account token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,

    /// Name the driver registers with the kubelet.
    #[x_kube(validation = Rule::new("self != ''").message("driverName must not be empty"))]
    pub driver_name: String,

    /// DeviceClasses to create for this driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_classes: Option<Vec<DeviceClassSpec>>,
}

/// A cluster-scoped DeviceClass created for a DRA driver.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct DeviceClassSpec {
    /// DeviceClass name (DNS subdomain).
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"))]
    pub name: String,

    /// Device selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub selectors: Option<Vec<DeviceSelector>>,

    /// Driver configuration for the class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub config: Option<Vec<DeviceClassConfiguration>>,
}

/// Observed state of a Module.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModuleStatus {
    /// Kernel module loading across nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_loader: Option<DaemonSetStatus>,

    /// Device plugin pods across nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_plugin: Option<DaemonSetStatus>,

    /// DRA driver pods across nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dra: Option<DaemonSetStatus>,

    /// The imageRebuildTriggerGeneration last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_rebuild_trigger_generation: Option<i64>,

    /// Conditions reported by kmm-spoke (for example why a node could not load the module).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions")]
    pub conditions: Vec<Condition>,
}

/// Node counts for one kind of per-node workload. The name is upstream's; no DaemonSet loads modules.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSetStatus {
    /// Nodes matching the Module's selector.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nodes_matching_selector_number: i32,

    /// Nodes that should run it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub desired_number: i32,

    /// Nodes where it runs as desired.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub available_number: i32,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}
