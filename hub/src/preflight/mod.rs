//! Kernel-upgrade preflight: before a fleet moves to a new kernel, would every
//! ManagedClusterModule find its image for it, and if not, what would the hub have to build or
//! sign first. [`verdict`] decides (pure, with the rollout's mapping and build planning);
//! `kmm-hub preflight` asks the registries and prints the answer; [`controller`] answers a
//! ManagedClusterPreflight on the hub and makes the missing images with the rollout's Jobs;
//! [`readiness`] tells, per kernel, whether its image was there before the first node needed it;
//! [`next_kernels`] and [`generated`] preflight the kernels spokes announce before nodes boot them.

pub mod check_job;
pub mod command;
pub mod controller;
pub mod entries;
pub mod generated;
pub mod next_kernels;
pub mod readiness;
pub mod run;
pub mod verdict;
