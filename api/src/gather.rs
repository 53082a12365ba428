//! Support bundles (`kmm-hub gather`, `kmm-spoke gather`): a directory of YAML objects and log
//! tails with a `manifest.yaml` of what was collected and what failed. Shared here so both
//! programs redact the same way: Secrets are never listed, Secret manifests embedded in other
//! objects (a ManifestWork's payload) lose their data, and strings that look like credentials
//! are masked wherever they appear. Logs are bounded (last lines and bytes).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::LazyLock,
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, LogParams},
};
use regex::Regex;
use serde::Serialize;
use serde_json::Value;

/// What replaces a redacted value.
pub const REDACTED: &str = "<redacted>";

/// One API resource to collect: group, version, kind and plural.
#[derive(Clone, Copy, Debug)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

impl Kind {
    pub const fn new(
        group: &'static str,
        version: &'static str,
        kind: &'static str,
        plural: &'static str,
    ) -> Self {
        Self {
            group,
            version,
            kind,
            plural,
        }
    }

    fn resource(self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }
}

pub const PODS: Kind = Kind::new("", "v1", "Pod", "pods");
pub const EVENTS: Kind = Kind::new("", "v1", "Event", "events");
pub const NODES: Kind = Kind::new("", "v1", "Node", "nodes");
pub const CONFIGMAPS: Kind = Kind::new("", "v1", "ConfigMap", "configmaps");
pub const JOBS: Kind = Kind::new("batch", "v1", "Job", "jobs");
pub const DEPLOYMENTS: Kind = Kind::new("apps", "v1", "Deployment", "deployments");
pub const DAEMONSETS: Kind = Kind::new("apps", "v1", "DaemonSet", "daemonsets");

/// How much of each log is kept.
#[derive(Clone, Copy, Debug)]
pub struct LogBounds {
    pub lines: i64,
    pub bytes: i64,
}

impl Default for LogBounds {
    fn default() -> Self {
        Self {
            lines: 500,
            bytes: 256 * 1024,
        }
    }
}

/// One line of the manifest.
#[derive(Debug, Serialize)]
pub struct Entry {
    pub path: String,
    pub what: String,
    /// Objects written (for lists) or bytes (for logs and text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A bundle being written into a directory.
pub struct Bundle {
    dir: PathBuf,
    entries: Vec<Entry>,
}

impl Bundle {
    /// Starts a bundle in `dir`, which must not exist yet or be empty (nothing is overwritten).
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not empty", dir.display()),
            ));
        }
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            entries: Vec::new(),
        })
    }

    /// Lists `kind` (in `namespace`, or everywhere; with a label `selector`), writes the
    /// redacted objects as one YAML stream to `path`, and returns them. A failure is recorded
    /// in the manifest, not returned: a bundle collects what it can.
    pub async fn objects(
        &mut self,
        client: &Client,
        path: &str,
        kind: Kind,
        namespace: Option<&str>,
        selector: Option<&str>,
    ) -> Vec<DynamicObject> {
        let resource = kind.resource();
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let params = selector.map_or_else(ListParams::default, |s| ListParams::default().labels(s));
        let what = format!(
            "{} {}{}",
            kind.plural,
            namespace.map_or_else(|| "in every namespace".to_owned(), |ns| format!("in {ns}")),
            selector.map(|s| format!(" with {s}")).unwrap_or_default()
        );
        match api.list(&params).await {
            Ok(list) => {
                let objects: Vec<DynamicObject> = list.items;
                let mut text = String::new();
                for object in &objects {
                    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
                    if let Value::Object(map) = &mut value {
                        map.insert("apiVersion".into(), resource.api_version.clone().into());
                        map.insert("kind".into(), kind.kind.into());
                    }
                    scrub(&mut value);
                    text.push_str("---\n");
                    text.push_str(&serde_saphyr::to_string(&value).unwrap_or_default());
                }
                self.write(path, &what, &text, Some(objects.len()));
                objects
            }
            Err(e) => {
                self.failed(path, &what, &e.to_string());
                Vec::new()
            }
        }
    }

    /// The redacted log tail of every container of `pods`, one file each under `dir`.
    pub async fn pod_logs(&mut self, client: &Client, dir: &str, pods: &[DynamicObject], bounds: LogBounds) {
        for pod in pods {
            let (Some(ns), Some(name)) = (pod.metadata.namespace.as_deref(), pod.metadata.name.as_deref())
            else {
                continue;
            };
            let api: Api<Pod> = Api::namespaced(client.clone(), ns);
            for container in containers(&pod.data) {
                let path = format!("{dir}/{ns}/{name}/{container}.log");
                let what = format!(
                    "log of {ns}/{name} container {container} (last {} lines)",
                    bounds.lines
                );
                let params = LogParams {
                    container: Some(container.clone()),
                    tail_lines: Some(bounds.lines),
                    limit_bytes: Some(bounds.bytes),
                    ..LogParams::default()
                };
                match api.logs(name, &params).await {
                    Ok(log) => self.write(&path, &what, &redact_text(&log), None),
                    Err(e) => self.failed(&path, &what, &e.to_string()),
                }
            }
        }
    }

    /// Writes `text` (redacted) to `path`.
    pub fn text(&mut self, path: &str, what: &str, text: &str) {
        self.write(path, what, &redact_text(text), None);
    }

    /// Records something that could not be collected.
    pub fn failed(&mut self, path: &str, what: &str, error: &str) {
        self.entries.push(Entry {
            path: path.to_owned(),
            what: what.to_owned(),
            count: None,
            error: Some(redact_text(error)),
        });
    }

    fn write(&mut self, path: &str, what: &str, text: &str, count: Option<usize>) {
        let file = self.dir.join(path);
        let written = file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&file, text));
        self.entries.push(Entry {
            path: path.to_owned(),
            what: what.to_owned(),
            count: Some(count.unwrap_or(text.len())),
            error: written.err().map(|e| e.to_string()),
        });
    }

    /// Writes `manifest.yaml` (every entry, failures included); returns the bundle's folder.
    pub fn finish(self) -> std::io::Result<PathBuf> {
        let failed = self.entries.iter().filter(|e| e.error.is_some()).count();
        let mut text = format!(
            "# What this bundle holds: {} entries, {failed} failed. Secrets are never collected;\n\
             # values that look like credentials read {REDACTED}.\n",
            self.entries.len()
        );
        let _ = write!(
            text,
            "{}",
            serde_saphyr::to_string(&self.entries).unwrap_or_default()
        );
        std::fs::write(self.dir.join("manifest.yaml"), text)?;
        Ok(self.dir)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

/// Names of a pod's init and app containers.
fn containers(pod: &Value) -> Vec<String> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod["spec"][k].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

/// Removes what only adds bulk (managedFields, a node's image list) and redacts credentials.
pub fn scrub(value: &mut Value) {
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    if let Some(status) = value.get_mut("status").and_then(Value::as_object_mut) {
        status.remove("images");
    }
    redact_value(value);
}

/// Keys whose values are credentials, whatever object they are in.
fn secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "token",
        "secret",
        "apikey",
        "api_key",
        "private",
        ".dockerconfigjson",
        ".dockercfg",
        "auth",
    ]
    .iter()
    .any(|s| k.contains(s))
        && !k.ends_with("name")
        && !k.ends_with("ref")
        && !k.ends_with("secrets")
}

