//! Discovery documents: `/version`, `/api`, `/apis`, `/apis/<group>` and the resource lists.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::{
    registry::{Registry, ResourceType},
    status::{ApiError, ApiResult},
};

/// Reported by `/version`: the Kubernetes release whose API the simulator follows.
pub fn version() -> Value {
    json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-kmm-sim", "gitCommit": "", "gitTreeState": "clean",
           "buildDate": "2026-01-01T00:00:00Z", "goVersion": "none", "compiler": "rustc", "platform": "linux/amd64"})
}

pub fn core_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
           "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
}

fn group_doc(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"name": name, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(Value::Null)})
}

/// Groups and their versions, preferred (storage) version first.
fn group_versions(registry: &Registry) -> BTreeMap<String, Vec<String>> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in registry.all().filter(|t| !t.group.is_empty()) {
        let vs = groups.entry(t.group.clone()).or_default();
        for v in &t.versions {
            if !vs.contains(v) {
                vs.push(v.clone());
            }
        }
    }
    groups
}

pub fn groups(registry: &Registry) -> Value {
    let groups: Vec<Value> = group_versions(registry)
        .iter()
        .map(|(g, vs)| group_doc(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(registry: &Registry, name: &str) -> ApiResult<Value> {
    let groups = group_versions(registry);
    let vs = groups
        .get(name)
        .ok_or_else(|| ApiError::not_found("group", name))?;
    let mut doc = group_doc(name, vs);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Ok(doc)
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn resource_docs(t: &ResourceType) -> Vec<Value> {
    let mut docs = vec![json!({
        "name": t.plural, "singularName": t.singular, "namespaced": t.namespaced, "kind": t.kind,
        "verbs": VERBS, "shortNames": t.short_names, "categories": t.categories,
    })];
    if t.status_subresource {
        docs.push(
            json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced,
                         "kind": t.kind, "verbs": ["get", "patch", "update"]}),
        );
    }
    if t.group.is_empty() && t.kind == "Pod" {
        docs.push(json!({"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}));
    }
    docs
}

pub fn resources(registry: &Registry, group: &str, version: &str) -> ApiResult<Value> {
    let list: Vec<Value> = registry
        .all()
        .filter(|t| t.group == group && t.versions.iter().any(|v| v == version))
        .flat_map(resource_docs)
        .collect();
    if list.is_empty() {
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        return Err(ApiError::not_found("groupVersion", &gv));
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Ok(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}))
}
