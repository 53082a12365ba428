//! kmm-spoke installed by the generated governance Policies (`policies/`), on real control
//! planes with OCM's real registration, Placement controller, policy propagator and
//! configuration policy controller. The policy framework addon is not available here: a
//! stand-in copies the replicated Policies to the managed clusters (`kmm_fleet_tests::policy::sync`),
//! so compliance is read where the real controller writes it, on the ConfigurationPolicies.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is a failed test

use std::{collections::BTreeSet, future::Future, path::PathBuf, process::Command, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Namespace, ServiceAccount},
        rbac::v1::ClusterRoleBinding,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kmm_fleet_tests::{
    Wait,
    controlplane::{self, AuditEvent, ControlPlane, Options},
    fleet::{OPERATOR_NAMESPACE, start_hub_cluster},
    fresh_dir,
    ocm::{self, AgentOptions, OcmAgent, OcmHub, managed_cluster_resource},
    policy::{
        self, CONFIG_POLICY_USER, PROPAGATOR_USER, PolicyHub, PolicySpoke, configuration_policy_resource,
        placement_decision_resource, policy_resource,
    },
    run, scratch_dir,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

const POLICY_NAMESPACE: &str = "kmm-policies";
const POLICIES: [&str; 2] = ["kmm-spoke-crds", "kmm-spoke"];
const SELECTOR: &str = "kmm.sigs.x-k8s.io/spoke";
const SPOKES: [&str; 3] = ["spoke-a", "spoke-b", "spoke-c"];
/// Membership of a ManagedClusterSet (the Placement selects from the set `default`).
const CLUSTER_SET_LABEL: &str = "cluster.open-cluster-management.io/clusterset";

/// One managed cluster, its processes dropped before its control plane.
struct Managed {
    policy: PolicySpoke,
    agent: OcmAgent,
    cluster: ControlPlane,
}

/// The hub and the managed clusters, processes dropped before the control planes.
struct PolicyFleet {
    spokes: Vec<(String, Managed)>,
    policy: PolicyHub,
    _ocm: OcmHub,
    hub: ControlPlane,
}

impl PolicyFleet {
    async fn start(name: &str) -> Self {
        let dir = scratch_dir(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name));
        let dir = fresh_dir(dir.parent().unwrap(), &dir.file_name().unwrap().to_string_lossy()).unwrap();
        let (hub, _) = start_hub_cluster(
            &dir.join("hub"),
            policy::hub_options(ocm::hub_options(Options::hub())),
        )
        .await
        .unwrap();
        let ocm_hub = OcmHub::start(&hub, &dir).await.unwrap();
        let policy = PolicyHub::start(&hub, &dir).await.unwrap();
        let mut spokes = Vec::new();
        for name in SPOKES {
            let spoke_dir = fresh_dir(&dir, name).unwrap();
            let options = policy::spoke_options(ocm::spoke_options(Options::default()));
            let cluster = ControlPlane::start(&spoke_dir.join("cluster"), name, options)
                .await
                .unwrap();
            // OCM's registration webhook, not run here, would put a new cluster in the
            // `default` set with this label; the import sets it instead.
            let set = [(CLUSTER_SET_LABEL, "default")];
            let agent = OcmAgent::start(&hub, &cluster, name, &set, &spoke_dir, &AgentOptions::default())
                .await
                .unwrap();
            let policy = PolicySpoke::start(&hub, &cluster, name, &spoke_dir)
                .await
                .unwrap();
            spokes.push((
                name.to_owned(),
                Managed {
                    policy,
                    agent,
                    cluster,
                },
            ));
        }
        Self {
            spokes,
            policy,
            _ocm: ocm_hub,
            hub,
        }
    }

    fn spoke(&self, name: &str) -> &Managed {
        &self.spokes.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn logs(&self) -> String {
        let mut out = vec![self.policy.log_tails(15)];
        for (_, m) in &self.spokes {
            out.push(m.policy.controller.log_tail(15));
            out.push(m.agent.log_tail(5));
        }
        out.join("\n")
    }

    async fn set_selected(&self, cluster: &str, selected: bool) {
        let value = if selected { json!("true") } else { json!(null) };
        Api::<DynamicObject>::all_with(self.hub.client(), &managed_cluster_resource())
            .patch(
                cluster,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {SELECTOR: value}}})),
            )
            .await
            .unwrap();
    }

    /// The clusters the Placement's decisions name.
    async fn decided(&self) -> BTreeSet<String> {
        let api = Api::<DynamicObject>::namespaced_with(
            self.hub.client(),
            POLICY_NAMESPACE,
            &placement_decision_resource(),
        );
        let params = ListParams::default().labels("cluster.open-cluster-management.io/placement=kmm-spoke");
        let mut out = BTreeSet::new();
        for d in api.list(&params).await.unwrap() {
            for c in d.data["status"]["decisions"].as_array().into_iter().flatten() {
                out.insert(c["clusterName"].as_str().unwrap_or_default().to_owned());
            }
        }
        out
    }

    /// The names of the replicated Policies in `cluster`'s namespace on the hub.
    async fn replicated(&self, cluster: &str) -> BTreeSet<String> {
        names(self.hub.client(), cluster, &policy_resource()).await
    }

    /// Whether both ConfigurationPolicies on `cluster` are Compliant, as the real controller
    /// reports.
    async fn compliant(&self, cluster: &str) -> bool {
        let api = Api::<DynamicObject>::namespaced_with(
            self.spoke(cluster).cluster.client(),
            cluster,
            &configuration_policy_resource(),
        );
        for name in POLICIES {
            let Ok(Some(p)) = api.get_opt(name).await else {
                return false;
            };
            if p.data["status"]["compliant"] != "Compliant" {
                return false;
            }
        }
        true
    }

    async fn wait<F, Fut>(&self, secs: u64, what: &str, check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let waited = Wait::new(what, Duration::from_secs(secs)).until(check).await;
        if let Err(e) = waited {
            panic!("{e}\n{}", self.logs());
        }
    }
}

