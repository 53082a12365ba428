//! Day-1 module loading: a systemd unit and script that replace in-tree modules with an
//! out-of-tree one from a kmod image before the network starts, as an OpenShift MachineConfig
//! for a pool and as plain files for other distributions (`kmm-hub day1`). See docs/day1.md.
//!
//! The script is the same for every module (`load-module.sh`); the unit passes the choices in
//! its environment, so the file embedded in the MachineConfig and the plain file are one text.

pub mod machine_config;
pub mod unit;

use std::{io::Write, path::PathBuf};

use anyhow::Context;

/// The loading script, identical for every module (settings come from the unit).
pub const SCRIPT: &str = include_str!("load-module.sh");
/// Where the unit expects the script on the node.
pub const SCRIPT_PATH: &str = "/usr/local/bin/kmm-day1-load-module.sh";

/// What to load at boot, validated so every value is safe inside a unit's `Environment=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Day1 {
    /// The kmod image repository, without tag (the script appends `:$(uname -r)`).
    pub image: String,
    pub module: String,
    pub in_tree_remove: Vec<String>,
    /// Firmware directory inside the image, copied to the node's /var/lib/firmware.
    pub firmware_path: Option<String>,
    /// The MachineConfigPool role the MachineConfig is labelled for.
    pub pool: String,
}

/// Why the inputs cannot make a unit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Invalid {
    #[error("--image {0:?}: give the repository without tag or digest; the tag is the node's `uname -r`")]
    ImageHasTag(String),
    #[error(
        "--image {0:?}: not an image repository (lowercase letters, digits, '.', '_', '-', '/', a registry port)"
    )]
    Image(String),
    #[error("module name {0:?}: only letters, digits, '_' and '-'")]
    Module(String),
    #[error("--firmware-path {0:?}: an absolute path without spaces, quotes or '..'")]
    FirmwarePath(String),
    #[error("--pool {0:?}: a MachineConfigPool role (lowercase letters, digits, '-')")]
    Pool(String),
}

impl Day1 {
    /// Checks every value; the unit embeds them unquoted, so anything outside the safe
    /// characters is refused rather than escaped.
    pub fn validate(&self) -> Result<(), Invalid> {
        let last = self.image.rsplit('/').next().unwrap_or_default();
        if last.contains(':') || self.image.contains('@') {
            return Err(Invalid::ImageHasTag(self.image.clone()));
        }
        let repo_ok = !self.image.is_empty()
            && self
                .image
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:".contains(c));
        if !repo_ok || self.image.starts_with('/') || self.image.ends_with('/') {
            return Err(Invalid::Image(self.image.clone()));
        }
        for name in std::iter::once(&self.module).chain(&self.in_tree_remove) {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(Invalid::Module(name.clone()));
            }
        }
        if let Some(path) = &self.firmware_path {
            let ok = path.starts_with('/')
                && !path.split('/').any(|p| p == "..")
                && path
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
            if !ok {
                return Err(Invalid::FirmwarePath(path.clone()));
            }
        }
        let pool_ok = !self.pool.is_empty()
            && self.pool.len() <= 63
            && self
                .pool
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !pool_ok || self.pool.starts_with('-') || self.pool.ends_with('-') {
            return Err(Invalid::Pool(self.pool.clone()));
        }
        Ok(())
    }

    /// The unit's name: one unit per module, so several modules can be loaded on one node.
    pub fn unit_name(&self) -> String {
        format!("kmm-day1-{}.service", self.module.replace('_', "-"))
    }
}

