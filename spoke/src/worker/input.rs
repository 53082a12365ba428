//! What a worker configuration may hold before anything reaches a node.
//!
//! The worker writes module names into a modprobe configuration file (one directive per line),
//! passes them to modprobe as arguments, and copies paths of the image into the shared root and
//! the host. So a module name is a bare kernel module name (a newline would add a directive, a
//! leading `-` an option), paths are plain (no `..`, no characters a shell or a
//! config line gives meaning to), and the kernel follows the shared kernel grammar. Checked by
//! the controller (no record entry, a Module condition) and again by the worker (it refuses to
//! run), since the record can be written by anyone with rights on NodeModulesConfig.

use kmm_api::{kernel::grammar::check_kernel, module::ModprobeSpec, nmc::ModuleConfig};
use thiserror::Error;

/// Longest path accepted for `dirName` and `firmwarePath` (the kernel's `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest module name: the kernel keeps 55 characters; modprobe maps `-` to `_` in them.
pub const MAX_MODULE_NAME_LEN: usize = 55;

/// Why a worker configuration is refused; names the field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field} {problem}")]
pub struct InputError {
    pub field: String,
    pub problem: String,
}

fn refuse(field: impl Into<String>, problem: impl Into<String>) -> InputError {
    InputError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Checks the parts of a Module's `modprobe` settings that the worker writes or copies.
pub fn check_modprobe(modprobe: &ModprobeSpec) -> Result<(), InputError> {
    if let Some(name) = &modprobe.module_name {
        check_module_name("modprobe.moduleName", name)?;
    }
    for (i, name) in modprobe.modules_loading_order.iter().flatten().enumerate() {
        check_module_name(&format!("modprobe.modulesLoadingOrder[{i}]"), name)?;
    }
    check_path("modprobe.dirName", &modprobe.dir_name)?;
    if let Some(firmware) = modprobe.firmware_path.as_deref().filter(|f| !f.is_empty()) {
        check_path("modprobe.firmwarePath", firmware)?;
    }
    Ok(())
}

/// Checks a whole worker configuration: the modprobe settings, the in-tree module names and the
/// kernel.
pub fn check_config(config: &ModuleConfig) -> Result<(), InputError> {
    check_kernel(&config.kernel_version).map_err(|e| refuse("kernelVersion", e.to_string()))?;
    check_modprobe(&config.modprobe)?;
    for (i, name) in config.in_tree_modules_to_remove.iter().flatten().enumerate() {
        check_module_name(&format!("inTreeModulesToRemove[{i}]"), name)?;
    }
    if let Some(name) = &config.in_tree_module_to_remove {
        check_module_name("inTreeModuleToRemove", name)?;
    }
    Ok(())
}

/// A kernel module name: ASCII letters, digits, `_` and `-`, not starting with `-`.
pub fn check_module_name(field: &str, name: &str) -> Result<(), InputError> {
    if name.is_empty() {
        return Err(refuse(field, "is empty"));
    }
    if name.len() > MAX_MODULE_NAME_LEN {
        return Err(refuse(
            field,
            format!(
                "is {} bytes long; a kernel module name has at most {MAX_MODULE_NAME_LEN}",
                name.len()
            ),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(refuse(
            field,
            format!("contains {bad:?}; a module name holds only ASCII letters, digits, '_' and '-'"),
        ));
    }
    if name.starts_with('-') {
        return Err(refuse(field, "starts with '-' (modprobe would read an option)"));
    }
    Ok(())
}

/// A path made of plain components: ASCII letters, digits, `.`, `_`, `-`, `+`, `@` and `/`,
/// with no `.` or `..` component, so it stays under whatever root it is joined to (a relative
/// path counts from `/`, as upstream's worker reads it).
pub fn check_path(field: &str, path: &str) -> Result<(), InputError> {
    if path.len() > MAX_PATH_LEN {
        return Err(refuse(field, format!("is longer than {MAX_PATH_LEN} bytes")));
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '@' | '/');
    if let Some(bad) = path.chars().find(|c| !plain(*c)) {
        return Err(refuse(
            field,
            format!(
                "contains {bad:?}; a path holds only ASCII letters, digits, '.', '_', '-', '+', '@' and '/'"
            ),
        ));
    }
    if path.split('/').any(|part| part == ".." || part == ".") {
        return Err(refuse(
            field,
            "has a '.' or '..' component; it must stay inside the image's tree",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    fn modprobe() -> ModprobeSpec {
        ModprobeSpec {
            module_name: Some("kmm_ci_a".into()),
            modules_loading_order: Some(vec!["kmm_ci_a".into(), "kmm-ci-b".into()]),
            dir_name: "/opt".into(),
            firmware_path: Some("/firmware/vendor_x".into()),
            ..Default::default()
        }
    }

    #[test]
    fn ordinary_settings_pass() {
        assert_eq!(check_modprobe(&modprobe()), Ok(()));
        let config = ModuleConfig {
            kernel_version: "5.14.0-70.el9.x86_64".into(),
            modprobe: modprobe(),
            in_tree_modules_to_remove: Some(vec!["ice".into()]),
            ..Default::default()
        };
        assert_eq!(check_config(&config), Ok(()));
    }

    #[rstest]
    #[case::newline_directive("b\ninstall kmm_ci_a /bin/sh -c id", "modprobe.modulesLoadingOrder[1]")]
    #[case::space("b c", "modprobe.modulesLoadingOrder[1]")]
    #[case::option("--config=/x", "modprobe.modulesLoadingOrder[1]")]
    #[case::empty("", "modprobe.modulesLoadingOrder[1]")]
    fn a_loading_order_entry_that_is_not_a_module_name_is_refused(#[case] entry: &str, #[case] field: &str) {
        let mut m = modprobe();
        m.modules_loading_order = Some(vec!["kmm_ci_a".into(), entry.into()]);
        assert_eq!(check_modprobe(&m).map_err(|e| e.field), Err(field.to_owned()));
    }

    #[rstest]
    #[case::dotdot("/../outside")]
    #[case::inner_dotdot("/firmware/../../etc")]
    #[case::command("/fw$(id)")]
    #[case::semicolon("/fw;reboot")]
    #[case::newline("/fw\n/x")]
    #[case::space("/fw x")]
    #[case::glob("/fw/*")]
    fn a_firmware_path_outside_the_tree_or_with_shell_text_is_refused(#[case] path: &str) {
        let mut m = modprobe();
        m.firmware_path = Some(path.into());
        let err = check_modprobe(&m).unwrap_err();
        assert_eq!(err.field, "modprobe.firmwarePath", "{err}");
        m.firmware_path = None;
        m.dir_name = path.into();
        assert_eq!(check_modprobe(&m).unwrap_err().field, "modprobe.dirName");
    }

    #[test]
    fn the_kernel_follows_the_shared_grammar_and_names_the_field() {
        let config = ModuleConfig {
            kernel_version: "6.1.0;id".into(),
            modprobe: modprobe(),
            ..Default::default()
        };
        let err = check_config(&config).unwrap_err();
        assert_eq!(err.field, "kernelVersion");
        assert!(err.to_string().contains("';'"), "{err}");
    }

    #[test]
    fn in_tree_names_are_module_names() {
        let config = ModuleConfig {
            kernel_version: "6.1.0".into(),
            modprobe: modprobe(),
            in_tree_module_to_remove: Some("-a".into()),
            ..Default::default()
        };
        assert_eq!(check_config(&config).unwrap_err().field, "inTreeModuleToRemove");
    }
}
