//! The non-apply patch types: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic
//! merge patch (keyed lists merge by key; `$patch: delete|replace` and `$deleteFromPrimitiveList`
//! directives; `$setElementOrder` and `$retainKeys` are accepted and ignored).

use serde_json::{Map, Value};

use crate::fields::{ListKind, Schema};

/// RFC 7386: objects merge, `null` deletes, everything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// RFC 6902, with the error text the apiserver would put in its 422.
///
/// Like the apiserver's implementation, a `test` of `null` passes on a missing path: kube-rs
/// relies on this to add the first finalizer (`test /metadata/finalizers null`, then `add`).
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let mut ops = patch
        .as_array()
        .cloned()
        .ok_or("invalid JSON patch: not a list of operations")?;
    let is_null_test = |op: &Value| {
        op.get("op").and_then(Value::as_str) == Some("test") && op.get("value").is_some_and(Value::is_null)
    };
    for op in ops.iter().filter(|op| is_null_test(op)) {
        let path = op.get("path").and_then(Value::as_str).unwrap_or_default();
        if !target.pointer(path).is_none_or(Value::is_null) {
            return Err(format!("testing value {path} failed: not null"));
        }
    }
    ops.retain(|op| !is_null_test(op));
    let ops: json_patch::Patch =
        serde_json::from_value(Value::Array(ops)).map_err(|e| format!("invalid JSON patch: {e}"))?;
    json_patch::patch(target, &ops).map_err(|e| e.to_string())
}

/// Strategic merge patch for kinds without a schema here (built-ins): lists named in the built-in
/// table merge by key, other lists replace.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value, schema: Schema<'_>, at_root: bool) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut clean = p.clone();
        clean.remove("$patch");
        *target = Value::Object(clean);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" || k == "$patch" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Some(gone)) = (t.get_mut(field), v.as_array()) {
                items.retain(|i| !gone.contains(i));
            }
            continue;
        }
        let child = schema.child(k, at_root);
        match v {
            Value::Null => {
                t.remove(k);
            }
            Value::Array(items) => match (child.list_kind(k, items.first()), t.get_mut(k)) {
                (ListKind::Map(keys), Some(Value::Array(existing))) => {
                    merge_keyed(existing, items, &keys, child)
                }
                (ListKind::Set, Some(Value::Array(existing))) => {
                    for i in items {
                        if !existing.contains(i) {
                            existing.push(i.clone());
                        }
                    }
                }
                _ => {
                    let cleaned: Vec<Value> = items
                        .iter()
                        .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"))
                        .cloned()
                        .collect();
                    t.insert(k.clone(), Value::Array(cleaned));
                }
            },
            Value::Object(_) => {
                strategic_merge_patch(t.entry(k.clone()).or_insert(Value::Null), v, child, false)
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
}

fn merge_keyed(existing: &mut Vec<Value>, items: &[Value], keys: &[String], schema: Schema<'_>) {
    for item in items {
        let same = |e: &Value| keys.iter().all(|k| e.get(k) == item.get(k));
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            existing.retain(|e| !same(e));
        } else if let Some(e) = existing.iter_mut().find(|e| same(e)) {
            strategic_merge_patch(e, item, schema.items(), false);
        } else {
            existing.push(item.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}, "l": [3]}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
    }

    #[test]
    fn json_patch_applies_and_reports_failed_tests() {
        let mut t = json!({"metadata": {"labels": {"a": "1"}}});
        json_patch(
            &mut t,
            &json!([{"op": "add", "path": "/metadata/labels/b", "value": "2"}]),
        )
        .unwrap();
        assert_eq!(t["metadata"]["labels"]["b"], "2");
        let err = json_patch(
            &mut t,
            &json!([{"op": "test", "path": "/metadata/labels/a", "value": "9"}]),
        )
        .unwrap_err();
        assert!(!err.is_empty());
        assert!(json_patch(&mut t, &json!({"op": "add"})).is_err());
        // A test of null passes on a missing path (kube-rs adds its first finalizer this way).
        let first_finalizer = json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                                     {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]);
        json_patch(&mut t, &first_finalizer).unwrap_or_else(|e| panic!("{e}: {t}"));
        assert_eq!(t["metadata"]["finalizers"], json!(["f"]));
        assert!(json_patch(&mut t, &first_finalizer).is_err(), "no longer null");
    }

    #[test]
    fn strategic_merge_patch_merges_containers_by_name_and_honours_delete() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}],
                                      "tolerations": [{"key": "x"}]},
                             "metadata": {"finalizers": ["f1"]}});
        let patch = json!({"spec": {"containers": [{"name": "a", "image": "9"}, {"name": "b", "$patch": "delete"},
                                                   {"name": "c", "image": "3"}],
                                    "tolerations": [{"key": "y"}]},
                           "metadata": {"finalizers": ["f2"]}});
        strategic_merge_patch(&mut pod, &patch, Schema::root(None), true);
        assert_eq!(
            pod,
            json!({"spec": {"containers": [{"name": "a", "image": "9"}, {"name": "c", "image": "3"}],
                                        "tolerations": [{"key": "y"}]},
                               "metadata": {"finalizers": ["f1", "f2"]}})
        );
    }
}
