//! Real Kubernetes control planes for the tests: `kmm-controlplane up` (tests/controlplane, built
//! from the pinned `k8s.io/kubernetes` and etcd Go modules by `scripts/controlplane-build`) runs
//! etcd, kube-apiserver, kube-controller-manager and kube-scheduler for one cluster on loopback,
//! with a CA, one client-certificate kubeconfig per identity and the apiserver's audit log.
//!
//! [`ControlPlane`] starts one, gives clients and kubeconfigs for its identities (client
//! certificates, or ServiceAccount tokens from the TokenRequest API), applies YAML and CRDs, and
//! reads the audit log: the independent witness of what each client wrote.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use k8s_openapi::{
    api::{authentication::v1::TokenRequest, core::v1::ServiceAccount},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kmm_test_kit::Wait;
use kube::{
    Api, Client, Config,
    api::{DynamicObject, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    core::GroupVersionKind,
    discovery::{ApiCapabilities, ApiResource, Scope},
};
use serde::Deserialize;
use serde_json::Value;

/// Field manager of what the harness applies.
pub const HARNESS_MANAGER: &str = "kmm-fleet-tests";

/// The `kmm-controlplane` binary: `$KMM_CONTROLPLANE_BIN`, or `<target>/controlplane/` as
/// `scripts/controlplane-build` (run by `just test`) leaves it.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Ok(bin) = std::env::var("KMM_CONTROLPLANE_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let bin = kmm_test_kit::controlplane_dir()?.join("kmm-controlplane");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: build it with scripts/controlplane-build (`just test` and `just demo` do)",
        bin.display()
    );
    Ok(bin)
}

/// The kubectl of the control plane's Kubernetes release (a link to `kmm-controlplane`).
pub fn kubectl() -> anyhow::Result<PathBuf> {
    Ok(binary()?.with_file_name("kubectl"))
}

pub use kmm_test_kit::ocm_crds;

/// How a cluster is started.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Admission plugins beyond the default set (the hub: `OwnerReferencesPermissionEnforcement`).
    pub admission_plugins: Vec<String>,
    /// Client-certificate identities: user name and groups.
    pub users: Vec<(String, Vec<String>)>,
    pub apiserver_args: Vec<String>,
    pub controller_manager_args: Vec<String>,
}

impl Options {
    /// An OCM hub as OpenShift runs it: owner-reference permission enforcement on.
    pub fn hub() -> Self {
        Self {
            admission_plugins: vec!["OwnerReferencesPermissionEnforcement".into()],
            ..Self::default()
        }
    }

    pub fn user(mut self, name: &str, groups: &[&str]) -> Self {
        self.users
            .push((name.to_owned(), groups.iter().map(|g| (*g).to_owned()).collect()));
        self
    }
}

/// What `kmm-controlplane up` wrote to `state.json`.
#[derive(Clone, Debug, Deserialize)]
struct State {
    server: String,
    ca: PathBuf,
    kubeconfigs: BTreeMap<String, PathBuf>,
    #[serde(rename = "auditLog")]
    audit_log: PathBuf,
}

