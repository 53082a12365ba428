//! Server-side apply and field ownership (`metadata.managedFields`).
//!
//! Every write records which manager set which fields. An apply by manager M:
//! 1. conflicts with another manager that owns a field M sets to a different value (409), unless
//!    `force`, which moves ownership to M;
//! 2. removes the fields M applied last time but not now, when nobody else owns them;
//! 3. merges M's configuration into the live object (keyed lists by key, sets by value);
//! 4. makes M's `Apply` entry exactly the fields it applied.
//!
//! Non-apply writes (create, update, patch) give the fields they changed to their manager's
//! `Update` entry and take them from everyone else, as the apiserver does.

use serde_json::{Map, Value, json};

use crate::{
    fields::{self, FieldSet, ListKind, Path, Schema},
    time,
};

/// Which part of an object a request writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The main resource; `status_separate` when the kind has a status subresource.
    Main { status_separate: bool },
    /// The `status` subresource.
    Status,
}

impl Scope {
    fn subresource(self) -> Option<&'static str> {
        match self {
            Scope::Main { .. } => None,
            Scope::Status => Some("status"),
        }
    }

    fn includes(self, path: &Path) -> bool {
        let first = path.first().map(String::as_str);
        match self {
            Scope::Status => first == Some("f:status"),
            Scope::Main { status_separate } => !(status_separate && first == Some("f:status")),
        }
    }
}

/// Metadata fields the server owns; never part of a field set.
const SYSTEM_METADATA: &[&str] = &[
    "f:name",
    "f:namespace",
    "f:uid",
    "f:resourceVersion",
    "f:generation",
    "f:creationTimestamp",
    "f:deletionTimestamp",
    "f:deletionGracePeriodSeconds",
    "f:managedFields",
    "f:selfLink",
    "f:generateName",
];

fn scoped_fields(obj: &Value, schema: Option<&Value>, scope: Scope) -> FieldSet {
    let mut all = FieldSet::new();
    fields::collect(obj, Schema::root(schema), &mut Vec::new(), &mut all, true);
    all.retain(|p| {
        let system = match p.as_slice() {
            [first, ..] if first == "f:apiVersion" || first == "f:kind" => true,
            [first, second, ..] if first == "f:metadata" => SYSTEM_METADATA.contains(&second.as_str()),
            _ => false,
        };
        !system && scope.includes(p)
    });
    all
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    subresource: Option<String>,
    time: String,
    fields: FieldSet,
}

fn read_entries(obj: Option<&Value>) -> Vec<Entry> {
    let Some(list) = obj
        .and_then(|o| o.pointer("/metadata/managedFields"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .map(|e| {
            let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            Entry {
                manager: s("manager"),
                operation: s("operation"),
                api_version: s("apiVersion"),
                subresource: e.get("subresource").and_then(Value::as_str).map(str::to_string),
                time: s("time"),
                fields: e.get("fieldsV1").map(fields::from_fields_v1).unwrap_or_default(),
            }
        })
        .collect()
}

fn write_entries(obj: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": fields::to_fields_v1(&e.fields),
            });
            if let Some(sub) = e.subresource {
                v["subresource"] = json!(sub);
            }
            v
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Puts `fields` into the entry of (manager, operation, subresource), creating it if needed;
/// the entry's time changes only when its set does.
fn own(entries: &mut Vec<Entry>, who: &Writer<'_>, operation: &str, fields: FieldSet, replace: bool) {
    let sub = who.scope.subresource().map(str::to_string);
    let pos = entries
        .iter()
        .position(|e| e.manager == who.manager && e.operation == operation && e.subresource == sub);
    let entry = match pos {
        Some(i) => &mut entries[i],
        None => {
            entries.push(Entry {
                manager: who.manager.to_string(),
                operation: operation.to_string(),
                api_version: who.api_version.to_string(),
                subresource: sub,
                time: String::new(),
                fields: FieldSet::new(),
            });
            let last = entries.len() - 1;
            &mut entries[last]
        }
    };
    let new = if replace {
        fields
    } else {
        entry.fields.union(&fields).cloned().collect()
    };
    if new != entry.fields || entry.time.is_empty() {
        entry.fields = new;
        entry.time = time::now();
        entry.api_version = who.api_version.to_string();
    }
}

/// Who writes, in which version, to which part of the object.
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub scope: Scope,
    pub schema: Option<&'a Value>,
}

/// A refused apply: the fields other managers own with other values.
#[derive(Debug, PartialEq)]
pub struct Conflicts(pub Vec<(String, String)>);

impl Conflicts {
    /// `Apply failed with 1 conflict: conflict with "kubectl" using v1: .spec.x`, as the apiserver says it.
    pub fn message(&self) -> String {
        let n = self.0.len();
        let plural = if n == 1 { "conflict" } else { "conflicts" };
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(m, p)| format!("conflict with {m:?}: {p}"))
            .collect();
        format!("Apply failed with {n} {plural}: {}", parts.join(", "))
    }
}

