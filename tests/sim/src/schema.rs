//! What the apiserver does to a custom resource with its structural schema before storing it:
//! drop unknown fields (pruning) and fill `default`s. Validation (types, enums, CEL) is not
//! simulated; `kmm-hub lint` covers it offline.

use serde_json::Value;

/// Prunes unknown fields and applies defaults in place, as for a write of a custom resource.
pub fn prune_and_default(obj: &mut Value, schema: &Value) {
    walk(obj, schema, true);
}

fn walk(v: &mut Value, s: &Value, root: bool) {
    match v {
        Value::Object(map) => {
            let props = s.get("properties").and_then(Value::as_object);
            if let Some(props) = props {
                for (k, ps) in props {
                    if let (false, Some(d)) = (map.contains_key(k), ps.get("default")) {
                        map.insert(k.clone(), d.clone());
                    }
                }
            }
            let preserve = s
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                == Some(true);
            let embedded = s.get("x-kubernetes-embedded-resource").and_then(Value::as_bool) == Some(true);
            let additional = s.get("additionalProperties");
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let meta = (root || embedded) && matches!(k.as_str(), "apiVersion" | "kind" | "metadata");
                let child = props
                    .and_then(|p| p.get(&k))
                    .or_else(|| additional.filter(|a| a.is_object()));
                match (meta, child) {
                    (true, _) => {}
                    (false, Some(cs)) => {
                        if let Some(cv) = map.get_mut(&k) {
                            walk(cv, cs, false);
                        }
                    }
                    (false, None) if preserve || additional == Some(&Value::Bool(true)) => {}
                    (false, None) => {
                        map.remove(&k);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items") {
                for item in items {
                    walk(item, is, false);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn unknown_fields_are_dropped_known_ones_kept_and_defaults_filled() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {
                "name": {"type": "string"},
                "policy": {"type": "string", "default": "Foreground"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "items": {"type": "array", "items": {"type": "object", "properties": {"a": {"type": "string"}}}},
                "embedded": {"type": "object", "x-kubernetes-embedded-resource": true,
                             "x-kubernetes-preserve-unknown-fields": true}}}}});
        let mut obj = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "n"},
            "spec": {"name": "a", "typo": 1, "labels": {"k": "v"}, "free": {"any": {"thing": 1}},
                     "items": [{"a": "1", "b": "2"}], "embedded": {"apiVersion": "v1", "kind": "Pod", "spec": {}}},
            "extra": true});
        prune_and_default(&mut obj, &schema);
        assert_eq!(
            obj,
            json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "n"},
            "spec": {"name": "a", "policy": "Foreground", "labels": {"k": "v"}, "free": {"any": {"thing": 1}},
                     "items": [{"a": "1"}], "embedded": {"apiVersion": "v1", "kind": "Pod", "spec": {}}}})
        );
    }
}
