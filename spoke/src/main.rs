//! `kmm-spoke`: the spoke-side binary.

use std::{io::Write, path::PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use kmm_api::crds;

/// kmm-spoke loads kernel modules on the nodes of a managed cluster.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CRDs installed on each spoke cluster and the admission policy guarding Module names
    /// (YAML), or write one file each into --dir.
    Crds {
        /// Directory to write `<plural>.<group>.yaml` files into.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds { dir: None } => {
            let yaml = crds::to_yaml_stream(&crds::spoke_crds()).context("rendering the spoke CRDs")?;
            std::io::stdout()
                .write_all(yaml.as_bytes())
                .context("writing to stdout")?;
        }
        Command::Crds { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, yaml) in crds::files(&crds::spoke_crds()).context("rendering the spoke CRDs")? {
                let path = dir.join(name);
                std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            }
            let path = dir.join(crds::admission::FILE_NAME);
            let policy = crds::admission::to_yaml().context("rendering the admission policy")?;
            std::fs::write(&path, policy).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
