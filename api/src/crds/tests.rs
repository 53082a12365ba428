use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube_cel::{ScopeContext, analyze_rule, compile_schema};
use serde_json::Value;

use super::*;
use crate::ocm::{ClusterClaim, ManagedCluster, ManifestWork};

mod cel_cost;
mod upstream_facts;

fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn schema_of(crd: &CustomResourceDefinition) -> Value {
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref());
    serde_json::to_value(schema).expect("schema serializes")
}

#[test]
fn committed_crds_match_the_types() {
    let dir = repo_path("manifests/crds");
    for crd in hub_crds().iter().chain(&spoke_crds()) {
        let path = dir.join(file_name(crd));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == to_yaml(crd).expect("renders"),
            "{} is missing or stale: run `just gen` and commit the result",
            path.display()
        );
    }
}

#[test]
fn rendered_crds_read_back_as_the_same_objects() {
    for crd in hub_crds().iter().chain(&spoke_crds()) {
        let yaml = to_yaml(crd).expect("renders");
        let back: CustomResourceDefinition = serde_saphyr::from_str(&yaml).expect("parses back");
        assert_eq!(&back, crd);
    }
}

#[test]
fn the_spoke_gets_module_and_nmc_and_the_hub_gets_mcm() {
    let names = |crds: Vec<CustomResourceDefinition>| -> Vec<String> {
        crds.into_iter().filter_map(|c| c.metadata.name).collect()
    };
    assert_eq!(names(hub_crds()), ["managedclustermodules.hub.kmm.sigs.x-k8s.io"]);
    assert_eq!(
        names(spoke_crds()),
        [
            "modules.kmm.sigs.x-k8s.io",
            "nodemodulesconfigs.kmm.sigs.x-k8s.io"
        ]
    );
    let mcm = &hub_crds()[0];
    assert_eq!(mcm.spec.scope, "Cluster");
    assert_eq!(spoke_crds()[0].spec.scope, "Namespaced");
    let columns: Vec<_> = mcm.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Desired", "Applied", "Degraded", "Age"]);
}

/// Every node of a schema that carries CEL rules, with its rules.
fn rule_sites(schema: &Value, out: &mut Vec<(Value, Vec<String>)>) {
    if let Some(rules) = schema.get("x-kubernetes-validations").and_then(Value::as_array) {
        let rules = rules
            .iter()
            .filter_map(|r| r.get("rule")?.as_str().map(str::to_owned))
            .collect();
        out.push((schema.clone(), rules));
    }
    for key in ["properties", "additionalProperties", "items"] {
        match schema.get(key) {
            Some(Value::Object(map)) if key == "properties" => map.values().for_each(|v| rule_sites(v, out)),
            Some(v @ Value::Object(_)) => rule_sites(v, out),
            _ => {}
        }
    }
}

fn comprehension_binders(rule: &str) -> Vec<String> {
    let re = regex::Regex::new(r"\.(?:all|exists|exists_one|map|filter)\(\s*(\w+)\s*,").expect("valid regex");
    re.captures_iter(rule).map(|c| c[1].to_owned()).collect()
}

