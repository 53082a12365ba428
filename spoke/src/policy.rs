//! The governance Policy that installs kmm-spoke on managed clusters, generated from
//! `manifests/` so it cannot drift from the kustomize base: `kmm-spoke policy` (run by
//! `just gen`) writes `policies/`, and a test fails when the committed files differ.
//!
//! The spoke's kustomization is read with a small subset of kustomize: `resources` (files only)
//! and `labels` (pairs added to `metadata.labels`). Any other field is an error, so a base that
//! needs more of kustomize cannot silently produce a different Policy.
//!
//! Two Policies, so neither object grows too large: `kmm-spoke-crds` (the Module and
//! NodeModulesConfig CRDs and the Module name-length admission policy) and `kmm-spoke`
//! (everything in `manifests/spoke`), which waits for the first to be compliant.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use serde_json::{Map, Value, json};
use thiserror::Error;

/// Namespace of the Policies, Placement and bindings on the hub.
pub const POLICY_NAMESPACE: &str = "kmm-policies";
/// The Policy with the spoke's CRDs.
pub const CRDS_POLICY: &str = "kmm-spoke-crds";
/// The Policy with the spoke itself.
pub const SPOKE_POLICY: &str = "kmm-spoke";
/// The ManagedCluster label the Placement (and the PlacementRule) select.
pub const CLUSTER_LABEL: &str = "kmm.sigs.x-k8s.io/spoke";

/// Kinds written with `mustonlyhave`: RBAC must match exactly (nothing added by hand survives).
const EXACT_KINDS: &[&str] = &["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"];

/// Why the Policy could not be generated.
#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message} (the Policy generator reads only `resources` files and `labels` pairs)")]
    Unsupported { path: PathBuf, message: String },
    #[error("rendering YAML: {0}")]
    Render(#[from] serde_saphyr::SerializeError),
}

/// One generated file of `policies/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub name: String,
    pub text: String,
}

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_owned(),
        source,
    })
}

fn documents(path: &Path) -> Result<Vec<Value>, PolicyError> {
    let text = read(path)?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).map_err(|e| PolicyError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// The objects of a kustomization (the supported subset), in `resources` order.
pub fn kustomize(dir: &Path) -> Result<Vec<Value>, PolicyError> {
    let path = dir.join("kustomization.yaml");
    let unsupported = |message: String| PolicyError::Unsupported {
        path: path.clone(),
        message,
    };
    let k = documents(&path)?
        .into_iter()
        .next()
        .ok_or_else(|| unsupported("empty kustomization".into()))?;
    let Some(fields) = k.as_object() else {
        return Err(unsupported("not a mapping".into()));
    };
    for key in fields.keys() {
        if !matches!(key.as_str(), "apiVersion" | "kind" | "resources" | "labels") {
            return Err(unsupported(format!("unsupported field `{key}`")));
        }
    }
    let mut labels = Map::new();
    for entry in k["labels"].as_array().into_iter().flatten() {
        for flag in ["includeSelectors", "includeTemplates"] {
            if entry[flag].as_bool() == Some(true) {
                return Err(unsupported(format!("labels with {flag}: true")));
            }
        }
        if let Some(pairs) = entry["pairs"].as_object() {
            labels.extend(pairs.clone());
        }
    }
    let mut out = Vec::new();
    for r in k["resources"].as_array().into_iter().flatten() {
        let Some(file) = r.as_str() else {
            return Err(unsupported(format!("resource {r} is not a path")));
        };
        let file_path = dir.join(file);
        if !file_path.is_file() {
            return Err(unsupported(format!("resource {file} is not a file")));
        }
        for mut doc in documents(&file_path)? {
            if !labels.is_empty() {
                let meta = doc
                    .as_object_mut()
                    .and_then(|o| o.get_mut("metadata"))
                    .and_then(Value::as_object_mut)
                    .ok_or_else(|| unsupported(format!("an object in {file} has no metadata")))?;
                let l = meta.entry("labels").or_insert_with(|| json!({}));
                if let Some(l) = l.as_object_mut() {
                    for (key, value) in &labels {
                        l.insert(key.clone(), value.clone());
                    }
                }
            }
            out.push(doc);
        }
    }
    Ok(out)
}

/// The spoke's CRDs and the admission policy, as committed in `crds_dir`.
pub fn spoke_crds(crds_dir: &Path) -> Result<Vec<Value>, PolicyError> {
    let mut out = Vec::new();
    let mut names: Vec<String> = kmm_api::crds::spoke_crds()
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .map(|n| format!("{n}.yaml"))
        .collect();
    names.push(kmm_api::crds::admission::FILE_NAME.to_string());
    for name in names {
        out.extend(documents(&crds_dir.join(name))?);
    }
    Ok(out)
}

fn template(object: Value) -> Value {
    let exact = object["kind"].as_str().is_some_and(|k| EXACT_KINDS.contains(&k));
    json!({
        "complianceType": if exact { "mustonlyhave" } else { "musthave" },
        "objectDefinition": object,
    })
}

/// What the configuration policy controller deletes from a cluster when the Policy leaves it
/// (the cluster is taken out of the placement, or the Policy is deleted).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Prune {
    /// Nothing: the CRDs hold the cluster's Modules. Deleting them would delete every Module at
    /// the moment kmm-spoke, which unloads a module before it lets its Module go, is removed
    /// too, leaving Modules, the CRDs and the Policy stuck on finalizers.
    Nothing,
    /// What this Policy created: kmm-spoke leaves, the Modules and loaded modules stay.
    Created,
}

