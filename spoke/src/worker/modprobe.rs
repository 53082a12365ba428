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

/// Variables of the init container's copy script: the shared root, the image's module
/// directory, the kernel and the firmware directory reach the shell as data, never as script
/// text, so nothing in them is parsed.
pub const COPY_ENV_SHARED_ROOT: &str = "KMM_SHARED_ROOT";
pub const COPY_ENV_DIR_NAME: &str = "KMM_DIR_NAME";
pub const COPY_ENV_KERNEL: &str = "KMM_KERNEL";
pub const COPY_ENV_FIRMWARE: &str = "KMM_FIRMWARE_PATH";

/// Copies `<dirName>/lib/modules/<kernel>` into the shared root (every expansion quoted).
const COPY_MODULES: &str = r#"mkdir -p "$KMM_SHARED_ROOT$KMM_DIR_NAME/lib/modules" && cp -R "$KMM_DIR_NAME/lib/modules/$KMM_KERNEL" "$KMM_SHARED_ROOT$KMM_DIR_NAME/lib/modules""#;
/// Then the firmware directory's contents (the glob is outside the quotes, the path inside).
const COPY_FIRMWARE: &str = r#" && mkdir -p "$KMM_SHARED_ROOT$KMM_FIRMWARE_PATH" && cp -R "$KMM_FIRMWARE_PATH"/* "$KMM_SHARED_ROOT$KMM_FIRMWARE_PATH""#;

/// The init container's copy: a fixed shell script and the environment it reads. The script
/// is the same for every Module; only the variables differ.
pub fn copy_command(
    modprobe: &ModprobeSpec,
    kernel: &str,
    shared_root: &str,
) -> (String, Vec<(&'static str, String)>) {
    let mut env = vec![
        (COPY_ENV_SHARED_ROOT, shared_root.trim_end_matches('/').to_owned()),
        (COPY_ENV_DIR_NAME, rooted(&modprobe.dir_name)),
        (COPY_ENV_KERNEL, kernel.to_owned()),
    ];
    let mut script = COPY_MODULES.to_owned();
    if let Some(firmware) = modprobe
        .firmware_path
        .as_deref()
        .filter(|f| !f.trim_matches('/').is_empty())
    {
        env.push((COPY_ENV_FIRMWARE, rooted(firmware)));
        script.push_str(COPY_FIRMWARE);
    }
    (script, env)
}

/// `path` with one leading `/` and no trailing one (`opt/` -> `/opt`).
fn rooted(path: &str) -> String {
    format!("/{}", path.trim_matches('/'))
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

    /// Runs the copy script with a real `/bin/sh` from `cwd`, as the init container would.
    fn run_copy(
        cwd: &std::path::Path,
        modprobe: &ModprobeSpec,
        kernel: &str,
        shared: &std::path::Path,
    ) -> std::process::Output {
        let (script, env) = copy_command(modprobe, kernel, &shared.display().to_string());
        std::process::Command::new("/bin/sh")
            .args(["-c", &script])
            .current_dir(cwd)
            .envs(env)
            .output()
            .unwrap()
    }

    #[test]
    fn copy_script_copies_the_kernel_tree_and_firmware() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("opt/lib/modules/6.1.0-18/extra")).unwrap();
        std::fs::write(root.path().join("opt/lib/modules/6.1.0-18/extra/m.ko"), b"ko").unwrap();
        std::fs::create_dir_all(root.path().join("firmware")).unwrap();
        std::fs::write(root.path().join("firmware/fw.bin"), b"fw").unwrap();
        // The image's `/` is `root` here, so its paths are spelled from there.
        let image = root.path().display().to_string();
        let mut modprobe = ModprobeSpec {
            dir_name: format!("{image}/opt/"),
            firmware_path: Some(format!("{image}/firmware")),
            ..Default::default()
        };
        let shared = root.path().join("shared");
        let out = run_copy(root.path(), &modprobe, "6.1.0-18", &shared);
        assert!(out.status.success(), "{out:?}");
        let copied = shared.join(format!(
            "{}/opt/lib/modules/6.1.0-18/extra/m.ko",
            image.trim_start_matches('/')
        ));
        assert_eq!(std::fs::read(copied).unwrap(), b"ko");
        let fw = shared.join(format!("{}/firmware/fw.bin", image.trim_start_matches('/')));
        assert_eq!(std::fs::read(fw).unwrap(), b"fw");

        // A missing tree fails the container instead of being hidden by the firmware copy.
        modprobe.dir_name = format!("{image}/nothing");
        assert!(
            !run_copy(root.path(), &modprobe, "6.1.0-18", &shared)
                .status
                .success()
        );
    }

    /// Finding 9: the script used to be `cp -R {dir}/lib/modules/{kernel} ...` with the values
    /// pasted in, so a kernel or dirName like `x;touch pwned` ran a command in the image.
    #[test]
    fn values_reach_the_shell_as_data_never_as_script() {
        let root = tempfile::tempdir().unwrap();
        let evil = [
            "6.1;touch pwned-semicolon",
            "6.1$(touch pwned-subst)",
            "6.1`touch pwned-backtick`",
            "6.1\ntouch pwned-newline",
            "6.1 && touch pwned-and",
        ];
        for kernel in evil {
            let modprobe = ModprobeSpec {
                dir_name: "/opt;touch pwned-dir".into(),
                firmware_path: Some("/fw$(touch pwned-fw)".into()),
                ..Default::default()
            };
            let (script, env) = copy_command(&modprobe, kernel, "/tmp");
            assert!(!script.contains("pwned"), "{script}");
            assert!(env.iter().any(|(_, v)| v.contains("pwned")));
            let out = run_copy(root.path(), &modprobe, kernel, &root.path().join("shared"));
            assert!(!out.status.success(), "nothing of that name exists to copy");
        }
        let made: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("pwned"))
            .collect();
        assert!(made.is_empty(), "commands ran: {made:?}");
    }
}