async fn names(client: Client, namespace: &str, resource: &kube::discovery::ApiResource) -> BTreeSet<String> {
    Api::<DynamicObject>::namespaced_with(client, namespace, resource)
        .list(&ListParams::default())
        .await
        .map(|l| l.items.iter().map(ResourceExt::name_any).collect())
        .unwrap_or_default()
}

/// Whether the object named `name` exists (a deleted one still terminating counts).
async fn exists<K>(api: Api<K>, name: &str) -> bool
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    api.get_opt(name).await.unwrap().is_some()
}

/// Which parts of the spoke's install a cluster holds: the Module and NodeModulesConfig CRDs,
/// the namespace, ServiceAccount, binding and Deployment of kmm-spoke.
async fn install_parts(cluster: &ControlPlane) -> [bool; 6] {
    let c = cluster.client();
    [
        exists(
            Api::<CustomResourceDefinition>::all(c.clone()),
            "modules.kmm.sigs.x-k8s.io",
        )
        .await,
        exists(
            Api::<CustomResourceDefinition>::all(c.clone()),
            "nodemodulesconfigs.kmm.sigs.x-k8s.io",
        )
        .await,
        exists(Api::<Namespace>::all(c.clone()), OPERATOR_NAMESPACE).await,
        exists(
            Api::<ServiceAccount>::namespaced(c.clone(), OPERATOR_NAMESPACE),
            "kmm-spoke",
        )
        .await,
        exists(Api::<ClusterRoleBinding>::all(c.clone()), "kmm-spoke").await,
        exists(Api::<Deployment>::namespaced(c, OPERATOR_NAMESPACE), "kmm-spoke").await,
    ]
}

/// Whether the spoke's install is all there.
async fn installed(cluster: &ControlPlane) -> bool {
    install_parts(cluster).await == [true; 6]
}

/// Whether nothing of the install is there.
async fn nothing_installed(cluster: &ControlPlane) -> bool {
    install_parts(cluster).await == [false; 6]
}

/// Whether kmm-spoke itself is gone from a cluster while its CRDs, which hold the cluster's
/// Modules, stay.
async fn spoke_removed(cluster: &ControlPlane) -> bool {
    install_parts(cluster).await == [true, true, false, false, false, false]
}

