//! OCM's governance policy framework on the test control planes, built from its Go modules by
//! `scripts/policyplane-build` (tests/policyplane): on the hub the policy propagator
//! (`open-cluster-management.io/governance-policy-propagator`) and the Placement controller
//! (`open-cluster-management.io/ocm`); on each managed cluster the configuration policy
//! controller (`open-cluster-management.io/config-policy-controller`), which evaluates and
//! enforces ConfigurationPolicies and prunes what it created. They run as processes the way
//! their upstream e2e setups run them: `WATCH_NAMESPACE` in the environment, no leader election,
//! no webhooks, no lease.
//!
//! What is not real: the policy framework addon (spec, template and status sync between the
//! hub's replicated Policies and the managed cluster) is not served by the Go module proxy here.
//! [`sync`] stands in for its spec and template sync only; Policy status is not synced back, so
//! compliance is read from the ConfigurationPolicies the real controller evaluates.

pub mod sync;

use std::path::{Path, PathBuf};

use kube::{core::GroupVersionKind, discovery::ApiResource};

use crate::{
    controlplane::{ControlPlane, Options},
    process::Daemon,
};

/// The API group of Policy, PlacementBinding and ConfigurationPolicy.
pub const POLICY_GROUP: &str = "policy.open-cluster-management.io";
/// The managed-cluster identity the configuration policy controller runs as (cluster-admin, as
/// its ServiceAccount is on a real cluster); its writes are told apart in the audit log by it.
pub const CONFIG_POLICY_USER: &str = "config-policy-controller";

/// The ManagedCluster label the generated Placement selects (`kmm.sigs.x-k8s.io/spoke=true`).
pub const SPOKE_SELECTOR_LABEL: &str = "kmm.sigs.x-k8s.io/spoke";
/// Membership of a ManagedClusterSet (the Placement selects from the set `default`); OCM's
/// registration webhook, not run here, would set it on a new cluster.
pub const CLUSTER_SET_LABEL: &str = "cluster.open-cluster-management.io/clusterset";

/// The hub identities of the propagator and the Placement controller (group `system:masters`,
/// as they hold cluster-wide rights on a real hub), so the hub's audit log tells their writes
/// apart from the harness's.
pub const PROPAGATOR_USER: &str = "governance-policy-propagator";
pub const PLACEMENT_USER: &str = "placement-controller";

/// Where `scripts/policyplane-build` leaves the binaries and CRDs: `<target>/policyplane`.
pub fn policyplane_dir() -> anyhow::Result<PathBuf> {
    let dir = kmm_test_kit::target_dir()?.join("policyplane");
    anyhow::ensure!(
        dir.join("crds/spoke").is_dir(),
        "{} is missing: build it with scripts/policyplane-build (`just deps` does)",
        dir.display()
    );
    Ok(dir)
}

/// `Policy` (policy.open-cluster-management.io/v1).
pub fn policy_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(POLICY_GROUP, "v1", "Policy"), "policies")
}

/// `ConfigurationPolicy` (policy.open-cluster-management.io/v1).
pub fn configuration_policy_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(POLICY_GROUP, "v1", "ConfigurationPolicy"),
        "configurationpolicies",
    )
}

/// `PlacementDecision` (cluster.open-cluster-management.io/v1beta1).
pub fn placement_decision_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            "cluster.open-cluster-management.io",
            "v1beta1",
            "PlacementDecision",
        ),
        "placementdecisions",
    )
}

/// Adds the propagator's and the Placement controller's identities to a hub's options.
pub fn hub_options(options: Options) -> Options {
    options
        .user(PROPAGATOR_USER, &["system:masters"])
        .user(PLACEMENT_USER, &["system:masters"])
}

/// Adds the configuration policy controller's identity to a managed cluster's options.
pub fn spoke_options(options: Options) -> Options {
    options.user(CONFIG_POLICY_USER, &["system:masters"])
}

/// Starts `binary args...` with `env` set (the upstream controllers read `WATCH_NAMESPACE` and
/// `KUBECONFIG` from it), its output in `<dir>/<name>.log`.
fn start_with_env(
    binary: &Path,
    env: &[(&str, String)],
    args: &[&str],
    dir: &Path,
    name: &str,
) -> anyhow::Result<Daemon> {
    let mut all: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    all.push(binary.display().to_string());
    all.extend(args.iter().map(|a| (*a).to_owned()));
    Daemon::start(Path::new("/usr/bin/env"), &all, dir, name)
}

