//! kmm-api: the types kmm-fleet reads and writes, and the pure decisions built on them.
//!
//! - [`module`], [`mcm`], [`nmc`]: the KMM v1beta1 custom resources.
//! - [`ocm`]: the subset of Open Cluster Management objects the hub and spoke use.
//! - [`kernel`]: kernel-mapping resolution and `${VAR}` substitution.
//! - [`labels`]: label keys the product writes, and the name-length limit they impose.
//! - [`claims`]: the kernel-versions ClusterClaim format shared by kmm-spoke and kmm-hub.
//! - [`trim`]: the Module a spoke receives (resolved, pinned, no build or sign).
//! - [`crds`]: every CRD this project ships, rendered from the types.
//!
//! No I/O lives here: the controllers in `kmm-hub` and `kmm-spoke` depend on this crate, never the
//! other way round.

pub mod claims;
pub mod crds;
pub mod event_note;
#[cfg(feature = "runtime")]
pub mod gather;
pub mod image;
pub mod kernel;
pub mod labels;
pub mod mcm;
pub mod module;
pub mod nmc;
pub mod ocm;
pub mod pod_failure;
pub mod preflight;
mod schema;
#[cfg(feature = "runtime")]
pub mod startup;
#[cfg(feature = "telemetry")]
pub mod telemetry;
pub mod text;
pub mod trim;

pub use mcm::{
    ClusterProblem, KernelSummary, ManagedClusterModule, ManagedClusterModuleSpec, ManagedClusterModuleStatus,
};
pub use module::{Module, ModuleSpec, ModuleStatus};
pub use nmc::NodeModulesConfig;
