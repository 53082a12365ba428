//! What `kmm-spoke worker load|unload --config <file>` does on a node (reference 3.4, 3.5).
//!
//! The worker needs no API access: it reads the [`ModuleConfig`] the controller wrote (YAML or
//! JSON), finds the module tree the init container copied under [`WorkerOptions::shared_root`],
//! and runs `modprobe`. Every path it touches is an option, so tests (and the VM tests) can point
//! it at a tree they built; `--dry-run` is passed on to every modprobe call.
//!
//! Load: unload the in-tree modules that exist on the host, copy the firmware (and optionally
//! point the kernel's firmware class path at it), then modprobe with the loading order as soft
//! dependencies. Unload: modprobe -r, then remove the firmware files it copied.

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::Command,
};

use kmm_api::nmc::ModuleConfig;
use thiserror::Error;

use super::{firmware, kernel_log::KernelLog, modprobe};

/// What the worker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Load,
    Unload,
}

/// Where the worker finds things; the defaults are the paths inside a worker pod.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The worker configuration file.
    pub config: PathBuf,
    /// The configuration itself (YAML or JSON); when set, `config` is not read.
    pub config_inline: Option<String>,
    /// Pass `--dry-run` to modprobe and change nothing on the host except in the given dirs.
    pub dry_run: bool,
    /// Directory the init container copied the image's module tree and firmware into.
    pub shared_root: PathBuf,
    /// Root of the host's module trees (`<root>/lib/modules/*`), searched for in-tree modules.
    pub host_root: PathBuf,
    /// Host firmware directory; required when the config sets `modprobe.firmwarePath`.
    pub firmware_host_path: Option<PathBuf>,
    /// File holding the kernel's firmware search path
    /// (`/sys/module/firmware_class/parameters/path`); written only when given.
    pub firmware_class_path_file: Option<PathBuf>,
    /// The modprobe binary.
    pub modprobe: PathBuf,
    /// Directory where the worker writes its modprobe configuration (softdeps).
    pub modprobe_conf_dir: PathBuf,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            config: PathBuf::from(CONFIG_PATH),
            config_inline: None,
            dry_run: false,
            shared_root: PathBuf::from(modprobe::SHARED_ROOT),
            host_root: PathBuf::from("/"),
            firmware_host_path: None,
            firmware_class_path_file: None,
            modprobe: PathBuf::from("modprobe"),
            modprobe_conf_dir: PathBuf::from("/run/kmm-worker/modprobe.d"),
        }
    }
}

/// Where worker pods mount the configuration file.
pub const CONFIG_PATH: &str = "/etc/kmm-worker/config.yaml";
/// Environment variable holding the configuration itself (worker pods set it; it wins over the
/// file).
pub const CONFIG_ENV: &str = "KMM_WORKER_CONFIG";

/// Why the worker failed; the `Display` text is the pod's one-line termination message.
#[derive(Debug, Error)]
pub enum WorkerError {
    #[error("reading the worker config {path}: {source}")]
    ReadConfig { path: PathBuf, source: io::Error },
    #[error("parsing the worker config {path}: {reason}")]
    ParseConfig { path: PathBuf, reason: String },
    #[error("refusing the worker config: {0}")]
    InvalidInput(#[from] super::input::InputError),
    #[error("modprobe.firmwarePath is set but the worker got no --firmware-host-path")]
    NoFirmwareHostPath,
    #[error("copying firmware from {from} to {to}: {source}")]
    CopyFirmware {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("setting the firmware class path in {path}: {source}")]
    FirmwareClassPath { path: PathBuf, source: io::Error },
    #[error("writing the modprobe softdep configuration in {path}: {source}")]
    SoftdepConf { path: PathBuf, source: io::Error },
    #[error("could not run {command}: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("{command} failed ({status}): {output}{}", kernel_suffix(kernel))]
    Modprobe {
        command: String,
        status: String,
        output: String,
        /// Kernel log lines written while it ran (the real cause modprobe only hints at).
        kernel: Vec<String>,
    },
}

fn kernel_suffix(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; kernel: {}", lines.join("; "))
    }
}

impl WorkerError {
    /// The termination message: one line, at most 1 KiB.
    pub fn termination_message(&self) -> String {
        kmm_api::text::fit(&self.to_string().replace(['\n', '\r'], " "), 1024)
    }
}

/// What the worker did, in order (for logs and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Each modprobe command line, as run.
    pub commands: Vec<String>,
    /// Everything modprobe printed (stdout then stderr per call).
    pub output: String,
    /// Firmware files copied (load) or removed (unload), relative to the firmware dir.
    pub firmware_files: Vec<PathBuf>,
}

