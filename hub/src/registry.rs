//! Tag-to-digest resolution for every image a spoke pulls: one HEAD request per unique image
//! reference per TTL, however many clusters need it, with concurrent callers for the same image
//! sharing one request.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use kmm_api::{image::split_tag, module::TlsOptions};
use oci_client::{
    Client, Reference,
    client::{ClientConfig, ClientProtocol},
    errors::{OciDistributionError, OciErrorCode},
    secrets::RegistryAuth,
};
use thiserror::Error;
use tokio::sync::{Mutex, OnceCell};

/// Why an image could not be pinned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegistryError {
    /// The reference does not parse.
    #[error("{image} is not a valid image reference: {reason}")]
    InvalidReference { image: String, reason: String },
    /// The registry does not have this tag (yet).
    #[error("{image} does not exist in its registry")]
    NotFound { image: String },
    /// The registry refused the credentials (or their absence).
    #[error("the registry refused access to {image}: {reason}")]
    Unauthorized { image: String, reason: String },
    /// Anything else: the registry is unreachable or answered with an error.
    #[error("cannot look up {image}: {reason}")]
    Lookup { image: String, reason: String },
}

impl RegistryError {
    /// Worth retrying soon (as opposed to an error in the spec or the credentials).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Lookup { .. })
    }
}

/// One cached lookup; its cell is filled by the first caller, later callers wait for it.
struct Entry {
    created: Instant,
    digest: OnceCell<String>,
}

/// Resolves image references to `repository@sha256:...`, caching by reference.
pub struct DigestResolver {
    verify: Client,
    skip_verify: Client,
    plain_http: Client,
    ttl: Duration,
    cache: Mutex<HashMap<String, Arc<Entry>>>,
    requests: AtomicU64,
    lookups: AtomicU64,
    insecure_hosts: Vec<String>,
}

impl DigestResolver {
    /// A resolver whose answers are trusted for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        let tls = |insecure, insecure_skip_tls_verify| TlsOptions {
            insecure,
            insecure_skip_tls_verify,
        };
        Self {
            verify: client(&tls(false, false)),
            skip_verify: client(&tls(false, true)),
            plain_http: client(&tls(true, false)),
            ttl,
            cache: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
            insecure_hosts: Vec::new(),
        }
    }

    /// Registries (`host` or `host:port`) reached over plain HTTP whatever an MCM says: the
    /// device plugin's images, for one, have no `registryTLS` field in the Module API.
    pub fn with_insecure_hosts(mut self, hosts: Vec<String>) -> Self {
        self.insecure_hosts = hosts;
        self
    }

    /// Registry requests made so far (cache misses), for metrics and benchmarks.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// Lookups asked for so far, cache hits included.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// `image` pinned to its digest. An image already given by digest is returned as it is.
    pub async fn pin(
        &self,
        image: &str,
        tls: &TlsOptions,
        auth: &RegistryAuth,
    ) -> Result<String, RegistryError> {
        let reference: Reference =
            image
                .parse()
                .map_err(|e: oci_client::ParseError| RegistryError::InvalidReference {
                    image: image.to_owned(),
                    reason: e.to_string(),
                })?;
        if reference.digest().is_some() {
            return Ok(image.to_owned());
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let entry = {
            let mut cache = self.cache.lock().await;
            let fresh = cache
                .get(image)
                .filter(|e| e.created.elapsed() < self.ttl)
                .cloned();
            match fresh {
                Some(entry) => entry,
                None => {
                    let entry = Arc::new(Entry {
                        created: Instant::now(),
                        digest: OnceCell::new(),
                    });
                    cache.insert(image.to_owned(), entry.clone());
                    entry
                }
            }
        };
        let digest = entry
            .digest
            .get_or_try_init(|| async {
                self.lookups.fetch_add(1, Ordering::Relaxed);
                let insecure = tls.insecure || self.insecure_hosts.iter().any(|h| h == reference.registry());
                let client = match (insecure, tls.insecure_skip_tls_verify) {
                    (true, _) => &self.plain_http,
                    (false, true) => &self.skip_verify,
                    (false, false) => &self.verify,
                };
                client
                    .fetch_manifest_digest(&reference, auth)
                    .await
                    .map_err(|e| classify(image, e))
            })
            .await?;
        Ok(format!("{}@{digest}", split_tag(image).0))
    }
}

/// An OCI client for a registry reached as `tls` says: plain HTTP when `insecure`, HTTPS
/// otherwise, without certificate checks when `insecureSkipTLSVerify`.
pub fn client(tls: &TlsOptions) -> Client {
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

fn classify(image: &str, error: OciDistributionError) -> RegistryError {
    let image = image.to_owned();
    match error {
        OciDistributionError::ImageManifestNotFoundError(_)
        | OciDistributionError::ServerError { code: 404, .. } => RegistryError::NotFound { image },
        OciDistributionError::RegistryError { ref envelope, .. }
            if envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown)) =>
        {
            RegistryError::NotFound { image }
        }
        OciDistributionError::AuthenticationFailure(reason) => RegistryError::Unauthorized { image, reason },
        OciDistributionError::UnauthorizedError { .. } => RegistryError::Unauthorized {
            image,
            reason: error.to_string(),
        },
        other => RegistryError::Lookup {
            image,
            reason: error_chain(&other),
        },
    }
}

/// An error and its sources, `: `-separated: registry errors hide the useful part in a source.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
