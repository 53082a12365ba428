//! `kmm-spoke`: the spoke-side binary; the subcommands are in [`kmm_spoke::cli`].

use clap::Parser;

fn main() -> anyhow::Result<std::process::ExitCode> {
    kmm_spoke::cli::execute(kmm_spoke::cli::Cli::parse())
}