#[test]
fn cel_rules_compile_use_only_crd_variables_and_iterate_bounded_lists() {
    let mut checked = 0;
    for crd in hub_crds().iter().chain(&spoke_crds()) {
        let mut sites = Vec::new();
        rule_sites(&schema_of(crd), &mut sites);
        for (node, rules) in sites {
            let compiled = compile_schema(&node);
            for rule in rules {
                assert!(
                    kube_cel::cel::Program::compile(&rule).is_ok(),
                    "does not compile: {rule}"
                );
                // The scope check counts macro binders (`m` in `list.all(m, ...)`) as free variables.
                let binders = comprehension_binders(&rule);
                let warnings: Vec<_> = analyze_rule(&rule, &compiled, ScopeContext::CrdValidation)
                    .into_iter()
                    .filter(|w| {
                        !binders
                            .iter()
                            .any(|b| w.message.contains(&format!("variable '{b}'")))
                    })
                    .collect();
                assert!(warnings.is_empty(), "{rule}: {warnings:?}");
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 12,
        "expected the Module, NMC and MCM rules, found {checked}"
    );
}

#[test]
fn cel_rules_fit_the_api_servers_cost_budget() {
    for crd in hub_crds().iter().chain(&spoke_crds()) {
        let name = crd.metadata.name.as_deref().unwrap_or_default();
        let priced = cel_cost::price_schema(&schema_of(crd));
        assert!(!priced.is_empty(), "{name} has CEL rules");
        for p in &priced {
            assert!(
                p.total() <= cel_cost::PER_RULE_LIMIT,
                "{name}{}: `{}` costs {} x {} runs, over the API server's limit of {} per rule: \
                 add maxLength / maxItems to what it reads, or make it cheaper",
                p.path,
                p.expression,
                p.cost,
                p.cardinality,
                cel_cost::PER_RULE_LIMIT
            );
        }
        let total = priced.iter().fold(0u64, |sum, p| sum.saturating_add(p.total()));
        assert!(
            total <= cel_cost::PER_CRD_LIMIT,
            "{name}: the rules cost {total} together, over the API server's limit of {}",
            cel_cost::PER_CRD_LIMIT
        );
    }
}

/// The estimate agrees with the API server's (k8s.io/apiextensions-apiserver v0.34, rule by rule on
/// these CRDs), and refuses what the API server refused before the rules were bounded.
#[test]
fn cel_cost_estimate_matches_the_api_server() {
    let module = schema_of(&spoke_crds()[0]);
    let nmc = schema_of(&spoke_crds()[1]);
    let mcm = schema_of(&hub_crds()[0]);
    let find = |schema: &Value, path: &str, expression: &str| -> (u64, u64) {
        let p = cel_cost::price_schema(schema)
            .into_iter()
            .find(|p| p.path == path && p.expression.starts_with(expression))
            .unwrap_or_else(|| panic!("no rule `{expression}` at {path}"));
        (p.cost, p.cardinality)
    };
    let mapping_image = ".spec.moduleLoader.container.kernelMappings[].containerImage";
    assert_eq!(find(&module, mapping_image, "self == ''"), (6557, 500));
    assert_eq!(
        find(
            &module,
            ".spec.moduleLoader.container",
            "self.kernelMappings.all(m, !(has(m.sign)"
        ),
        (10003, 1)
    );
    assert_eq!(
        find(
            &module,
            ".spec.moduleLoader.container",
            "(has(self.containerImage)"
        ),
        (3006, 1)
    );
    assert_eq!(
        find(&nmc, ".spec.modules[].config.modprobe", "has(self.moduleName)"),
        (19, 1024)
    );
    assert_eq!(
        find(
            &nmc,
            ".status.modules[].config.modprobe",
            "!has(self.modulesLoadingOrder)"
        ),
        (114, 1024)
    );
    assert_eq!(find(&mcm, "", "size(self.metadata.name)"), (10, 1));
    assert_eq!(find(&mcm, "", "'metadata.name and spec.spokeNamespace"), (34, 1));

    // Unbounded: the image rule on a string of any length, once per mapping...
    let unbounded_image = serde_json::json!({"type": "string"});
    let cost = cel_cost::price(
        "self == '' || self.contains(':') || self.contains('@')",
        &unbounded_image,
    );
    assert!(cost * 500 > cel_cost::PER_RULE_LIMIT, "{cost}");
    // ...and a message built with string(int), whose length nothing bounds.
    let message = "'they are ' + string(size(self.metadata.name)) + ')'";
    assert!(cel_cost::price(message, &mcm) > cel_cost::PER_RULE_LIMIT);
}

#[test]
fn mcm_length_rule_uses_the_label_limit() {
    let schema = schema_of(&hub_crds()[0]);
    let rule = schema["x-kubernetes-validations"][0]["rule"]
        .as_str()
        .expect("root rule");
    assert!(
        rule.ends_with(&format!("<= {}", crate::labels::MAX_NAMESPACE_AND_NAME_LEN)),
        "{rule}"
    );
}

/// Fails when one of our fields is missing from, or typed differently in, the real CRD.
fn assert_subset(ours: &Value, real: &Value, path: &str) {
    if real.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        && real.get("properties").is_none()
    {
        return;
    }
    let (our_type, real_type) = (ours.get("type"), real.get("type"));
    if our_type.is_some() && real_type.is_some() {
        assert_eq!(our_type, real_type, "{path}: type differs from the OCM CRD");
    }
    if let Some(props) = ours.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let real_sub = real
                .get("properties")
                .and_then(|p| p.get(name))
                .or_else(|| real.get("additionalProperties"))
                .unwrap_or_else(|| panic!("{path}.{name} is not in the OCM CRD"));
            assert_subset(sub, real_sub, &format!("{path}.{name}"));
        }
    }
    if let (Some(items), Some(real_items)) = (ours.get("items"), real.get("items")) {
        assert_subset(items, real_items, &format!("{path}[]"));
    }
}

