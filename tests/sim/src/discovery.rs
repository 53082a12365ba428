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

/// An OpenAPI v2 document without definitions: clients that validate against it find no schema
/// for any kind and fall back to their own knowledge (kubectl's built-in patch strategies).
pub fn openapi_v2() -> Value {
    json!({"swagger": "2.0", "info": {"title": "Kubernetes (kmm-sim)", "version": "v1.34.0"}, "paths": {}, "definitions": {}})
}

/// The same document in the protobuf form kubectl asks for (gnostic `openapi_v2.Document`:
/// swagger = 1, info = 2 {title = 1, version = 2}, paths = 8, definitions = 9).
pub fn openapi_v2_protobuf() -> Vec<u8> {
    fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
        // Every part is far below 128 bytes, so the length is a one-byte varint.
        let mut out = vec![tag << 3 | 2, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }
    let info = [field(1, b"Kubernetes (kmm-sim)"), field(2, b"v1.34.0")].concat();
    [field(1, b"2.0"), field(2, &info), field(8, &[]), field(9, &[])].concat()
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
    for vs in groups.values_mut() {
        vs.sort_by_key(|v| version_priority(v));
    }
    groups
}

/// Sort key putting the version Kubernetes prefers first: GA over beta over alpha, higher
/// numbers first, unparseable names last (as the apiserver orders them).
pub fn version_priority(v: &str) -> (u8, std::cmp::Reverse<u32>, std::cmp::Reverse<u32>, String) {
    let parse = || -> Option<(u8, u32, u32)> {
        let rest = v.strip_prefix('v')?;
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let major = rest[..digits].parse().ok()?;
        let tail = &rest[digits..];
        if tail.is_empty() {
            return Some((0, major, 0));
        }
        let (level, minor) = tail
            .strip_prefix("beta")
            .map(|m| (1, m))
            .or_else(|| tail.strip_prefix("alpha").map(|m| (2, m)))?;
        Some((level, major, minor.parse().ok()?))
    };
    match parse() {
        Some((level, major, minor)) => (
            level,
            std::cmp::Reverse(major),
            std::cmp::Reverse(minor),
            String::new(),
        ),
        None => (3, std::cmp::Reverse(0), std::cmp::Reverse(0), v.to_string()),
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn versions_sort_as_kubernetes_prefers_them() {
        let mut vs = vec!["v1alpha1", "v1beta1", "foo", "v2", "v1", "v1beta2", "v10alpha3"];
        vs.sort_by_key(|v| super::version_priority(v));
        assert_eq!(
            vs,
            ["v2", "v1", "v1beta2", "v1beta1", "v10alpha3", "v1alpha1", "foo"]
        );
    }
}
