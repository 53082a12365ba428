//! Arguments and drivers of `kmm-hub sign-kmod` and `kmm-hub sign-image`.

use std::{
    io::{self, Write},
    path::PathBuf,
};

use super::{
    FileError, HashAlgorithm, SignError, Signer,
    image::{ImageError, SignImageSpec, SignedImage, sign_image},
    module::sign_file,
    parallel_map,
};

/// `kmm-hub sign-kmod`: sign kernel modules in place.
#[derive(clap::Args, Debug)]
pub struct SignKmodArgs {
    /// RSA private key, PEM (PKCS#1 or PKCS#8) or DER.
    #[arg(long)]
    pub key: PathBuf,
    /// X.509 certificate of the key, PEM or DER.
    #[arg(long)]
    pub cert: PathBuf,
    /// Digest algorithm: sha256, sha384 or sha512.
    #[arg(long, default_value = "sha256")]
    pub hash: HashAlgorithm,
    /// Replace the signature of modules that are already signed (refused otherwise).
    #[arg(long)]
    pub replace: bool,
    /// The modules (`.ko` files) to sign.
    #[arg(required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
}

/// Signs every file; a bad key or certificate is an error, a file that cannot be signed is
/// reported on `err` and the others are still signed. Returns whether all were signed.
pub fn sign_kmod(args: &SignKmodArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<bool, SignError> {
    let signer = Signer::from_files(&args.key, &args.cert)?;
    let results = parallel_map(&args.files, |path| {
        sign_file(&signer, path, args.hash, args.replace)
    });
    let mut all = true;
    for (path, result) in args.files.iter().zip(results) {
        match result {
            Ok(()) => writeln!(out, "signed {} ({})", path.display(), args.hash),
            Err(source) => {
                all = false;
                writeln!(
                    err,
                    "{}",
                    FileError {
                        path: path.clone(),
                        source
                    }
                )
            }
        }
        .map_err(|e| SignError::io("write to", "standard output", e))?;
    }
    Ok(all)
}

/// `kmm-hub sign-image`: the sign Job's command. Settings come from `--config` (YAML or JSON,
/// the fields of [`SignImageSpec`]) and flags, flags winning.
#[derive(clap::Args, Debug, Default)]
pub struct SignImageArgs {
    /// A YAML or JSON file with any of the settings below (camelCase names, as in the Module).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The image holding the unsigned modules.
    #[arg(long)]
    pub unsigned_image: Option<String>,
    /// The image to push (the Module's containerImage).
    #[arg(long)]
    pub image: Option<String>,
    /// A file to sign: absolute path in the image, shell glob (repeat for more).
    #[arg(long = "file-to-sign")]
    pub files_to_sign: Vec<String>,
    /// RSA private key file (PEM or DER).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Certificate file (PEM or DER).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Digest algorithm: sha256 (default), sha384 or sha512.
    #[arg(long)]
    pub hash: Option<HashAlgorithm>,
    /// Replace existing module signatures instead of failing.
    #[arg(long)]
    pub replace: bool,
    /// Pull the unsigned image over plain HTTP.
    #[arg(long)]
    pub unsigned_image_insecure: bool,
    /// Pull the unsigned image without verifying the registry's certificate.
    #[arg(long)]
    pub unsigned_image_insecure_skip_tls_verify: bool,
    /// Push over plain HTTP.
    #[arg(long)]
    pub insecure: bool,
    /// Push without verifying the registry's certificate.
    #[arg(long)]
    pub insecure_skip_tls_verify: bool,
    /// Docker config file with registry credentials (`.dockerconfigjson`).
    #[arg(long)]
    pub docker_config: Option<PathBuf>,
    /// Fetch foreign layers from the URLs their descriptors name (off: such an image is refused).
    #[arg(long)]
    pub allow_foreign_layers: bool,
}

impl SignImageArgs {
    /// The spec: the config file (if any) overridden by the flags given.
    pub fn spec(&self) -> Result<SignImageSpec, ImageError> {
        let mut spec = match &self.config {
            None => SignImageSpec::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ImageError::Spec(format!("cannot read {}: {e}", path.display())))?;
                serde_saphyr::from_str(&text)
                    .map_err(|e| ImageError::Spec(format!("{}: {e}", path.display())))?
            }
        };
        if let Some(v) = &self.unsigned_image {
            spec.unsigned_image.clone_from(v);
        }
        if let Some(v) = &self.image {
            spec.image.clone_from(v);
        }
        if !self.files_to_sign.is_empty() {
            spec.files_to_sign.clone_from(&self.files_to_sign);
        }
        if let Some(v) = &self.key {
            spec.key.clone_from(v);
        }
        if let Some(v) = &self.cert {
            spec.cert.clone_from(v);
        }
        if let Some(v) = self.hash {
            spec.hash = v;
        }
        spec.replace |= self.replace;
        spec.allow_foreign_layers |= self.allow_foreign_layers;
        spec.unsigned_image_registry_tls.insecure |= self.unsigned_image_insecure;
        spec.unsigned_image_registry_tls.insecure_skip_tls_verify |=
            self.unsigned_image_insecure_skip_tls_verify;
        spec.registry_tls.insecure |= self.insecure;
        spec.registry_tls.insecure_skip_tls_verify |= self.insecure_skip_tls_verify;
        if self.docker_config.is_some() {
            spec.docker_config.clone_from(&self.docker_config);
        }
        for (value, name) in [(&spec.key, "key"), (&spec.cert, "cert")] {
            if value.as_os_str().is_empty() {
                return Err(ImageError::Spec(format!("{name} is not set")));
            }
        }
        Ok(spec)
    }
}

