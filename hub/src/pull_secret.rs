//! Registry credentials from a Kubernetes pull secret (`imageRepoSecret`): a
//! `kubernetes.io/dockerconfigjson` secret (key `.dockerconfigjson`) or the older
//! `kubernetes.io/dockercfg` one (key `.dockercfg`).
//!
//! Errors land in MCM status and Events, which more people read than the Secret, so they never
//! quote the Secret: no decoder message (those echo the offending input), no character, no
//! offset; only which part is wrong. `Credentials` prints the registries it holds, never what for.

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::STANDARD};
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use thiserror::Error;

/// Why a pull secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PullSecretError {
    /// The secret has neither `.dockerconfigjson` nor `.dockercfg`.
    #[error("the secret has no .dockerconfigjson or .dockercfg key")]
    NoDockerConfig,
    /// The key holds something that is not a Docker config.
    #[error("the secret's Docker config is not valid: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

/// Credentials for every registry a pull secret names.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    by_registry: BTreeMap<String, RegistryAuth>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("registries", &self.by_registry.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What is wrong with a Docker config, without quoting it.
fn json_problem(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => "it is not valid JSON".to_owned(),
        Category::Data => {
            "an entry has the wrong shape (auths maps registries to objects of strings)".to_owned()
        }
        Category::Io => "it cannot be read".to_owned(),
    }
}

impl Credentials {
    /// Reads a secret's data (already base64-decoded, as Kubernetes clients return it).
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, PullSecretError> {
        let (raw, legacy) = match (data.get(".dockerconfigjson"), data.get(".dockercfg")) {
            (Some(raw), _) => (raw, false),
            (None, Some(raw)) => (raw, true),
            (None, None) => return Err(PullSecretError::NoDockerConfig),
        };
        let invalid = |e: &serde_json::Error| PullSecretError::Invalid(json_problem(e));
        let auths = if legacy {
            serde_json::from_slice::<BTreeMap<String, AuthEntry>>(raw).map_err(|e| invalid(&e))?
        } else {
            serde_json::from_slice::<DockerConfig>(raw)
                .map_err(|e| invalid(&e))?
                .auths
        };
        let mut by_registry = BTreeMap::new();
        for (server, entry) in auths {
            let registry = normalize_registry(&server);
            let auth = entry_auth(&entry)
                .map_err(|why| PullSecretError::Invalid(format!("the entry for {registry}: {why}")))?;
            by_registry.insert(registry, auth);
        }
        Ok(Self { by_registry })
    }

    /// Credentials for the registry of `image` (anonymous when the secret has none for it).
    pub fn for_image(&self, image: &str) -> RegistryAuth {
        self.by_registry
            .get(&registry_of(image))
            .cloned()
            .unwrap_or(RegistryAuth::Anonymous)
    }
}

fn entry_auth(entry: &AuthEntry) -> Result<RegistryAuth, String> {
    if let Some(token) = entry.identity_token.as_deref().filter(|t| !t.is_empty()) {
        return Ok(RegistryAuth::Bearer(token.to_owned()));
    }
    if let (Some(user), Some(password)) = (&entry.username, &entry.password) {
        return Ok(RegistryAuth::Basic(user.clone(), password.clone()));
    }
    match entry.auth.as_deref().filter(|a| !a.is_empty()) {
        None => Ok(RegistryAuth::Anonymous),
        Some(encoded) => {
            let decoded = STANDARD
                .decode(encoded.trim())
                .map_err(|_| "auth is not base64".to_owned())?;
            let decoded = String::from_utf8(decoded).map_err(|_| "auth is not UTF-8".to_owned())?;
            let (user, password) = decoded.split_once(':').ok_or("auth is not user:password")?;
            Ok(RegistryAuth::Basic(user.to_owned(), password.to_owned()))
        }
    }
}

/// The registry host of an image reference, with Docker Hub's aliases folded together.
fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((host, _)) if host.contains(['.', ':']) || host == "localhost" => normalize_registry(host),
        _ => "docker.io".to_owned(),
    }
}

