//! The whole way a user installs kmm-fleet: the hub runs `kmm-hub` with `manifests/hub` and no
//! kmm-spoke is installed anywhere; `kubectl apply --server-side -k policies` and two cluster
//! labels make OCM's real policy framework (propagator, Placement controller, configuration
//! policy controller; the framework addon's sync is a stand-in, see `kmm_fleet_tests::policy`)
//! install kmm-spoke on two of three spokes. The kubelet stand-in runs the pod of the Deployment
//! the Policy created chrooted in the kmm-spoke image `scripts/images` built (pulled from the
//! fleet's registry in place of `quay.io/kmm-fleet/kmm-spoke`, as a mirror would serve it), as
//! the manifests' UID, with the pod's ServiceAccount token; it publishes its kernel claim, the
//! hub rolls a ManagedClusterModule out there and worker pods (from the same image) load the
//! module. Then the Deployment's image changes in the Policy: kmm-spoke restarts in a
//! new pod and the loaded module stays loaded with no worker pod created or deleted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is a failed test

use std::{
    future::Future,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{Namespace, Node, Pod},
};
use kmm_api::{
    ManagedClusterModule, labels,
    ocm::{ClusterClaim, KERNEL_VERSIONS_CLAIM, ManagedCluster},
};
use kmm_fleet_tests::{
    Wait,
    controlplane::{self, Options},
    demo,
    fleet::{Fleet, MODULE_NAMESPACE, NodeSpec, OPERATOR_NAMESPACE, SPOKE_IMAGE_REPOSITORY},
    policy::{
        self, CONFIG_POLICY_USER, PolicyHub, PolicySpoke, configuration_policy_resource, policy_resource,
    },
    run,
};
use kube::{
    Api, ResourceExt,
    api::{DynamicObject, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const MCM: &str = "policy-kmod";
const POLICY_NAMESPACE: &str = "kmm-policies";
const SELECTOR: &str = "kmm.sigs.x-k8s.io/spoke";
const CLUSTER_SET_LABEL: &str = "cluster.open-cluster-management.io/clusterset";
/// kmm-spoke's identity: the token the kubelet requested for the pod's ServiceAccount.
const SPOKE_USER: &str = "system:serviceaccount:kmm-operator-system:kmm-spoke";
const SPOKES: [(&str, &str, &str); 3] = [
    ("spoke-a", "a-1", demo::K_EAST),
    ("spoke-b", "b-1", demo::K_WEST),
    ("spoke-c", "c-1", demo::K_EAST),
];

/// The fleet and the policy framework, the framework's processes dropped first.
struct PolicyFleet {
    spokes: Vec<PolicySpoke>,
    policy: PolicyHub,
    fleet: Fleet,
}

impl PolicyFleet {
    async fn start() -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("policy-fleet");
        let mut fleet = Fleet::start_from_images(&dir, policy::hub_options(Options::hub()))
            .await
            .unwrap();
        fleet.push_prebuilt(demo::K_EAST).unwrap();
        fleet.push_prebuilt(demo::K_WEST).unwrap();
        let policy = PolicyHub::start(&fleet.hub, &fleet.dir).await.unwrap();
        let mut spokes = Vec::new();
        for (name, node, kernel) in SPOKES {
            // Every cluster would get the module; only the Policy decides where kmm-spoke runs.
            let labels = [("driver", "gpu"), (CLUSTER_SET_LABEL, "default")];
            fleet
                .add_policy_spoke(name, &labels, &[NodeSpec::worker(node, kernel)])
                .await
                .unwrap();
            let cluster = &fleet.spoke(name).unwrap().cluster;
            spokes.push(
                PolicySpoke::start(&fleet.hub, cluster, name, &fleet.dir.join(name))
                    .await
                    .unwrap(),
            );
        }
        fleet.start_hub().unwrap();
        Self {
            spokes,
            policy,
            fleet,
        }
    }

    fn logs(&self) -> String {
        let mut out = vec![self.policy.log_tails(10), self.fleet.log_tails(10)];
        out.extend(self.spokes.iter().map(|s| s.controller.log_tail(10)));
        out.join("\n")
    }

    async fn wait<F, Fut>(&self, secs: u64, what: &str, check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        if let Err(e) = Wait::new(what, Duration::from_secs(secs)).until(check).await {
            panic!("{e}\n{}", self.logs());
        }
    }

    /// `cluster`'s apiserver audit log, once every request made so far is in it.
    async fn audit(&self, cluster: &str) -> Vec<controlplane::AuditEvent> {
        self.fleet
            .spoke(cluster)
            .unwrap()
            .cluster
            .audit_settled()
            .await
            .unwrap()
    }

    fn client(&self, cluster: &str) -> kube::Client {
        self.fleet.spoke(cluster).unwrap().cluster.client()
    }

    async fn label(&self, cluster: &str) {
        Api::<ManagedCluster>::all(self.fleet.hub.client())
            .patch(
                cluster,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {SELECTOR: "true"}}})),
            )
            .await
            .unwrap();
    }

    /// Whether both ConfigurationPolicies on `cluster` are Compliant, as the real controller
    /// reports.
    async fn compliant(&self, cluster: &str) -> bool {
        let api = Api::<DynamicObject>::namespaced_with(
            self.client(cluster),
            cluster,
            &configuration_policy_resource(),
        );
        for name in ["kmm-spoke-crds", "kmm-spoke"] {
            match api.get_opt(name).await {
                Ok(Some(p)) if p.data["status"]["compliant"] == "Compliant" => {}
                _ => return false,
            }
        }
        true
    }

    /// kmm-spoke's pods on `cluster` (of the Policy's Deployment).
    async fn spoke_pods(&self, cluster: &str) -> Vec<Pod> {
        Api::<Pod>::namespaced(self.client(cluster), OPERATOR_NAMESPACE)
            .list(&ListParams::default().labels("app.kubernetes.io/name=kmm-spoke"))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }

    /// The one running, ready kmm-spoke pod on `cluster`, not being deleted.
    async fn running_spoke(&self, cluster: &str) -> Option<Pod> {
        let pods = self.spoke_pods(cluster).await;
        let live: Vec<Pod> = pods
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        (live.len() == 1).then(|| live[0].clone())
    }

    async fn module_ready(&self, cluster: &str, node: &str) -> bool {
        Api::<Node>::all(self.client(cluster))
            .get(node)
            .await
            .is_ok_and(|n| {
                n.labels()
                    .contains_key(&labels::module_ready(MODULE_NAMESPACE, MCM))
            })
    }

    async fn hub_claim(&self, cluster: &str) -> Option<String> {
        Api::<ManagedCluster>::all(self.fleet.hub.client())
            .get(cluster)
            .await
            .ok()?
            .claim(KERNEL_VERSIONS_CLAIM)
            .map(str::to_owned)
    }
}

