//! kmm-hub: the hub-side library behind the `kmm-hub` binary.
//!
//! - [`lint`]: offline validation of Module and ManagedClusterModule YAML.
//! - [`cli`]: subcommands shared with `kmm-spoke` (writing CRDs).
//! - [`mcm_controller`]: the ManagedClusterModule controller.
//! - [`registry`]: tag-to-digest resolution with a per-image cache.
//! - [`pull_secret`]: registry credentials from `imageRepoSecret`.
//! - [`run`]: `kmm-hub run` (controller, fleet caches, health and metrics server).
//! - [`sign`]: the pure-Rust kernel module signer, `sign-kmod` and `sign-image`.
//! - [`preflight`]: would every MCM find its image for a coming kernel (`kmm-hub preflight`).
//! - [`rbac`]: the API calls `run` makes, as data, and the RBAC rendered from them.
//! - [`leader`]: leader election with a Lease; [`metrics`]: Prometheus metrics.

pub mod cli;
pub mod day1;
pub mod gather;
pub mod leader;
pub mod lint;
pub mod mcm_controller;
pub mod metrics;
pub mod preflight;
pub mod pull_secret;
pub mod rbac;
pub mod reason;
pub mod registry;
pub mod render;
pub mod rollout;
pub mod run;
pub mod sign;

#[cfg(test)]
mod fixtures;
pub use kmm_api::telemetry;