#[test]
fn ocm_types_are_a_subset_of_the_shipped_ocm_crds() {
    // OCM's CRDs from the open-cluster-management.io/api module (scripts/controlplane-build).
    let target =
        std::env::var("CARGO_TARGET_DIR").map_or_else(|_| repo_path("target"), std::path::PathBuf::from);
    let dir = target.join("controlplane/crds/ocm/all");
    let cases = [
        (
            ManagedCluster::crd(),
            "0000_00_clusters.open-cluster-management.io_managedclusters.crd.yaml",
        ),
        (
            ClusterClaim::crd(),
            "0000_02_clusters.open-cluster-management.io_clusterclaims.crd.yaml",
        ),
        (
            ManifestWork::crd(),
            "0000_00_work.open-cluster-management.io_manifestworks.crd.yaml",
        ),
    ];
    for (ours, file) in cases {
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let real: CustomResourceDefinition = serde_saphyr::from_str(&text).expect("OCM CRD parses");
        assert_eq!(ours.spec.group, real.spec.group);
        assert_eq!(ours.spec.names.plural, real.spec.names.plural);
        assert_eq!(ours.spec.scope, real.spec.scope, "{file}");
        let version = real
            .spec
            .versions
            .iter()
            .find(|v| v.name == ours.spec.versions[0].name)
            .unwrap_or_else(|| panic!("{file} has no version {}", ours.spec.versions[0].name));
        let real_schema = serde_json::to_value(
            version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref()),
        )
        .expect("serializes");
        assert_subset(&schema_of(&ours), &real_schema, &ours.spec.names.kind);
    }
}

#[test]
fn ocm_objects_in_the_real_shape_deserialize() {
    let work: ManifestWork = serde_json::from_value(serde_json::json!({
        "apiVersion": "work.open-cluster-management.io/v1", "kind": "ManifestWork",
        "metadata": {"name": "m", "namespace": "cluster1"},
        "spec": {"workload": {"manifests": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}]},
                 "manifestConfigs": [{"resourceIdentifier": {"group": "kmm.sigs.x-k8s.io", "resource": "modules", "name": "m", "namespace": "ns"},
                                      "feedbackRules": [{"type": "JSONPaths", "jsonPaths": [{"name": "a", "path": ".status.a"}]}],
                                      "updateStrategy": {"type": "ServerSideApply", "serverSideApply": {"force": true, "fieldManager": "work-agent-kmm"}}}]},
        "status": {"conditions": [{"type": "Applied", "status": "True", "reason": "r", "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 2}],
                   "resourceStatus": {"manifests": [{"resourceMeta": {"ordinal": 0, "kind": "Module"},
                       "conditions": [], "statusFeedback": {"values": [{"name": "a", "fieldValue": {"type": "Integer", "integer": 3}}]}}]}}
    }))
    .expect("a ManifestWork as OCM writes it");
    let feedback = &work
        .status
        .expect("status")
        .resource_status
        .expect("resources")
        .manifests[0];
    assert_eq!(
        feedback.status_feedback.as_ref().expect("feedback").values[0]
            .field_value
            .integer,
        Some(3)
    );

    let cluster: ManagedCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "cluster.open-cluster-management.io/v1", "kind": "ManagedCluster",
        "metadata": {"name": "c1", "labels": {"env": "prod"}},
        "spec": {"hubAcceptsClient": true, "leaseDurationSeconds": 60},
        "status": {"clusterClaims": [{"name": "kernel-versions.kmm.node.kubernetes.io", "value": "5.14.0-1\n6.1.0-2"}],
                   "capacity": {"cpu": "8"}, "version": {"kubernetes": "v1.33.0"}, "unknownFutureField": 1}
    }))
    .expect("a ManagedCluster as OCM writes it");
    assert_eq!(
        cluster.claim(crate::ocm::KERNEL_VERSIONS_CLAIM),
        Some("5.14.0-1\n6.1.0-2")
    );
    assert_eq!(cluster.claim("absent"), None);
}
