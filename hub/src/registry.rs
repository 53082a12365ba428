//! Tag-to-digest resolution for every image a spoke pulls: one HEAD request per unique image
//! reference per TTL, however many clusters need it, with concurrent callers for the same image
//! sharing one request.
//!
//! An answer is only reused for the same question: the cache key holds the image, how the
//! registry is reached (plain HTTP, TLS without verification, verified TLS) and which credential
//! asked (a keyed hash of it, never the credential), so a digest read over plain HTTP or with
//! another MCM's secret is never served to an MCM that did not ask that way. "Not found" is
//! remembered too, for a backoff that doubles per miss up to [`MISS_BACKOFF_MAX`], so invented
//! kernels cannot turn every retry into registry traffic. Both maps are bounded
//! ([`MAX_ENTRIES`]): expired entries go first, then the oldest.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
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

/// Most cached answers (and, separately, remembered misses) kept at once.
pub const MAX_ENTRIES: usize = 4096;
/// The first wait after a "not found" before asking again.
pub const MISS_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest wait after repeated "not found": a freshly pushed image is seen within it.
pub const MISS_BACKOFF_MAX: Duration = Duration::from_secs(8);

/// What one cached answer answers: the image, asked how and by whom.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub image: String,
    /// Plain HTTP (after `--insecure-registry` hosts are applied).
    pub insecure: bool,
    pub skip_verify: bool,
    /// Keyed hash of the credential (0 for anonymous).
    pub credential: u64,
}

/// The hash standing for `auth` in cache keys: keyed per process, so it says nothing about the
/// credential outside it.
pub fn credential_id(hasher: &RandomState, auth: &RegistryAuth) -> u64 {
    match auth {
        RegistryAuth::Anonymous => 0,
        RegistryAuth::Basic(user, password) => hasher.hash_one(("basic", user, password)),
        RegistryAuth::Bearer(token) => hasher.hash_one(("bearer", token)),
    }
}

/// How long to wait after the `streak`-th miss in a row (1, 2, 4, ... capped).
pub fn miss_backoff(streak: u32) -> Duration {
    let factor = 1u32.checked_shl(streak.saturating_sub(1)).unwrap_or(u32::MAX);
    MISS_BACKOFF_MIN.saturating_mul(factor).min(MISS_BACKOFF_MAX)
}

/// Makes room for one more entry in `map`: drops the stale ones (`stale(entry)`), then, if still
/// full, the one `age` says is oldest.
pub fn make_room<V>(
    map: &mut HashMap<CacheKey, V>,
    max: usize,
    stale: impl Fn(&V) -> bool,
    age: impl Fn(&V) -> Instant,
) {
    if map.len() < max {
        return;
    }
    map.retain(|_, v| !stale(v));
    while map.len() >= max {
        let Some(oldest) = map.iter().min_by_key(|(_, v)| age(v)).map(|(k, _)| k.clone()) else {
            return;
        };
        map.remove(&oldest);
    }
}

/// One cached lookup; its cell is filled by the first caller, later callers wait for it.
struct Entry {
    created: Instant,
    digest: OnceCell<String>,
}

/// A remembered "not found": ask again after `until`.
struct Miss {
    at: Instant,
    until: Instant,
    streak: u32,
}

/// Resolves image references to `repository@sha256:...`, caching by reference.
pub struct DigestResolver {
    verify: Client,
    skip_verify: Client,
    plain_http: Client,
    ttl: Duration,
    cache: Mutex<HashMap<CacheKey, Arc<Entry>>>,
    misses: Mutex<HashMap<CacheKey, Miss>>,
    hasher: RandomState,
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
            misses: Mutex::new(HashMap::new()),
            hasher: RandomState::new(),
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

