//! Our CRD schemas against upstream KMM's, field by field. `upstream-kmm.facts` holds the facts of
//! upstream's published v1beta1 CRDs (field paths, types, required fields and the constraints the
//! API server enforces; no descriptions), one JSON object a line, written by
//! `write_upstream_facts` from upstream's `config/crd/bases` and `config/crd-hub/bases`:
//!
//! ```text
//! KMM_UPSTREAM_CRDS=path/to/dir/with/the/yaml cargo test -p kmm-api --lib -- --ignored write_upstream_facts
//! ```

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::*;
use crate::crds::upstream::{QUANTITY_PATTERN, STRICTER_THAN_UPSTREAM, stricter_at};

/// The fixture, next to this file.
const FACTS: &str = include_str!("upstream-kmm.facts");

/// Schema keywords that refuse values.
const CONSTRAINTS: &[&str] = &[
    "enum",
    "pattern",
    "maxLength",
    "minLength",
    "maxItems",
    "minItems",
    "maximum",
    "minimum",
    "format",
];

/// Upstream's constraints we do not have, each with the reason it is safe to lack it.
const LOOSER: &[(&str, &str, &str)] = &[
    (
        "kernelMappings[].containerImage",
        "required",
        "a mapping may take the container-level containerImage; every mapping the hub ships has its own",
    ),
    (
        "config.insecurePull",
        "required",
        "written by the spoke only, which always sets it",
    ),
];

/// The facts of one CRD: `Kind:path` -> facts, paths below the root with `[]` for list items and
/// `{}` for map values.
fn facts_of(crd: &Value, out: &mut BTreeMap<String, Map<String, Value>>) {
    let kind = crd["spec"]["names"]["kind"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for version in crd["spec"]["versions"].as_array().into_iter().flatten() {
        walk(
            &version["schema"]["openAPIV3Schema"],
            &format!("{kind}:"),
            false,
            out,
        );
    }
}

fn walk(schema: &Value, path: &str, required: bool, out: &mut BTreeMap<String, Map<String, Value>>) {
    let mut facts = Map::new();
    for key in [
        "type",
        "x-kubernetes-int-or-string",
        "x-kubernetes-preserve-unknown-fields",
        "default",
    ]
    .iter()
    .chain(CONSTRAINTS)
    {
        if let Some(value) = schema.get(*key) {
            facts.insert((*key).to_owned(), value.clone());
        }
    }
    facts.insert("required".to_owned(), Value::Bool(required));
    out.insert(path.to_owned(), facts);
    let sep = if path.ends_with(':') { "" } else { "." };
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for (name, child) in schema["properties"].as_object().into_iter().flatten() {
        walk(
            child,
            &format!("{path}{sep}{name}"),
            required.contains(&name.as_str()),
            out,
        );
    }
    if schema["items"].is_object() {
        walk(&schema["items"], &format!("{path}[]"), false, out);
    }
    if schema["additionalProperties"].is_object() {
        walk(
            &schema["additionalProperties"],
            &format!("{path}{{}}"),
            false,
            out,
        );
    }
}

fn ours() -> BTreeMap<String, Map<String, Value>> {
    let mut out = BTreeMap::new();
    for crd in hub_crds().iter().chain(&spoke_crds()) {
        facts_of(&serde_json::to_value(crd).expect("serializes"), &mut out);
    }
    out
}

fn upstream() -> BTreeMap<String, Map<String, Value>> {
    FACTS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut facts: Map<String, Value> = serde_json::from_str(line).expect("a facts line is JSON");
            let path = facts.remove("path").and_then(|p| p.as_str().map(str::to_owned));
            (path.expect("a facts line has a path"), facts)
        })
        .collect()
}

/// `Kind:spec.x` as the lint path `spec.x`.
fn lint_path(path: &str) -> &str {
    path.split_once(':').map_or(path, |(_, p)| p)
}

fn deliberate(path: &str, keyword: &str) -> bool {
    let at = lint_path(path);
    // A `required` difference is reported on the field that became required.
    stricter_at(at).is_some_and(|s| s.keywords.contains(&keyword))
}

fn looser(path: &str, keyword: &str) -> bool {
    let at = lint_path(path);
    (keyword == "pattern" && upstream_pattern_is_quantity(path))
        || (keyword == "default" && (at.contains("volumes[]") || at.contains("valueFrom")))
        || LOOSER
            .iter()
            .any(|(field, k, _)| *k == keyword && at.ends_with(field))
}

fn upstream_pattern_is_quantity(path: &str) -> bool {
    upstream()
        .get(path)
        .and_then(|f| f.get("pattern"))
        .is_some_and(|p| p == QUANTITY_PATTERN)
}

