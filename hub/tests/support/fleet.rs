//! A small fleet for the hub's tests on real control planes: a hub (kube-apiserver, etcd,
//! kube-controller-manager, kube-scheduler, with `OwnerReferencesPermissionEnforcement` as on an
//! OpenShift hub), a real registry, and two kinds of managed clusters:
//!
//! - spokes ([`Fleet::add_spokes`]): a control plane of their own with KMM's CRDs, joined by
//!   OCM's real klusterlet agent (registration, ClusterClaims, ManifestWork delivery and status
//!   feedback) to OCM's real registration controller on the hub;
//! - hub-only clusters ([`Fleet::add_cluster`]): a `ManagedCluster` the test creates as the hub's
//!   admin, with its namespace, `ManagedClusterJoined`/`Available` and `status.clusterClaims`
//!   written through the status subresource; nothing delivers their ManifestWorks.
//!
//! The real `kmm-hub run` runs as the ServiceAccount of `manifests/hub` with the RBAC that
//! kustomization renders ([`Fleet::start_hub`]), or as named client-certificate identities bound
//! to the same roles ([`Fleet::start_hub_as`], to tell replicas apart in the audit log).
//! Writes are counted from the apiserver's audit log ([`writes_by`]).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use kmm_fleet_tests::{
    controlplane::{AuditEvent, ControlPlane, Options},
    fleet::install_service_account,
    fresh_dir, manifests,
    ocm::{self, AgentOptions, OcmAgent, OcmHub},
    process::http_get,
};
use kmm_sim::SimCluster;
use kmm_test_kit::{Done, crds_dir, free_port, repo_root};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

use super::{Registry, start_registry};

pub const HUB_NAMESPACE: &str = "kmm-hub";
pub const SPOKE_NAMESPACE: &str = "drivers";
/// Who `kmm-hub run` is when started by [`Fleet::start_hub`]: the Deployment's ServiceAccount.
pub const HUB_USER: &str = "system:serviceaccount:kmm-hub:kmm-hub";
/// Group of the client-certificate identities of [`Fleet::start_with`], bound to the hub's roles.
pub const HUB_GROUP: &str = "kmm-hub-replicas";

/// Tests of one binary that start control planes run one at a time: each needs most of a
/// 2-core machine, and timeouts are no assertion here.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// One managed cluster: name, ManagedCluster labels, kernels it reports (`None`: no claim).
pub struct ClusterSpec<'a> {
    pub name: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
    pub kernels: Option<&'a [&'a str]>,
}