/// The namespaced Module resource (`kmm.sigs.x-k8s.io/v1beta1`).
fn module_resource() -> kube::discovery::ApiResource {
    kube::discovery::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("kmm.sigs.x-k8s.io", "v1beta1", "Module"),
        "modules",
    )
}

/// `verb` requests on replicated Policies in `namespace` on the hub, as `user (code)`, per the
/// audit log.
fn policy_writes(audit: &[AuditEvent], verb: &str, namespace: &str) -> Vec<String> {
    audit
        .iter()
        .filter(|e| e.verb == verb && e.resource() == "policies" && e.subresource().is_empty())
        .filter(|e| e.object_ref.as_ref().is_some_and(|o| o.namespace == namespace))
        .map(|e| format!("{} ({})", e.user.username, e.code()))
        .collect()
}

/// Writes of the configuration policy controller to `resource` (named `name`), per the audit log.
fn writes_by_controller(cluster: &ControlPlane, resource: &str, name: &str) -> Vec<String> {
    cluster
        .audit()
        .unwrap()
        .into_iter()
        .filter(|e| e.is_write() && e.user.username == CONFIG_POLICY_USER)
        .filter(|e| e.resource() == resource && e.object_ref.as_ref().is_some_and(|o| o.name == name))
        .map(|e| format!("{} {} {}", e.verb, e.request_uri, e.code()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_policies_install_kmm_spoke_on_the_placed_clusters_and_remove_it_when_unplaced() {
    let fleet = PolicyFleet::start("policy-rollout").await;
    let kubeconfig = fleet.hub.kubeconfig_path().to_owned();
    run(Command::new(controlplane::kubectl().unwrap())
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["apply", "--server-side", "-k"])
        .arg(kmm_fleet_tests::repo_root().join("policies")))
    .unwrap();
    fleet.set_selected("spoke-a", true).await;
    fleet.set_selected("spoke-b", true).await;

    let both: BTreeSet<String> = ["spoke-a", "spoke-b"].map(str::to_owned).into();
    fleet
        .wait(120, "the Placement decides spoke-a and spoke-b", || async {
            fleet.decided().await == both
        })
        .await;
    let replicated: BTreeSet<String> = POLICIES.map(|p| format!("{POLICY_NAMESPACE}.{p}")).into();
    fleet
        .wait(
            120,
            "the propagator replicates both Policies to spoke-a and spoke-b",
            || async {
                fleet.replicated("spoke-a").await == replicated
                    && fleet.replicated("spoke-b").await == replicated
            },
        )
        .await;
    // The hub's audit log: the propagator created both replicated Policies in each namespace
    // (a concurrent second try may be refused with 409), nobody else did.
    let hub_audit = fleet.hub.audit_settled().await.unwrap();
    for cluster in ["spoke-a", "spoke-b"] {
        let creates = policy_writes(&hub_audit, "create", cluster);
        assert!(
            creates.iter().all(|c| c.starts_with(PROPAGATOR_USER))
                && creates.iter().filter(|c| c.ends_with("(201)")).count() == 2,
            "replicated Policy creates in {cluster}: {creates:?}"
        );
    }
    // The propagator records on each root Policy the binding that placed it.
    for name in POLICIES {
        let root =
            Api::<DynamicObject>::namespaced_with(fleet.hub.client(), POLICY_NAMESPACE, &policy_resource())
                .get(name)
                .await
                .unwrap();
        let placed = root.data["status"]["placement"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            placed
                .iter()
                .any(|p| p["placementBinding"] == "kmm-spoke" && p["placement"] == "kmm-spoke"),
            "root Policy {name} records no placement: {:?}",
            root.data["status"]
        );
    }

    for cluster in ["spoke-a", "spoke-b"] {
        fleet
            .wait(
                300,
                &format!("both ConfigurationPolicies Compliant on {cluster}"),
                || async { fleet.compliant(cluster).await },
            )
            .await;
        assert!(
            installed(&fleet.spoke(cluster).cluster).await,
            "{cluster}: the install is incomplete"
        );
        // The audit log: the controller created the Deployment once, and nothing else did.
        let creates: Vec<String> = fleet
            .spoke(cluster)
            .cluster
            .audit_settled()
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.verb == "create" && e.resource() == "deployments" && e.code() == 201)
            .map(|e| e.user.username)
            .collect();
        assert_eq!(
            creates,
            [CONFIG_POLICY_USER],
            "{cluster}: who created Deployments"
        );
    }

    // The third cluster: no replicated Policy, nothing installed, no write by the controller.
    assert!(fleet.replicated("spoke-c").await.is_empty());
    assert!(policy_writes(&hub_audit, "create", "spoke-c").is_empty());
    let c = &fleet.spoke("spoke-c").cluster;
    assert!(nothing_installed(c).await, "spoke-c got part of the install");
    assert!(
        names(c.client(), "spoke-c", &configuration_policy_resource())
            .await
            .is_empty()
    );
    assert!(writes_by_controller(c, "deployments", "kmm-spoke").is_empty());

    // spoke-b leaves the Placement with a Module on it that carries kmm-spoke's finalizer. The
    // Policies leave its namespace on the hub; the controller deletes what the kmm-spoke Policy
    // created (DeleteIfCreated) and leaves the CRDs (None), so the Module stays whole: it must not
    // be left deleted halfway, on a finalizer whose controller is gone.
    let b_modules = Api::<DynamicObject>::namespaced_with(
        fleet.spoke("spoke-b").cluster.client(),
        "default",
        &module_resource(),
    );
    b_modules
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
                "kind": "Module",
                "metadata": {"name": "kept", "finalizers": ["kmm.node.kubernetes.io/module-finalizer"]},
                "spec": {
                    "selector": {"kubernetes.io/hostname": "none"},
                    "moduleLoader": {"container": {
                        "modprobe": {"moduleName": "kmm_ci_a"},
                        "kernelMappings": [{"regexp": "^.+$", "containerImage": "registry.example/kmm:1"}],
                    }},
                },
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let a_deployment =
        Api::<Deployment>::namespaced(fleet.spoke("spoke-a").cluster.client(), OPERATOR_NAMESPACE)
            .get("kmm-spoke")
            .await
            .unwrap()
            .uid();
    fleet.set_selected("spoke-b", false).await;
    fleet
        .wait(
            120,
            "the Policies leave spoke-b's namespace on the hub",
            || async { fleet.replicated("spoke-b").await.is_empty() },
        )
        .await;
    let hub_audit = fleet.hub.audit_settled().await.unwrap();
    let deleted = policy_writes(&hub_audit, "delete", "spoke-b");
    assert!(
        deleted.iter().all(|d| d.starts_with(PROPAGATOR_USER))
            && deleted.iter().filter(|d| d.ends_with("(200)")).count() == 2,
        "replicated Policy deletes in spoke-b: {deleted:?}"
    );
    let b = &fleet.spoke("spoke-b").cluster;
    fleet
        .wait(180, "kmm-spoke is pruned from spoke-b", || async {
            spoke_removed(b).await
                && names(b.client(), "spoke-b", &configuration_policy_resource())
                    .await
                    .is_empty()
        })
        .await;
    assert!(
        Api::<CustomResourceDefinition>::all(b.client())
            .get_opt("modules.kmm.sigs.x-k8s.io")
            .await
            .unwrap()
            .is_some_and(|crd| crd.metadata.deletion_timestamp.is_none()),
        "the Module CRD must stay on spoke-b"
    );
    let kept = b_modules.get("kept").await.unwrap();
    assert!(
        kept.metadata.deletion_timestamp.is_none(),
        "the Module on spoke-b is being deleted with nothing left to unload it"
    );
    let deletes = writes_by_controller(b, "deployments", "kmm-spoke");
    assert!(
        deletes.iter().any(|w| w.starts_with("delete ")),
        "the controller never deleted the Deployment on spoke-b: {deletes:?}"
    );
    // spoke-a keeps its install untouched.
    assert!(fleet.compliant("spoke-a").await);
    let still = Api::<Deployment>::namespaced(fleet.spoke("spoke-a").cluster.client(), OPERATOR_NAMESPACE)
        .get("kmm-spoke")
        .await
        .unwrap()
        .uid();
    assert_eq!(still, a_deployment, "spoke-a's Deployment was replaced");
}
