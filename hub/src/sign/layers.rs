//! The image filesystem side of `sign-image`: which files of a stack of layers match the
//! `filesToSign` globs (whiteouts applied), the one new layer that holds their signed copies,
//! and the image config that lists it. Pure functions over bytes; the registry side is in
//! [`super::image`].

use std::{
    collections::BTreeMap,
    io::{Read, Write},
};

use flate2::{Compression, read::GzDecoder, write::GzEncoder};
use glob::{MatchOptions, Pattern};
use oci_client::manifest::OciDescriptor;
use sha2_010::{Digest, Sha256};
use thiserror::Error;

/// A layer (or the image config) that cannot be read or written.
#[derive(Debug, Error)]
#[error("layer {digest}: {reason}")]
pub struct LayerError {
    /// The layer's digest, `(new)` for the layer being made.
    pub digest: String,
    /// What went wrong.
    pub reason: String,
}

/// The `filesToSign` globs, checked: absolute paths, valid shell globs, at least one.
pub fn compile_patterns(globs: &[String]) -> Result<Vec<Pattern>, String> {
    if globs.is_empty() {
        return Err("filesToSign is empty".to_owned());
    }
    globs
        .iter()
        .map(|g| {
            if !g.starts_with('/') {
                return Err(format!("filesToSign entry {g:?} is not an absolute path"));
            }
            Pattern::new(g).map_err(|e| format!("filesToSign entry {g:?}: {e}"))
        })
        .collect()
}

/// `*` and `?` do not cross `/`, as in a shell.
pub fn match_options() -> MatchOptions {
    MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    }
}

/// A regular file of the image's filesystem, with the metadata the new layer keeps.
#[derive(Debug, Clone)]
pub struct ImageFile {
    /// The file's bytes.
    pub data: Vec<u8>,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

/// `/a/b` for the tar paths `a/b`, `./a/b` and `/a/b`.
fn absolute(path: &str) -> String {
    let trimmed = path.trim_start_matches("./").trim_start_matches('/');
    format!("/{}", trimmed.trim_end_matches('/'))
}

/// The regular files that match a pattern in the filesystem the layers make, applying each
/// layer in order (later layers replace files, whiteouts delete them).
pub fn collect_files(
    layers: &[OciDescriptor],
    blobs: &[Vec<u8>],
    patterns: &[Pattern],
) -> Result<BTreeMap<String, ImageFile>, LayerError> {
    let mut files: BTreeMap<String, ImageFile> = BTreeMap::new();
    for (layer, blob) in layers.iter().zip(blobs) {
        let layer_error = |reason: String| LayerError {
            digest: layer.digest.clone(),
            reason,
        };
        let reader: Box<dyn Read + '_> = if layer.media_type.ends_with("gzip") {
            Box::new(GzDecoder::new(blob.as_slice()))
        } else if layer.media_type.ends_with(".tar") || layer.media_type.ends_with(".rootfs.diff.tar") {
            Box::new(blob.as_slice())
        } else {
            return Err(layer_error(format!(
                "unsupported layer media type {} (gzip or uncompressed tar only)",
                layer.media_type
            )));
        };
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(|e| layer_error(e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| layer_error(e.to_string()))?;
            let raw_path = entry.path().map_err(|e| layer_error(e.to_string()))?;
            let path = absolute(&raw_path.to_string_lossy());
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
            if name == ".wh..wh..opq" {
                let prefix = format!("{dir}/");
                files.retain(|p, _| !p.starts_with(&prefix));
                continue;
            }
            if let Some(deleted) = name.strip_prefix(".wh.") {
                let deleted = format!("{dir}/{deleted}");
                let prefix = format!("{deleted}/");
                files.retain(|p, _| *p != deleted && !p.starts_with(&prefix));
                continue;
            }
            let header = entry.header();
            let regular = header.entry_type().is_file();
            if regular && patterns.iter().any(|p| p.matches_with(&path, match_options())) {
                let file = ImageFile {
                    mode: header.mode().map_err(|e| layer_error(e.to_string()))?,
                    uid: header.uid().map_err(|e| layer_error(e.to_string()))?,
                    gid: header.gid().map_err(|e| layer_error(e.to_string()))?,
                    mtime: header.mtime().map_err(|e| layer_error(e.to_string()))?,
                    data: {
                        let mut data = Vec::new();
                        entry
                            .read_to_end(&mut data)
                            .map_err(|e| layer_error(format!("{path}: {e}")))?;
                        data
                    },
                };
                files.insert(path, file);
            } else if header.entry_type().is_dir() {
                // A directory merges with the lower one; it only hides a file of that name.
                files.remove(&path);
            } else {
                // Replaced by something that is not a matching regular file (a symlink, a hard
                // link, another file), which also hides a lower directory of that name.
                let prefix = format!("{path}/");
                files.retain(|p, _| *p != path && !p.starts_with(&prefix));
            }
        }
    }
    Ok(files)
}

/// The new layer: the uncompressed tar (whose digest is the diff ID) and its gzip blob.
pub fn build_layer(files: &BTreeMap<String, ImageFile>) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, file) in files {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(file.data.len() as u64);
        header.set_mode(file.mode);
        header.set_uid(file.uid);
        header.set_gid(file.gid);
        header.set_mtime(file.mtime);
        builder.append_data(&mut header, path.trim_start_matches('/'), file.data.as_slice())?;
    }
    let tar = builder.into_inner()?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&tar)?;
    Ok((tar, gz.finish()?))
}

