//! `kmm-spoke`: the spoke-side binary.

use std::io::Write;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// kmm-spoke loads kernel modules on the nodes of a managed cluster.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CRDs installed on each spoke cluster (YAML).
    Crds,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds => {
            let yaml = kmm_api::crds::to_yaml_stream(&kmm_api::crds::spoke_crds())
                .context("rendering the spoke CRDs")?;
            std::io::stdout().write_all(yaml.as_bytes()).context("writing to stdout")?;
        }
    }
    Ok(())
}