impl Prune {
    fn behavior(self) -> &'static str {
        match self {
            Prune::Nothing => "None",
            Prune::Created => "DeleteIfCreated",
        }
    }
}

fn policy(
    name: &str,
    description: &str,
    objects: Vec<Value>,
    depends_on: Option<&str>,
    prune: Prune,
) -> Value {
    let mut spec = json!({
        "remediationAction": "enforce",
        "disabled": false,
        "policy-templates": [{
            "objectDefinition": {
                "apiVersion": "policy.open-cluster-management.io/v1",
                "kind": "ConfigurationPolicy",
                "metadata": {"name": name},
                "spec": {
                    "remediationAction": "enforce",
                    "severity": "high",
                    "pruneObjectBehavior": prune.behavior(),
                    "object-templates": objects.into_iter().map(template).collect::<Vec<_>>(),
                },
            },
        }],
    });
    if let Some(dep) = depends_on {
        spec["dependencies"] = json!([{
            "apiVersion": "policy.open-cluster-management.io/v1",
            "kind": "Policy",
            "name": dep,
            "namespace": POLICY_NAMESPACE,
            "compliance": "Compliant",
        }]);
    }
    json!({
        "apiVersion": "policy.open-cluster-management.io/v1",
        "kind": "Policy",
        "metadata": {
            "name": name,
            "namespace": POLICY_NAMESPACE,
            "annotations": {
                "policy.open-cluster-management.io/standards": "NIST SP 800-53",
                "policy.open-cluster-management.io/categories": "CM Configuration Management",
                "policy.open-cluster-management.io/controls": "CM-2 Baseline Configuration",
                "policy.open-cluster-management.io/description": description,
            },
        },
        "spec": spec,
    })
}

fn binding(name: &str, placement_group: &str, placement_kind: &str, placement: &str) -> Value {
    let subjects: Vec<Value> = [CRDS_POLICY, SPOKE_POLICY]
        .iter()
        .map(|p| json!({"apiGroup": "policy.open-cluster-management.io", "kind": "Policy", "name": p}))
        .collect();
    json!({
        "apiVersion": "policy.open-cluster-management.io/v1",
        "kind": "PlacementBinding",
        "metadata": {"name": name, "namespace": POLICY_NAMESPACE},
        "placementRef": {"apiGroup": placement_group, "kind": placement_kind, "name": placement},
        "subjects": subjects,
    })
}

fn yaml_file(name: &str, comment: &str, docs: &[Value]) -> Result<File, PolicyError> {
    let mut text = String::from(
        "# Generated by `just gen` (`kmm-spoke policy`) from manifests/spoke and manifests/crds; do not edit by hand.\n",
    );
    for line in comment.lines() {
        let _ = writeln!(text, "# {line}");
    }
    for d in docs {
        text.push_str("---\n");
        text.push_str(&serde_saphyr::to_string(d)?);
    }
    Ok(File {
        name: name.to_string(),
        text,
    })
}