/// The image config with the new layer's diff ID (and a history entry, when it has history).
pub fn add_layer_to_config(config: &str, diff_id: &str, count: usize) -> Result<String, String> {
    let mut json: serde_json::Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
    let object = json.as_object_mut().ok_or("not a JSON object")?;
    let rootfs = object
        .entry("rootfs")
        .or_insert_with(|| serde_json::json!({"type": "layers", "diff_ids": []}));
    rootfs
        .get_mut("diff_ids")
        .and_then(|d| d.as_array_mut())
        .ok_or("rootfs.diff_ids is not a list")?
        .push(diff_id.into());
    if let Some(history) = object.get_mut("history").and_then(|h| h.as_array_mut()) {
        history.push(serde_json::json!({
            "created_by": "kmm-hub sign-image",
            "comment": format!("{count} signed kernel module(s)"),
        }));
    }
    serde_json::to_string(&json).map_err(|e| e.to_string())
}

pub fn sha256_digest(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut text = String::with_capacity(7 + 64);
    text.push_str("sha256:");
    for byte in digest {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_layer(entries: &[(&str, Option<&[u8]>)]) -> (OciDescriptor, Vec<u8>) {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut header = tar::Header::new_ustar();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match data {
                Some(_) if path.ends_with('/') => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    header.set_mode(0o755);
                    builder.append_data(&mut header, path, std::io::empty()).unwrap();
                }
                Some(data) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(data.len() as u64);
                    header.set_mode(0o644);
                    builder.append_data(&mut header, path, *data).unwrap();
                }
                None => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    builder.append_link(&mut header, path, "elsewhere").unwrap();
                }
            }
        }
        let blob = builder.into_inner().unwrap();
        let descriptor = OciDescriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar".to_owned(),
            digest: sha256_digest(&blob),
            size: blob.len() as i64,
            ..Default::default()
        };
        (descriptor, blob)
    }

    #[test]
    fn files_follow_the_layers_whiteouts_and_globs() {
        let patterns = compile_patterns(&["/opt/lib/modules/6.1/*.ko".to_owned()]).unwrap();
        let (l1, b1) = tar_layer(&[
            ("opt/lib/modules/6.1/a.ko", Some(b"a1")),
            ("./opt/lib/modules/6.1/b.ko", Some(b"b1")),
            ("opt/lib/modules/6.1/c.ko", Some(b"c1")),
            ("opt/lib/modules/6.1/sub/d.ko", Some(b"deep")),
            ("opt/lib/modules/6.1/readme", Some(b"text")),
        ]);
        let (l2, b2) = tar_layer(&[
            ("opt/lib/modules/6.1/", Some(b"")),
            ("opt/lib/modules/6.1/a.ko", Some(b"a2")),
            ("opt/lib/modules/6.1/.wh.b.ko", Some(b"")),
            ("opt/lib/modules/6.1/c.ko", None),
        ]);
        let files = collect_files(&[l1, l2], &[b1, b2], &patterns).unwrap();
        let found: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, f)| (p.as_str(), f.data.as_slice()))
            .collect();
        assert_eq!(found, vec![("/opt/lib/modules/6.1/a.ko", b"a2".as_slice())]);
    }

    #[test]
    fn an_upper_directory_entry_keeps_the_lower_files() {
        let patterns = compile_patterns(&["/m/*.ko".to_owned()]).unwrap();
        let (l1, b1) = tar_layer(&[("m/a.ko", Some(b"a")), ("m/b.ko", Some(b"b"))]);
        let (l2, b2) = tar_layer(&[("m/", Some(b"")), ("m/b.ko/", Some(b""))]);
        let files = collect_files(&[l1, l2], &[b1, b2], &patterns).unwrap();
        assert_eq!(files.keys().collect::<Vec<_>>(), vec!["/m/a.ko"]);
    }

    #[test]
    fn an_opaque_whiteout_hides_the_lower_directory() {
        let patterns = compile_patterns(&["/m/*.ko".to_owned()]).unwrap();
        let (l1, b1) = tar_layer(&[("m/a.ko", Some(b"a")), ("m/b.ko", Some(b"b"))]);
        let (l2, b2) = tar_layer(&[
            ("m/", Some(b"")),
            ("m/.wh..wh..opq", Some(b"")),
            ("m/b.ko", Some(b"b2")),
        ]);
        let files = collect_files(&[l1, l2], &[b1, b2], &patterns).unwrap();
        assert_eq!(files.keys().collect::<Vec<_>>(), vec!["/m/b.ko"]);
        assert_eq!(files["/m/b.ko"].data, b"b2");
    }

    #[test]
    fn relative_and_empty_globs_are_refused() {
        let refused = |globs: &[&str]| {
            let globs: Vec<String> = globs.iter().map(|g| (*g).to_owned()).collect();
            compile_patterns(&globs).map(|_| ()).unwrap_err()
        };
        assert_eq!(refused(&[]), "filesToSign is empty");
        assert!(refused(&["lib/modules/*.ko"]).contains("is not an absolute path"));
        assert!(refused(&["/a/["]).starts_with("filesToSign entry \"/a/[\""));
    }

    #[test]
    fn the_config_gets_the_diff_id_and_a_history_entry() {
        let config = r#"{"architecture":"amd64","rootfs":{"type":"layers","diff_ids":["sha256:aa"]},"history":[{"created_by":"x"}]}"#;
        let out: serde_json::Value =
            serde_json::from_str(&add_layer_to_config(config, "sha256:bb", 2).unwrap()).unwrap();
        assert_eq!(
            out["rootfs"]["diff_ids"],
            serde_json::json!(["sha256:aa", "sha256:bb"])
        );
        assert_eq!(out["history"][1]["created_by"], "kmm-hub sign-image");
        assert_eq!(out["architecture"], "amd64");
    }
}
