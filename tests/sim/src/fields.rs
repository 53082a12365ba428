//! Field sets, as server-side apply tracks them in `metadata.managedFields` (`FieldsV1`).
//!
//! A field set is the set of leaf paths an object sets. Path elements use the FieldsV1 spelling:
//! `f:<field>`, `k:<json keys>` for an element of a map-list, `v:<json>` for an element of a
//! set-list, and `.` for "this list element itself". Maps descend; atomic lists and scalars are
//! leaves. List semantics come from the CRD schema (`x-kubernetes-list-type`), or, for built-in
//! kinds and `metadata`, from the handful of keyed lists Kubernetes itself declares.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

pub type Path = Vec<String>;
pub type FieldSet = BTreeSet<Path>;

/// How a list merges and is owned.
#[derive(Clone, Debug, PartialEq)]
pub enum ListKind {
    Atomic,
    Set,
    Map(Vec<String>),
}

/// Schema context while walking an object: the node's schema, and whether unannotated lists fall
/// back to the built-in table (built-in kinds and `metadata`) or are atomic (CRDs).
#[derive(Clone, Copy, Debug)]
pub struct Schema<'a> {
    pub node: Option<&'a Value>,
    pub builtin: bool,
}

impl<'a> Schema<'a> {
    pub fn root(schema: Option<&'a Value>) -> Self {
        Self {
            node: schema,
            builtin: schema.is_none(),
        }
    }

    /// Schema of a map entry.
    pub fn child(self, key: &str, at_root: bool) -> Self {
        if at_root && key == "metadata" {
            return Self {
                node: None,
                builtin: true,
            };
        }
        let node = self.node.and_then(|n| {
            n.get("properties")
                .and_then(|p| p.get(key))
                .or_else(|| n.get("additionalProperties").filter(|a| a.is_object()))
        });
        Self {
            node,
            builtin: self.builtin,
        }
    }

    /// Schema of a list's items.
    pub fn items(self) -> Self {
        Self {
            node: self.node.and_then(|n| n.get("items")),
            builtin: self.builtin,
        }
    }

    /// How the list at field `name` (with this schema) behaves.
    pub fn list_kind(self, name: &str, sample: Option<&Value>) -> ListKind {
        if let Some(node) = self.node {
            return match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
                Some("set") => ListKind::Set,
                Some("map") => ListKind::Map(
                    node.get("x-kubernetes-list-map-keys")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                        .unwrap_or_default(),
                ),
                _ => ListKind::Atomic,
            };
        }
        if !self.builtin {
            return ListKind::Atomic;
        }
        let key = |k: &str| ListKind::Map(vec![k.to_string()]);
        match name {
            "containers"
            | "initContainers"
            | "ephemeralContainers"
            | "volumes"
            | "env"
            | "imagePullSecrets"
            | "hostAliases" => key(if name == "hostAliases" { "ip" } else { "name" }),
            "volumeMounts" => key("mountPath"),
            "volumeDevices" => key("devicePath"),
            "conditions" => key("type"),
            "ownerReferences" => key("uid"),
            "finalizers" => ListKind::Set,
            "ports" => match sample {
                Some(s) if s.get("containerPort").is_some() => key("containerPort"),
                _ => key("port"),
            },
            _ => ListKind::Atomic,
        }
    }
}

/// `k:{...}` path element of a map-list item, or `None` when a key field is missing.
pub fn item_key(item: &Value, keys: &[String]) -> Option<String> {
    let mut m = Map::new();
    for k in keys {
        m.insert(k.clone(), item.get(k)?.clone());
    }
    Some(format!("k:{}", Value::Object(m)))
}

/// The leaf paths `value` sets, below `prefix`.
pub fn collect(value: &Value, schema: Schema<'_>, prefix: &mut Path, out: &mut FieldSet, at_root: bool) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                prefix.push(format!("f:{k}"));
                let child = schema.child(k, at_root);
                match v {
                    Value::Array(items) => collect_list(k, items, child, prefix, out),
                    _ => collect(v, child, prefix, out, false),
                }
                prefix.pop();
            }
        }
        _ if !prefix.is_empty() => {
            out.insert(prefix.clone());
        }
        _ => {}
    }
}

fn collect_list(name: &str, items: &[Value], schema: Schema<'_>, prefix: &mut Path, out: &mut FieldSet) {
    match schema.list_kind(name, items.first()) {
        ListKind::Map(keys) => {
            for item in items {
                let Some(k) = item_key(item, &keys) else {
                    out.insert(prefix.clone());
                    continue;
                };
                prefix.push(k);
                prefix.push(".".into());
                out.insert(prefix.clone());
                prefix.pop();
                collect(item, schema.items(), prefix, out, false);
                prefix.pop();
            }
        }
        ListKind::Set => {
            for item in items {
                prefix.push(format!("v:{item}"));
                out.insert(prefix.clone());
                prefix.pop();
            }
        }
        ListKind::Atomic => {
            out.insert(prefix.clone());
        }
    }
}

/// The value at `path`, if the object has it.
pub fn value_at<'v>(obj: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut cur = obj;
    for seg in path {
        cur = step(cur, seg)?;
    }
    Some(cur)
}