    /// Forgets the misses remembered for `image` (under any TLS mode or credential): the hub
    /// has reason to think it now exists (a Job of its own may just have pushed it).
    pub async fn forget_misses(&self, image: &str) {
        self.misses.lock().await.retain(|key, _| key.image != image);
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
        let insecure = tls.insecure || self.insecure_hosts.iter().any(|h| h == reference.registry());
        let key = CacheKey {
            image: image.to_owned(),
            insecure,
            skip_verify: !insecure && tls.insecure_skip_tls_verify,
            credential: credential_id(&self.hasher, auth),
        };
        if self
            .misses
            .lock()
            .await
            .get(&key)
            .is_some_and(|m| Instant::now() < m.until)
        {
            return Err(RegistryError::NotFound {
                image: image.to_owned(),
            });
        }
        let entry = {
            let mut cache = self.cache.lock().await;
            let fresh = cache
                .get(&key)
                .filter(|e| e.created.elapsed() < self.ttl)
                .cloned();
            match fresh {
                Some(entry) => entry,
                None => {
                    let entry = Arc::new(Entry {
                        created: Instant::now(),
                        digest: OnceCell::new(),
                    });
                    let ttl = self.ttl;
                    make_room(
                        &mut cache,
                        MAX_ENTRIES,
                        |e| e.created.elapsed() >= ttl,
                        |e| e.created,
                    );
                    cache.insert(key.clone(), entry.clone());
                    entry
                }
            }
        };
        let looked_up = entry
            .digest
            .get_or_try_init(|| async {
                self.lookups.fetch_add(1, Ordering::Relaxed);
                let client = match (key.insecure, key.skip_verify) {
                    (true, _) => &self.plain_http,
                    (false, true) => &self.skip_verify,
                    (false, false) => &self.verify,
                };
                client
                    .fetch_manifest_digest(&reference, auth)
                    .await
                    .map_err(|e| classify(image, e))
            })
            .await;
        let mut misses = self.misses.lock().await;
        match looked_up {
            Ok(digest) => {
                misses.remove(&key);
                Ok(format!("{}@{digest}", split_tag(image).0))
            }
            Err(e) => {
                if matches!(e, RegistryError::NotFound { .. }) {
                    let now = Instant::now();
                    let streak = misses.get(&key).map_or(1, |m| m.streak.saturating_add(1));
                    make_room(&mut misses, MAX_ENTRIES, |m| m.until <= now, |m| m.at);
                    misses.insert(
                        key,
                        Miss {
                            at: now,
                            until: now + miss_backoff(streak),
                            streak,
                        },
                    );
                }
                Err(e)
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(image: &str, credential: u64) -> CacheKey {
        CacheKey {
            image: image.into(),
            insecure: false,
            skip_verify: false,
            credential,
        }
    }

    #[test]
    fn credentials_are_told_apart_without_being_kept() {
        let h = RandomState::new();
        let a = RegistryAuth::Basic("team-a".into(), "secret-a".into());
        let b = RegistryAuth::Basic("team-b".into(), "secret-b".into());
        assert_eq!(credential_id(&h, &RegistryAuth::Anonymous), 0);
        assert_ne!(credential_id(&h, &a), credential_id(&h, &b));
        assert_ne!(credential_id(&h, &a), 0);
        assert_eq!(credential_id(&h, &a), credential_id(&h, &a));
        let k = format!("{:?}", key("img", credential_id(&h, &a)));
        assert!(!k.contains("secret-a") && !k.contains("team-a"), "{k}");
    }

    #[tokio::test]
    async fn a_digest_asked_over_plain_http_is_not_served_to_a_tls_caller() {
        let resolver = DigestResolver::new(Duration::from_secs(60));
        // Nothing listens on port 1: any real lookup fails at once.
        let image = "127.0.0.1:1/kmod:1";
        let plain = key(image, 0);
        let plain = CacheKey {
            insecure: true,
            ..plain
        };
        let cell = OnceCell::new();
        cell.set("sha256:abc".to_string()).unwrap();
        resolver.cache.lock().await.insert(
            plain,
            Arc::new(Entry {
                created: Instant::now(),
                digest: cell,
            }),
        );
        // The TLS caller must not get the plain-HTTP answer: it asks the (absent) registry.
        let tls = TlsOptions::default();
        let got = resolver.pin(image, &tls, &RegistryAuth::Anonymous).await;
        assert!(got.is_err());
        let got = resolver
            .pin(
                image,
                &TlsOptions {
                    insecure: true,
                    ..tls
                },
                &RegistryAuth::Anonymous,
            )
            .await;
        assert_eq!(got.unwrap(), "127.0.0.1:1/kmod@sha256:abc");
        let creds = RegistryAuth::Basic("u".into(), "p".into());
        let with_creds = resolver
            .pin(
                image,
                &TlsOptions {
                    insecure: true,
                    ..tls
                },
                &creds,
            )
            .await;
        assert!(
            with_creds.is_err(),
            "another credential asks again: {with_creds:?}"
        );
    }

    #[test]
    fn misses_back_off_doubling_up_to_the_cap() {
        assert_eq!(miss_backoff(1), MISS_BACKOFF_MIN);
        assert_eq!(miss_backoff(2), MISS_BACKOFF_MIN * 2);
        assert_eq!(miss_backoff(4), MISS_BACKOFF_MIN * 8);
        assert_eq!(miss_backoff(40), MISS_BACKOFF_MAX);
        assert_eq!(miss_backoff(u32::MAX), MISS_BACKOFF_MAX);
    }

    #[test]
    fn the_cache_is_bounded_stale_first_then_oldest() {
        let t0 = Instant::now();
        let mut map: HashMap<CacheKey, (Instant, bool)> = HashMap::new();
        for i in 0..4u64 {
            map.insert(key("i", i), (t0 + Duration::from_secs(i), i == 2));
        }
        make_room(&mut map, 4, |v| v.1, |v| v.0);
        assert_eq!(map.len(), 3);
        assert!(!map.contains_key(&key("i", 2)), "the stale one went");
        map.insert(key("i", 9), (t0 + Duration::from_secs(9), false));
        make_room(&mut map, 4, |v| v.1, |v| v.0);
        assert!(!map.contains_key(&key("i", 0)), "then the oldest");
        assert_eq!(map.len(), 3);
    }
}
