//! `manifests/spoke` as `kubectl kustomize` renders it, and the spoke-install Policy in
//! `policies/` generated from it: every object parses, the RBAC is the generated one, the
//! Deployment's configuration starts the real `kmm-spoke`, the committed Policy is what the code
//! generates, it carries exactly the kustomization's objects, and it stays under the size limits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{collections::BTreeMap, path::Path, process::Command};

use common::{K_DEBIAN, Setup, mk_node, spoke_cluster, test_dir};
use kmm_fleet_tests::{
    controlplane::{self, ControlPlane, Options, documents},
    manifests::{self, without_labels},
    process::Deployed,
};
use kmm_test_kit::repo_root;
use serde_json::Value;

fn kustomize(dir: &str) -> Vec<Value> {
    manifests::kustomize(&repo_root().join(dir)).unwrap()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    manifests::find(docs, kind, name).unwrap()
}

fn help_default(flag: &str) -> String {
    let help = Command::new(env!("CARGO_BIN_EXE_kmm-spoke"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let mut lines = help.lines();
    lines.find(|l| l.trim_start().starts_with(flag)).expect(flag);
    let text = lines.next().unwrap();
    let d = text
        .find("[default: ")
        .unwrap_or_else(|| panic!("{flag} has a default: {text}"));
    text[d + 10..].split(']').next().unwrap().to_string()
}

#[test]
fn every_object_renders_and_the_rbac_is_the_generated_one() {
    let docs = kustomize("manifests/spoke");
    for d in &docs {
        assert!(
            d["apiVersion"].is_string() && d["metadata"]["name"].is_string(),
            "{d}"
        );
    }
    let generated = documents(&kmm_spoke::rbac::render(
        kmm_spoke::rbac::NAMESPACE,
        kmm_spoke::rbac::NAME,
    ))
    .unwrap();
    for g in &generated {
        let name = g["metadata"]["name"].as_str().unwrap();
        let rendered = find(&docs, g["kind"].as_str().unwrap(), name);
        // Labels: the kustomization adds its own; the work agent's role keeps the aggregation one.
        let aggregation = &kmm_spoke::rbac::WORK_AGENT_AGGREGATION_LABEL;
        assert_eq!(
            rendered["metadata"]["labels"][aggregation], g["metadata"]["labels"][aggregation],
            "{name}"
        );
        let (rendered, want) = (without_labels(rendered.clone()), without_labels(g.clone()));
        assert_eq!(rendered, want, "run `just gen`");
    }

    let ns = find(&docs, "Namespace", kmm_spoke::rbac::NAMESPACE);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    let loader = help_default("--module-loader-service-account");
    let sa = find(&docs, "ServiceAccount", &loader);
    assert_eq!(sa["metadata"]["namespace"], kmm_spoke::rbac::NAMESPACE);

    let deployment = find(&docs, "Deployment", "kmm-spoke");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], kmm_spoke::rbac::NAME);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "quay.io/kmm-fleet/kmm-spoke:latest");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let env = container_env(&docs, deployment);
    assert_eq!(env["KMM_MANAGED"], "1");
    assert_eq!(env["RELATED_IMAGE_WORKER"], c["image"].as_str().unwrap());
    assert_eq!(env["OPERATOR_NAMESPACE"], kmm_spoke::rbac::NAMESPACE);
    let service = find(&docs, "Service", "kmm-spoke-metrics");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );
}