/// The Deployment `pod` belongs to, through its ReplicaSet.
async fn deployment_of(client: kube::Client, pod: &Pod) -> Option<Deployment> {
    let rs_name = pod
        .owner_references()
        .iter()
        .find(|o| o.kind == "ReplicaSet")?
        .name
        .clone();
    let rs = Api::<ReplicaSet>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .get(&rs_name)
        .await
        .ok()?;
    let d_name = rs
        .owner_references()
        .iter()
        .find(|o| o.kind == "Deployment")?
        .name
        .clone();
    Api::<Deployment>::namespaced(client, OPERATOR_NAMESPACE)
        .get(&d_name)
        .await
        .ok()
}

/// Sets the image of the kmm-spoke Deployment inside the root Policy's object templates.
fn set_spoke_image(policy: &mut Value, image: &str) -> bool {
    let mut changed = false;
    for t in policy["spec"]["policy-templates"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        let objects = &mut t["objectDefinition"]["spec"]["object-templates"];
        for o in objects.as_array_mut().into_iter().flatten() {
            let d = &mut o["objectDefinition"];
            if d["kind"] == "Deployment" && d["metadata"]["name"] == "kmm-spoke" {
                d["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
                changed = true;
            }
        }
    }
    changed
}

/// `(runs root/<binary>, uid)` of every process of this machine whose root is the folder `root`
/// (chrooted there), from /proc; files compared by device and inode, as paths in another mount
/// namespace need not read as this one's.
fn chrooted_processes(root: &Path, binary: &str) -> Vec<(bool, u32)> {
    use std::os::unix::fs::MetadataExt;
    let id = |path: &Path| std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    let (Some(root_id), Some(binary_id)) = (id(root), id(&root.join(binary))) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let proc = entry.path();
        if id(&proc.join("root")) != Some(root_id) {
            continue;
        }
        let uid = std::fs::read_to_string(proc.join("status"))
            .ok()
            .and_then(|status| {
                let ids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?.to_owned();
                ids.split_whitespace().next()?.parse().ok()
            });
        if let Some(uid) = uid {
            out.push((id(&proc.join("exe")) == Some(binary_id), uid));
        }
    }
    out
}

