//! The OCI layer reader of `sign-image`: which files of an image its globs select.

use kmm_hub::sign::layers::{compile_patterns, select_files};
use oci_client::manifest::OciDescriptor;

/// Separates the layers in the input (the fuzzer finds it through compare tracing).
const SEPARATOR: &[u8] = b"KMMLAYER";

/// The input is one or more layer blobs split at [`SEPARATOR`]; a blob starting with the gzip
/// magic is read as a gzip layer, any other as a plain tar.
pub fn layers(data: &[u8]) {
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        blobs.push(rest[..at].to_vec());
        rest = &rest[at + SEPARATOR.len()..];
    }
    blobs.push(rest.to_vec());
    let descriptors: Vec<OciDescriptor> = blobs
        .iter()
        .enumerate()
        .map(|(i, blob)| OciDescriptor {
            media_type: if blob.starts_with(&[0x1f, 0x8b]) {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            } else {
                "application/vnd.oci.image.layer.v1.tar"
            }
            .to_owned(),
            digest: format!("sha256:layer{i}"),
            size: blob.len() as i64,
            ..Default::default()
        })
        .collect();
    let globs = ["/lib/modules/*/*.ko".to_owned(), "/opt/**/*.ko".to_owned()];
    let Ok(patterns) = compile_patterns(&globs) else {
        panic!("the fixed globs compile");
    };
    if let Ok(selection) = select_files(&descriptors, &blobs, &patterns) {
        for (path, file) in &selection.selected {
            assert!(path.starts_with('/'), "{path:?} is not absolute");
            assert!(!path.split('/').any(|c| c == ".."), "{path:?} escapes");
            assert!(
                selection.files.contains_key(file),
                "{path} -> {file} has no bytes"
            );
        }
    }
}
