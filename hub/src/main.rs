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
    /// Print the RBAC `kmm-hub run` needs (ClusterRole, Roles, bindings; YAML), generated from the
    /// API calls it makes.
    Rbac {
        /// Namespace the hub runs in.
        #[arg(long, default_value = kmm_hub::rbac::NAME)]
        namespace: String,
        /// The hub's ServiceAccount.
        #[arg(long, default_value = kmm_hub::rbac::NAME)]
        service_account: String,
    },
    /// Run the ManagedClusterModule controller against the hub cluster (KUBECONFIG or in-cluster).
    Run(kmm_hub::run::RunArgs),
    /// Print the ManifestWorks the controller would write for an MCM and a set of ManagedClusters
    /// (multi-document YAML), for review; exit 1 when a selected cluster is blocked.
    Render(kmm_hub::render::RenderArgs),
    /// Check, before a kernel upgrade, that every ManagedClusterModule finds its image for each
    /// coming kernel (offline, registry lookups only); exit 0 when all are ready, 1 when not,
    /// 2 on bad input.
    Preflight(kmm_hub::preflight::command::PreflightArgs),
    /// Print every selected cluster of one or all ManagedClusterModules, with its state.
    Status {
        /// Only this ManagedClusterModule.
        mcm: Option<String>,
    },
    /// Check Module and ManagedClusterModule YAML files; exit 1 when any has a problem.
    Lint {
        /// YAML files (several documents each are fine); `-` reads standard input.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<String>,
    },
    /// Write a support bundle of the hub cluster into a folder: MCMs, ManifestWorks, ManagedClusters,
    /// Jobs, pods and log tails, Events, configuration, versions; Secrets never, credentials redacted.
    Gather(kmm_hub::gather::GatherArgs),
    /// Generate Day-1 loading for a kmod image: an OpenShift MachineConfig for a pool (printed),
    /// or with --out also the plain systemd unit and script for other distributions.
    Day1(kmm_hub::day1::Day1Args),
    /// Sign kernel modules in place, as the kernel's scripts/sign-file does.
    SignKmod(kmm_hub::sign::cli::SignKmodArgs),
    /// Sign the kernel modules of an image and push the result (what the sign Job runs);
    /// prints the pushed digest.
    SignImage(kmm_hub::sign::cli::SignImageArgs),
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    if let Command::Run(args) = cli.command {
        kmm_hub::telemetry::init();
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        runtime.block_on(kmm_hub::run::run(args))?;
        return Ok(ExitCode::SUCCESS);
    }
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    match cli.command {
        Command::Run(_) => {}
        Command::Render(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            if !runtime.block_on(kmm_hub::render::render(&args, &mut out, &mut err))? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Preflight(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            match runtime.block_on(kmm_hub::preflight::command::preflight(&args, &mut out, &mut err)) {
                Ok(true) => {}
                Ok(false) => return Ok(ExitCode::FAILURE),
                Err(e) => {
                    use std::io::Write as _;
                    writeln!(err, "error: {e:#}")?;
                    return Ok(ExitCode::from(2));
                }
            }
        }
        Command::Status { mcm } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(kmm_hub::render::status(mcm.as_deref(), &mut out))?;
            runtime.block_on(kmm_hub::preflight::readiness::print(mcm.as_deref(), &mut out))?;
        }
        Command::Rbac {
            namespace,
            service_account,
        } => {
            use std::io::Write as _;
            out.write_all(kmm_hub::rbac::render(&namespace, &service_account).as_bytes())?;
        }
        Command::Crds { dir } => {
            // The hub's own objects beyond the MCM: the preflight.
            let mut crds = kmm_api::crds::hub_crds();
            crds.push(<kmm_api::preflight::ManagedClusterPreflight as kube::CustomResourceExt>::crd());
            cli::write_crds(&crds, dir.as_deref(), &mut out)?
        }
        Command::Day1(args) => {
            if let Err(e) = kmm_hub::day1::day1(&args, &mut out) {
                use std::io::Write as _;
                writeln!(err, "error: {e:#}")?;
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::SignKmod(args) => {
            if !kmm_hub::sign::cli::sign_kmod(&args, &mut out, &mut err)? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::SignImage(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(kmm_hub::sign::cli::run_sign_image(&args, &mut out, &mut err))?;
        }
        Command::Gather(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            cli::report_gather(runtime.block_on(kmm_hub::gather::gather(&args))?, &mut out)?;
        }
        Command::Lint { files } => {
            if !cli::lint_files(&files, &mut out, &mut err)? {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
