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
    confined(&opts.shared_root, &from).map_err(|source| WorkerError::CopyFirmware {
        from: from.clone(),
        to: host.clone(),
        source,
    })?;
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

/// Fails unless `path` resolves (symlinks followed) to a place inside `root`.
fn confined(root: &Path, path: &Path) -> io::Result<()> {
    let (root, real) = (root.canonicalize()?, path.canonicalize()?);
    if real.starts_with(&root) {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{} leads outside the shared root {}",
            path.display(),
            root.display()
        )))
    }
}

fn symlink_refused(path: &Path, side: &str) -> io::Error {
    io::Error::other(format!(
        "{} is a symbolic link in the {side}; firmware is copied as plain files and directories only",
        path.display()
    ))
}

/// Copies the tree under `from` to `to`, never through a symbolic link: one in the image's copy
/// is refused (it could point anywhere in the worker's view of the node), and so is one already
/// on the host where a directory or file is to be written (it would redirect the write).
/// Files are created with `create_new` after removing a plain file of the same name, so a link
/// planted in between fails the copy instead of being followed.
fn copy_tree(from: &Path, to: &Path, rel: &Path, copied: &mut Vec<PathBuf>) -> io::Result<()> {
    let dir = to.join(rel);
    if rel.as_os_str().is_empty() {
        // The host directory itself is the administrator's choice (a hostPath mount).
        fs::create_dir_all(&dir)?;
    } else {
        check_host_dir(&dir)?;
    }
    for entry in fs::read_dir(from.join(rel))? {
        let entry = entry?;
        let rel = rel.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            return Err(symlink_refused(&from.join(&rel), "image's firmware"));
        }
        if kind.is_dir() {
            copy_tree(from, to, &rel, copied)?;
            continue;
        }
        let dest = to.join(&rel);
        match fs::symlink_metadata(&dest) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(symlink_refused(&dest, "host firmware directory"));
            }
            Ok(_) => fs::remove_file(&dest)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut source = fs::File::open(from.join(&rel))?;
        let mut target = fs::OpenOptions::new().write(true).create_new(true).open(&dest)?;
        io::copy(&mut source, &mut target)?;
        copied.push(rel);
    }
    Ok(())
}

/// Creates `dir` on the host unless it is there; refuses it when it is a symbolic link.
fn check_host_dir(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_symlink() => Err(symlink_refused(dir, "host firmware directory")),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(dir),
        Err(e) => Err(e),
    }
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

    /// Finding 9: a symbolic link on either side redirected the copy.
    #[test]
    fn symbolic_links_are_never_followed_at_source_or_destination() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"node secret").unwrap();

        // In the image's copy: a link to a file elsewhere on the node.
        let copied = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), copied.path().join("fw.bin")).unwrap();
        let err = copy_tree(copied.path(), host.path(), Path::new(""), &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(!host.path().join("fw.bin").exists());

        // On the host: a directory and a file of the tree replaced by links.
        let copied = tempfile::tempdir().unwrap();
        fs::create_dir_all(copied.path().join("vendor")).unwrap();
        fs::write(copied.path().join("vendor/fw.bin"), b"fw").unwrap();
        fs::write(copied.path().join("top.bin"), b"fw").unwrap();
        let host = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), host.path().join("vendor")).unwrap();
        let err = copy_tree(copied.path(), host.path(), Path::new(""), &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let host = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), host.path().join("top.bin")).unwrap();
        let err = copy_tree(copied.path(), host.path(), Path::new(""), &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(fs::read(outside.path().join("secret")).unwrap(), b"node secret");
        assert!(!outside.path().join("fw.bin").exists());
    }

    #[test]
    fn a_firmware_dir_leading_out_of_the_shared_root_is_refused() {
        let shared = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), shared.path().join("firmware")).unwrap();
        assert!(confined(shared.path(), &under(shared.path(), "/firmware")).is_err());
        fs::create_dir(shared.path().join("real")).unwrap();
        assert!(confined(shared.path(), &under(shared.path(), "/real")).is_ok());
    }
}