#[test]
fn our_schemas_differ_from_upstream_only_where_documented() {
    let upstream = upstream();
    assert!(upstream.len() > 1500, "the fixture holds upstream's three CRDs");
    let ours = ours();
    let mut drift = Vec::new();
    for (path, theirs) in &upstream {
        let root_meta = ["apiVersion", "kind", "metadata"]
            .iter()
            .any(|f| lint_path(path) == *f);
        let Some(mine) = ours.get(path) else {
            if !root_meta {
                drift.push(format!("{path}: upstream has it, we do not"));
            }
            continue;
        };
        for key in [
            "type",
            "x-kubernetes-int-or-string",
            "x-kubernetes-preserve-unknown-fields",
        ] {
            if theirs.get(key) != mine.get(key) {
                drift.push(format!(
                    "{path}: {key} {:?} upstream, {:?} here",
                    theirs.get(key),
                    mine.get(key)
                ));
            }
        }
        let required = |f: &Map<String, Value>| f.get("required") == Some(&Value::Bool(true));
        if required(mine) && !required(theirs) && !deliberate(path, "required") {
            drift.push(format!("{path}: required here, optional upstream"));
        }
        if required(theirs) && !required(mine) && !looser(path, "required") {
            drift.push(format!("{path}: required upstream, optional here"));
        }
        for key in CONSTRAINTS {
            match (theirs.get(*key), mine.get(*key)) {
                (a, b) if a == b => {}
                (_, Some(b)) if !deliberate(path, key) => {
                    drift.push(format!("{path}: {key} {b} here, {:?} upstream", theirs.get(*key)))
                }
                (Some(a), None) if !looser(path, key) => {
                    drift.push(format!("{path}: {key} {a} upstream, none here"))
                }
                _ => {}
            }
        }
        if theirs.get("default").is_some()
            && theirs.get("default") != mine.get("default")
            && !looser(path, "default")
        {
            drift.push(format!(
                "{path}: default {:?} upstream, {:?} here",
                theirs.get("default"),
                mine.get("default")
            ));
        }
    }
    assert!(
        drift.is_empty(),
        "our CRDs drift from upstream KMM's:\n{}",
        drift.join("\n")
    );
}

#[test]
fn every_documented_difference_is_still_a_difference() {
    // A rule listed as stricter than upstream that no longer differs should leave the list.
    let upstream = upstream();
    let ours = ours();
    for stricter in STRICTER_THAN_UPSTREAM {
        let differs = ours.iter().any(|(path, mine)| {
            stricter_at(lint_path(path)).is_some_and(|s| s == stricter)
                && stricter.keywords.iter().any(|k| {
                    let theirs = upstream.get(path);
                    if *k == "required" {
                        mine.get("required") == Some(&Value::Bool(true))
                            && theirs.is_some_and(|t| t.get("required") != Some(&Value::Bool(true)))
                    } else {
                        mine.get(*k).is_some() && theirs.is_some_and(|t| t.get(*k) != mine.get(*k))
                    }
                })
        });
        assert!(
            differs,
            "{stricter:?} is listed as stricter than upstream but is not"
        );
    }
}

#[test]
fn references_default_their_name_and_free_form_objects_keep_their_fields() {
    let ours = ours();
    let at = |p: &str| ours.get(p).unwrap_or_else(|| panic!("{p} is in our schema"));
    let name = at("Module:spec.imageRepoSecret.name");
    assert_eq!(name.get("default"), Some(&json!("")));
    assert_eq!(name.get("required"), Some(&json!(false)));
    for parameters in [
        "Module:spec.dra.deviceClasses[].config[].opaque.parameters",
        "ManagedClusterModule:spec.moduleSpec.dra.deviceClasses[].config[].opaque.parameters",
    ] {
        assert_eq!(
            at(parameters).get("x-kubernetes-preserve-unknown-fields"),
            Some(&json!(true))
        );
    }
    assert!(ours.contains_key(
        "Module:spec.devicePlugin.volumes[].projected.sources[].podCertificate.userAnnotations"
    ));
    // Every int-or-string field is a quantity (else the quantity pattern would be wrong there),
    // but the rollout's counts-or-percentages, which carry their own pattern.
    for (path, facts) in &ours {
        if facts.get("x-kubernetes-int-or-string") == Some(&json!(true))
            && !path.starts_with("ManagedClusterModule:spec.rolloutStrategy.")
        {
            let field = path.rsplit('.').next().unwrap_or_default();
            assert!(
                ["divisor", "sizeLimit", "limits{}", "requests{}"].contains(&field),
                "{path} is int-or-string but not a known quantity"
            );
        }
    }
}

/// Writes the fixture from upstream's CRD files (see the module docs).
#[test]
#[ignore = "regenerates the fixture from a checkout of upstream KMM"]
fn write_upstream_facts() {
    let dir = std::env::var("KMM_UPSTREAM_CRDS")
        .expect("KMM_UPSTREAM_CRDS names the folder of upstream's CRD YAML");
    let mut facts = BTreeMap::new();
    for file in [
        "kmm.sigs.x-k8s.io_modules.yaml",
        "kmm.sigs.x-k8s.io_nodemodulesconfigs.yaml",
        "hub.kmm.sigs.x-k8s.io_managedclustermodules.yaml",
    ] {
        let text = std::fs::read_to_string(std::path::Path::new(&dir).join(file)).expect("reads the CRD");
        let crd: Value = serde_saphyr::from_str(&text).expect("parses the CRD");
        facts_of(&crd, &mut facts);
    }
    let mut out = String::new();
    for (path, mut f) in facts {
        f.insert("path".to_owned(), Value::String(path));
        out.push_str(&serde_json::to_string(&f).expect("serializes"));
        out.push('\n');
    }
    std::fs::write(repo_path("api/src/crds/tests/upstream-kmm.facts"), out).expect("writes the fixture");
}