fn step<'v>(cur: &'v Value, seg: &str) -> Option<&'v Value> {
    if seg == "." {
        return Some(cur);
    }
    if let Some(f) = seg.strip_prefix("f:") {
        return cur.get(f);
    }
    let items = cur.as_array()?;
    if let Some(k) = seg.strip_prefix("k:") {
        let keys: Map<String, Value> = serde_json::from_str(k).ok()?;
        return items
            .iter()
            .find(|i| keys.iter().all(|(kk, kv)| i.get(kk) == Some(kv)));
    }
    let want: Value = serde_json::from_str(seg.strip_prefix("v:")?).ok()?;
    items.iter().find(|i| **i == want)
}

/// Removes the field, list item or set member at `path` from `obj`.
pub fn remove_at(obj: &mut Value, path: &[String]) {
    let (last, parent_path) = match path {
        [rest @ .., last] if last == "." => match rest {
            [p @ .., item] => (item, p),
            [] => return,
        },
        [p @ .., last] => (last, p),
        [] => return,
    };
    let mut cur = obj;
    for seg in parent_path {
        let next = if let Some(f) = seg.strip_prefix("f:") {
            cur.get_mut(f)
        } else {
            let Some(idx) = cur.as_array().and_then(|items| {
                let target = step(cur, seg)?;
                items.iter().position(|i| std::ptr::eq(i, target))
            }) else {
                return;
            };
            cur.get_mut(idx)
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(target) = step(cur, last) {
        let target: *const Value = target;
        if let Some(items) = cur.as_array_mut() {
            items.retain(|i| !std::ptr::eq(i, target));
        }
    }
}

/// The FieldsV1 JSON tree of a field set.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for seg in path {
            let entry = cur
                .entry(seg.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            match entry {
                Value::Object(m) => cur = m,
                _ => break,
            }
        }
    }
    Value::Object(root)
}

/// Reads a FieldsV1 tree back into leaf paths (empty objects are leaves).
pub fn from_fields_v1(tree: &Value) -> FieldSet {
    fn walk(v: &Value, prefix: &mut Path, out: &mut FieldSet) {
        match v.as_object() {
            Some(m) if !m.is_empty() => {
                for (k, child) in m {
                    prefix.push(k.clone());
                    walk(child, prefix, out);
                    prefix.pop();
                }
            }
            _ if !prefix.is_empty() => {
                out.insert(prefix.clone());
            }
            _ => {}
        }
    }
    let mut out = FieldSet::new();
    walk(tree, &mut Vec::new(), &mut out);
    out
}

/// `.spec.containers[name="x"].image`, the way conflict messages name a path.
pub fn display(path: &[String]) -> String {
    let mut s = String::new();
    for seg in path {
        if let Some(f) = seg.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = seg.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let inner: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", inner.join(",")));
        } else if let Some(v) = seg.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn set_of(v: &Value, schema: Option<&Value>) -> FieldSet {
        let mut out = FieldSet::new();
        collect(v, Schema::root(schema), &mut Vec::new(), &mut out, true);
        out
    }

    fn p(parts: &[&str]) -> Path {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn builtin_containers_are_keyed_by_name_and_finalizers_are_a_set() {
        let pod = json!({"metadata": {"finalizers": ["a"]},
            "spec": {"containers": [{"name": "c", "image": "i"}], "tolerations": [{"key": "k"}]}});
        let set = set_of(&pod, None);
        assert!(set.contains(&p(&["f:spec", "f:containers", r#"k:{"name":"c"}"#, "."])));
        assert!(set.contains(&p(&["f:spec", "f:containers", r#"k:{"name":"c"}"#, "f:image"])));
        assert!(
            set.contains(&p(&["f:spec", "f:tolerations"])),
            "tolerations are atomic"
        );
        assert!(set.contains(&p(&["f:metadata", "f:finalizers", r#"v:"a""#])));
    }

    #[test]
    fn crd_lists_follow_the_schema_and_are_atomic_without_annotation() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "keyed": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"],
                      "items": {"type": "object", "properties": {"id": {"type": "string"}, "v": {"type": "string"}}}},
            "plain": {"type": "array", "items": {"type": "object"}}}}}});
        let obj = json!({"spec": {"keyed": [{"id": "a", "v": "1"}], "plain": [{"name": "x"}]}});
        let set = set_of(&obj, Some(&schema));
        assert!(set.contains(&p(&["f:spec", "f:keyed", r#"k:{"id":"a"}"#, "f:v"])));
        assert!(set.contains(&p(&["f:spec", "f:plain"])));
        assert_eq!(set.len(), 4);
    }

    #[test]
    fn fields_v1_round_trips_and_paths_resolve_and_remove() {
        let mut obj = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]},
                             "metadata": {"labels": {"l": "1", "m": "2"}}});
        let set = set_of(&obj, None);
        assert_eq!(from_fields_v1(&to_fields_v1(&set)), set);
        let image_b = p(&["f:spec", "f:containers", r#"k:{"name":"b"}"#, "f:image"]);
        assert_eq!(value_at(&obj, &image_b), Some(&json!("y")));
        remove_at(
            &mut obj,
            &p(&["f:spec", "f:containers", r#"k:{"name":"a"}"#, "."]),
        );
        remove_at(&mut obj, &p(&["f:metadata", "f:labels", "f:l"]));
        assert_eq!(
            obj,
            json!({"spec": {"containers": [{"name": "b", "image": "y"}]}, "metadata": {"labels": {"m": "2"}}})
        );
        assert_eq!(display(&image_b), r#".spec.containers[name="b"].image"#);
    }
}
