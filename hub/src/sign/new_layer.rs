//! The layer `sign-image` adds on top of the image: the signed files as a tar (its digest is
//! the diff ID the image config lists) and its gzip blob (what the manifest lists), and the
//! config that names it. Nothing depends on the clock: the same input gives the same digests.

use std::{collections::BTreeMap, io::Write};

use flate2::{Compression, write::GzEncoder};
use sha2_010::{Digest, Sha256};

use super::layers::ImageFile;

/// The new layer: the uncompressed tar (whose digest is the diff ID) and its gzip blob.
pub fn build_layer(files: &BTreeMap<String, ImageFile>) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, file) in files {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(file.data.len() as u64);
        header.set_mode(file.meta.mode);
        header.set_uid(file.meta.uid);
        header.set_gid(file.meta.gid);
        header.set_mtime(file.meta.mtime);
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