/// Redacts in place: the `data`/`stringData` of any embedded Secret, string values under
/// credential-like keys, and credential-looking text in every string.
pub fn redact_value(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("kind").and_then(Value::as_str) == Some("Secret") {
                for field in ["data", "stringData"] {
                    if let Some(Value::Object(data)) = map.get_mut(field) {
                        for v in data.values_mut() {
                            *v = REDACTED.into();
                        }
                    }
                }
            }
            for (key, v) in map.iter_mut() {
                if v.is_string() && secret_key(key) {
                    *v = REDACTED.into();
                } else {
                    redact_value(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_value),
        Value::String(s) => {
            let redacted = redact_text(s);
            if redacted != *s {
                *s = redacted;
            }
        }
        _ => {}
    }
}

static PATTERNS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        // PEM private keys, whole blocks.
        (
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
            "<redacted private key>",
        ),
        // Authorization headers and bearer tokens.
        (r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/=]{8,}", "$1 <redacted>"),
        // key=value and key: value with a credential-like key.
        (
            r#"(?i)\b([a-z_\-]*(?:password|passwd|token|secret|api[_-]?key|auth)[a-z_\-]*)(["']?\s*[:=]\s*["']?)[^\s"',;}]+"#,
            "$1$2<redacted>",
        ),
        // user:password@ in URLs.
        (r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s:@]+:[^/\s@]+@", "$1<redacted>@"),
        // JSON web tokens (ServiceAccount tokens).
        (r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}", "<redacted token>"),
    ]
    .into_iter()
    .filter_map(|(re, with)| Regex::new(re).ok().map(|re| (re, with)))
    .collect()
});

/// Masks credentials in free text (logs, messages, annotations).
pub fn redact_text(text: &str) -> String {
    let mut out = text.to_owned();
    for (re, with) in PATTERNS.iter() {
        if re.is_match(&out) {
            out = re.replace_all(&out, *with).into_owned();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn embedded_secrets_lose_their_data_and_credential_fields_their_values() {
        let mut work = json!({
            "kind": "ManifestWork",
            "spec": {"workload": {"manifests": [
                {"kind": "Secret", "metadata": {"name": "pull"}, "data": {".dockerconfigjson": "c2VjcmV0"}},
                {"kind": "Module", "spec": {"imageRepoSecret": {"name": "pull"}, "token": "abc"}},
            ]}},
        });
        redact_value(&mut work);
        let manifests = &work["spec"]["workload"]["manifests"];
        assert_eq!(manifests[0]["data"][".dockerconfigjson"], REDACTED);
        assert_eq!(manifests[1]["spec"]["imageRepoSecret"]["name"], "pull");
        assert_eq!(manifests[1]["spec"]["token"], REDACTED);
    }

    #[test]
    fn text_keeps_its_sense_but_not_the_credentials() {
        let text = "pull failed: Authorization: Bearer abcdefghijklmnop for https://user:hunter2@r.example/v2 \
                    password=hunter2 token: \"s3cr3t-value\"\n\
                    -----BEGIN PRIVATE KEY-----\nMIIEvQ\nabc\n-----END PRIVATE KEY-----\nkmm_absent not found";
        let out = redact_text(text);
        for secret in ["abcdefghijklmnop", "hunter2", "s3cr3t-value", "MIIEvQ"] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(out.contains("kmm_absent not found"), "{out}");
        assert!(out.contains("https://<redacted>@r.example/v2"), "{out}");
        assert_eq!(redact_text("module kmm_fleet loaded"), "module kmm_fleet loaded");
    }
}
