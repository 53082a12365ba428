//! The firmware a Module ships: copied from the image's tree to the host's firmware directory
//! before a load (optionally pointing the kernel's firmware class path there), and the copied
//! files removed after an unload.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use kmm_api::nmc::ModuleConfig;

use super::run::{Report, WorkerError, WorkerOptions};

/// Copies the config's firmware to the host before a load (nothing without `firmwarePath`).
pub fn install(config: &ModuleConfig, opts: &WorkerOptions, report: &mut Report) -> Result<(), WorkerError> {
    let Some(firmware) = firmware_path(config) else {
        return Ok(());
    };
    let host = opts
        .firmware_host_path
        .as_ref()
        .ok_or(WorkerError::NoFirmwareHostPath)?;
    if let Some(class_path) = &opts.firmware_class_path_file {
        set_firmware_class_path(class_path, host)?;
    }
    let from = under(&opts.shared_root, firmware);
    copy_tree(&from, host, Path::new(""), &mut report.firmware_files).map_err(|source| {
        WorkerError::CopyFirmware {
            from: from.clone(),
            to: host.clone(),
            source,
        }
    })
}

/// Removes what [`install`] copied, after an unload.
pub fn remove(config: &ModuleConfig, opts: &WorkerOptions, report: &mut Report) {
    if let (Some(firmware), Some(host)) = (firmware_path(config), opts.firmware_host_path.as_ref()) {
        let copied = under(&opts.shared_root, firmware);
        remove_copied(&copied, host, Path::new(""), &mut report.firmware_files);
    }
}

fn firmware_path(config: &ModuleConfig) -> Option<&str> {
    config
        .modprobe
        .firmware_path
        .as_deref()
        .filter(|f| !f.trim_matches('/').is_empty())
}

/// `<root>/<path>` for an absolute `path` from the config.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn set_firmware_class_path(file: &Path, host: &Path) -> Result<(), WorkerError> {
    let want = host.display().to_string();
    let current = fs::read_to_string(file).unwrap_or_default();
    if current.trim_end() == want {
        return Ok(());
    }
    fs::write(file, &want).map_err(|source| WorkerError::FirmwareClassPath {
        path: file.to_owned(),
        source,
    })
}

fn copy_tree(from: &Path, to: &Path, rel: &Path, copied: &mut Vec<PathBuf>) -> io::Result<()> {
    fs::create_dir_all(to.join(rel))?;
    for entry in fs::read_dir(from.join(rel))? {
        let entry = entry?;
        let rel = rel.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(from, to, &rel, copied)?;
        } else {
            fs::copy(from.join(&rel), to.join(&rel))?;
            copied.push(rel);
        }
    }
    Ok(())
}

/// Removes from `host` every file whose relative path exists under `copied`, then the
/// directories that this left empty (never `host` itself). Failures are logged, not fatal:
/// the module is already unloaded.
fn remove_copied(copied: &Path, host: &Path, rel: &Path, removed: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(copied.join(rel)) else {
        return;
    };
    for entry in entries.flatten() {
        let rel = rel.join(entry.file_name());
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            remove_copied(copied, host, &rel, removed);
            // Only succeeds when empty, which is what we want.
            let _ = fs::remove_dir(host.join(&rel));
        } else {
            match fs::remove_file(host.join(&rel)) {
                Ok(()) => removed.push(rel),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => eprintln!("removing firmware {}: {e}", host.join(&rel).display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unload_removes_only_copied_files_and_dirs_it_emptied() {
        let copied = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        fs::create_dir_all(copied.path().join("vendor/sub")).unwrap();
        fs::write(copied.path().join("vendor/sub/fw.bin"), b"x").unwrap();
        fs::write(copied.path().join("top.bin"), b"x").unwrap();
        let mut files = Vec::new();
        copy_tree(copied.path(), host.path(), Path::new(""), &mut files).unwrap();
        fs::write(host.path().join("other.bin"), b"keep").unwrap();
        files.sort();
        assert_eq!(
            files,
            [PathBuf::from("top.bin"), PathBuf::from("vendor/sub/fw.bin")]
        );

        let mut removed = Vec::new();
        remove_copied(copied.path(), host.path(), Path::new(""), &mut removed);
        assert!(!host.path().join("vendor").exists());
        assert!(host.path().join("other.bin").exists());
        assert_eq!(removed.len(), 2);
    }

    #[test]
    fn firmware_class_path_is_written_only_when_it_differs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("path");
        fs::write(&file, "/var/lib/firmware\n").unwrap();
        let before = fs::metadata(&file).unwrap().modified().unwrap();
        set_firmware_class_path(&file, Path::new("/var/lib/firmware")).unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "/var/lib/firmware\n");
        assert_eq!(fs::metadata(&file).unwrap().modified().unwrap(), before);
        set_firmware_class_path(&file, Path::new("/lib/firmware/kmm")).unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "/lib/firmware/kmm");
    }
}
