//! Checks a JSON value against the OpenAPI v3 schema of one of our CRDs, the way the API server's
//! structural validation (with kubectl's strict field validation) would: types, required fields,
//! unknown fields, sizes, patterns, enums and list uniqueness. CEL rules are checked elsewhere.

use std::collections::BTreeSet;

use regex::Regex;
use serde_json::{Map, Value};

use super::Problem;

/// Root fields every object has, which CRD schemas do not list.
const IMPLICIT_ROOT_FIELDS: &[&str] = &["apiVersion", "kind", "metadata"];

/// Every schema problem in `value`, paths starting at `path`.
pub fn check(schema: &Value, value: &Value, path: &str, problems: &mut Vec<Problem>) {
    if value.is_null() {
        return; // the API server drops nulls of non-nullable fields, so null means absent
    }
    if let Some(branches) = schema.get("anyOf").and_then(Value::as_array) {
        let fits = branches.iter().any(|b| {
            let mut scratch = Vec::new();
            check(b, value, path, &mut scratch);
            scratch.is_empty()
        });
        if !fits {
            problems.push(Problem::new(
                path,
                format!("{} does not match any allowed form", describe(value)),
            ));
        }
    }
    if schema.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true) {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            problems.push(Problem::new(
                path,
                format!("must be an integer or a string, not {}", describe(value)),
            ));
        }
        return;
    }
    let Some(ty) = schema.get("type").and_then(Value::as_str) else {
        return;
    };
    match (ty, value) {
        ("object", Value::Object(map)) => check_object(schema, map, path, problems),
        ("array", Value::Array(items)) => check_array(schema, items, path, problems),
        ("string", Value::String(s)) => check_string(schema, s, path, problems),
        ("integer", Value::Number(n)) if n.is_i64() || n.is_u64() => {
            check_number(schema, value, path, problems)
        }
        ("number", Value::Number(_)) => check_number(schema, value, path, problems),
        ("boolean", Value::Bool(_)) => {}
        _ => problems.push(Problem::new(
            path,
            format!("must be {}, not {}", article(ty), describe(value)),
        )),
    }
    check_enum(schema, value, path, problems);
}

fn check_object(schema: &Value, map: &Map<String, Value>, path: &str, problems: &mut Vec<Problem>) {
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    for required in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(field) = required.as_str()
            && map.get(field).is_none_or(Value::is_null)
        {
            problems.push(Problem::new(
                &join(path, field),
                "required field is missing".to_owned(),
            ));
        }
    }
    for (key, child) in map {
        if path.is_empty() && IMPLICIT_ROOT_FIELDS.contains(&key.as_str()) {
            continue; // the API server knows these on every object; CRD schemas leave them out
        }
        let child_path = join(path, key);
        match (properties.and_then(|p| p.get(key)), additional) {
            (Some(sub), _) | (None, Some(sub)) => check(sub, child, &child_path, problems),
            (None, None) if preserve || properties.is_none() => {}
            (None, None) => {
                let known: Vec<&str> = properties
                    .map(|p| p.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let hint = suggest(key, &known)
                    .map(|s| format!("; did you mean {s}?"))
                    .unwrap_or_default();
                problems.push(Problem::new(&child_path, format!("unknown field {key:?}{hint}")));
            }
        }
    }
    if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
        && (map.len() as u64) < min
    {
        problems.push(Problem::new(path, format!("must have at least {min} entries")));
    }
}

fn check_array(schema: &Value, items: &[Value], path: &str, problems: &mut Vec<Problem>) {
    let len = items.len() as u64;
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
        && len < min
    {
        problems.push(Problem::new(
            path,
            format!("must have at least {min} item{}", plural(min)),
        ));
    }
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
        && len > max
    {
        problems.push(Problem::new(
            path,
            format!("must have at most {max} items, has {len}"),
        ));
    }
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            let mut seen = BTreeSet::new();
            for (i, item) in items.iter().enumerate() {
                if !seen.insert(item.to_string()) {
                    problems.push(Problem::new(
                        &format!("{path}[{i}]"),
                        format!("duplicate value {item}"),
                    ));
                }
            }
        }
        Some("map") => {
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut seen = BTreeSet::new();
            for (i, item) in items.iter().enumerate() {
                let key: Vec<String> = keys
                    .iter()
                    .map(|k| item.get(k).map(Value::to_string).unwrap_or_default())
                    .collect();
                if !seen.insert(key.clone()) {
                    problems.push(Problem::new(
                        &format!("{path}[{i}]"),
                        format!("duplicate entry with {} {}", keys.join("/"), key.join("/")),
                    ));
                }
            }
        }
        _ => {}
    }
    if let Some(item_schema) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            check(item_schema, item, &format!("{path}[{i}]"), problems);
        }
    }
}