/// Runs `sign-image`: prints the pushed digest on `out` (alone, for scripts) and what was
/// signed on `err`.
pub async fn run_sign_image(
    args: &SignImageArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<SignedImage, ImageError> {
    let spec = args.spec()?;
    let result = sign_image(&spec).await?;
    let print = |out: &mut dyn Write, err: &mut dyn Write| -> io::Result<()> {
        for path in &result.signed {
            writeln!(err, "signed {path} ({})", spec.hash)?;
        }
        for pattern in &result.unmatched {
            writeln!(err, "warning: no file matches {pattern}")?;
        }
        writeln!(err, "pushed {}@{}", spec.image, result.digest)?;
        writeln!(out, "{}", result.digest)
    };
    print(out, err).map_err(|e| ImageError::Spec(format!("cannot write the result: {e}")))?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sign.yaml");
        std::fs::write(
            &config,
            "unsignedImage: r/a:1\nimage: r/a:signed\nfilesToSign: [/opt/a.ko]\nkey: /k\ncert: /c\nregistryTLS: {insecure: true}\n",
        )
        .unwrap();
        let args = SignImageArgs {
            config: Some(config),
            image: Some("r/b:signed".to_owned()),
            files_to_sign: vec!["/opt/*.ko".to_owned()],
            hash: Some(HashAlgorithm::Sha384),
            unsigned_image_insecure: true,
            ..Default::default()
        };
        let spec = args.spec().unwrap();
        assert_eq!(spec.unsigned_image, "r/a:1");
        assert_eq!(spec.image, "r/b:signed");
        assert_eq!(spec.files_to_sign, vec!["/opt/*.ko"]);
        assert_eq!(spec.hash, HashAlgorithm::Sha384);
        assert!(spec.registry_tls.insecure && spec.unsigned_image_registry_tls.insecure);
        assert_eq!(spec.key, PathBuf::from("/k"));
    }

    #[test]
    fn a_missing_key_or_unknown_config_field_is_an_error() {
        let args = SignImageArgs {
            cert: Some("/c".into()),
            ..Default::default()
        };
        assert!(args.spec().unwrap_err().to_string().contains("key is not set"));
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sign.yaml");
        std::fs::write(&config, "keySecret: x\n").unwrap();
        let args = SignImageArgs {
            config: Some(config),
            ..Default::default()
        };
        assert!(matches!(args.spec(), Err(ImageError::Spec(_))));
    }
}
