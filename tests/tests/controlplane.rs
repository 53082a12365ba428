//! The test control plane itself, on a real kube-apiserver: KMM's and OCM's CRDs are accepted
//! (the apiserver's CEL cost estimator included), the ValidatingAdmissionPolicy in
//! manifests/crds is enforced, identities are what the apiserver authenticates, and the audit log
//! records who wrote what.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kmm_fleet_tests::controlplane::{self, ControlPlane, Options};
use kube::{
    Api,
    api::{DynamicObject, PostParams},
    core::GroupVersionKind,
    discovery::ApiResource,
};
use serde_json::json;

fn dir(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_identities_and_audit_on_a_real_apiserver() -> anyhow::Result<()> {
    let cp = ControlPlane::start(
        &dir("cp-basics"),
        "hub",
        Options::hub().user("alice", &["team-a"]),
    )
    .await?;
    let root = kmm_fleet_tests::repo_root();

    // Every KMM CRD and OCM's hub and spoke CRDs are accepted as they are.
    let kmm = cp.install_crds_from_path(root.join("manifests/crds")).await?;
    assert_eq!(
        kmm, 4,
        "Module, ManagedClusterModule, ManagedClusterPreflight, NodeModulesConfig"
    );
    let ocm = controlplane::ocm_crds()?;
    assert!(cp.install_crds_from_path(ocm.join("hub")).await? >= 2);
    assert_eq!(cp.install_crds_from_path(ocm.join("spoke")).await?, 2);

    // A seed Module is stored, and its CRD's defaults are applied by the apiserver.
    cp.apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: drivers}\n")
        .await?;
    let stored = cp
        .apply_yaml(
            "apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: Module\nmetadata: {name: m, namespace: drivers}\n\
             spec:\n  selector: {role: gpu}\n  moduleLoader:\n    container:\n      modprobe: {moduleName: m}\n      \
             kernelMappings:\n      - {regexp: '^.+$', containerImage: 'registry.example/m:${KERNEL_FULL_VERSION}'}\n",
        )
        .await?;
    assert_eq!(stored.len(), 1);
    let module = serde_json::to_value(&stored[0])?;
    assert_eq!(module["spec"]["selector"]["role"], "gpu");

    // alice is authenticated as herself and RBAC (no binding) refuses her.
    let alice = cp.client_as("alice").await?;
    let err = Api::<ConfigMap>::namespaced(alice, "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "x"}}))?,
        )
        .await
        .expect_err("alice has no RBAC");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403 && s.message.contains("\"alice\"")),
        "{err:?}"
    );

    // A ManagedCluster (OCM's own CRD) can be created.
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cluster.open-cluster-management.io", "v1", "ManagedCluster"),
        "managedclusters",
    );
    Api::<DynamicObject>::all_with(cp.client(), &ar)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "cluster.open-cluster-management.io/v1", "kind": "ManagedCluster",
                "metadata": {"name": "spoke-a"}, "spec": {"hubAcceptsClient": true}
            }))?,
        )
        .await?;

    // The audit log witnesses both: alice's refused create and admin's ManagedCluster create.
    let mut found = (false, false);
    for _ in 0..20 {
        let audit = cp.audit()?;
        found = (
            audit.iter().any(|e| {
                e.user.username == "alice"
                    && e.verb == "create"
                    && e.resource() == "configmaps"
                    && e.code() == 403
            }),
            audit.iter().any(|e| {
                e.user.username == "admin"
                    && e.verb == "create"
                    && e.resource() == "managedclusters"
                    && e.code() == 201
            }),
        );
        if found == (true, true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(found, (true, true), "audit log at {}", cp.dir().display());
    Ok(())
}

/// OCM's real registration: the agent bootstraps, its CSR is approved and signed, the hub
/// accepts the cluster, ClusterClaims reach `status.clusterClaims`, and a stopped agent turns
/// the cluster Unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocm_registration_claims_and_lease() -> anyhow::Result<()> {
    use kmm_fleet_tests::ocm::{self, AgentOptions, OcmAgent, OcmHub};
    let base = dir("cp-ocm");
    std::fs::create_dir_all(&base)?;
    let hub = ControlPlane::start(&base.join("hub"), "hub", ocm::hub_options(Options::hub())).await?;
    let spoke = ControlPlane::start(
        &base.join("spoke-a"),
        "spoke-a",
        ocm::spoke_options(Options::default()),
    )
    .await?;
    let _ocm_hub = OcmHub::start(&hub, &base).await?;
    let mut agent = OcmAgent::start(
        &hub,
        &spoke,
        "spoke-a",
        &[("env", "test")],
        &base,
        &AgentOptions::default(),
    )
    .await?;

    // A ClusterClaim on the spoke shows in the ManagedCluster's status.
    spoke
        .apply_yaml(
            "apiVersion: cluster.open-cluster-management.io/v1alpha1\nkind: ClusterClaim\n\
             metadata: {name: kernel-versions.kmm.node.kubernetes.io}\nspec: {value: 6.1.0-1-cloud-amd64}\n",
        )
        .await?;
    let clusters = Api::<DynamicObject>::all_with(hub.client(), &ocm::managed_cluster_resource());
    let mut claims = serde_json::Value::Null;
    for _ in 0..120 {
        let mc = serde_json::to_value(clusters.get("spoke-a").await?)?;
        claims = mc["status"]["clusterClaims"].clone();
        if claims.as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["name"] == "kernel-versions.kmm.node.kubernetes.io")
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        claims
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["value"] == "6.1.0-1-cloud-amd64")),
        "claims: {claims}\n{}",
        agent.log_tail(30)
    );
    let mc = serde_json::to_value(clusters.get("spoke-a").await?)?;
    assert_eq!(mc["metadata"]["labels"]["env"], "test");

    // The agent stops: after 5 lease durations the hub's lease controller says Unknown.
    agent.stop();
    let mut available = Some("True".to_owned());
    for _ in 0..120 {
        let mc = serde_json::to_value(clusters.get("spoke-a").await?)?;
        available = ocm::condition(&mc, "ManagedClusterConditionAvailable").map(str::to_owned);
        if available.as_deref() == Some("Unknown") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(available.as_deref(), Some("Unknown"));
    agent.restart()?;
    agent.wait_available(&hub, Duration::from_secs(60)).await?;
    Ok(())
}