/// `kmm-hub day1`: print the MachineConfig, or write it with the plain unit and script.
#[derive(Debug, clap::Args)]
pub struct Day1Args {
    /// The kmod image repository, without tag: the node pulls `<image>:$(uname -r)`.
    #[arg(long)]
    pub image: String,
    /// The out-of-tree module to load (from /opt/lib/modules/<kernel> of the image).
    #[arg(long)]
    pub module: String,
    /// In-tree modules to remove before the load (repeat or separate with commas).
    #[arg(long = "in-tree-remove", value_delimiter = ',')]
    pub in_tree_remove: Vec<String>,
    /// Firmware directory inside the image, copied to /var/lib/firmware on the node.
    #[arg(long)]
    pub firmware_path: Option<String>,
    /// The MachineConfigPool role (label `machineconfiguration.openshift.io/role`).
    #[arg(long, default_value = "worker")]
    pub pool: String,
    /// The MachineConfig's name (default `99-<pool>-kmm-day1-<module>`).
    #[arg(long)]
    pub name: Option<String>,
    /// Write `machineconfig.yaml`, the unit and the script into this directory instead of
    /// printing the MachineConfig.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `kmm-hub day1`.
pub fn day1(args: &Day1Args, out: &mut impl Write) -> anyhow::Result<()> {
    let spec = Day1 {
        image: args.image.clone(),
        module: args.module.clone(),
        in_tree_remove: args
            .in_tree_remove
            .iter()
            .filter(|m| !m.is_empty())
            .cloned()
            .collect(),
        firmware_path: args.firmware_path.clone().filter(|p| !p.is_empty()),
        pool: args.pool.clone(),
    };
    spec.validate()?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("99-{}-kmm-day1-{}", spec.pool, spec.module.replace('_', "-")));
    let yaml = machine_config::yaml(&spec, &name)?;
    let Some(dir) = &args.out else {
        out.write_all(yaml.as_bytes())?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = [
        ("machineconfig.yaml".to_owned(), yaml, 0o644),
        (spec.unit_name(), unit::unit(&spec), 0o644),
        ("kmm-day1-load-module.sh".to_owned(), SCRIPT.to_owned(), 0o755),
    ];
    for (file, text, mode) in files {
        let path = dir.join(&file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        set_mode(&path, mode)?;
        writeln!(out, "{}", path.display())?;
    }
    Ok(())
}

fn set_mode(path: &std::path::Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

#[cfg(test)]
pub(crate) fn example() -> Day1 {
    Day1 {
        image: "registry.example:5000/drivers/ice-kmod".into(),
        module: "ice_oot".into(),
        in_tree_remove: vec!["ice".into(), "irdma".into()],
        firmware_path: Some("/firmware".into()),
        pool: "sfc".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_refuses_tags_and_unsafe_values() {
        assert_eq!(example().validate(), Ok(()));
        let with = |f: fn(&mut Day1)| {
            let mut d = example();
            f(&mut d);
            d.validate()
        };
        assert!(matches!(
            with(|d| d.image.push_str(":6.1")),
            Err(Invalid::ImageHasTag(_))
        ));
        assert!(matches!(
            with(|d| d.image.push_str("@sha256:ab")),
            Err(Invalid::ImageHasTag(_))
        ));
        assert!(matches!(
            with(|d| d.image = "Bad Image".into()),
            Err(Invalid::Image(_))
        ));
        assert!(matches!(
            with(|d| d.module = "x;reboot".into()),
            Err(Invalid::Module(_))
        ));
        assert!(matches!(
            with(|d| d.in_tree_remove.push(String::new())),
            Err(Invalid::Module(_))
        ));
        assert!(matches!(
            with(|d| d.firmware_path = Some("fw".into())),
            Err(Invalid::FirmwarePath(_))
        ));
        assert!(matches!(
            with(|d| d.firmware_path = Some("/a/../etc".into())),
            Err(Invalid::FirmwarePath(_))
        ));
        assert!(matches!(
            with(|d| d.pool = "Worker".into()),
            Err(Invalid::Pool(_))
        ));
    }

    #[test]
    fn out_dir_holds_the_same_unit_and_script_as_the_machine_config() {
        let dir = tempfile::tempdir().unwrap();
        let args = Day1Args {
            image: "quay.io/acme/kmod".into(),
            module: "kmm_ci_a".into(),
            in_tree_remove: vec!["dummy".into()],
            firmware_path: None,
            pool: "worker".into(),
            name: None,
            out: Some(dir.path().to_owned()),
        };
        let mut printed = Vec::new();
        day1(&args, &mut printed).unwrap();
        assert_eq!(String::from_utf8(printed).unwrap().lines().count(), 3);
        let mc: serde_json::Value =
            serde_saphyr::from_str(&std::fs::read_to_string(dir.path().join("machineconfig.yaml")).unwrap())
                .unwrap();
        assert_eq!(mc["metadata"]["name"], "99-worker-kmm-day1-kmm-ci-a");
        let unit = std::fs::read_to_string(dir.path().join("kmm-day1-kmm-ci-a.service")).unwrap();
        assert_eq!(
            mc["spec"]["config"]["systemd"]["units"][0]["contents"],
            unit.as_str()
        );
        let script = dir.path().join("kmm-day1-load-module.sh");
        assert_eq!(std::fs::read_to_string(&script).unwrap(), SCRIPT);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&script).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }

    #[test]
    fn bad_input_is_an_error_not_output() {
        let args = Day1Args {
            image: "quay.io/acme/kmod:latest".into(),
            module: "m".into(),
            in_tree_remove: vec![],
            firmware_path: None,
            pool: "worker".into(),
            name: None,
            out: None,
        };
        let mut printed = Vec::new();
        let err = day1(&args, &mut printed).unwrap_err();
        assert!(err.to_string().contains("uname -r"), "{err}");
        assert!(printed.is_empty());
    }
}