/// `https://index.docker.io/v1/` and friends become `docker.io`; a scheme and path are dropped.
fn normalize_registry(server: &str) -> String {
    let host = server
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_owned(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(key: &str, json: &str) -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([(key.to_owned(), json.as_bytes().to_vec())])
    }

    #[test]
    fn reads_auth_username_password_and_tokens_per_registry() {
        let auth = STANDARD.encode("robot:s3cret");
        let creds = Credentials::from_secret_data(&secret(
            ".dockerconfigjson",
            &format!(
                r#"{{"auths": {{"quay.io": {{"auth": "{auth}"}},
                   "https://index.docker.io/v1/": {{"username": "hub", "password": "pw"}},
                   "registry.example.com:5000": {{"identitytoken": "tok"}}}}}}"#
            ),
        ))
        .unwrap();
        assert_eq!(
            creds.for_image("quay.io/org/kmod:1"),
            RegistryAuth::Basic("robot".into(), "s3cret".into())
        );
        assert_eq!(
            creds.for_image("library/busybox:1"),
            RegistryAuth::Basic("hub".into(), "pw".into())
        );
        assert_eq!(
            creds.for_image("busybox"),
            RegistryAuth::Basic("hub".into(), "pw".into())
        );
        assert_eq!(
            creds.for_image("registry.example.com:5000/x:1"),
            RegistryAuth::Bearer("tok".into())
        );
        assert_eq!(creds.for_image("ghcr.io/x/y:1"), RegistryAuth::Anonymous);
    }

    #[test]
    fn reads_the_legacy_dockercfg_format() {
        let auth = STANDARD.encode("u:p");
        let creds = Credentials::from_secret_data(&secret(
            ".dockercfg",
            &format!(r#"{{"quay.io": {{"auth": "{auth}"}}}}"#),
        ))
        .unwrap();
        assert_eq!(
            creds.for_image("quay.io/a/b:1"),
            RegistryAuth::Basic("u".into(), "p".into())
        );
    }

    #[test]
    fn bad_secrets_are_errors_not_panics() {
        assert_eq!(
            Credentials::from_secret_data(&BTreeMap::new()),
            Err(PullSecretError::NoDockerConfig)
        );
        let err = Credentials::from_secret_data(&secret(".dockerconfigjson", "not json")).unwrap_err();
        assert!(matches!(err, PullSecretError::Invalid(_)));
        let err = Credentials::from_secret_data(&secret(
            ".dockerconfigjson",
            r#"{"auths": {"quay.io": {"auth": "%%%"}}}"#,
        ))
        .unwrap_err();
        assert!(err.to_string().contains("auth is not base64"), "{err}");
        let no_colon = STANDARD.encode("nocolon");
        let err = Credentials::from_secret_data(&secret(
            ".dockerconfigjson",
            &format!(r#"{{"auths": {{"quay.io": {{"auth": "{no_colon}"}}}}}}"#),
        ))
        .unwrap_err();
        assert!(err.to_string().contains("not user:password"), "{err}");
    }

    #[test]
    fn errors_and_debug_never_quote_the_credential() {
        let leaky = [
            r#"{"auths":{"reg.example":{"auth":"c2VjcmV0$OnBhc3M="}}}"#,
            r#"{"auths":"hunter2-secret"}"#,
            r#"{"auths":{"reg.example":{"auth":"hunter2-secret"#,
        ];
        for json in leaky {
            let err = Credentials::from_secret_data(&secret(".dockerconfigjson", json)).unwrap_err();
            let text = err.to_string();
            assert!(
                !text.contains('$') && !text.contains("hunter2") && !text.contains("offset"),
                "{text}"
            );
        }
        let ok = Credentials::from_secret_data(&secret(
            ".dockerconfigjson",
            r#"{"auths":{"reg.example":{"username":"u","password":"hunter2-secret"}}}"#,
        ))
        .unwrap();
        let debug = format!("{ok:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("reg.example"),
            "{debug}"
        );
    }
}
