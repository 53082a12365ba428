//! `manifests/hub` as `kubectl kustomize` renders it: every object parses, the RBAC is the
//! generated one, and the Deployment's command, args and environment (ConfigMap and downward API
//! resolved) start the real `kmm-hub` against a real hub control plane until it is ready.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{path::Path, process::Command};

use kmm_fleet_tests::{
    controlplane::Options,
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

#[test]
fn every_object_renders_with_a_kind_name_and_the_rbac_is_the_generated_one() {
    let docs = kustomize("manifests/hub");
    for d in &docs {
        assert!(d["apiVersion"].is_string() && d["kind"].is_string(), "{d}");
        assert!(d["metadata"]["name"].is_string(), "{d}");
        assert_eq!(d["metadata"]["labels"]["app.kubernetes.io/part-of"], "kmm-fleet");
    }
    let generated =
        kmm_fleet_tests::controlplane::documents(&kmm_hub::rbac::render("kmm-hub", "kmm-hub")).unwrap();
    assert!(generated.len() >= 4);
    for g in &generated {
        let name = g["metadata"]["name"].as_str().unwrap();
        let rendered = docs
            .iter()
            .find(|d| {
                d["kind"] == g["kind"]
                    && d["metadata"]["name"] == name
                    && d["metadata"]["namespace"] == g["metadata"]["namespace"]
            })
            .unwrap_or_else(|| panic!("{} {name} missing from the kustomization", g["kind"]));
        assert_eq!(&without_labels(rendered.clone()), g, "run `just gen`");
    }
    let rbac_kinds = ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"];
    assert_eq!(
        docs.iter()
            .filter(|d| rbac_kinds.iter().any(|k| d["kind"] == *k))
            .count(),
        generated.len(),
        "no RBAC besides the generated one"
    );

    let deployment = find(&docs, "Deployment", "kmm-hub");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "kmm-hub");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "quay.io/kmm-fleet/kmm-hub:latest");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object());
    let service = find(&docs, "Service", "kmm-hub-metrics");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );
    // Build and sign Jobs run as `default`, which gets no token.
    assert_eq!(
        find(&docs, "ServiceAccount", "default")["automountServiceAccountToken"],
        false
    );
}

/// Every KMM_HUB_* setting of `kmm-hub run` that has a default is in the ConfigMap with that
/// default, and the ConfigMap sets nothing the binary does not read.
#[test]
fn the_config_map_lists_every_setting_with_its_default() {
    let docs = kustomize("manifests/hub");
    let data = find(&docs, "ConfigMap", "kmm-hub-config")["data"].clone();
    let help = Command::new(env!("CARGO_BIN_EXE_kmm-hub"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let mut known = Vec::new();
    for line in help.lines() {
        let Some(at) = line.find("[env: ") else { continue };
        let var = &line[at + 6..];
        let var = &var[..var.find(['=', ']']).unwrap()];
        known.push(var.to_string());
        if !var.starts_with("KMM_HUB_") || var == "KMM_HUB_NAMESPACE" {
            continue; // KMM_HUB_NAMESPACE and POD_NAME come from the downward API
        }
        let Some(d) = line.find("[default: ") else {
            continue;
        };
        let default = &line[d + 10..];
        let default = &default[..default.find(']').unwrap()];
        assert!(data.get(var).is_some(), "{var} is not in the ConfigMap");
        if var != "KMM_HUB_IMAGE" {
            assert_eq!(data[var], default, "{var}");
        }
    }
    assert!(known.len() > 5, "help lists the settings:\n{help}");
    for key in data.as_object().unwrap().keys() {
        assert!(
            known.contains(key) || ["KMM_LOG_FORMAT", "RUST_LOG"].contains(&key.as_str()),
            "the ConfigMap sets {key}, which kmm-hub run does not read"
        );
    }
    assert_eq!(data["KMM_HUB_IMAGE"], "quay.io/kmm-fleet/kmm-hub:latest");
}

/// The Deployment as rendered (command's args, env, envFrom) starts `kmm-hub` against a real
/// hub control plane, authenticated as its ServiceAccount with the manifests' RBAC, until
/// `/readyz` says ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_configuration_starts_a_ready_hub() {
    let deployed = Deployed::render(
        &repo_root().join("manifests/hub"),
        "kmm-hub",
        "kmm-hub-0",
        "KMM_HUB_METRICS_ADDR",
    )
    .unwrap();
    assert_eq!(deployed.command, "/usr/local/bin/kmm-hub");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("hub-deployment");
    let (hub, kubeconfig) = kmm_fleet_tests::fleet::start_hub_cluster(&dir, Options::hub())
        .await
        .unwrap();
    let log = hub.dir().join("kmm-hub-deployment.log");
    let text = deployed
        .run_until_ready(Path::new(env!("CARGO_BIN_EXE_kmm-hub")), &kubeconfig, &log)
        .await
        .unwrap_or_else(|e| panic!("kmm-hub with the Deployment's configuration: {e:#}"));
    assert!(
        text.starts_with('{'),
        "KMM_LOG_FORMAT=json from the ConfigMap: {text}"
    );
    let audit = hub.audit_settled().await.unwrap();
    assert!(
        audit.iter().any(|e| {
            e.user.username == "system:serviceaccount:kmm-hub:kmm-hub"
                && e.resource() == "leases"
                && e.object_ref.as_ref().is_some_and(|o| o.namespace == "kmm-hub")
        }),
        "the Lease is in the namespace the downward API gave"
    );
}