/// Reads and parses a worker configuration file (strict: unknown keys are refused).
pub fn read_config(path: &Path) -> Result<ModuleConfig, WorkerError> {
    let text = fs::read_to_string(path).map_err(|source| WorkerError::ReadConfig {
        path: path.to_owned(),
        source,
    })?;
    parse_config(&text, path)
}

/// Parses a worker configuration (`origin` names where it came from, for errors).
pub fn parse_config(text: &str, origin: &Path) -> Result<ModuleConfig, WorkerError> {
    serde_saphyr::from_str(text).map_err(|e| WorkerError::ParseConfig {
        path: origin.to_owned(),
        reason: e.to_string().replace('\n', " "),
    })
}

/// Runs the worker.
pub fn run(action: Action, opts: &WorkerOptions) -> Result<Report, WorkerError> {
    let config = match &opts.config_inline {
        Some(text) => parse_config(text, Path::new(CONFIG_ENV))?,
        None => read_config(&opts.config)?,
    };
    // The controller checks this too; the record may have been written by someone else.
    super::input::check_config(&config)?;
    let mut report = Report::default();
    match action {
        Action::Load => load(&config, opts, &mut report)?,
        Action::Unload => unload(&config, opts, &mut report)?,
    }
    Ok(report)
}

fn load(config: &ModuleConfig, opts: &WorkerOptions, report: &mut Report) -> Result<(), WorkerError> {
    let in_tree: Vec<String> = match &config.in_tree_modules_to_remove {
        Some(list) => list.clone(),
        None => config.in_tree_module_to_remove.iter().cloned().collect(),
    };
    let present: Vec<String> = in_tree
        .into_iter()
        .filter(|name| host_has_module(&opts.host_root.join("lib/modules"), name))
        .collect();
    if let Some(args) = modprobe::in_tree_removal_args(&present) {
        let mut argv = dry_run_flag(opts);
        if opts.host_root != Path::new("/") {
            argv.extend(["-d".to_owned(), opts.host_root.display().to_string()]);
            argv.extend(["-S".to_owned(), config.kernel_version.clone()]);
        }
        argv.extend(args);
        run_modprobe(opts, argv, report)?;
    }
    firmware::install(config, opts, report)?;
    let args = modprobe::load_args_at(&config.modprobe, &shared_root(opts));
    let raw = config
        .modprobe
        .raw_args
        .as_ref()
        .is_some_and(|r| r.load.is_some());
    let argv = modprobe_argv(config, opts, args, raw)?;
    run_modprobe(opts, argv, report)
}

fn unload(config: &ModuleConfig, opts: &WorkerOptions, report: &mut Report) -> Result<(), WorkerError> {
    let args = modprobe::unload_args_at(&config.modprobe, &shared_root(opts));
    let raw = config
        .modprobe
        .raw_args
        .as_ref()
        .is_some_and(|r| r.unload.is_some());
    let argv = modprobe_argv(config, opts, args, raw)?;
    run_modprobe(opts, argv, report)?;
    firmware::remove(config, opts, report);
    Ok(())
}

fn shared_root(opts: &WorkerOptions) -> String {
    opts.shared_root.display().to_string()
}

fn dry_run_flag(opts: &WorkerOptions) -> Vec<String> {
    if opts.dry_run {
        vec!["--dry-run".to_owned()]
    } else {
        Vec::new()
    }
}

/// The full argv after `modprobe` for a load or unload: `--dry-run`, the softdep configuration,
/// the kernel (so the tree copied for `kernelVersion` is the one used), then `args`. Raw args
/// are the user's whole command line and only get `--dry-run`.
fn modprobe_argv(
    config: &ModuleConfig,
    opts: &WorkerOptions,
    args: Vec<String>,
    raw: bool,
) -> Result<Vec<String>, WorkerError> {
    let mut argv = dry_run_flag(opts);
    if !raw {
        let order = config
            .modprobe
            .modules_loading_order
            .as_deref()
            .unwrap_or_default();
        if order.len() >= 2 {
            let path = opts.modprobe_conf_dir.join("softdep.conf");
            fs::create_dir_all(&opts.modprobe_conf_dir)
                .and_then(|()| fs::write(&path, modprobe::softdep_conf(order)))
                .map_err(|source| WorkerError::SoftdepConf {
                    path: path.clone(),
                    source,
                })?;
            argv.extend(["-C".to_owned(), opts.modprobe_conf_dir.display().to_string()]);
        }
        argv.extend(["-S".to_owned(), config.kernel_version.clone()]);
    }
    argv.extend(args);
    Ok(argv)
}