/// Every environment setting of `kmm-spoke run` is set by the Deployment (ConfigMap or env),
/// those in the ConfigMap with the binary's default, and nothing else is set.
#[test]
fn the_deployment_sets_every_environment_setting() {
    let docs = kustomize("manifests/spoke");
    let env = container_env(&docs, find(&docs, "Deployment", "kmm-spoke"));
    let data = find(&docs, "ConfigMap", "kmm-spoke-config")["data"].clone();
    let help = Command::new(env!("CARGO_BIN_EXE_kmm-spoke"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    // Read outside clap: the pod name (Events), the log settings, and glibc's malloc.
    let mut known = vec![
        "POD_NAME".to_string(),
        "KMM_LOG_FORMAT".into(),
        "RUST_LOG".into(),
        "MALLOC_ARENA_MAX".into(),
    ];
    for line in help.lines() {
        let Some(at) = line.find("[env: ") else { continue };
        let var = &line[at + 6..];
        let var = var[..var.find(['=', ']']).unwrap()].to_string();
        assert!(env.contains_key(&var), "the Deployment does not set {var}");
        if let (Some(d), Some(value)) = (line.find("[default: "), data.get(&var)) {
            let default = line[d + 10..].split(']').next().unwrap();
            assert_eq!(value, default, "{var}");
        }
        known.push(var);
    }
    assert!(known.len() >= 6, "help lists the settings:\n{help}");
    for key in env.keys() {
        assert!(
            known.contains(key),
            "the Deployment sets {key}, which kmm-spoke run does not read"
        );
    }
}

/// envFrom ConfigMaps, then env, with fieldRefs resolved for a pod named `kmm-spoke-0`.
fn container_env(docs: &[Value], deployment: &Value) -> BTreeMap<String, String> {
    manifests::container_env(docs, deployment, "kmm-spoke-0").unwrap()
}

/// The Deployment as rendered starts `kmm-spoke` against a real control plane, authenticated as
/// its ServiceAccount, and it writes the kernel claim and answers `/healthz` and `/readyz`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_configuration_starts_a_working_spoke() {
    let _serial = common::one_at_a_time().await;
    let deployed = Deployed::render(
        &repo_root().join("manifests/spoke"),
        "kmm-spoke",
        "kmm-spoke-0",
        "KMM_SPOKE_METRICS_ADDR",
    )
    .unwrap();
    assert_eq!(deployed.command, "/usr/local/bin/kmm-spoke");
    let cluster = spoke_cluster("deployment", Setup::default()).await;
    mk_node(&cluster.client(), "node-a", K_DEBIAN, &[]).await;
    let log = cluster.cp.dir().join("kmm-spoke-deployment.log");
    let text = deployed
        .run_until_ready(
            Path::new(env!("CARGO_BIN_EXE_kmm-spoke")),
            &cluster.spoke_kubeconfig,
            &log,
        )
        .await
        .unwrap_or_else(|e| panic!("kmm-spoke with the Deployment's configuration: {e:#}"));
    assert!(
        text.starts_with('{'),
        "KMM_LOG_FORMAT=json from the ConfigMap: {text}"
    );
    assert!(
        cluster
            .spoke_requests()
            .await
            .iter()
            .any(|r| r.resource() == "clusterclaims" && r.is_write() && r.code() == 201),
        "the kernel claim was written"
    );
}

#[test]
fn the_committed_policies_are_what_the_code_generates() {
    let files = kmm_spoke::policy::render(&repo_root().join("manifests")).unwrap();
    assert!(files.len() >= 5);
    for f in &files {
        let committed =
            std::fs::read_to_string(repo_root().join("policies").join(&f.name)).unwrap_or_default();
        assert!(
            committed == f.text,
            "policies/{} is missing or stale: run `just gen` and commit the result",
            f.name
        );
    }
}

fn templates(policy: &Value) -> Vec<Value> {
    policy["spec"]["policy-templates"][0]["objectDefinition"]["spec"]["object-templates"]
        .as_array()
        .unwrap()
        .clone()
}

fn key(v: &Value) -> String {
    format!(
        "{}/{}/{}",
        v["kind"].as_str().unwrap_or_default(),
        v["metadata"]["namespace"].as_str().unwrap_or_default(),
        v["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// Policies, Placement and bindings parse (kubectl kustomize policies); the spoke Policy carries
/// exactly what real kustomize renders from manifests/spoke, RBAC with mustonlyhave; the CRD
/// Policy carries the spoke CRDs; every Policy stays well under the size limits.
#[test]
fn the_policies_install_exactly_the_kustomization_and_the_crds() {
    let docs = kustomize("policies");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for k in [
        "Namespace",
        "Policy",
        "Placement",
        "PlacementBinding",
        "ManagedClusterSetBinding",
    ] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    let binding = find(&docs, "PlacementBinding", kmm_spoke::policy::SPOKE_POLICY);
    assert_eq!(binding["placementRef"]["kind"], "Placement");
    assert_eq!(binding["subjects"].as_array().unwrap().len(), 2);

    let spoke = find(&docs, "Policy", kmm_spoke::policy::SPOKE_POLICY);
    assert_eq!(spoke["spec"]["remediationAction"], "enforce");
    assert_eq!(
        spoke["spec"]["dependencies"][0]["name"],
        kmm_spoke::policy::CRDS_POLICY
    );
    let mut in_policy: BTreeMap<String, Value> = BTreeMap::new();
    for t in templates(spoke) {
        let obj = t["objectDefinition"].clone();
        let rbac = ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
            .contains(&obj["kind"].as_str().unwrap());
        assert_eq!(
            t["complianceType"],
            if rbac { "mustonlyhave" } else { "musthave" },
            "{}",
            key(&obj)
        );
        in_policy.insert(key(&obj), obj);
    }
    let rendered: BTreeMap<String, Value> = kustomize("manifests/spoke")
        .into_iter()
        .map(|o| (key(&o), o))
        .collect();
    assert_eq!(
        in_policy.keys().collect::<Vec<_>>(),
        rendered.keys().collect::<Vec<_>>(),
        "the spoke Policy installs what kubectl kustomize manifests/spoke renders"
    );
    assert_eq!(
        in_policy, rendered,
        "objects differ from kubectl kustomize manifests/spoke"
    );
    let work_agent = &in_policy[&format!("ClusterRole//{}", kmm_spoke::rbac::WORK_AGENT_ROLE)];
    assert_eq!(
        work_agent["metadata"]["labels"]["open-cluster-management.io/aggregate-to-work"],
        "true"
    );
    let deployment = &in_policy["Deployment/kmm-operator-system/kmm-spoke"];
    assert!(
        deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "KMM_MANAGED" && e["value"] == "1")
    );

    let crds = find(&docs, "Policy", kmm_spoke::policy::CRDS_POLICY);
    let crd_names: Vec<String> = templates(crds)
        .iter()
        .map(|t| key(&t["objectDefinition"]))
        .collect();
    for want in [
        "CustomResourceDefinition//modules.kmm.sigs.x-k8s.io",
        "CustomResourceDefinition//nodemodulesconfigs.kmm.sigs.x-k8s.io",
        "ValidatingAdmissionPolicy//kmm-module-name-length",
        "ValidatingAdmissionPolicyBinding//kmm-module-name-length",
    ] {
        assert!(crd_names.iter().any(|n| n == want), "{want} in {crd_names:?}");
    }

    // etcd keeps objects up to 1.5 MiB, and the policy framework copies each Policy into every
    // selected cluster's namespace and onto the cluster. Keep a margin.
    for p in [spoke, crds] {
        let size = serde_json::to_vec(p).unwrap().len();
        println!("Policy {}: {size} bytes as JSON", p["metadata"]["name"]);
        assert!(size < 1024 * 1024, "{} is {size} bytes", p["metadata"]["name"]);
        let name = p["metadata"]["name"].as_str().unwrap();
        assert!(kmm_spoke::policy::POLICY_NAMESPACE.len() + 1 + name.len() <= 62);
    }
}

/// The Placement and the ManagedClusterSetBinding survive OCM's own CRDs (from the pinned
/// `open-cluster-management.io/api` module) on a real apiserver unchanged: it prunes fields a
/// schema does not know and refuses what fails validation. The policy CRDs are not among them,
/// so the Policies themselves are not checked this way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_placement_fits_the_ocm_schemas() {
    let _serial = common::one_at_a_time().await;
    let hub = ControlPlane::start(&test_dir("placement"), "hub", Options::default())
        .await
        .unwrap();
    hub.install_crds_from_path(controlplane::ocm_crds().unwrap().join("hub"))
        .await
        .unwrap();
    hub.apply_yaml(&std::fs::read_to_string(repo_root().join("policies/namespace.yaml")).unwrap())
        .await
        .unwrap();
    let text = std::fs::read_to_string(repo_root().join("policies/placement.yaml")).unwrap();
    let docs = documents(&text).unwrap();
    let checked: Vec<Value> = docs
        .into_iter()
        .filter(|d| d["kind"] != "PlacementBinding")
        .collect();
    assert_eq!(checked.len(), 2);
    for doc in checked {
        let stored = serde_json::to_value(hub.apply_value(&doc).await.unwrap()).unwrap();
        assert!(
            contains(&stored["spec"], &doc["spec"]),
            "{} lost fields to the schema: sent {}, stored {}",
            doc["kind"],
            doc["spec"],
            stored["spec"]
        );
    }
}

/// Whether `have` holds everything in `want` (schema defaults may add more).
fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => {
            w.iter().all(|(k, v)| h.get(k).is_some_and(|hv| contains(hv, v)))
        }
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(a, b)| contains(a, b))
        }
        _ => have == want,
    }
}
