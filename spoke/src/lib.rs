//! kmm-spoke: the managed-mode Module controller and the node worker.
//!
//! - [`cli`]: the `kmm-spoke` subcommands.
//! - [`run`]: `kmm-spoke run`, which wires the controllers below together.
//! - [`node_controller`]: per node, the NodeModulesConfig record, worker pods and node labels.
//! - [`module_controller`]: per Module, finalizer, device plugin DaemonSets and status.
//! - [`kernel_claim`]: the kernel-versions ClusterClaim(s) from the Nodes.
//! - [`targeting`]: whether a Module belongs on a Node (both controllers ask).
//! - [`ordered_upgrade`]: the version-label action table for ordered upgrades (pure).
//! - [`worker`]: `kmm-spoke worker load|unload`, its modprobe command lines and its pod.
//! - [`policy`]: the governance Policy that installs the spoke, generated from `manifests/`.
//! - [`rbac`]: the API calls `run` makes, as data, and the RBAC rendered from them.
//! - [`health`]: `/healthz`, `/readyz` and `/metrics`.
//! - [`metrics`]: the Prometheus metrics.
//! - [`telemetry`]: structured logs.
//! - [`context`]: what the controllers share, and the Event helper.
//! - [`slim`]: what the Node and record caches keep of each object.
//! - [`error`]: why a reconcile fails, its reason and its retry.
//! - [`reason`]: every reason the spoke reports (Events, conditions, failed reconciles).

pub mod cli;
pub mod context;
pub mod error;
#[cfg(test)]
mod fixtures;
pub mod gather;
pub mod health;
pub mod kernel_claim;
pub mod metrics;
pub mod module_controller;
pub mod node_controller;
pub mod node_feed;
pub mod ordered_upgrade;
pub mod policy;
pub mod rbac;
pub mod reason;
pub mod run;
pub mod slim;
pub mod targeting;
pub use kmm_api::telemetry;
pub mod worker;
