//! kmm-hub: the hub-side library behind the `kmm-hub` binary.
//!
//! - [`lint`]: offline validation of Module and ManagedClusterModule YAML.
//! - [`cli`]: subcommands shared with `kmm-spoke` (writing CRDs).
//! - [`mcm_controller`]: the ManagedClusterModule controller (so far its pure rendering step).
//! - [`registry`]: tag-to-digest resolution with a per-image cache.
//! - [`pull_secret`]: registry credentials from `imageRepoSecret`.

pub mod cli;
pub mod lint;
pub mod mcm_controller;
pub mod pull_secret;
pub mod registry;