/// Server-side apply of `config` onto `live` (or onto nothing, creating it).
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    who: &Writer<'_>,
    force: bool,
) -> Result<Value, Conflicts> {
    let mut entries = read_entries(live);
    let applied = scoped_fields(config, who.schema, who.scope);
    let empty = Value::Object(Map::new());
    let current = live.unwrap_or(&empty);

    let mut conflicts = Vec::new();
    for e in entries.iter_mut().filter(|e| e.manager != who.manager) {
        let clashing: Vec<Path> = e
            .fields
            .intersection(&applied)
            .filter(|p| p.last().map(String::as_str) != Some("."))
            .filter(|p| fields::value_at(current, p) != fields::value_at(config, p))
            .cloned()
            .collect();
        if force {
            for p in &clashing {
                e.fields.remove(p);
            }
        } else {
            conflicts.extend(clashing.iter().map(|p| (e.manager.clone(), fields::display(p))));
        }
    }
    if !conflicts.is_empty() {
        return Err(Conflicts(conflicts));
    }

    let sub = who.scope.subresource();
    let previous = entries
        .iter()
        .find(|e| e.manager == who.manager && e.operation == "Apply" && e.subresource.as_deref() == sub)
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut result = current.clone();
    for p in previous.difference(&applied) {
        // A map applied empty last time is owned as a leaf; it stays while the manager still
        // applies something inside it, or another manager owns anything inside it.
        let under = |q: &Path| q.len() >= p.len() && q[..p.len()] == p[..];
        let still_applied = applied.iter().any(under);
        let owned_elsewhere = entries
            .iter()
            .filter(|e| !(e.manager == who.manager && e.operation == "Apply"))
            .any(|e| e.fields.iter().any(under));
        if !owned_elsewhere && !still_applied {
            fields::remove_at(&mut result, p);
        }
    }
    let mut scoped_config = config.clone();
    if let Value::Object(m) = &mut scoped_config {
        match who.scope {
            Scope::Main {
                status_separate: true,
            } => {
                m.remove("status");
            }
            Scope::Status => m.retain(|k, _| k == "status" || k == "metadata"),
            Scope::Main { .. } => {}
        }
        if let Some(Value::Object(meta)) = m.get_mut("metadata") {
            meta.retain(|k, _| {
                !SYSTEM_METADATA.contains(&format!("f:{k}").as_str()) || k == "name" || k == "namespace"
            });
        }
    }
    merge(&mut result, &scoped_config, Schema::root(who.schema), true);
    own(&mut entries, who, "Apply", applied, true);
    write_entries(&mut result, entries);
    Ok(result)
}

/// Records a non-apply write: the fields it changed now belong to `who`.
pub fn record_update(old: Option<&Value>, new: &mut Value, who: &Writer<'_>) {
    let mut entries = read_entries(old);
    let empty = Value::Object(Map::new());
    let before = old.unwrap_or(&empty);
    let old_fields = scoped_fields(before, who.schema, who.scope);
    let new_fields = scoped_fields(new, who.schema, who.scope);
    let changed: FieldSet = new_fields
        .iter()
        .filter(|p| fields::value_at(before, p) != fields::value_at(new, p))
        .cloned()
        .collect();
    let removed: FieldSet = old_fields.difference(&new_fields).cloned().collect();
    if !changed.is_empty() || !removed.is_empty() {
        for e in &mut entries {
            e.fields.retain(|p| !changed.contains(p) && !removed.contains(p));
        }
        own(&mut entries, who, "Update", changed, false);
    }
    write_entries(new, entries);
}