fn run_modprobe(opts: &WorkerOptions, argv: Vec<String>, report: &mut Report) -> Result<(), WorkerError> {
    let command = std::iter::once(opts.modprobe.display().to_string())
        .chain(argv.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    println!("running {command}");
    let kernel_log = KernelLog::start();
    let out = Command::new(&opts.modprobe)
        .args(&argv)
        .output()
        .map_err(|source| WorkerError::Spawn {
            command: command.clone(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stdout.lines() {
        println!("modprobe: {line}");
    }
    for line in stderr.lines() {
        eprintln!("modprobe: {line}");
    }
    report.output.push_str(&stdout);
    report.output.push_str(&stderr);
    report.commands.push(command.clone());
    if out.status.success() {
        return Ok(());
    }
    let last = |text: &str| {
        text.lines()
            .rfind(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_owned())
    };
    let output = last(&stderr)
        .or_else(|| last(&stdout))
        .unwrap_or_else(|| "no output".to_owned());
    let kernel = kernel_log.lines_since();
    for line in &kernel {
        eprintln!("kernel: {line}");
    }
    Err(WorkerError::Modprobe {
        command,
        status: out.status.to_string(),
        output,
        kernel,
    })
}

/// Whether any kernel tree under `modules_dir` holds a file named `<name>.ko*` (upstream matches
/// the prefix `<name>.ko`, so compressed modules count). Unreadable dirs count as "not there".
fn host_has_module(modules_dir: &Path, name: &str) -> bool {
    let prefix = format!("{name}.ko");
    let alt = format!("{}.ko", name.replace('_', "-"));
    let mut stack = vec![modules_dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                stack.push(path);
            } else {
                let file = entry.file_name();
                let file = file.to_string_lossy();
                if file.starts_with(&prefix) || file.starts_with(&alt) {
                    return true;
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn termination_message_is_one_bounded_line() {
        let err = WorkerError::Modprobe {
            command: "modprobe x".into(),
            status: "exit status: 1".into(),
            output: format!("line1\nline2{}", "é".repeat(2000)),
            kernel: Vec::new(),
        };
        let msg = err.termination_message();
        assert!(!msg.contains('\n'));
        assert!(msg.len() <= 1024);
        assert!(msg.starts_with("modprobe x failed (exit status: 1): line1 line2"));
    }

    #[test]
    fn the_kernels_lines_follow_modprobes_reason() {
        let err = WorkerError::Modprobe {
            command: "modprobe -vd /tmp/opt kmm_fw".into(),
            status: "exit status: 1".into(),
            output: "modprobe: ERROR: could not insert 'kmm_fw': Unknown symbol in module, or unknown parameter (see dmesg)".into(),
            kernel: vec![
                "kmm_fw: Direct firmware load for kmm/fw.bin failed with error -2".into(),
                "Loading of unsigned module is rejected".into(),
            ],
        };
        assert_eq!(
            err.termination_message(),
            "modprobe -vd /tmp/opt kmm_fw failed (exit status: 1): modprobe: ERROR: could not insert \
             'kmm_fw': Unknown symbol in module, or unknown parameter (see dmesg); kernel: kmm_fw: \
             Direct firmware load for kmm/fw.bin failed with error -2; Loading of unsigned module is rejected"
        );
    }

    #[test]
    fn finds_in_tree_modules_by_prefix_in_any_kernel_tree() {
        let dir = tempfile::tempdir().unwrap();
        let kdir = dir.path().join("6.1.0/kernel/drivers");
        fs::create_dir_all(&kdir).unwrap();
        fs::write(kdir.join("ice.ko.xz"), b"").unwrap();
        fs::write(kdir.join("mlx5-core.ko"), b"").unwrap();
        assert!(host_has_module(dir.path(), "ice"));
        assert!(host_has_module(dir.path(), "mlx5_core"));
        assert!(!host_has_module(dir.path(), "igb"));
        assert!(!host_has_module(&dir.path().join("missing"), "ice"));
    }

    #[test]
    fn config_with_unknown_keys_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        fs::write(
            &path,
            "kernelVersion: k\ncontainerImage: i@sha256:0\nmodprobe: {moduleName: m}\nbogus: 1\n",
        )
        .unwrap();
        let err = read_config(&path).unwrap_err();
        assert!(matches!(err, WorkerError::ParseConfig { .. }), "{err}");
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