/// Who made the audited requests `keep` selects, in order.
fn users(events: &[controlplane::AuditEvent], keep: impl Fn(&controlplane::AuditEvent) -> bool) -> Vec<&str> {
    events
        .iter()
        .filter(|e| keep(e))
        .map(|e| e.user.username.as_str())
        .collect()
}

/// kmm-spoke's pod creates and deletes in the module namespace (its worker pods), per the
/// audit log.
fn worker_pod_writes(events: &[controlplane::AuditEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.user.username == SPOKE_USER)
        .filter(|e| matches!(e.verb.as_str(), "create" | "delete" | "deletecollection"))
        .filter(|e| e.resource() == "pods" && e.subresource().is_empty())
        .filter(|e| {
            e.object_ref
                .as_ref()
                .is_some_and(|o| o.namespace == MODULE_NAMESPACE)
        })
        .map(|e| format!(" {} {} ({})", e.verb, e.request_uri, e.code()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmm_spoke_installed_by_the_policy_loads_the_module_and_upgrades_through_it_without_worker_churn() {
    let pf = PolicyFleet::start().await;
    // Nothing of kmm-spoke anywhere before the Policies.
    for (name, _, _) in SPOKES {
        let ns = Api::<Namespace>::all(pf.client(name))
            .get_opt(OPERATOR_NAMESPACE)
            .await
            .unwrap();
        assert!(ns.is_none(), "{name} has kmm-spoke's namespace before the Policy");
    }
    run(Command::new(controlplane::kubectl().unwrap())
        .arg("--kubeconfig")
        .arg(pf.fleet.hub.kubeconfig_path())
        .args(["apply", "--server-side", "-k"])
        .arg(kmm_fleet_tests::repo_root().join("policies")))
    .unwrap();
    pf.label("spoke-a").await;
    pf.label("spoke-b").await;
    let mcm: ManagedClusterModule =
        serde_saphyr::from_str(&demo::example_mcm(MCM, &pf.fleet.registry.host)).unwrap();
    Api::<ManagedClusterModule>::all(pf.fleet.hub.client())
        .create(&PostParams::default(), &mcm)
        .await
        .unwrap();

    let mut first = Vec::new();
    for (cluster, node, kernel) in &SPOKES[..2] {
        pf.wait(300, &format!("both Policies Compliant on {cluster}"), || async {
            pf.compliant(cluster).await
        })
        .await;
        pf.wait(120, &format!("kmm-spoke running on {cluster}"), || async {
            pf.running_spoke(cluster).await.is_some()
        })
        .await;
        let pod = pf.running_spoke(cluster).await.unwrap();
        // The pod is the Policy's: its Deployment was created by the configuration policy
        // controller (per the audit log), and it runs the image the Policy names.
        let deployment = deployment_of(pf.client(cluster), &pod).await.unwrap();
        assert_eq!(deployment.name_any(), "kmm-spoke");
        let audit = pf.audit(cluster).await;
        let creators = users(&audit, |e| {
            e.verb == "create" && e.resource() == "deployments" && e.code() == 201
        });
        assert_eq!(
            creators,
            [CONFIG_POLICY_USER],
            "{cluster}: who created Deployments"
        );
        let image = pod.spec.as_ref().unwrap().containers[0].image.clone().unwrap();
        assert_eq!(image, format!("{SPOKE_IMAGE_REPOSITORY}:latest"));

        // The process publishes the kernel claim as the pod's ServiceAccount; OCM carries it to
        // the hub.
        pf.wait(120, &format!("{cluster}'s kernel claim on the hub"), || async {
            pf.hub_claim(cluster).await.is_some_and(|c| c.contains(kernel))
        })
        .await;
        let claim = Api::<ClusterClaim>::all(pf.client(cluster))
            .get(KERNEL_VERSIONS_CLAIM)
            .await
            .unwrap();
        assert!(claim.spec.value.contains(kernel), "{cluster}: {:?}", claim.spec);
        let audit = pf.audit(cluster).await;
        let claim_writers = users(&audit, |e| {
            e.is_write()
                && e.resource() == "clusterclaims"
                && e.object_ref
                    .as_ref()
                    .is_some_and(|o| o.name == KERNEL_VERSIONS_CLAIM)
        });
        assert!(
            !claim_writers.is_empty() && claim_writers.iter().all(|u| *u == SPOKE_USER),
            "{cluster}: kernel claim writers {claim_writers:?}"
        );
        // That process is the image's kmm-spoke, chrooted in the unpacked image, as the UID the
        // manifests declare (runAsUser 65532): this machine's /proc says so.
        let root = pf
            .fleet
            .spoke(cluster)
            .unwrap()
            .dir()
            .join("binary-pods")
            .join(pod.uid().unwrap())
            .join("image/rootfs");
        pf.wait(
            60,
            &format!("{cluster}: kmm-spoke chrooted in its image"),
            || async { chrooted_processes(&root, "usr/local/bin/kmm-spoke") == [(true, 65532)] },
        )
        .await;

        pf.wait(240, &format!("the module loaded on {node}"), || async {
            pf.module_ready(cluster, node).await
        })
        .await;
        let workers = worker_pod_writes(&pf.audit(cluster).await);
        assert!(
            workers.iter().any(|w| w.starts_with(" create")),
            "{cluster}: kmm-spoke created no worker pod: {workers:?}"
        );
        first.push((cluster.to_owned(), pod.uid().unwrap()));
    }

    // The third cluster: no kmm-spoke, no claim, no module.
    let c = pf.client("spoke-c");
    assert!(
        Api::<Namespace>::all(c.clone())
            .get_opt(OPERATOR_NAMESPACE)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<ClusterClaim>::all(c.clone())
            .get_opt(KERNEL_VERSIONS_CLAIM)
            .await
            .unwrap()
            .is_none()
    );
    assert!(pf.hub_claim("spoke-c").await.is_none());
    assert!(!pf.module_ready("spoke-c", "c-1").await);
    assert!(pf.spoke_pods("spoke-c").await.is_empty());

    // Upgrade through the Policy: a new image for kmm-spoke's Deployment. Before it, every
    // worker pod is done and gone, and the audit log's worker pod writes are counted.
    let mut before = Vec::new();
    for (cluster, _) in &first {
        pf.wait(120, &format!("no worker pod left on {cluster}"), || async {
            Api::<Pod>::namespaced(pf.client(cluster), MODULE_NAMESPACE)
                .list(&ListParams::default())
                .await
                .is_ok_and(|l| l.items.iter().all(|p| !p.name_any().starts_with("kmm-worker-")))
        })
        .await;
        before.push(worker_pod_writes(&pf.audit(cluster).await).len());
    }
    let policies =
        Api::<DynamicObject>::namespaced_with(pf.fleet.hub.client(), POLICY_NAMESPACE, &policy_resource());
    let mut root = policies.get("kmm-spoke").await.unwrap();
    let mut data = serde_json::to_value(&root).unwrap();
    let new_image = format!("{SPOKE_IMAGE_REPOSITORY}:v2");
    assert!(
        set_spoke_image(&mut data, &new_image),
        "no kmm-spoke Deployment in the Policy"
    );
    root.data["spec"] = data["spec"].clone();
    policies
        .replace("kmm-spoke", &PostParams::default(), &root)
        .await
        .unwrap();

    for ((cluster, old_uid), workers_before) in first.iter().zip(&before) {
        pf.wait(
            240,
            &format!("kmm-spoke restarted with {new_image} on {cluster}"),
            || async {
                pf.running_spoke(cluster).await.is_some_and(|p| {
                    p.uid().as_ref() != Some(old_uid)
                        && p.spec.as_ref().and_then(|s| s.containers[0].image.as_deref())
                            == Some(new_image.as_str())
                }) && pf.spoke_pods(cluster).await.len() == 1
            },
        )
        .await;
        let node = SPOKES.iter().find(|s| s.0 == *cluster).unwrap().1;
        // The new process takes over: its informers have synced and it reconciled every node
        // on start (a load it did not recognise would show as a new worker pod right then).
        pf.wait(60, &format!("the new kmm-spoke on {cluster} synced"), || async {
            let Some(pod) = pf.running_spoke(cluster).await else {
                return false;
            };
            let log = pf
                .fleet
                .spoke(cluster)
                .unwrap()
                .dir()
                .join("binary-pods")
                .join(pod.uid().unwrap())
                .join("kmm-spoke.log");
            std::fs::read_to_string(log).is_ok_and(|l| l.contains("caches synced"))
        })
        .await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            pf.module_ready(cluster, node).await,
            "{cluster}: the module is no longer ready"
        );
        let workers = worker_pod_writes(&pf.audit(cluster).await);
        assert_eq!(
            workers.len(),
            *workers_before,
            "{cluster}: worker pods were created or deleted after the upgrade: {:?}",
            &workers[(*workers_before).min(workers.len())..]
        );
    }
}