/// Merges an applied configuration into an object: maps key by key, keyed lists by key, sets by
/// value; scalars and atomic lists are replaced.
fn merge(dst: &mut Value, src: &Value, schema: Schema<'_>, at_root: bool) {
    let (Value::Object(d), Value::Object(s)) = (&mut *dst, src) else {
        *dst = src.clone();
        return;
    };
    for (k, v) in s {
        if v.is_null() {
            continue;
        }
        let child = schema.child(k, at_root);
        match (d.get_mut(k), v) {
            (Some(Value::Array(existing)), Value::Array(items)) => match child.list_kind(k, items.first()) {
                ListKind::Map(keys) => {
                    for item in items {
                        let same = |e: &Value| keys.iter().all(|key| e.get(key) == item.get(key));
                        match existing.iter_mut().find(|e| same(e)) {
                            Some(e) => merge(e, item, child.items(), false),
                            None => existing.push(item.clone()),
                        }
                    }
                }
                ListKind::Set => {
                    for item in items {
                        if !existing.contains(item) {
                            existing.push(item.clone());
                        }
                    }
                }
                ListKind::Atomic => *existing = items.clone(),
            },
            (Some(existing @ Value::Object(_)), Value::Object(_)) => merge(existing, v, child, false),
            (Some(existing), _) => *existing = v.clone(),
            (None, _) => {
                d.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "v1",
            scope: Scope::Main {
                status_separate: true,
            },
            schema: None,
        }
    }

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "d"}, "data": data})
    }

    fn managers(obj: &Value) -> Vec<(String, String)> {
        read_entries(Some(obj))
            .into_iter()
            .map(|e| (e.manager, e.operation))
            .collect()
    }

    #[test]
    fn apply_then_reapply_without_a_field_removes_it() {
        let one = apply(None, &cm(json!({"a": "1", "b": "2"})), &writer("m"), false).unwrap();
        let two = apply(Some(&one), &cm(json!({"a": "1"})), &writer("m"), false).unwrap();
        assert_eq!(two["data"], json!({"a": "1"}));
        assert_eq!(managers(&two), [("m".to_string(), "Apply".to_string())]);
    }

    #[test]
    fn a_second_manager_conflicts_on_a_different_value_unless_forced() {
        let one = apply(None, &cm(json!({"a": "1"})), &writer("m1"), false).unwrap();
        let same = apply(Some(&one), &cm(json!({"a": "1"})), &writer("m2"), false).unwrap();
        assert_eq!(managers(&same).len(), 2, "same value: shared ownership");
        let err = apply(Some(&one), &cm(json!({"a": "2"})), &writer("m2"), false).unwrap_err();
        assert_eq!(
            err.message(),
            r#"Apply failed with 1 conflict: conflict with "m1": .data.a"#
        );
        let forced = apply(Some(&one), &cm(json!({"a": "2"})), &writer("m2"), true).unwrap();
        assert_eq!(forced["data"]["a"], "2");
        assert_eq!(managers(&forced), [("m2".to_string(), "Apply".to_string())]);
    }

    #[test]
    fn a_field_shared_with_another_manager_survives_when_one_stops_applying_it() {
        let one = apply(None, &cm(json!({"a": "1"})), &writer("m1"), false).unwrap();
        let both = apply(Some(&one), &cm(json!({"a": "1", "b": "2"})), &writer("m2"), false).unwrap();
        let after = apply(Some(&both), &cm(json!({})), &writer("m2"), false).unwrap();
        assert_eq!(after["data"], json!({"a": "1"}));
    }

    #[test]
    fn a_map_applied_empty_then_filled_keeps_keys_other_managers_own() {
        let created = {
            let mut obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "n", "labels": {"role": "gpu"}}});
            record_update(None, &mut obj, &writer("creator"));
            obj
        };
        let labels = |l: Value| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "n", "labels": l}})
        };
        let once = apply(Some(&created), &labels(json!({})), &writer("a"), true).unwrap();
        let twice = apply(Some(&once), &labels(json!({"ready": ""})), &writer("a"), true).unwrap();
        assert_eq!(twice["metadata"]["labels"], json!({"role": "gpu", "ready": ""}));
        let thrice = apply(Some(&twice), &labels(json!({})), &writer("a"), true).unwrap();
        assert_eq!(thrice["metadata"]["labels"], json!({"role": "gpu"}));
    }

    #[test]
    fn an_update_takes_ownership_of_what_it_changed() {
        let applied = apply(None, &cm(json!({"a": "1", "b": "2"})), &writer("m1"), false).unwrap();
        let mut edited = applied.clone();
        edited["data"]["a"] = json!("9");
        record_update(Some(&applied), &mut edited, &writer("kubectl-edit"));
        let entries = read_entries(Some(&edited));
        let m1 = entries.iter().find(|e| e.manager == "m1").unwrap();
        let edit = entries.iter().find(|e| e.manager == "kubectl-edit").unwrap();
        assert_eq!(edit.operation, "Update");
        assert!(
            edit.fields
                .contains(&vec!["f:data".to_string(), "f:a".to_string()])
        );
        assert!(!m1.fields.contains(&vec!["f:data".to_string(), "f:a".to_string()]));
        let err = apply(
            Some(&edited),
            &cm(json!({"a": "1", "b": "2"})),
            &writer("m1"),
            false,
        )
        .unwrap_err();
        assert_eq!(err.0, [("kubectl-edit".to_string(), ".data.a".to_string())]);
    }

    #[test]
    fn status_scope_touches_only_status() {
        let obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"x": 1}});
        let who = Writer {
            manager: "kubelet",
            api_version: "v1",
            scope: Scope::Status,
            schema: None,
        };
        let cfg = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                         "spec": {"x": 2}, "status": {"phase": "Running"}});
        let out = apply(Some(&obj), &cfg, &who, false).unwrap();
        assert_eq!(out["spec"]["x"], 1);
        assert_eq!(out["status"]["phase"], "Running");
        assert_eq!(out["metadata"]["managedFields"][0]["subresource"], "status");
    }

    #[test]
    fn keyed_list_items_merge_between_managers() {
        let pod = |c: Value| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": c}});
        let one = apply(
            None,
            &pod(json!([{"name": "a", "image": "1"}])),
            &writer("m1"),
            false,
        )
        .unwrap();
        let two = apply(
            Some(&one),
            &pod(json!([{"name": "b", "image": "2"}])),
            &writer("m2"),
            false,
        )
        .unwrap();
        assert_eq!(
            two["spec"]["containers"],
            json!([{"name": "a", "image": "1"}, {"name": "b", "image": "2"}])
        );
        let three = apply(Some(&two), &pod(json!([])), &writer("m1"), false).unwrap();
        assert_eq!(three["spec"]["containers"], json!([{"name": "b", "image": "2"}]));
    }
}
