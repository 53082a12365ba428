//! `kmm-hub sign-image`: pulls the unsigned image, signs every regular file of its filesystem
//! that matches one of the `filesToSign` globs, adds the signed files as one new layer on top,
//! and pushes the result to the destination. The other layers are reused as they are (blobs
//! the destination already has are not uploaded again), and nothing depends on the clock, so
//! signing the same image twice pushes the same digest.

use std::{collections::BTreeMap, path::PathBuf};

use kmm_api::module::TlsOptions;
use oci_client::{
    Client, Reference, RegistryOperation,
    manifest::{
        IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE,
        OciDescriptor, OciManifest,
    },
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{
    FileError, HashAlgorithm, SignError, Signer,
    layers::{self, ImageFile, LayerError},
    limits::{self, BoundedBlob},
    module::sign_module,
    new_layer, parallel_map,
};
use crate::{
    pull_secret::{Credentials, PullSecretError},
    registry::{self, error_chain},
};

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
    /// Fetch foreign layers (descriptors with `urls`) from those URLs. Off by default: the URLs
    /// are the image author's choice, outside the registry and its credentials.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_foreign_layers: bool,
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
    /// A layer, or the image config, cannot be read or written.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// A layer the command will not download: too large, or foreign without permission.
    #[error("layer {digest} of {image}: {reason}")]
    Refused {
        image: String,
        digest: String,
        reason: String,
    },
    /// No file of the image matched any glob: nothing would be signed.
    #[error("no file in {image} matches filesToSign {patterns:?}")]
    NothingToSign { image: String, patterns: Vec<String> },
}

/// Signs the modules of `spec.unsigned_image` and pushes the result to `spec.image`.
pub async fn sign_image(spec: &SignImageSpec) -> Result<SignedImage, ImageError> {
    let patterns = layers::compile_patterns(&spec.files_to_sign).map_err(ImageError::Spec)?;
    let source = parse_reference(&spec.unsigned_image, "unsignedImage")?;
    let dest = parse_reference(&spec.image, "image")?;
    // The key first: a bad key fails before any download.
    let signer = Signer::from_files(&spec.key, &spec.cert)?;
    let credentials = match &spec.docker_config {
        None => Credentials::default(),
        Some(path) => read_docker_config(path)?,
    };

    let pull_client = registry::client(&spec.unsigned_image_registry_tls);
    let source_auth = credentials.for_image(&spec.unsigned_image);
    let (mut manifest, _, config) = pull_client
        .pull_manifest_and_config(&source, &source_auth)
        .await
        .map_err(registry_error("pull", &spec.unsigned_image))?;
    let mut blobs = Vec::with_capacity(manifest.layers.len());
    for layer in &manifest.layers {
        let refused = |reason: String| ImageError::Refused {
            image: spec.unsigned_image.clone(),
            digest: layer.digest.clone(),
            reason,
        };
        let size = limits::check_declared(layer, spec.allow_foreign_layers).map_err(refused)?;
        // The registry's bytes are checked against the descriptor as they arrive: never more
        // than its size (an endless layer stops there), and its digest at the end (oci-client).
        let mut blob = BoundedBlob::new(size);
        pull_client
            .pull_blob(&source, layer, &mut blob)
            .await
            .map_err(registry_error("pull a layer of", &spec.unsigned_image))?;
        blobs.push(blob.finish().map_err(refused)?);
    }

    let selection = layers::select_files(&manifest.layers, &blobs, &patterns)?;
    if selection.files.is_empty() {
        return Err(ImageError::NothingToSign {
            image: spec.unsigned_image.clone(),
            patterns: spec.files_to_sign.clone(),
        });
    }
    let unmatched = patterns
        .iter()
        .filter(|p| {
            !selection
                .selected
                .keys()
                .any(|path| p.matches_with(path, layers::match_options()))
        })
        .map(|p| p.as_str().to_owned())
        .collect();
    let files: Vec<(String, ImageFile)> = selection.files.into_iter().collect();
    let results = parallel_map(&files, |(_, file)| {
        sign_module(&signer, &file.data, spec.hash, spec.replace)
    });
    drop(signer);
    let mut signed = BTreeMap::new();
    for ((path, mut file), result) in files.into_iter().zip(results) {
        file.data = result.map_err(|source| FileError {
            path: PathBuf::from(&path),
            source,
        })?;
        signed.insert(path, file);
    }

    let (layer_tar, layer_gz) = new_layer::build_layer(&signed).map_err(|e| LayerError {
        digest: "(new)".to_owned(),
        reason: e.to_string(),
    })?;
    let diff_id = new_layer::sha256_digest(&layer_tar);
    let layer_digest = new_layer::sha256_digest(&layer_gz);
    let config =
        new_layer::add_layer_to_config(&config, &diff_id, signed.len()).map_err(|reason| LayerError {
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
    manifest.config.digest = new_layer::sha256_digest(config.as_bytes());
    manifest.config.size = i64::try_from(config.len()).unwrap_or(i64::MAX);
    blobs.push(layer_gz);

    let push_client = registry::client(&spec.registry_tls);
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

fn parse_reference(image: &str, field: &str) -> Result<Reference, ImageError> {
    if image.is_empty() {
        return Err(ImageError::Spec(format!("{field} is not set")));
    }
    image
        .parse()
        .map_err(|e: oci_client::ParseError| ImageError::Spec(format!("{field} {image:?}: {e}")))
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

#[cfg(test)]
mod tests {
    use super::*;

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