/// One running cluster; stopped on drop.
pub struct ControlPlane {
    name: String,
    dir: PathBuf,
    state: State,
    child: Child,
    client: Client,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ControlPlane {
    /// Starts a cluster with its state under `dir` (a fresh folder) and waits until its
    /// apiserver is ready and the `default` ServiceAccount exists (pods can be created).
    pub async fn start(dir: &Path, name: &str, options: Options) -> anyhow::Result<Self> {
        let dir = crate::fresh_dir(
            dir.parent().context("control plane dir has a parent")?,
            &dir.file_name()
                .context("control plane dir has a name")?
                .to_string_lossy(),
        )?;
        let log = std::fs::File::create(dir.join("up.log"))?;
        let mut cmd = Command::new(binary()?);
        cmd.arg("up").arg("--dir").arg(&dir).args(["--name", name]);
        if !options.admission_plugins.is_empty() {
            cmd.arg(format!(
                "--enable-admission-plugins={}",
                options.admission_plugins.join(",")
            ));
        }
        for (user, groups) in &options.users {
            if groups.is_empty() {
                cmd.arg(format!("--user={user}"));
            } else {
                cmd.arg(format!("--user={user}={}", groups.join(",")));
            }
        }
        for a in &options.apiserver_args {
            cmd.arg(format!("--apiserver-arg={a}"));
        }
        for a in &options.controller_manager_args {
            cmd.arg(format!("--kcm-arg={a}"));
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting kmm-controlplane up")?;
        let state_path = dir.join("state.json");
        let deadline = Instant::now() + Duration::from_secs(240);
        let state: State = loop {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "control plane {name} exited ({status}):\n{}",
                    tail(&dir.join("up.log"), 30)
                );
            }
            if let Ok(text) = std::fs::read_to_string(&state_path) {
                break serde_json::from_str(&text).context("reading state.json")?;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "control plane {name} not ready in 240 s:\n{}\n{}",
                    tail(&dir.join("up.log"), 20),
                    tail(&dir.join("kube-apiserver.log"), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let client = client_from(&state.kubeconfigs["admin"]).await?;
        let cp = Self {
            name: name.to_owned(),
            dir,
            state,
            child,
            client,
        };
        cp.wait_for_default_service_account("default").await?;
        Ok(cp)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Restarts kube-apiserver (SIGHUP to `kmm-controlplane up`) and waits until the new one
    /// answers: every client's watch breaks and has to resume from the resourceVersion it had.
    pub async fn restart_apiserver(&self) -> anyhow::Result<()> {
        let count_file = self.dir.join("apiserver-restarts");
        let count = || {
            std::fs::read_to_string(&count_file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .unwrap_or(0)
        };
        let before = count();
        crate::run(Command::new("kill").args(["-HUP", &self.child.id().to_string()]))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while count() <= before || self.client.apiserver_version().await.is_err() {
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver of {} not back in 120 s:\n{}",
                    self.name,
                    self.log_tails(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Discovery and the readiness checks settle a moment after /version answers.
        while self.client.list_api_groups().await.is_err() {
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver of {} serves no discovery:\n{}",
                    self.name,
                    self.log_tails(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// The cluster's folder: logs, kubeconfigs, pki, audit log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn server(&self) -> &str {
        &self.state.server
    }

    /// The CA that signed the apiserver's certificate and every client certificate.
    pub fn ca_path(&self) -> &Path {
        &self.state.ca
    }

    /// A client as `admin` (group `system:masters`).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The admin kubeconfig.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.state.kubeconfigs["admin"]
    }

    /// The kubeconfig of an identity given in [`Options::users`].
    pub fn kubeconfig_as(&self, user: &str) -> anyhow::Result<PathBuf> {
        self.state
            .kubeconfigs
            .get(user)
            .cloned()
            .with_context(|| format!("no identity {user} in control plane {}", self.name))
    }

    /// A client for an identity given in [`Options::users`].
    pub async fn client_as(&self, user: &str) -> anyhow::Result<Client> {
        client_from(&self.kubeconfig_as(user)?).await
    }

    /// A kubeconfig (written under the cluster's folder) that authenticates as ServiceAccount
    /// `namespace/name` with a token from the TokenRequest API (valid for 24 h), as a pod of that
    /// ServiceAccount would. The ServiceAccount is created when missing.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> anyhow::Result<PathBuf> {
        let sas = Api::<ServiceAccount>::namespaced(self.client(), namespace);
        if sas.get_opt(name).await?.is_none() {
            let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": namespace}
            }))?;
            sas.create(&PostParams::default(), &sa).await?;
        }
        let request: TokenRequest = serde_json::from_value(serde_json::json!({
            "spec": {"audiences": [], "expirationSeconds": 86400}
        }))?;
        let token = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("token for {namespace}/{name}"))?
            .status
            .context("token request has a status")?
            .token;
        let path = self.dir.join(format!("sa-{namespace}-{name}.kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: {c}\n  cluster:\n    server: {s}\n    \
                 certificate-authority: {ca}\nusers:\n- name: {namespace}-{name}\n  user:\n    token: {token}\n\
                 contexts:\n- name: {c}\n  context:\n    cluster: {c}\n    user: {namespace}-{name}\n    \
                 namespace: {namespace}\ncurrent-context: {c}\n",
                c = self.name,
                s = self.state.server,
                ca = self.state.ca.display(),
            ),
        )?;
        Ok(path)
    }

    /// Server-side applies every document of `text` (field manager [`HARNESS_MANAGER`],
    /// forced), in order; the objects as stored.
    pub async fn apply_yaml(&self, text: &str) -> anyhow::Result<Vec<DynamicObject>> {
        let mut out = Vec::new();
        for doc in documents(text)? {
            out.push(self.apply_value(&doc).await?);
        }
        Ok(out)
    }

    /// Server-side applies one object given as JSON.
    pub async fn apply_value(&self, doc: &Value) -> anyhow::Result<DynamicObject> {
        let obj: DynamicObject =
            serde_json::from_value(doc.clone()).context("an object with apiVersion and kind")?;
        let types = obj.types.clone().context("the object has apiVersion and kind")?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let (ar, caps) = self.resolve(&gvk).await?;
        let name = obj.metadata.name.clone().context("the object has a name")?;
        let api: Api<DynamicObject> = match (caps.scope, obj.metadata.namespace.as_deref()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client(), ns, &ar),
            (Scope::Namespaced, None) => Api::default_namespaced_with(self.client(), &ar),
            (Scope::Cluster, _) => Api::all_with(self.client(), &ar),
        };
        api.patch(
            &name,
            &PatchParams::apply(HARNESS_MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await
        .with_context(|| format!("applying {} {name} to {}", gvk.kind, self.name))
    }

    async fn resolve(&self, gvk: &GroupVersionKind) -> anyhow::Result<(ApiResource, ApiCapabilities)> {
        // A CRD applied a moment ago may not be in discovery yet: ask again for a while.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match kube::discovery::pinned_kind(&self.client(), gvk).await {
                Ok(found) => return Ok(found),
                Err(e) if Instant::now() > deadline => {
                    return Err(e).with_context(|| format!("{gvk:?} is not served by {}", self.name));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Applies the CRDs in `path` (a file, or every `.yaml` file of a folder) and waits until
    /// each is Established; how many.
    pub async fn install_crds_from_path(&self, path: impl AsRef<Path>) -> anyhow::Result<usize> {
        let path = path.as_ref();
        let mut files = Vec::new();
        if path.is_dir() {
            for entry in std::fs::read_dir(path)? {
                let p = entry?.path();
                if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                    files.push(p);
                }
            }
            files.sort();
        } else {
            files.push(path.to_path_buf());
        }
        let crds = Api::<CustomResourceDefinition>::all(self.client());
        let mut names = Vec::new();
        for file in files {
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            for doc in documents(&text)? {
                if doc.get("kind").and_then(Value::as_str) != Some("CustomResourceDefinition") {
                    continue;
                }
                let crd: CustomResourceDefinition = serde_json::from_value(doc)?;
                let name = crd.metadata.name.clone().context("CRD has a name")?;
                crds.patch(
                    &name,
                    &PatchParams::apply(HARNESS_MANAGER).force(),
                    &Patch::Apply(&crd),
                )
                .await
                .with_context(|| format!("CRD {name} from {} refused by {}", file.display(), self.name))?;
                names.push(name);
            }
        }
        for name in &names {
            let cond = kube::runtime::wait::conditions::is_crd_established();
            tokio::time::timeout(
                Duration::from_secs(30),
                kube::runtime::wait::await_condition(crds.clone(), name, cond),
            )
            .await
            .with_context(|| format!("CRD {name} not Established in 30 s"))??;
        }
        Ok(names.len())
    }

    /// Waits (up to 60 s) until the serviceaccount controller made `default` in `namespace`.
    pub async fn wait_for_default_service_account(&self, namespace: &str) -> anyhow::Result<()> {
        let sas = Api::<ServiceAccount>::namespaced(self.client(), namespace);
        let deadline = Instant::now() + Duration::from_secs(60);
        while sas.get_opt("default").await?.is_none() {
            if Instant::now() > deadline {
                bail!(
                    "no default ServiceAccount in {namespace} after 60 s:\n{}",
                    tail(&self.dir.join("kube-controller-manager.log"), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Every request the apiserver has recorded so far (flushed every 200 ms; [`Self::audit_settled`]
    /// waits for that).
    /// The apiserver rotates its audit log at 100 MB (lumberjack's default, which
    /// `--audit-log-maxsize=0` keeps), so the rotated files are read first, oldest first.
    pub fn audit(&self) -> anyhow::Result<Vec<AuditEvent>> {
        let mut files = rotated_logs(&self.state.audit_log);
        files.push(self.state.audit_log.clone());
        let mut events = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            events.extend(
                text.lines()
                    .filter_map(|l| serde_json::from_str::<AuditEvent>(l).ok()),
            );
        }
        Ok(events)
    }

    /// The audit log once its batches have been written (waits 1 s first).
    pub async fn audit_settled(&self) -> anyhow::Result<Vec<AuditEvent>> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.audit()
    }

    /// The last `lines` lines of each component's log, for a failure message.
    pub fn log_tails(&self, lines: usize) -> String {
        [
            "up",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ]
        .iter()
        .map(|c| tail(&self.dir.join(format!("{c}.log")), lines))
        .collect::<Vec<_>>()
        .join("\n")
    }

    /// A wait whose failure carries the control plane's log tails.
    pub fn wait(&self, what: &str, timeout: Duration) -> Wait<'_> {
        Wait::new(what, timeout).context(|| self.log_tails(15))
    }
}

/// The rotated copies of `log` (`<stem>-<timestamp>.<ext>` beside it), oldest first: the
/// timestamp in their names sorts as text.
fn rotated_logs(log: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(stem), Some(ext)) = (
        log.parent(),
        log.file_stem().and_then(|s| s.to_str()),
        log.extension().and_then(|e| e.to_str()),
    ) else {
        return Vec::new();
    };
    let (prefix, suffix) = (format!("{stem}-"), format!(".{ext}"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(&suffix))
        })
        .collect();
    files.sort();
    files
}

/// One audit record (`audit.k8s.io/v1` Event at Metadata level).
#[derive(Clone, Debug, Deserialize)]
pub struct AuditEvent {
    pub verb: String,
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    pub user: AuditUser,
    #[serde(rename = "objectRef", default)]
    pub object_ref: Option<AuditObjectRef>,
    #[serde(rename = "responseStatus", default)]
    pub response_status: Option<AuditStatus>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AuditUser {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct AuditObjectRef {
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub subresource: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "apiGroup", default)]
    pub api_group: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct AuditStatus {
    #[serde(default)]
    pub code: u16,
}

impl AuditEvent {
    /// A create, update, patch, delete or deletecollection.
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    pub fn resource(&self) -> &str {
        self.object_ref.as_ref().map_or("", |o| o.resource.as_str())
    }

    pub fn subresource(&self) -> &str {
        self.object_ref.as_ref().map_or("", |o| o.subresource.as_str())
    }

    pub fn code(&self) -> u16 {
        self.response_status.as_ref().map_or(0, |s| s.code)
    }
}

/// A client from a kubeconfig file.
pub async fn client_from(path: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// The YAML documents of `text` as JSON values (empty documents skipped).
pub fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).context("parsing YAML")?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn tail(path: &Path, lines: usize) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    crate::process::tail_titled(&name, path, lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_audit_logs_are_found_oldest_first_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("kmm-rotated-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "audit.log",
            "audit-2026-11-27T09-03-57.299.log",
            "audit-2026-11-27T08-51-53.398.log",
            "audit-policy.yaml",
            "kube-apiserver.log",
        ] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let found = rotated_logs(&dir.join("audit.log"));
        std::fs::remove_dir_all(&dir).unwrap();
        let names: Vec<&str> = found.iter().filter_map(|p| p.file_name()?.to_str()).collect();
        assert_eq!(
            names,
            [
                "audit-2026-11-27T08-51-53.398.log",
                "audit-2026-11-27T09-03-57.299.log"
            ]
        );
    }
}