/// Every file of `policies/` (except its README), from the `manifests` directory.
pub fn render(manifests: &Path) -> Result<Vec<File>, PolicyError> {
    let crds = spoke_crds(&manifests.join("crds"))?;
    let spoke = kustomize(&manifests.join("spoke"))?;
    let label = json!({CLUSTER_LABEL: "true"});
    Ok(vec![
        yaml_file(
            "namespace.yaml",
            "The hub namespace holding the Policies, the Placement and the bindings.",
            &[json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": POLICY_NAMESPACE}})],
        )?,
        yaml_file(
            "policy-crds.yaml",
            "The spoke's CRDs and the Module name-length admission policy.",
            &[policy(
                CRDS_POLICY,
                "Installs the Module and NodeModulesConfig CRDs of kmm-spoke.",
                crds,
                None,
                Prune::Nothing,
            )],
        )?,
        yaml_file(
            "policy.yaml",
            "kmm-spoke (KMM_MANAGED=1) and the RBAC OCM's work agent needs for Modules; waits for kmm-spoke-crds.",
            &[policy(
                SPOKE_POLICY,
                "Installs kmm-spoke in managed mode and lets the work agent manage Modules.",
                spoke,
                Some(CRDS_POLICY),
                Prune::Created,
            )],
        )?,
        yaml_file(
            "placement.yaml",
            &format!(
                "Selects the ManagedClusters labelled {CLUSTER_LABEL}=true in the `default` ManagedClusterSet.\n\
                 Bind other sets with more ManagedClusterSetBindings; change the predicate to select differently."
            ),
            &[
                json!({
                    "apiVersion": "cluster.open-cluster-management.io/v1beta2",
                    "kind": "ManagedClusterSetBinding",
                    "metadata": {"name": "default", "namespace": POLICY_NAMESPACE},
                    "spec": {"clusterSet": "default"},
                }),
                json!({
                    "apiVersion": "cluster.open-cluster-management.io/v1beta1",
                    "kind": "Placement",
                    "metadata": {"name": SPOKE_POLICY, "namespace": POLICY_NAMESPACE},
                    "spec": {
                        "clusterSets": ["default"],
                        "predicates": [{"requiredClusterSelector": {"labelSelector": {"matchLabels": label}}}],
                    },
                }),
                binding(
                    SPOKE_POLICY,
                    "cluster.open-cluster-management.io",
                    "Placement",
                    SPOKE_POLICY,
                ),
            ],
        )?,
        yaml_file(
            "placementrule.yaml",
            &format!(
                "Legacy alternative to placement.yaml (PlacementRule is deprecated): apply one of the two.\n\
                 Selects the ManagedClusters labelled {CLUSTER_LABEL}=true."
            ),
            &[
                json!({
                    "apiVersion": "apps.open-cluster-management.io/v1",
                    "kind": "PlacementRule",
                    "metadata": {"name": SPOKE_POLICY, "namespace": POLICY_NAMESPACE},
                    "spec": {"clusterSelector": {"matchLabels": label}},
                }),
                binding(
                    &format!("{SPOKE_POLICY}-placementrule"),
                    "apps.open-cluster-management.io",
                    "PlacementRule",
                    SPOKE_POLICY,
                ),
            ],
        )?,
        File {
            name: "kustomization.yaml".into(),
            text: "# Generated by `just gen` (`kmm-spoke policy`); do not edit by hand.\n\
                   # `kubectl apply --server-side -k policies` installs the Policies with the Placement;\n\
                   # for the legacy PlacementRule, apply placementrule.yaml instead of placement.yaml.\n\
                   apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n\
                   - namespace.yaml\n- policy-crds.yaml\n- policy.yaml\n- placement.yaml\n"
                .into(),
        },
    ])
}

/// Writes [`render`]'s files into `out`, printing one line per file to `log`.
pub fn write(manifests: &Path, out: &Path, log: &mut dyn std::io::Write) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    for f in render(manifests)? {
        let path = out.join(&f.name);
        std::fs::write(&path, f.text)?;
        writeln!(log, "wrote {}", path.display())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_base(kustomization: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kustomization.yaml"), kustomization).unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a, namespace: n}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: r}\nrules: []\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn reads_resources_and_adds_label_pairs() {
        let dir = tmp_base("resources: [a.yaml]\nlabels:\n- pairs: {team: kmm}\n");
        let objs = kustomize(dir.path()).unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0]["metadata"]["labels"]["team"], "kmm");
        assert_eq!(objs[1]["metadata"]["labels"]["team"], "kmm");
    }

    #[test]
    fn refuses_kustomize_features_it_does_not_implement() {
        for k in [
            "resources: [a.yaml]\nnamespace: other\n",
            "resources: [a.yaml]\npatches: []\n",
            "resources: [a.yaml]\nlabels:\n- pairs: {a: b}\n  includeSelectors: true\n",
            "resources: [missing.yaml]\n",
        ] {
            let dir = tmp_base(k);
            assert!(
                matches!(kustomize(dir.path()), Err(PolicyError::Unsupported { .. })),
                "{k}"
            );
        }
    }

    #[test]
    fn rbac_must_match_exactly_and_the_rest_must_be_present() {
        let p = policy(
            "p",
            "d",
            vec![
                json!({"kind": "ClusterRole", "metadata": {"name": "r"}}),
                json!({"kind": "Deployment", "metadata": {"name": "d"}}),
            ],
            Some("dep"),
            Prune::Created,
        );
        let t = &p["spec"]["policy-templates"][0]["objectDefinition"]["spec"]["object-templates"];
        assert_eq!(t[0]["complianceType"], "mustonlyhave");
        assert_eq!(t[1]["complianceType"], "musthave");
        assert_eq!(p["spec"]["dependencies"][0]["name"], "dep");
        let spec = |p: &Value| p["spec"]["policy-templates"][0]["objectDefinition"]["spec"].clone();
        assert_eq!(spec(&p)["pruneObjectBehavior"], "DeleteIfCreated");
        let crds = policy("c", "d", vec![], None, Prune::Nothing);
        assert_eq!(spec(&crds)["pruneObjectBehavior"], "None");
        assert!(POLICY_NAMESPACE.len() + 1 + CRDS_POLICY.len() <= 62);
    }
}
