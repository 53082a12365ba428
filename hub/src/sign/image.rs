//! `kmm-hub sign-image`: pulls the unsigned image, signs every regular file of its filesystem
//! that matches one of the `filesToSign` globs, adds the signed files as one new layer on top,
//! and pushes the result to the destination. The other layers are reused as they are (blobs
//! the destination already has are not uploaded again), and nothing depends on the clock, so
//! signing the same image twice pushes the same digest.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    path::PathBuf,
};

use flate2::{Compression, read::GzDecoder, write::GzEncoder};
use glob::{MatchOptions, Pattern};
use kmm_api::module::TlsOptions;
use oci_client::{
    Client, Reference, RegistryOperation,
    client::{ClientConfig, ClientProtocol},
    manifest::{
        IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE,
        OciDescriptor, OciManifest,
    },
};
use serde::{Deserialize, Serialize};
use sha2_010::{Digest, Sha256};
use thiserror::Error;

use super::{FileError, HashAlgorithm, SignError, Signer, module::sign_module, parallel_map};
use crate::pull_secret::{Credentials, PullSecretError};

/// What the sign Job does: also the schema of `sign-image --config FILE` (YAML or JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignImageSpec {
    /// The image holding the unsigned modules.
    pub unsigned_image: String,
    /// Where to push the signed image (`containerImage`).
    pub image: String,
    /// Absolute paths inside the image, shell globs (`*` does not cross `/`), with the kernel
    /// variables already substituted.
    pub files_to_sign: Vec<String>,
    /// The private key file (secret `keySecret`, key `key`).
    pub key: PathBuf,
    /// The certificate file (secret `certSecret`, key `cert`).
    pub cert: PathBuf,
    /// sha256 (default), sha384 or sha512.
    #[serde(default, with = "hash_name")]
    pub hash: HashAlgorithm,
    /// Replace the signature of modules that are already signed instead of failing.
    #[serde(default)]
    pub replace: bool,
    /// TLS for the registry of `unsignedImage`.
    #[serde(default, rename = "unsignedImageRegistryTLS")]
    pub unsigned_image_registry_tls: TlsOptions,
    /// TLS for the registry of `image`.
    #[serde(default, rename = "registryTLS")]
    pub registry_tls: TlsOptions,
    /// A Docker config file (`.dockerconfigjson` of `imageRepoSecret`) with the credentials
    /// for both registries; anonymous when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_config: Option<PathBuf>,
}

