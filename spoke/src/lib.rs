//! kmm-spoke: the managed-mode Module controller and the node worker (spoke issue).
//!
//! - [`kernel_claim`]: the kernel-versions ClusterClaim(s) computed from the Nodes (pure).
//! - [`module_controller`]: the Module controller's decisions (pure, so far).
//! - [`ordered_upgrade`]: the version-label action table for ordered upgrades (pure).
//! - [`worker`]: the node worker's modprobe command lines and files (pure, so far).

pub mod kernel_claim;
pub mod module_controller;
pub mod ordered_upgrade;
pub mod worker;
