//! One virtual cluster: its HTTP server, kubeconfig, client, and the test-side controls
//! (CRDs, faults, request counts, pod logs, watch history).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    SimError,
    audit::{AuditLog, AuditRecord},
    faults::Faults,
    registry::ResourceType,
    server::{self, ServerState},
    ssa::Scope,
    store::{PatchType, RequestCounts, Store, WriteOpts, lock},
};

/// Watch history kept for resuming watches; older resource versions get 410 Gone.
const WATCH_LOG: usize = 50_000;

struct Inner {
    name: String,
    url: String,
    kubeconfig: PathBuf,
    state: Arc<ServerState>,
    server: JoinHandle<()>,
    started: Instant,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A handle on one virtual cluster; clones share it, and the server stops with the last one.
#[derive(Clone)]
pub struct SimCluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SimCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCluster")
            .field("name", &self.inner.name)
            .field("url", &self.inner.url)
            .finish()
    }
}

impl SimCluster {
    pub(crate) async fn start(name: &str, dir: &Path) -> Result<Self, SimError> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(ServerState {
            store: Store::new(WATCH_LOG),
            drop_watches: tokio::sync::Notify::new(),
            bookmark_interval: Duration::from_secs(1),
            audit: AuditLog::default(),
        });
        let app = axum::Router::new()
            .fallback(server::handle)
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "simulated API server stopped");
            }
        });
        let kubeconfig = dir.join(format!("{name}.kubeconfig"));
        std::fs::write(&kubeconfig, kubeconfig_yaml(name, &url))?;
        Ok(Self {
            inner: Arc::new(Inner {
                name: name.to_string(),
                url,
                kubeconfig,
                state,
                server,
                started: Instant::now(),
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// A kubeconfig file for kubectl and child processes (`KUBECONFIG=...`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.inner.kubeconfig
    }

    /// Writes a second kubeconfig whose bearer token authenticates as `user` (e.g.
    /// `system:serviceaccount:kmm-hub:kmm-hub`); the requests made with it are recorded under that
    /// user in [`SimCluster::audit`]. Nothing is enforced: RBAC is checked by the tests.
    pub fn kubeconfig_as(&self, user: &str) -> Result<PathBuf, SimError> {
        let file: String = user
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let dir = self.inner.kubeconfig.parent().unwrap_or_else(|| Path::new("."));
        let path = dir.join(format!("{}-as-{file}.kubeconfig", self.inner.name));
        std::fs::write(
            &path,
            kubeconfig_yaml_for(&self.inner.name, &self.inner.url, user),
        )?;
        Ok(path)
    }

    /// Every resource request served so far: who, and what an RBAC authorizer would check.
    /// The default kubeconfig authenticates as `kmm-sim`, [`SimCluster::client`] as
    /// `system:anonymous`.
    pub fn audit(&self) -> Vec<AuditRecord> {
        self.inner.state.audit.snapshot()
    }

    /// Forgets the audit records.
    pub fn clear_audit(&self) {
        self.inner.state.audit.clear();
    }

    /// A kube-rs client for this cluster, built the way a process reading the kubeconfig would.
    pub fn client(&self) -> kube::Client {
        self.try_client()
            .unwrap_or_else(|e| panic!("client for simulated cluster {}: {e}", self.inner.name))
    }

    pub fn try_client(&self) -> Result<kube::Client, SimError> {
        kube::Client::try_from(self.config()?).map_err(|e| SimError::Client(e.to_string()))
    }

    /// The client configuration [`SimCluster::client`] uses, to adjust (e.g. `default_retry`,
    /// which makes kube-rs retry 429/503 answers for a long while) before building a client.
    pub fn config(&self) -> Result<kube::Config, SimError> {
        let uri = self
            .inner
            .url
            .parse()
            .map_err(|e| SimError::Client(format!("{e}")))?;
        let mut config = kube::Config::new(uri);
        config.default_namespace = "default".into();
        Ok(config)
    }

    /// Registers the CRDs in a YAML file (multi-document) or in every `.yaml` file of a directory.
    pub fn install_crds_from_path(&self, path: impl AsRef<Path>) -> Result<usize, SimError> {
        let path = path.as_ref();
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut f: Vec<PathBuf> = std::fs::read_dir(path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            f.sort();
            f
        } else {
            vec![path.to_path_buf()]
        };
        let mut n = 0;
        for file in files {
            let text = std::fs::read_to_string(&file)?;
            for doc in parse_documents(&text).map_err(|message| SimError::Manifest {
                path: file.display().to_string(),
                message,
            })? {
                if doc.get("kind").and_then(Value::as_str) != Some("CustomResourceDefinition") {
                    continue;
                }
                self.inner
                    .state
                    .store
                    .install_crd(doc)
                    .map_err(|e| SimError::Manifest {
                        path: file.display().to_string(),
                        message: e.message,
                    })?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Server-side applies every object of a YAML text (multi-document) as manager `kmm-sim`,
    /// straight into the store: test setup that should not count as client traffic.
    pub fn apply_yaml(&self, text: &str) -> Result<Vec<Value>, SimError> {
        let bad = |message: String| SimError::Manifest {
            path: "<yaml>".into(),
            message,
        };
        let mut out = Vec::new();
        for doc in parse_documents(text).map_err(bad)? {
            let av = doc.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
            let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
            let rt = self
                .resource_type(av, kind)
                .ok_or_else(|| bad(format!("no kind {kind} in {av}")))?;
            let version = crate::registry::split_api_version(av).1.to_string();
            let ns = doc
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_string);
            let ns = if rt.namespaced {
                Some(ns.unwrap_or_else(|| "default".into()))
            } else {
                None
            };
            let name = doc
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let opts = WriteOpts {
                manager: "kmm-sim".into(),
                force: true,
                dry_run: false,
            };
            let store = &self.inner.state.store;
            let main = Scope::Main {
                status_separate: rt.status_subresource,
            };
            let obj = store
                .patch(
                    &rt,
                    &version,
                    ns.as_deref(),
                    &name,
                    PatchType::Apply,
                    &doc,
                    main,
                    &opts,
                )
                .map_err(|e| bad(e.message))?;
            let obj = match (rt.status_subresource, doc.get("status")) {
                (true, Some(_)) => store
                    .patch(
                        &rt,
                        &version,
                        ns.as_deref(),
                        &name,
                        PatchType::Apply,
                        &doc,
                        Scope::Status,
                        &opts,
                    )
                    .map_err(|e| bad(e.message))?,
                _ => obj,
            };
            out.push(obj);
        }
        Ok(out)
    }

    pub(crate) fn resource_type(&self, api_version: &str, kind: &str) -> Option<ResourceType> {
        self.inner
            .state
            .store
            .registry()
            .by_kind(api_version, kind)
            .cloned()
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.state.store
    }

    /// Sets what goes wrong with this cluster's API from now on; `unreachable` also ends open watches.
    pub fn set_faults(&self, faults: Faults) {
        let cut = faults.unreachable || faults.drop_watches;
        *lock(&self.inner.state.store.faults) = faults;
        if cut {
            self.drop_watches();
        }
    }

    /// Back to a healthy cluster.
    pub fn clear_faults(&self) {
        self.set_faults(Faults::default());
    }

    /// Ends every open watch stream now (clients re-watch from their last resource version).
    pub fn drop_watches(&self) {
        self.inner.state.drop_watches.notify_waiters();
    }

    /// Forgets the watch history: resuming from any earlier resource version gets 410 Gone.
    pub fn compact(&self) {
        self.inner.state.store.compact();
    }

    /// Requests served so far, by verb and resource.
    pub fn requests(&self) -> RequestCounts {
        lock(&self.inner.state.store.counts).clone()
    }

    /// Forgets the request counts.
    pub fn reset_requests(&self) {
        *lock(&self.inner.state.store.counts) = RequestCounts::default();
    }

    /// What `GET .../pods/<name>/log` returns for this pod.
    pub fn set_pod_log(&self, namespace: &str, name: &str, text: &str) {
        lock(&self.inner.state.store.pod_logs)
            .insert((namespace.to_string(), name.to_string()), text.to_string());
    }

    /// The current resource version of the cluster.
    pub fn resource_version(&self) -> u64 {
        self.inner.state.store.current_rv()
    }

    /// Time since the cluster started.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }
}

fn kubeconfig_yaml(name: &str, url: &str) -> String {
    kubeconfig_yaml_for(name, url, "kmm-sim")
}

fn kubeconfig_yaml_for(name: &str, url: &str, token: &str) -> String {
    let token = serde_json::Value::String(token.to_string());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {url}\n\
         contexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n    namespace: default\n\
         current-context: {name}\nusers:\n- name: {name}\n  user:\n    token: {token}\n"
    )
}

/// The non-empty documents of a multi-document YAML text, as JSON values.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}
