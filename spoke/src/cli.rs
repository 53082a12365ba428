//! The `kmm-spoke` command line: its subcommands and what each runs.

use std::{io::Write, path::PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kmm_api::crds;

/// What the spoke's tests start in-process (kept under this path for them).
pub use crate::run::run_with;
use crate::{
    run::{self, RunArgs},
    worker::run::{self as worker, Action, WorkerOptions},
};

/// kmm-spoke loads kernel modules on the nodes of a managed cluster.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Print the CRDs installed on each spoke cluster and the admission policy guarding Module names
    /// (YAML), or write one file each into --dir.
    Crds {
        /// Directory to write `<plural>.<group>.yaml` files into.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print the RBAC `kmm-spoke run` needs (ClusterRole, binding) and the ClusterRole that lets
    /// OCM's work agent manage Modules (YAML), generated from the API calls it makes.
    Rbac {
        /// Namespace the spoke runs in.
        #[arg(long, default_value = crate::rbac::NAMESPACE)]
        namespace: String,
        /// The spoke's ServiceAccount.
        #[arg(long, default_value = crate::rbac::NAME)]
        service_account: String,
    },
    /// Write the governance Policies, Placement and bindings that install the spoke on managed
    /// clusters (policies/), generated from the spoke's kustomize base and CRDs.
    Policy {
        /// The manifests directory (with `spoke/` and `crds/`).
        #[arg(long, default_value = "manifests")]
        manifests: PathBuf,
        /// Directory to write into.
        #[arg(long, default_value = "policies")]
        out: PathBuf,
    },
    /// Load or unload a kernel module on this node (what worker pods run; needs no API access).
    Worker(WorkerArgs),
    /// Run the spoke controllers (managed mode only).
    Run(RunArgs),
    /// Write a support bundle of this cluster into a folder: Modules, NodeModulesConfigs, claims,
    /// nodes, worker and device-plugin pods with log tails, Events, configuration, versions;
    /// Secrets never, credentials redacted.
    Gather(crate::gather::GatherArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum WorkerAction {
    Load,
    Unload,
}

#[derive(Args)]
pub struct WorkerArgs {
    /// load or unload.
    action: WorkerAction,
    /// Worker configuration file (YAML or JSON, the format of a NodeModulesConfig entry's config).
    #[arg(long, default_value = worker::CONFIG_PATH)]
    config: PathBuf,
    /// The configuration itself; when set, --config is not read (worker pods set the env var).
    #[arg(long, env = worker::CONFIG_ENV, hide_env_values = true)]
    config_yaml: Option<String>,
    /// Pass --dry-run to every modprobe call.
    #[arg(long)]
    dry_run: bool,
    /// Directory the init container copied the image's files into.
    #[arg(long, default_value = crate::worker::modprobe::SHARED_ROOT)]
    shared_root: PathBuf,
    /// Root of the host's /lib/modules (in-tree modules are looked up there).
    #[arg(long, default_value = "/")]
    host_root: PathBuf,
    /// Host firmware directory (needed when the config sets modprobe.firmwarePath).
    #[arg(long)]
    firmware_host_path: Option<PathBuf>,
    /// Write the firmware host path into this file (the kernel's firmware class path) first.
    #[arg(long)]
    firmware_class_path_file: Option<PathBuf>,
    /// modprobe binary.
    #[arg(long, default_value = "modprobe")]
    modprobe: PathBuf,
    /// Directory for the modprobe configuration the worker writes (softdeps).
    #[arg(long, default_value = "/run/kmm-worker/modprobe.d")]
    modprobe_conf_dir: PathBuf,
    /// Where the one-line failure reason goes (the pod's termination message).
    #[arg(long, default_value = "/dev/termination-log")]
    termination_log: PathBuf,
}

fn run_worker(args: WorkerArgs) -> std::process::ExitCode {
    let action = match args.action {
        WorkerAction::Load => Action::Load,
        WorkerAction::Unload => Action::Unload,
    };
    let opts = WorkerOptions {
        config: args.config,
        config_inline: args.config_yaml.filter(|c| !c.trim().is_empty()),
        dry_run: args.dry_run,
        shared_root: args.shared_root,
        host_root: args.host_root,
        firmware_host_path: args.firmware_host_path,
        firmware_class_path_file: args.firmware_class_path_file,
        modprobe: args.modprobe,
        modprobe_conf_dir: args.modprobe_conf_dir,
    };
    match worker::run(action, &opts) {
        Ok(report) => {
            for file in &report.firmware_files {
                println!("firmware: {}", file.display());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            let message = err.termination_message();
            eprintln!("error: {message}");
            if let Err(e) = std::fs::write(&args.termination_log, format!("{message}\n")) {
                eprintln!("could not write {}: {e}", args.termination_log.display());
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the subcommand `cli` names.
pub fn execute(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Worker(args) => return Ok(run_worker(args)),
        Command::Run(args) => {
            crate::telemetry::init();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(run::run(args))?;
        }
        Command::Rbac {
            namespace,
            service_account,
        } => {
            std::io::stdout()
                .write_all(crate::rbac::render(&namespace, &service_account).as_bytes())
                .context("writing to stdout")?;
        }
        Command::Gather(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let (dir, failed) = runtime.block_on(crate::gather::gather(&args))?;
            println!(
                "wrote {} ({failed} entries could not be collected; see manifest.yaml)",
                dir.display()
            );
        }
        Command::Policy { manifests, out } => {
            crate::policy::write(&manifests, &out, &mut std::io::stdout())?;
        }
        Command::Crds { dir: None } => {
            std::io::stdout()
                .write_all(crds_stream()?.as_bytes())
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
    Ok(std::process::ExitCode::SUCCESS)
}

/// What `kmm-spoke crds` prints: the spoke's CRDs and the admission policy and binding that
/// `--dir` writes beside them, as one stream for `kubectl apply -f -`.
fn crds_stream() -> anyhow::Result<String> {
    let mut yaml = crds::to_yaml_stream(&crds::spoke_crds()).context("rendering the spoke CRDs")?;
    yaml.push_str(&crds::admission::documents().context("rendering the admission policy")?);
    Ok(yaml)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_on_stdout_hold_what_dir_writes() {
        let stream = crds_stream().unwrap();
        let kinds: Vec<String> = stream
            .split("\n---\n")
            .filter_map(|doc| {
                let doc: serde_json::Value = serde_saphyr::from_str(doc.trim_start_matches("---\n")).ok()?;
                Some(format!(
                    "{}/{}",
                    doc["kind"].as_str()?,
                    doc["metadata"]["name"].as_str()?
                ))
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "CustomResourceDefinition/modules.kmm.sigs.x-k8s.io",
                "CustomResourceDefinition/nodemodulesconfigs.kmm.sigs.x-k8s.io",
                "ValidatingAdmissionPolicy/kmm-module-name-length",
                "ValidatingAdmissionPolicyBinding/kmm-module-name-length",
            ]
        );
        let written = crds::admission::to_yaml().unwrap();
        assert!(stream.ends_with(written.trim_start_matches(crds::GENERATED_HEADER)));
    }
}