mod hash_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::HashAlgorithm;

    pub fn serialize<S: Serializer>(hash: &HashAlgorithm, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(hash.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HashAlgorithm, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// What was pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedImage {
    /// The manifest digest of the pushed image (`sha256:...`).
    pub digest: String,
    /// The signed files, absolute paths inside the image, sorted.
    pub signed: Vec<String>,
    /// Globs that matched no file (not an error as long as another one matched).
    pub unmatched: Vec<String>,
}

/// Why an image could not be signed.
#[derive(Debug, Error)]
pub enum ImageError {
    /// The spec is incomplete or inconsistent.
    #[error("invalid sign-image settings: {0}")]
    Spec(String),
    /// The key or the certificate cannot be used.
    #[error(transparent)]
    Key(#[from] SignError),
    /// One module of the image cannot be signed.
    #[error("in the image: {0}")]
    Module(#[from] FileError),
    /// The Docker config file cannot be read or used.
    #[error("docker config {}: {reason}", path.display())]
    DockerConfig { path: PathBuf, reason: String },
    /// The registry refused or failed a request.
    #[error("{operation} {image}: {reason}")]
    Registry {
        operation: &'static str,
        image: String,
        reason: String,
    },
    /// A layer cannot be read.
    #[error("layer {digest}: {reason}")]
    Layer { digest: String, reason: String },
    /// No file of the image matched any glob: nothing would be signed.
    #[error("no file in {image} matches filesToSign {patterns:?}")]
    NothingToSign { image: String, patterns: Vec<String> },
}

/// Signs the modules of `spec.unsigned_image` and pushes the result to `spec.image`.
pub async fn sign_image(spec: &SignImageSpec) -> Result<SignedImage, ImageError> {
    let patterns = compile_patterns(&spec.files_to_sign)?;
    let source = parse_reference(&spec.unsigned_image, "unsignedImage")?;
    let dest = parse_reference(&spec.image, "image")?;
    // The key first: a bad key fails before any download.
    let signer = Signer::from_files(&spec.key, &spec.cert)?;
    let credentials = match &spec.docker_config {
        None => Credentials::default(),
        Some(path) => read_docker_config(path)?,
    };

    let pull_client = client(&spec.unsigned_image_registry_tls);
    let source_auth = credentials.for_image(&spec.unsigned_image);
    let (mut manifest, _, config) = pull_client
        .pull_manifest_and_config(&source, &source_auth)
        .await
        .map_err(registry_error("pull", &spec.unsigned_image))?;
    let mut blobs = Vec::with_capacity(manifest.layers.len());
    for layer in &manifest.layers {
        let mut blob = Vec::new();
        pull_client
            .pull_blob(&source, layer, &mut blob)
            .await
            .map_err(registry_error("pull a layer of", &spec.unsigned_image))?;
        blobs.push(blob);
    }

    let files = collect_files(&manifest.layers, &blobs, &patterns)?;
    if files.is_empty() {
        return Err(ImageError::NothingToSign {
            image: spec.unsigned_image.clone(),
            patterns: spec.files_to_sign.clone(),
        });
    }
    let unmatched = patterns
        .iter()
        .filter(|p| !files.keys().any(|path| p.matches_with(path, match_options())))
        .map(|p| p.as_str().to_owned())
        .collect();
    let files: Vec<(String, ImageFile)> = files.into_iter().collect();
    let results = parallel_map(&files, |(_, file)| {
        sign_module(&signer, &file.data, spec.hash, spec.replace)
    });
    drop(signer);
    let mut signed = BTreeMap::new();
    for ((path, file), result) in files.into_iter().zip(results) {
        let data = result.map_err(|source| FileError {
            path: PathBuf::from(&path),
            source,
        })?;
        signed.insert(path, ImageFile { data, ..file });
    }

    let (layer_tar, layer_gz) = build_layer(&signed).map_err(|e| ImageError::Layer {
        digest: "(new)".to_owned(),
        reason: e.to_string(),
    })?;
    let diff_id = sha256_digest(&layer_tar);
    let layer_digest = sha256_digest(&layer_gz);
    let config =
        add_layer_to_config(&config, &diff_id, signed.len()).map_err(|reason| ImageError::Layer {
            digest: manifest.config.digest.clone(),
            reason: format!("image config: {reason}"),
        })?;
    let docker_manifest = manifest.media_type.as_deref() == Some(IMAGE_MANIFEST_MEDIA_TYPE);
    manifest.layers.push(OciDescriptor {
        media_type: if docker_manifest {
            IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE
        } else {
            IMAGE_LAYER_GZIP_MEDIA_TYPE
        }
        .to_owned(),
        digest: layer_digest,
        size: i64::try_from(layer_gz.len()).unwrap_or(i64::MAX),
        ..Default::default()
    });
    manifest.config.digest = sha256_digest(config.as_bytes());
    manifest.config.size = i64::try_from(config.len()).unwrap_or(i64::MAX);
    blobs.push(layer_gz);

    let push_client = client(&spec.registry_tls);
    let dest_auth = credentials.for_image(&spec.image);
    push_client
        .auth(&dest, &dest_auth, RegistryOperation::Push)
        .await
        .map_err(registry_error("authenticate to", &spec.image))?;
    for (layer, blob) in manifest.layers.iter().zip(blobs) {
        push_blob_if_missing(&push_client, &dest, &layer.digest, blob)
            .await
            .map_err(registry_error("push a layer to", &spec.image))?;
    }
    let config_digest = manifest.config.digest.clone();
    push_blob_if_missing(&push_client, &dest, &config_digest, config.into_bytes())
        .await
        .map_err(registry_error("push the config to", &spec.image))?;
    push_client
        .push_manifest(&dest, &OciManifest::Image(manifest))
        .await
        .map_err(registry_error("push the manifest to", &spec.image))?;
    let digest = push_client
        .fetch_manifest_digest(&dest, &dest_auth)
        .await
        .map_err(registry_error("read back the digest of", &spec.image))?;
    Ok(SignedImage {
        digest,
        signed: signed.into_keys().collect(),
        unmatched,
    })
}

fn registry_error(
    operation: &'static str,
    image: &str,
) -> impl FnOnce(oci_client::errors::OciDistributionError) -> ImageError + use<> {
    let image = image.to_owned();
    move |e| ImageError::Registry {
        operation,
        image,
        reason: error_chain(&e),
    }
}

async fn push_blob_if_missing(
    client: &Client,
    image: &Reference,
    digest: &str,
    data: Vec<u8>,
) -> Result<(), oci_client::errors::OciDistributionError> {
    if !client.blob_exists(image, digest).await? {
        client.push_blob(image, data, digest).await?;
    }
    Ok(())
}

fn client(tls: &TlsOptions) -> Client {
    Client::new(ClientConfig {
        protocol: if tls.insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        accept_invalid_certificates: tls.insecure_skip_tls_verify,
        ..Default::default()
    })
}

fn parse_reference(image: &str, field: &str) -> Result<Reference, ImageError> {
    if image.is_empty() {
        return Err(ImageError::Spec(format!("{field} is not set")));
    }
    image
        .parse()
        .map_err(|e: oci_client::ParseError| ImageError::Spec(format!("{field} {image:?}: {e}")))
}

fn compile_patterns(globs: &[String]) -> Result<Vec<Pattern>, ImageError> {
    if globs.is_empty() {
        return Err(ImageError::Spec("filesToSign is empty".to_owned()));
    }
    globs
        .iter()
        .map(|g| {
            if !g.starts_with('/') {
                return Err(ImageError::Spec(format!(
                    "filesToSign entry {g:?} is not an absolute path"
                )));
            }
            Pattern::new(g).map_err(|e| ImageError::Spec(format!("filesToSign entry {g:?}: {e}")))
        })
        .collect()
}

fn match_options() -> MatchOptions {
    MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    }
}

fn read_docker_config(path: &std::path::Path) -> Result<Credentials, ImageError> {
    let bytes = std::fs::read(path).map_err(|e| ImageError::DockerConfig {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    // A mounted `.dockerconfigjson` has `auths`; a legacy `.dockercfg` is the map itself.
    let modern = serde_json::from_slice::<serde_json::Value>(&bytes)
        .map(|v| v.get("auths").is_some())
        .unwrap_or(true);
    let key = if modern { ".dockerconfigjson" } else { ".dockercfg" };
    Credentials::from_secret_data(&BTreeMap::from([(key.to_owned(), bytes)])).map_err(|e: PullSecretError| {
        ImageError::DockerConfig {
            path: path.to_owned(),
            reason: e.to_string(),
        }
    })
}

/// A regular file of the image's filesystem, with the metadata the new layer keeps.
#[derive(Debug, Clone)]
struct ImageFile {
    data: Vec<u8>,
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
fn collect_files(
    layers: &[OciDescriptor],
    blobs: &[Vec<u8>],
    patterns: &[Pattern],
) -> Result<BTreeMap<String, ImageFile>, ImageError> {
    let mut files: BTreeMap<String, ImageFile> = BTreeMap::new();
    for (layer, blob) in layers.iter().zip(blobs) {
        let layer_error = |reason: String| ImageError::Layer {
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
fn build_layer(files: &BTreeMap<String, ImageFile>) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
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
fn add_layer_to_config(config: &str, diff_id: &str, count: usize) -> Result<String, String> {
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

fn sha256_digest(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut text = String::with_capacity(7 + 64);
    text.push_str("sha256:");
    for byte in digest {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
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
    fn docker_configs_are_read_in_both_formats() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode("robot:pw");
        let basic = oci_client::secrets::RegistryAuth::Basic("robot".into(), "pw".into());
        let modern = dir.path().join("config.json");
        std::fs::write(
            &modern,
            format!(r#"{{"auths": {{"reg.example:5000": {{"auth": "{auth}"}}}}}}"#),
        )
        .unwrap();
        let legacy = dir.path().join("dockercfg");
        std::fs::write(
            &legacy,
            format!(r#"{{"reg.example:5000": {{"auth": "{auth}"}}}}"#),
        )
        .unwrap();
        for path in [&modern, &legacy] {
            let creds = read_docker_config(path).unwrap();
            assert_eq!(
                creds.for_image("reg.example:5000/a/b:1"),
                basic,
                "{}",
                path.display()
            );
        }
        let broken = dir.path().join("broken.json");
        std::fs::write(&broken, "{").unwrap();
        assert!(matches!(
            read_docker_config(&broken),
            Err(ImageError::DockerConfig { .. })
        ));
        assert!(matches!(
            read_docker_config(&dir.path().join("missing.json")),
            Err(ImageError::DockerConfig { .. })
        ));
    }

    #[test]
    fn relative_and_empty_globs_are_refused() {
        assert!(matches!(compile_patterns(&[]), Err(ImageError::Spec(_))));
        assert!(matches!(
            compile_patterns(&["lib/modules/*.ko".to_owned()]),
            Err(ImageError::Spec(_))
        ));
        assert!(matches!(
            compile_patterns(&["/a/[".to_owned()]),
            Err(ImageError::Spec(_))
        ));
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

    #[test]
    fn the_spec_reads_from_yaml_with_the_module_field_names() {
        let spec: SignImageSpec = serde_saphyr::from_str(
            "unsignedImage: r/a:1\nimage: r/a:1-signed\nfilesToSign: [/opt/*.ko]\nkey: /k\ncert: /c\nhash: sha512\nunsignedImageRegistryTLS: {insecure: true}\n",
        )
        .unwrap();
        assert_eq!(spec.hash, HashAlgorithm::Sha512);
        assert!(spec.unsigned_image_registry_tls.insecure);
        assert!(!spec.registry_tls.insecure);
        assert!(serde_saphyr::from_str::<SignImageSpec>("unsignedImage: a\nhash: md5\n").is_err());
    }
}
