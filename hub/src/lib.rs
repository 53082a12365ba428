//! kmm-hub: the hub-side library behind the `kmm-hub` binary.
//!
//! - [`lint`]: offline validation of Module and ManagedClusterModule YAML.
//! - [`cli`]: subcommands shared with `kmm-spoke` (writing CRDs).

pub mod cli;
pub mod lint;