/// The hub side: the policy CRDs, the Placement controller and the policy propagator.
pub struct PolicyHub {
    pub propagator: Daemon,
    pub placement: Daemon,
}

impl PolicyHub {
    /// Installs the Policy, PlacementBinding, PolicySet, PolicyAutomation and AddOnPlacementScore
    /// CRDs on `hub` (which runs OCM's registration controller: it makes the `default`
    /// ManagedClusterSet the Placement selects from) and starts both controllers, each as its
    /// identity from [`hub_options`] (which `hub` must have been started with).
    pub async fn start(hub: &ControlPlane, dir: &Path) -> anyhow::Result<Self> {
        let plane = policyplane_dir()?;
        hub.install_crds_from_path(plane.join("crds/hub")).await?;
        let placement = Daemon::start(
            &plane.join("kmm-placement"),
            &[format!(
                "--kubeconfig={}",
                hub.kubeconfig_as(PLACEMENT_USER)?.display()
            )],
            dir,
            "placement",
        )?;
        // As the propagator's e2e setup runs it: every namespace, no leader election, no webhook.
        // PlacementRules are left out: their CRD and controller are not installed here.
        let propagator = start_with_env(
            &plane.join("governance-policy-propagator"),
            &[
                ("WATCH_NAMESPACE", String::new()),
                (
                    "KUBECONFIG",
                    hub.kubeconfig_as(PROPAGATOR_USER)?.display().to_string(),
                ),
            ],
            &[
                "--leader-elect=false",
                "--enable-webhooks=false",
                "--disable-placementrule",
                "--metrics-bind-address=0",
                "--health-probe-bind-address=0",
            ],
            dir,
            "propagator",
        )?;
        Ok(Self {
            propagator,
            placement,
        })
    }

    /// Both controllers' log tails, for a failure message.
    pub fn log_tails(&self, lines: usize) -> String {
        format!(
            "{}\n{}",
            self.propagator.log_tail(lines),
            self.placement.log_tail(lines)
        )
    }
}

/// One managed cluster's side: the Policy and ConfigurationPolicy CRDs, the cluster's namespace,
/// the configuration policy controller, and the stand-in for the framework addon's sync.
pub struct PolicySpoke {
    pub controller: Daemon,
    pub sync: sync::SyncTask,
}

impl PolicySpoke {
    /// Starts the managed cluster `cluster`'s side. `spoke` must have been started with
    /// [`spoke_options`].
    pub async fn start(
        hub: &ControlPlane,
        spoke: &ControlPlane,
        cluster: &str,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let plane = policyplane_dir()?;
        spoke.install_crds_from_path(plane.join("crds/spoke")).await?;
        spoke
            .apply_yaml(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {cluster}}}\n"
            ))
            .await?;
        let kubeconfig = spoke.kubeconfig_as(CONFIG_POLICY_USER)?.display().to_string();
        let cluster_flag = format!("--cluster-name={cluster}");
        // As its e2e setup runs it: the cluster's namespace watched, no leader election; the
        // addon lease and operator policies are off (no addon manager, no OLM here).
        let controller = start_with_env(
            &plane.join("config-policy-controller"),
            &[
                ("WATCH_NAMESPACE", cluster.to_owned()),
                ("KUBECONFIG", kubeconfig),
            ],
            &[
                "controller",
                "--leader-elect=false",
                "--enable-lease=false",
                "--enable-operator-policy=false",
                &cluster_flag,
                "--metrics-bind-address=0",
                "--health-probe-bind-address=0",
            ],
            dir,
            &format!("config-policy-controller-{cluster}"),
        )?;
        let sync = sync::SyncTask::start(hub.client(), spoke.client(), cluster);
        Ok(Self { controller, sync })
    }
}

/// The policy framework's processes of a fleet: dropped before its control planes.
pub struct PolicyPlane {
    pub spokes: Vec<PolicySpoke>,
    pub hub: PolicyHub,
}

/// `kubectl apply --server-side -k policies` on `hub`, as docs/install.md says.
pub fn apply_policies(hub: &ControlPlane) -> anyhow::Result<()> {
    crate::run(
        std::process::Command::new(crate::controlplane::kubectl()?)
            .arg("--kubeconfig")
            .arg(hub.kubeconfig_path())
            .args(["apply", "--server-side", "-k"])
            .arg(crate::repo_root().join("policies")),
    )?;
    Ok(())
}