impl<'a> ClusterSpec<'a> {
    /// A cluster labelled `env=prod` (what the tests' MCMs select) running `kernels`.
    pub fn prod(name: &'a str, kernels: &'a [&'a str]) -> Self {
        Self {
            name,
            labels: &[("env", "prod")],
            kernels: Some(kernels),
        }
    }
}

/// A managed cluster with a control plane of its own and OCM's agent.
pub struct Spoke {
    pub agent: OcmAgent,
    pub cluster: ControlPlane,
}

/// The hub, its registry and its managed clusters; everything stops on drop (spokes first).
pub struct Fleet {
    pub spokes: BTreeMap<String, Spoke>,
    pub ocm: Option<OcmHub>,
    pub hub: ControlPlane,
    pub registry: Registry,
    /// Logs, kubeconfigs, control plane folders.
    pub dir: PathBuf,
    /// kmm-hub's ServiceAccount kubeconfig.
    pub hub_kubeconfig: PathBuf,
}

impl Fleet {
    /// A hub with KMM's and OCM's CRDs, `manifests/hub`'s Namespace, ServiceAccount and RBAC,
    /// and a registry; no cluster yet.
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, &[]).await
    }

    /// Like [`Fleet::start`], with client-certificate `identities` (group [`HUB_GROUP`]) bound to
    /// the same roles as the hub's ServiceAccount.
    pub async fn start_with(name: &str, identities: &[&str]) -> Self {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(&base).unwrap();
        let dir = fresh_dir(&base, &format!("hub-{name}")).unwrap();
        let mut options = ocm::hub_options(Options::hub());
        for id in identities {
            options = options.user(id, &[HUB_GROUP]);
        }
        let hub = ControlPlane::start(&dir.join("hub"), "hub", options)
            .await
            .unwrap();
        hub.install_crds_from_path(crds_dir()).await.unwrap();
        hub.install_crds_from_path(kmm_test_kit::ocm_crds().unwrap().join("hub"))
            .await
            .unwrap();
        let hub_kubeconfig = install_service_account(&hub, &repo_root().join("manifests/hub"))
            .await
            .unwrap();
        if !identities.is_empty() {
            bind_hub_roles_to_group(&hub, HUB_GROUP).await;
        }
        Self {
            spokes: BTreeMap::new(),
            ocm: None,
            hub,
            registry: start_registry(name),
            dir,
            hub_kubeconfig,
        }
    }

    /// Adds spokes (started side by side): a control plane each with KMM's CRDs and the
    /// MCMs' namespace, joined by OCM's agent with the given labels, then its kernel claim.
    /// The first call starts OCM's registration controller on the hub.
    pub async fn add_spokes(&mut self, specs: &[ClusterSpec<'_>]) {
        if self.ocm.is_none() {
            self.ocm = Some(OcmHub::start(&self.hub, &self.dir).await.unwrap());
        }
        let started = futures::future::join_all(
            specs
                .iter()
                .map(|s| start_spoke(&self.hub, &self.dir, s.name, s.labels)),
        )
        .await;
        for (s, spoke) in specs.iter().zip(started) {
            self.spokes.insert(s.name.to_owned(), spoke);
            if let Some(kernels) = s.kernels {
                self.set_kernels(s.name, kernels).await;
            }
        }
    }

    /// Adds a hub-only cluster: its namespace and ManagedCluster, created as admin, joined and
    /// available, reporting `kernels` in `status.clusterClaims`.
    pub async fn add_cluster(&self, s: &ClusterSpec<'_>) {
        self.hub
            .apply_yaml(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {}}}\n",
                s.name
            ))
            .await
            .unwrap();
        let labels: serde_json::Map<String, Value> = s
            .labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
            .collect();
        self.hub
            .apply_value(&json!({
                "apiVersion": "cluster.open-cluster-management.io/v1", "kind": "ManagedCluster",
                "metadata": {"name": s.name, "labels": labels},
                "spec": {"hubAcceptsClient": true, "leaseDurationSeconds": 60},
            }))
            .await
            .unwrap();
        let now = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ))
        .unwrap();
        let condition = |type_: &str, reason: &str| {
            json!({"type": type_, "status": "True", "reason": reason, "message": "created by the test",
                   "lastTransitionTime": now})
        };
        clusters(&self.hub)
            .patch_status(
                s.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": [
                    condition("HubAcceptedManagedCluster", "HubClusterAdminAccepted"),
                    condition("ManagedClusterJoined", "ManagedClusterJoined"),
                    condition("ManagedClusterConditionAvailable", "ManagedClusterAvailable"),
                ]}})),
            )
            .await
            .unwrap();
        if let Some(kernels) = s.kernels {
            self.set_kernels(s.name, kernels).await;
        }
    }

    /// The cluster reports `kernels`: a spoke gets the ClusterClaims kmm-spoke would write (OCM's
    /// agent carries them to the hub); a hub-only cluster gets them in `status.clusterClaims`.
    pub async fn set_kernels(&self, cluster: &str, kernels: &[&str]) {
        let claims = kmm_api::claims::encode_kernel_claims(kernels.iter().copied()).unwrap();
        if let Some(spoke) = self.spokes.get(cluster) {
            for (name, value) in claims {
                spoke
                    .cluster
                    .apply_value(&json!({
                        "apiVersion": "cluster.open-cluster-management.io/v1alpha1", "kind": "ClusterClaim",
                        "metadata": {"name": name}, "spec": {"value": value},
                    }))
                    .await
                    .unwrap();
            }
        } else {
            let claims: Vec<Value> = claims
                .into_iter()
                .map(|(name, value)| json!({"name": name, "value": value}))
                .collect();
            clusters(&self.hub)
                .patch_status(
                    cluster,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"clusterClaims": claims}})),
                )
                .await
                .unwrap();
        }
    }

    pub fn spoke(&self, name: &str) -> &ControlPlane {
        &self.spokes[name].cluster
    }

    /// `kmm-hub run` as the hub's ServiceAccount.
    pub fn start_hub(&self, id: &str, extra: &[&str]) -> HubProcess {
        HubProcess::start_with_kubeconfig(&self.hub_kubeconfig, &self.dir, id, extra)
    }

    /// `kmm-hub run` as client-certificate identity `user` (given to [`Fleet::start_with`]),
    /// with `--identity user`.
    pub fn start_hub_as(&self, user: &str, extra: &[&str]) -> HubProcess {
        HubProcess::start_with_kubeconfig(&self.hub.kubeconfig_as(user).unwrap(), &self.dir, user, extra)
    }

    /// The hub's audit log once its batches are written.
    pub async fn audit(&self) -> Vec<AuditEvent> {
        self.hub.audit_settled().await.unwrap()
    }
}

/// The write requests of `user` in `events`.
pub fn writes_by<'a>(events: &'a [AuditEvent], user: &str) -> Vec<&'a AuditEvent> {
    events
        .iter()
        .filter(|e| e.user.username == user && e.is_write())
        .collect()
}

