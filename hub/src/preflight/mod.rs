//! Kernel-upgrade preflight: before a fleet moves to a new kernel, would every
//! ManagedClusterModule find its image for it, and if not, what would the hub have to build or
//! sign first. [`verdict`] decides (pure, with the rollout's mapping and build planning);
//! `kmm-hub preflight` asks the registries and prints the answer.

pub mod command;
pub mod verdict;
