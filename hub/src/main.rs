//! `kmm-hub`: the hub-side binary.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use kmm_hub::cli;

/// kmm-hub turns ManagedClusterModules into Modules on every selected cluster of a fleet.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CRDs installed on the hub cluster (YAML), or write one file each into --dir.
    Crds {
        /// Directory to write `<plural>.<group>.yaml` files into.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Check Module and ManagedClusterModule YAML files; exit 1 when any has a problem.
    Lint {
        /// YAML files (several documents each are fine); `-` reads standard input.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<String>,
    },
}

fn main() -> anyhow::Result<ExitCode> {
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    match Cli::parse().command {
        Command::Crds { dir } => cli::write_crds(&kmm_api::crds::hub_crds(), dir.as_deref(), &mut out)?,
        Command::Lint { files } => {
            if !cli::lint_files(&files, &mut out, &mut err)? {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
