//! OCM on the test control planes, as upstream runs it: the hub's registration controller
//! (cluster acceptance, CSR approval, per-cluster RBAC, the lease check that turns a silent
//! cluster Unknown) and, per managed cluster, the singleton klusterlet agent (registration: a
//! bootstrap identity, a CSR, the ManagedCluster and its ClusterClaims, the lease; then the work
//! agent). Both are `kmm-controlplane ocm-hub` / `ocm-agent`, built from
//! `open-cluster-management.io/ocm` and started the way OCM's integration tests start them.
//!
//! Identities: the registration controller runs as the hub's admin (it holds cluster-admin
//! rights in a real hub too). The agent registers with the client certificate of
//! [`BOOTSTRAP_USER`], bound to a bootstrap ClusterRole and auto-approved, and from then on talks
//! to the hub only with the certificate the hub signed for its CSR. On its own cluster it acts
//! as [`AGENT_USER`], bound to cluster-admin (as the klusterlet's work ServiceAccount's
//! execution rights are on a real spoke).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use kube::{
    Api,
    api::{DynamicObject, Patch, PatchParams},
    core::GroupVersionKind,
    discovery::ApiResource,
};
use serde_json::{Value, json};

use crate::{
    controlplane::{self, ControlPlane, HARNESS_MANAGER},
    process::Daemon,
};

/// The hub identity every agent bootstraps with (auto-approved by the registration controller).
pub const BOOTSTRAP_USER: &str = "kmm-fleet-bootstrap";
/// The agent's identity on its own cluster.
pub const AGENT_USER: &str = "ocm-klusterlet";
/// The agent's namespace on the managed cluster (hub kubeconfig secret, events).
pub const AGENT_NAMESPACE: &str = "open-cluster-management-agent";

/// `ManagedCluster` (cluster.open-cluster-management.io/v1).
pub fn managed_cluster_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cluster.open-cluster-management.io", "v1", "ManagedCluster"),
        "managedclusters",
    )
}

/// `ManifestWork` (work.open-cluster-management.io/v1).
pub fn manifest_work_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("work.open-cluster-management.io", "v1", "ManifestWork"),
        "manifestworks",
    )
}

/// Adds what a hub control plane needs for OCM to its options: the bootstrap identity.
pub fn hub_options(options: controlplane::Options) -> controlplane::Options {
    options.user(BOOTSTRAP_USER, &["system:bootstrappers"])
}

/// Adds what a managed cluster's control plane needs for OCM: the agent's identity.
pub fn spoke_options(options: controlplane::Options) -> controlplane::Options {
    options.user(AGENT_USER, &[])
}

/// OCM's hub side: CRDs, the bootstrap role, the registration controller.
pub struct OcmHub {
    pub controller: Daemon,
}

impl OcmHub {
    /// Installs OCM's hub CRDs from the API module, the bootstrap ClusterRole and binding, and
    /// starts the registration controller. `hub` must have been started with [`hub_options`].
    pub async fn start(hub: &ControlPlane, dir: &Path) -> anyhow::Result<Self> {
        hub.install_crds_from_path(controlplane::ocm_crds()?.join("hub"))
            .await?;
        hub.apply_yaml(&bootstrap_rbac()).await?;
        let controller = Daemon::start(
            &controlplane::binary()?,
            &[
                "ocm-hub".into(),
                format!("--kubeconfig={}", hub.kubeconfig_path().display()),
                format!("--cluster-auto-approval-users={BOOTSTRAP_USER}"),
            ],
            dir,
            "ocm-hub",
        )?;
        Ok(Self { controller })
    }
}

/// The bootstrap ClusterRole: what the agent needs before its CSR is approved.
fn bootstrap_rbac() -> String {
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: 'kmm-fleet:ocm-bootstrap'}}\n\
         rules:\n\
         - {{apiGroups: [certificates.k8s.io], resources: [certificatesigningrequests], verbs: [create, get, list, watch]}}\n\
         - {{apiGroups: [cluster.open-cluster-management.io], resources: [managedclusters], verbs: [create, get, list, watch]}}\n\
         - {{apiGroups: ['', events.k8s.io], resources: [events], verbs: [create, patch, update]}}\n\
         ---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: 'kmm-fleet:ocm-bootstrap'}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: 'kmm-fleet:ocm-bootstrap'}}\n\
         subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {BOOTSTRAP_USER}}}]\n"
    )
}

/// How an agent is started.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// How often the work agent re-reads status feedback (OCM's default is 10 s).
    pub status_sync_interval: Duration,
    /// The ManagedCluster's `spec.leaseDurationSeconds` (OCM's default is 60; the hub marks a
    /// cluster Unknown after 5 lease durations without a renewal).
    pub lease_duration_seconds: u32,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            status_sync_interval: Duration::from_secs(1),
            lease_duration_seconds: 4,
        }
    }
}

/// OCM's klusterlet agent for one managed cluster.
pub struct OcmAgent {
    pub name: String,
    pub process: Option<Daemon>,
    args: Vec<String>,
    dir: PathBuf,
}

