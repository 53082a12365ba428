//! Kernel module signing, in pure Rust: what the kernel's `scripts/sign-file` writes, byte for
//! byte, and the two commands built on it.
//!
//! - [`module`]: the appended signature format (CMS SignedData, `module_signature` info block,
//!   `~Module signature appended~\n` marker): sign, detect, strip.
//! - [`keys`]: the signing key and certificate (RSA, PEM or DER), checked against each other.
//! - [`limits`]: what sign-image accepts from a registry: declared sizes, foreign layers, expansion.
//! - [`layers`]: the files of an image's layers that match `filesToSign`, and the new layer.
//! - [`image`]: `kmm-hub sign-image`, which signs the modules of a container image and pushes
//!   the result with the signed files as one new layer.
//! - [`cli`]: the arguments of `kmm-hub sign-kmod` and `kmm-hub sign-image`.
//!
//! Keys are read into zeroizing buffers, the parsed key is zeroized when dropped, and nothing
//! here logs or prints key material (the [`Signer`] `Debug` output names the certificate only).

pub mod cli;
pub mod image;
pub mod keys;
pub mod layers;
pub mod limits;
pub mod module;
pub mod new_layer;

use std::{fmt, path::PathBuf, str::FromStr};

use thiserror::Error;

pub use keys::Signer;
pub use module::{MARKER, is_signed, strip_signature};

/// The digest algorithms sign-file accepts and the kernel verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HashAlgorithm {
    /// SHA-256 (what KMM upstream always uses).
    #[default]
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlgorithm {
    /// Every supported algorithm.
    pub const ALL: [Self; 3] = [Self::Sha256, Self::Sha384, Self::Sha512];

    /// The name sign-file and modinfo use (`sha256`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlgorithm {
    type Err = SignError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|h| h.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| SignError::UnsupportedHash(s.to_owned()))
    }
}

/// Why a key, a certificate or a module cannot be used.
#[derive(Debug, Error)]
pub enum SignError {
    /// A file cannot be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The key file holds no private key we can parse (corrupted, truncated, not a key).
    #[error("the signing key is not a valid RSA private key (PEM PKCS#1/PKCS#8 or DER): {0}")]
    InvalidKey(String),
    /// The key file holds a key of a type the signer does not support.
    #[error("unsupported key type: {0}; only unencrypted RSA keys are supported")]
    UnsupportedKeyType(String),
    /// The certificate file holds no X.509 certificate we can parse.
    #[error("the certificate is not a valid X.509 certificate (PEM or DER): {0}")]
    InvalidCertificate(String),
    /// The key is not the private half of the certificate's public key.
    #[error("the signing key does not match the certificate ({subject})")]
    KeyMismatch { subject: String },
    /// Not one of sha256, sha384, sha512.
    #[error("unsupported hash algorithm {0:?}; use sha256, sha384 or sha512")]
    UnsupportedHash(String),
    /// The module already carries a signature and replacing it was not asked for.
    #[error("the module is already signed (use --replace to replace its signature)")]
    AlreadySigned,
    /// The module ends with the marker but its signature block is inconsistent.
    #[error("the module's existing signature is malformed: {0}")]
    MalformedSignature(String),
    /// The file is not an ELF object, so not a kernel module.
    #[error("not a kernel module (no ELF header)")]
    NotAModule,
    /// RSA signing or DER encoding failed.
    #[error("signing failed: {0}")]
    Crypto(String),
}

impl SignError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// An error about one file.
#[derive(Debug, Error)]
#[error("{}: {source}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    #[source]
    pub source: SignError,
}

/// `f` over `items` on up to `available_parallelism` threads; results in the order of `items`.
/// Signing is CPU-bound (one RSA private-key operation per module), so an image or a command
/// line with many modules signs them in parallel.
pub(crate) fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads <= 1 || items.len() <= 1 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_map_keeps_the_order() {
        let items: Vec<u32> = (0..103).collect();
        assert_eq!(
            parallel_map(&items, |i| i * 2),
            items.iter().map(|i| i * 2).collect::<Vec<_>>()
        );
        assert!(parallel_map(&[] as &[u32], |i| *i).is_empty());
    }

    #[test]
    fn hash_names_round_trip_and_unknown_ones_are_refused() {
        for h in HashAlgorithm::ALL {
            assert_eq!(h.name().parse::<HashAlgorithm>().unwrap(), h);
        }
        assert_eq!("SHA512".parse::<HashAlgorithm>().unwrap(), HashAlgorithm::Sha512);
        let err = "sha1".parse::<HashAlgorithm>().unwrap_err();
        assert!(err.to_string().contains("\"sha1\""), "{err}");
    }
}
