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
    time::Duration,
};

use kmm_api::{ManagedClusterModule, ocm::ManifestWork};
use kmm_fleet_tests::{
    controlplane::{AuditEvent, ControlPlane, Options},
    fleet::{MODULE_NAMESPACE, start_hub_cluster, start_managed_cluster},
    fresh_dir, manifests,
    ocm::{self, AgentOptions, OcmAgent, OcmHub},
    process::{Launch, Process},
};
use kmm_sim::SimCluster;
use kmm_test_kit::repo_root;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::{Registry, start_registry};

pub const HUB_NAMESPACE: &str = kmm_fleet_tests::fleet::HUB_NAMESPACE;
/// The MCMs' `spokeNamespace`.
pub const SPOKE_NAMESPACE: &str = MODULE_NAMESPACE;
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
        let (hub, hub_kubeconfig) = start_hub_cluster(&dir.join("hub"), options).await.unwrap();
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
    pub fn start_hub(&self, id: &str, extra: &[&str]) -> Process {
        start_hub_process(&self.hub_kubeconfig, &self.dir, id, extra)
    }

    /// `kmm-hub run` as client-certificate identity `user` (given to [`Fleet::start_with`]),
    /// with `--identity user`.
    pub fn start_hub_as(&self, user: &str, extra: &[&str]) -> Process {
        start_hub_process(&self.hub.kubeconfig_as(user).unwrap(), &self.dir, user, extra)
    }

    /// The hub's ManagedClusterModules, as its admin.
    pub fn mcms(&self) -> Api<ManagedClusterModule> {
        Api::all(self.hub.client())
    }

    /// The MCM `name`, if it exists.
    pub async fn mcm(&self, name: &str) -> Option<ManagedClusterModule> {
        self.mcms().get_opt(name).await.unwrap()
    }

    /// Creates `mcm` as the hub's admin; what the apiserver stored.
    pub async fn create_mcm(&self, mcm: &ManagedClusterModule) -> ManagedClusterModule {
        self.mcms().create(&PostParams::default(), mcm).await.unwrap()
    }

    /// Deletes the MCM `name` (its finalizer may keep it a while).
    pub async fn delete_mcm(&self, name: &str) {
        self.mcms().delete(name, &DeleteParams::default()).await.unwrap();
    }

    /// The ManifestWork `name` in `cluster`'s namespace on the hub, if it exists.
    pub async fn work(&self, cluster: &str, name: &str) -> Option<ManifestWork> {
        Api::<ManifestWork>::namespaced(self.hub.client(), cluster)
            .get_opt(name)
            .await
            .unwrap()
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
    let cluster = start_managed_cluster(&dir.join("cluster"), name).await.unwrap();
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

/// `kmm-hub run --namespace kmm-hub --identity <id> --retry-seconds 1 <extra>` with
/// `kubeconfig`, its log `kmm-hub-<id>.log` in `dir`.
pub fn start_hub_process(kubeconfig: &Path, dir: &Path, id: &str, extra: &[&str]) -> Process {
    let mut args: Vec<String> = [
        "run",
        "--namespace",
        HUB_NAMESPACE,
        "--identity",
        id,
        "--retry-seconds",
        "1",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    Process::start(Launch {
        binary: "kmm-hub",
        args,
        kubeconfig,
        dir,
        name: &format!("kmm-hub-{id}"),
        env: Vec::new(),
    })
    .unwrap()
}

/// `kmm-hub run` against a simulated hub (the benchmark).
pub fn start_sim_hub(hub: &SimCluster, dir: &Path, id: &str, extra: &[&str]) -> Process {
    start_hub_process(hub.kubeconfig_path(), dir, id, extra)
}

/// Waits until the hub has reconciled at least once (a sync point, not a count of writes).
pub async fn wait_reconciled(hub: &Process) {
    hub.wait("the hub reconciled", Duration::from_secs(120))
        .eventually(|| async {
            hub.metric("kmm_hub_reconciles_total")
                .await
                .is_some_and(|n| n >= 1.0)
        })
        .await;
}