impl OcmAgent {
    /// Installs OCM's spoke CRDs and the agent's namespace and RBAC on `spoke`, creates the
    /// ManagedCluster with `labels` on the hub (field manager [`HARNESS_MANAGER`]), starts the
    /// agent, and waits until the cluster is Joined and Available.
    pub async fn start(
        hub: &ControlPlane,
        spoke: &ControlPlane,
        name: &str,
        labels: &[(&str, &str)],
        dir: &Path,
        options: &AgentOptions,
    ) -> anyhow::Result<Self> {
        spoke
            .install_crds_from_path(controlplane::ocm_crds()?.join("spoke"))
            .await?;
        spoke
            .apply_yaml(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {AGENT_NAMESPACE}}}\n---\n\
                 apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: 'kmm-fleet:ocm-agent'}}\n\
                 roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}}\n\
                 subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {AGENT_USER}}}]\n"
            ))
            .await?;
        let agent_dir = crate::fresh_dir(dir, &format!("ocm-agent-{name}"))?;
        let args = vec![
            "ocm-agent".to_owned(),
            format!("--cluster-name={name}"),
            format!("--kubeconfig={}", spoke.kubeconfig_as(AGENT_USER)?.display()),
            format!(
                "--bootstrap-kubeconfig={}",
                hub.kubeconfig_as(BOOTSTRAP_USER)?.display()
            ),
            format!(
                "--hub-kubeconfig-dir={}",
                agent_dir.join("hub-kubeconfig").display()
            ),
            format!("--namespace={AGENT_NAMESPACE}"),
            format!(
                "--status-sync-interval={}ms",
                options.status_sync_interval.as_millis()
            ),
            "--cluster-healthcheck-period=5s".to_owned(),
        ];
        let mut agent = Self {
            name: name.to_owned(),
            process: None,
            args,
            dir: agent_dir,
        };
        // The hub admin creates the ManagedCluster first, accepted and labelled, as an import
        // does. Left to the agent, the auto-approved CSR can be signed before the agent's
        // create lands; the bootstrap identity is then dropped mid-create and the new one has
        // no rights until the cluster exists (seen here on a busy 2-core machine).
        let clusters = Api::<DynamicObject>::all_with(hub.client(), &managed_cluster_resource());
        let label_map: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
            .collect();
        clusters
            .patch(
                name,
                &PatchParams::apply(HARNESS_MANAGER),
                &Patch::Apply(json!({
                    "apiVersion": "cluster.open-cluster-management.io/v1", "kind": "ManagedCluster",
                    "metadata": {"name": name, "labels": label_map},
                    "spec": {"hubAcceptsClient": true, "leaseDurationSeconds": options.lease_duration_seconds},
                })),
            )
            .await
            .with_context(|| format!("creating ManagedCluster {name}"))?;
        agent.restart()?;
        agent.wait_available(hub, Duration::from_secs(120)).await?;
        Ok(agent)
    }

    /// Starts the agent again (after [`Self::stop`]).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.process = Some(Daemon::start(
            &controlplane::binary()?,
            &self.args,
            &self.dir,
            "ocm-agent",
        )?);
        Ok(())
    }

    /// Stops the agent (SIGKILL): its lease stops and the hub will turn the cluster Unknown.
    pub fn stop(&mut self) {
        self.process = None;
    }

    fn ensure_running(&mut self, hub: &ControlPlane) -> anyhow::Result<()> {
        if let Some(p) = self.process.as_mut()
            && !p.running()
        {
            bail!(
                "the OCM agent of {} exited:\n{}\n{}",
                self.name,
                p.log_tail(40),
                hub.log_tails(5)
            );
        }
        Ok(())
    }

    /// Waits until the ManagedCluster is accepted, Joined and Available.
    pub async fn wait_available(&mut self, hub: &ControlPlane, within: Duration) -> anyhow::Result<()> {
        let clusters = Api::<DynamicObject>::all_with(hub.client(), &managed_cluster_resource());
        let deadline = Instant::now() + within;
        loop {
            if let Some(mc) = clusters.get_opt(&self.name).await? {
                let v = serde_json::to_value(&mc)?;
                if v["spec"]["hubAcceptsClient"] == json!(true)
                    && condition(&v, "ManagedClusterJoined") == Some("True")
                    && condition(&v, "ManagedClusterConditionAvailable") == Some("True")
                {
                    return Ok(());
                }
            }
            self.ensure_running(hub)?;
            if Instant::now() > deadline {
                bail!(
                    "ManagedCluster {} not accepted, joined and available in {within:?}\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The last lines of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process
            .as_ref()
            .map(|p| p.log_tail(lines))
            .unwrap_or_else(|| format!("(the OCM agent of {} is stopped)", self.name))
    }
}

/// The `status` of condition `type_` of an object given as JSON.
pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a str> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?
        .get("status")?
        .as_str()
}