fn check_string(schema: &Value, s: &str, path: &str, problems: &mut Vec<Problem>) {
    let len = s.chars().count() as u64;
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        problems.push(Problem::new(
            path,
            format!("must be at least {min} character{} long", plural(min)),
        ));
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        problems.push(Problem::new(
            path,
            format!("must be at most {max} characters long, is {len}"),
        ));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        match Regex::new(pattern) {
            Ok(re) if !re.is_match(s) => {
                problems.push(Problem::new(
                    path,
                    format!("{s:?} does not match the pattern {pattern}"),
                ));
            }
            Ok(_) => {}
            Err(e) => problems.push(Problem::new(
                path,
                format!("schema pattern {pattern} does not compile: {e}"),
            )),
        }
    }
}

fn check_number(schema: &Value, value: &Value, path: &str, problems: &mut Vec<Problem>) {
    let Some(n) = value.as_f64() else { return };
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
        && n < min
    {
        problems.push(Problem::new(path, format!("must be at least {min}")));
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
        && n > max
    {
        problems.push(Problem::new(path, format!("must be at most {max}")));
    }
}

fn check_enum(schema: &Value, value: &Value, path: &str, problems: &mut Vec<Problem>) {
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        problems.push(Problem::new(
            path,
            format!("{value} is not one of {}", list.join(", ")),
        ));
    }
}

/// The known field `key` was most likely meant to be: same letters in another case first, then
/// the closest spelling.
fn suggest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    if let Some(same) = known.iter().find(|k| k.eq_ignore_ascii_case(key)) {
        return Some(same);
    }
    known
        .iter()
        .map(|k| {
            (
                strsim::jaro_winkler(&key.to_ascii_lowercase(), &k.to_ascii_lowercase()),
                *k,
            )
        })
        .filter(|(score, _)| *score >= 0.88)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn article(ty: &str) -> &'static str {
    match ty {
        "object" => "an object",
        "array" => "a list",
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "a boolean (true or false)",
        _ => "of another type",
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;
    use serde_json::json;

    use super::*;

    fn problems(schema: Value, value: Value) -> Vec<String> {
        let mut out = Vec::new();
        check(&schema, &value, "spec", &mut out);
        out.into_iter().map(|p| p.to_string()).collect()
    }

    #[rstest]
    #[case(json!({"type": "string"}), json!(3), "spec: must be a string, not the number 3")]
    #[case(json!({"type": "integer"}), json!(1.5), "spec: must be an integer, not the number 1.5")]
    #[case(json!({"type": "array", "minItems": 1}), json!([]), "spec: must have at least 1 item")]
    #[case(json!({"type": "array", "maxItems": 1}), json!([1, 2]), "spec: must have at most 1 items, has 2")]
    #[case(json!({"type": "string", "maxLength": 2}), json!("abc"), "spec: must be at most 2 characters long, is 3")]
    #[case(json!({"type": "string", "pattern": "^a+$"}), json!("b"), "spec: \"b\" does not match the pattern ^a+$")]
    #[case(json!({"type": "string", "enum": ["A"]}), json!("B"), "spec: \"B\" is not one of \"A\"")]
    #[case(json!({"type": "array", "x-kubernetes-list-type": "set"}), json!(["a", "a"]), "spec[1]: duplicate value \"a\"")]
    #[case(json!({"type": "object", "required": ["x"], "properties": {"x": {"type": "string"}}}), json!({}),
        "spec.x: required field is missing")]
    #[case(json!({"type": "object", "properties": {"imageRepoSecret": {"type": "object"}}}), json!({"imageReposecret": {}}),
        "spec.imageReposecret: unknown field \"imageReposecret\"; did you mean imageRepoSecret?")]
    #[case(json!({"type": "object", "properties": {"moduleName": {"type": "string"}}}), json!({"moduleNmae": "x"}),
        "spec.moduleNmae: unknown field \"moduleNmae\"; did you mean moduleName?")]
    #[case(json!({"type": "object", "properties": {"a": {"type": "string"}}}), json!({"zzz": 1}),
        "spec.zzz: unknown field \"zzz\"")]
    fn reports(#[case] schema: Value, #[case] value: Value, #[case] want: &str) {
        assert_eq!(problems(schema, value), [want]);
    }

    #[rstest]
    #[case(json!({"type": "object", "additionalProperties": {"type": "string"}}), json!({"any": "x"}))]
    #[case(json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": {}}), json!({"any": 1}))]
    #[case(json!({"type": "object"}), json!({"labels": {"a": "b"}}))]
    #[case(json!({"x-kubernetes-int-or-string": true}), json!("50%"))]
    #[case(json!({"x-kubernetes-int-or-string": true}), json!(50))]
    #[case(json!({"type": "string"}), json!(null))]
    fn accepts(#[case] schema: Value, #[case] value: Value) {
        assert_eq!(problems(schema, value), Vec::<String>::new());
    }
}
