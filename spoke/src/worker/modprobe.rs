//! modprobe command lines and files of the worker, as upstream's worker builds them.
//!
//! The kmod image's `<dirName>/lib/modules/<kernel>` is copied by the pod's init container into
//! a shared directory mounted at [`SHARED_ROOT`], so modprobe runs with `-d /tmp<dirName>`.

use kmm_api::module::ModprobeSpec;

/// Where the init container copies the image's module tree (and firmware) for the worker.
pub const SHARED_ROOT: &str = "/tmp";

/// `modprobe` arguments that load the module.
pub fn load_args(modprobe: &ModprobeSpec) -> Vec<String> {
    load_args_at(modprobe, SHARED_ROOT)
}

/// [`load_args`] with the module tree copied under `shared_root` instead of [`SHARED_ROOT`].
pub fn load_args_at(modprobe: &ModprobeSpec, shared_root: &str) -> Vec<String> {
    if let Some(raw) = modprobe.raw_args.as_ref().and_then(|r| r.load.as_ref()) {
        return raw.clone();
    }
    let mut args = vec!["-vd".to_owned(), module_root(modprobe, shared_root)];
    args.extend(
        modprobe
            .args
            .as_ref()
            .and_then(|a| a.load.clone())
            .unwrap_or_default(),
    );
    args.extend(modprobe.module_name.clone());
    args.extend(modprobe.parameters.clone().unwrap_or_default());
    args
}

/// `modprobe` arguments that unload the module (and, with a loading order, its soft dependencies).
pub fn unload_args(modprobe: &ModprobeSpec) -> Vec<String> {
    unload_args_at(modprobe, SHARED_ROOT)
}

/// [`unload_args`] with the module tree copied under `shared_root` instead of [`SHARED_ROOT`].
pub fn unload_args_at(modprobe: &ModprobeSpec, shared_root: &str) -> Vec<String> {
    if let Some(raw) = modprobe.raw_args.as_ref().and_then(|r| r.unload.as_ref()) {
        return raw.clone();
    }
    let mut args = vec!["-rvd".to_owned(), module_root(modprobe, shared_root)];
    args.extend(
        modprobe
            .args
            .as_ref()
            .and_then(|a| a.unload.clone())
            .unwrap_or_default(),
    );
    match modprobe.modules_loading_order.as_ref().filter(|o| !o.is_empty()) {
        Some(order) => args.extend(order.iter().cloned()),
        None => args.extend(modprobe.module_name.clone()),
    }
    args
}

/// `modprobe` arguments that unload in-tree modules before loading ours (`None` when there are none).
pub fn in_tree_removal_args(names: &[String]) -> Option<Vec<String>> {
    (!names.is_empty()).then(|| {
        std::iter::once("-rv".to_owned())
            .chain(names.iter().cloned())
            .collect()
    })
}

/// `/etc/modprobe.d/softdep.conf` for a loading order: each module needs the next one first, so
/// `[a, b, c]` loads c, then b, then a, and unloads in reverse.
pub fn softdep_conf(order: &[String]) -> String {
    order
        .windows(2)
        .map(|pair| format!("softdep {} pre: {}\n", pair[0], pair[1]))
        .collect()
}

/// Shell script of the init container that copies the kernel's module tree (and firmware) from
/// the kmod image into the shared directory.
pub fn copy_script(modprobe: &ModprobeSpec, kernel: &str) -> String {
    let dir = modprobe.dir_name.trim_end_matches('/');
    let mut script = format!(
        "mkdir -p {SHARED_ROOT}{dir}/lib/modules; cp -R {dir}/lib/modules/{kernel} {SHARED_ROOT}{dir}/lib/modules;"
    );
    if let Some(firmware) = modprobe.firmware_path.as_deref().filter(|f| !f.is_empty()) {
        let firmware = firmware.trim_end_matches('/');
        script.push_str(&format!(
            " mkdir -p {SHARED_ROOT}{firmware}; cp -R {firmware}/* {SHARED_ROOT}{firmware};"
        ));
    }
    script
}

fn module_root(modprobe: &ModprobeSpec, shared_root: &str) -> String {
    let dir = modprobe.dir_name.trim_end_matches('/');
    let dir = if dir.starts_with('/') {
        dir.to_owned()
    } else {
        format!("/{dir}")
    };
    format!("{}{dir}", shared_root.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use kmm_api::module::ModprobeArgs;

    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn mk_modprobe() -> ModprobeSpec {
        ModprobeSpec {
            module_name: Some("mod_a".into()),
            parameters: Some(strings(&["p=1", "q=2"])),
            args: Some(ModprobeArgs {
                load: Some(strings(&["--first-time"])),
                unload: Some(strings(&["--force"])),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn load_puts_module_and_parameters_after_the_extra_args() {
        assert_eq!(
            load_args(&mk_modprobe()),
            strings(&["-vd", "/tmp/opt", "--first-time", "mod_a", "p=1", "q=2"])
        );
    }

    #[test]
    fn unload_names_the_whole_loading_order() {
        let mut modprobe = mk_modprobe();
        assert_eq!(
            unload_args(&modprobe),
            strings(&["-rvd", "/tmp/opt", "--force", "mod_a"])
        );
        modprobe.modules_loading_order = Some(strings(&["mod_a", "mod_b", "mod_c"]));
        assert_eq!(
            unload_args(&modprobe),
            strings(&["-rvd", "/tmp/opt", "--force", "mod_a", "mod_b", "mod_c"])
        );
    }

    #[test]
    fn raw_args_replace_everything() {
        let modprobe = ModprobeSpec {
            raw_args: Some(ModprobeArgs {
                load: Some(strings(&["-v", "x"])),
                unload: Some(strings(&["-rv", "x"])),
            }),
            ..Default::default()
        };
        assert_eq!(load_args(&modprobe), strings(&["-v", "x"]));
        assert_eq!(unload_args(&modprobe), strings(&["-rv", "x"]));
    }

    #[test]
    fn softdeps_chain_each_module_to_the_next() {
        assert_eq!(
            softdep_conf(&strings(&["mod_a", "mod_b", "mod_c"])),
            "softdep mod_a pre: mod_b\nsoftdep mod_b pre: mod_c\n"
        );
        assert_eq!(softdep_conf(&strings(&["mod_a"])), "");
    }

    #[test]
    fn in_tree_removal_only_when_there_is_something_to_remove() {
        assert_eq!(in_tree_removal_args(&[]), None);
        assert_eq!(
            in_tree_removal_args(&strings(&["a", "b"])),
            Some(strings(&["-rv", "a", "b"]))
        );
    }

    #[test]
    fn copy_script_copies_the_kernel_tree_and_firmware() {
        let mut modprobe = ModprobeSpec {
            dir_name: "/opt/".into(),
            ..Default::default()
        };
        assert_eq!(
            copy_script(&modprobe, "6.1.0-18-cloud-amd64"),
            "mkdir -p /tmp/opt/lib/modules; cp -R /opt/lib/modules/6.1.0-18-cloud-amd64 /tmp/opt/lib/modules;"
        );
        modprobe.firmware_path = Some("/firmware".into());
        assert!(
            copy_script(&modprobe, "k")
                .ends_with(" mkdir -p /tmp/firmware; cp -R /firmware/* /tmp/firmware;")
        );
    }
}