/// `verb resource[/subresource] namespace/name -> code`, for messages.
pub fn describe(e: &AuditEvent) -> String {
    let (ns, name) = e
        .object_ref
        .as_ref()
        .map(|o| (o.namespace.as_str(), o.name.as_str()))
        .unwrap_or_default();
    let sub = if e.subresource().is_empty() {
        String::new()
    } else {
        format!("/{}", e.subresource())
    };
    format!("{} {}{sub} {ns}/{name} -> {}", e.verb, e.resource(), e.code())
}

/// Whether `e` is a request on `resource` (with `/subresource` when it has one).
pub fn is_on(e: &AuditEvent, resource: &str) -> bool {
    let path = if e.subresource().is_empty() {
        e.resource().to_owned()
    } else {
        format!("{}/{}", e.resource(), e.subresource())
    };
    path == resource
}

fn clusters(hub: &ControlPlane) -> Api<DynamicObject> {
    Api::all_with(hub.client(), &ocm::managed_cluster_resource())
}

async fn start_spoke(hub: &ControlPlane, dir: &Path, name: &str, labels: &[(&str, &str)]) -> Spoke {
    let dir = fresh_dir(dir, name).unwrap();
    let cluster = ControlPlane::start(&dir.join("cluster"), name, ocm::spoke_options(Options::default()))
        .await
        .unwrap();
    cluster.install_crds_from_path(crds_dir()).await.unwrap();
    cluster
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {SPOKE_NAMESPACE}}}\n"
        ))
        .await
        .unwrap();
    let agent = OcmAgent::start(hub, &cluster, name, labels, &dir, &AgentOptions::default())
        .await
        .unwrap();
    Spoke { agent, cluster }
}

/// Binds every role `manifests/hub` binds to the hub's ServiceAccount to `group` as well.
async fn bind_hub_roles_to_group(hub: &ControlPlane, group: &str) {
    let docs = manifests::kustomize(&repo_root().join("manifests/hub")).unwrap();
    for doc in docs
        .iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("RoleBinding" | "ClusterRoleBinding")))
    {
        let mut binding = doc.clone();
        let name = format!("{}-{group}", doc["metadata"]["name"].as_str().unwrap());
        binding["metadata"]["name"] = json!(name);
        binding["subjects"] =
            json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}]);
        hub.apply_value(&binding).await.unwrap();
    }
}

/// A running `kmm-hub run`, killed on drop.
pub struct HubProcess {
    child: Child,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HubProcess {
    /// `kmm-hub run` against a simulated hub (the benchmark).
    pub fn start(hub: &SimCluster, dir: &Path, id: &str, extra: &[&str]) -> Self {
        Self::start_with_kubeconfig(hub.kubeconfig_path(), dir, id, extra)
    }

    /// `kmm-hub run --identity id` with `kubeconfig`, its log in `dir`.
    pub fn start_with_kubeconfig(kubeconfig: &Path, dir: &Path, id: &str, extra: &[&str]) -> Self {
        let metrics_port = free_port().unwrap();
        let log = dir.join(format!("kmm-hub-{id}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_kmm-hub"))
            .args(["run", "--namespace", HUB_NAMESPACE, "--identity", id])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--retry-seconds", "1"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("KMM_LOG_FORMAT", "text")
            .env(
                "RUST_LOG",
                std::env::var("KMM_TEST_HUB_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            metrics_port,
            log,
        }
    }

    /// The value of a metric line (exact name and labels), if exported.
    pub async fn metric(&self, line_start: &str) -> Option<f64> {
        let text = http_get(self.metrics_port, "/metrics").await?;
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Sends SIGTERM and waits up to `secs` for the process to exit; its exit code, if it did.
    pub fn terminate(&mut self, secs: u64) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Process id, e.g. to read its peak memory from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn ready(&self) -> bool {
        http_get(self.metrics_port, "/readyz")
            .await
            .is_some_and(|b| b == "ready")
    }

    /// Waits until `/readyz` says ready (its stores synced).
    pub async fn wait_ready(&self) {
        self.eventually("hub ready", Duration::from_secs(120), || self.ready())
            .await;
    }

    /// Waits until it has reconciled at least once (a sync point, not a count of writes).
    pub async fn wait_reconciled(&self) {
        self.eventually("the hub reconciled", Duration::from_secs(120), || async {
            self.metric("kmm_hub_reconciles_total")
                .await
                .is_some_and(|n| n >= 1.0)
        })
        .await;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// [`kmm_test_kit::wait_for`], panicking with the tail of this hub's log.
    pub async fn eventually<F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        check: F,
    ) -> <Fut::Output as Done>::Value
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future,
        Fut::Output: Done,
    {
        match kmm_test_kit::wait_for(what, timeout, check).await {
            Ok(value) => value,
            Err(e) => panic!(
                "{e}\n{}",
                kmm_fleet_tests::process::tail_titled("kmm-hub", &self.log, 40)
            ),
        }
    }
}
