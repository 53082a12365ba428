//! `meta.k8s.io/v1` Table responses, which `kubectl get` asks for: Name, the CRD's
//! `additionalPrinterColumns` (or a Status column for pods), and Age.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::registry::ResourceType;

/// A table of `objects` (already in the requested version).
pub fn table(rt: &ResourceType, version: &str, objects: &[Value], rv: Option<u64>) -> Value {
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "priority": 0,
                                  "description": "Name of the object"}),
    ];
    let mut paths: Vec<String> = Vec::new();
    let mut has_age = false;
    match rt.printer_columns.get(version) {
        Some(cols) => {
            for c in cols {
                let path = c
                    .get("jsonPath")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                has_age |= path == ".metadata.creationTimestamp";
                columns.push(json!({"name": c.get("name").cloned().unwrap_or(json!("")),
                                    "type": c.get("type").cloned().unwrap_or(json!("string")),
                                    "format": "", "priority": c.get("priority").cloned().unwrap_or(json!(0)),
                                    "description": c.get("description").cloned().unwrap_or(json!(""))}));
                paths.push(path);
            }
        }
        None if rt.kind == "Pod" && rt.group.is_empty() => {
            columns.push(json!({"name": "Status", "type": "string", "format": "", "priority": 0, "description": "Phase"}));
            paths.push(".status.phase".into());
        }
        None => {}
    }
    if !has_age {
        columns
            .push(json!({"name": "Age", "type": "date", "format": "", "priority": 0, "description": "Age"}));
        paths.push(".metadata.creationTimestamp".into());
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut cells = vec![o.pointer("/metadata/name").cloned().unwrap_or(json!(""))];
            for p in &paths {
                let v = eval(o, p);
                cells.push(if p == ".metadata.creationTimestamp" { json!(age(v.as_ref())) } else { v.unwrap_or(Value::Null) });
            }
            let meta = o.get("metadata").cloned().unwrap_or(json!({}));
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta}})
        })
        .collect();
    let mut meta = json!({});
    if let Some(rv) = rv {
        meta["resourceVersion"] = json!(rv.to_string());
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": columns, "rows": rows})
}

/// A printer-column JSONPath: `.a.b`, `[n]` and `[?(@.key=="value")]` steps.
pub fn eval(obj: &Value, path: &str) -> Option<Value> {
    let mut cur = obj.clone();
    let mut rest = path.trim_start_matches('.');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = &r[..end];
            rest = r[end + 1..].trim_start_matches('.');
            if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (key, want) = filter.split_once("==")?;
                let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
                cur = cur
                    .as_array()?
                    .iter()
                    .find(|i| i.get(key.trim()).and_then(Value::as_str) == Some(want))?
                    .clone();
            } else {
                cur = cur.get(inner.parse::<usize>().ok()?)?.clone();
            }
            continue;
        }
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        cur = cur.get(&rest[..end])?.clone();
        rest = rest[end..].trim_start_matches('.');
    }
    Some(cur)
}

fn age(ts: Option<&Value>) -> String {
    let Some(created) = ts.and_then(Value::as_str).and_then(parse_rfc3339) else {
        return "<unknown>".into();
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let s = now.saturating_sub(created);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SSZ`.
fn parse_rfc3339(s: &str) -> Option<u64> {
    let n = |a: usize, b: usize| s.get(a..b)?.parse::<i64>().ok();
    let (y, m, d) = (n(0, 4)?, n(5, 7)?, n(8, 10)?);
    let (hh, mm, ss) = (n(11, 13)?, n(14, 16)?, n(17, 19)?);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn printer_paths_evaluate_fields_indexes_and_filters() {
        let o = json!({"status": {"n": 3, "conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(eval(&o, ".status.n"), Some(json!(3)));
        assert_eq!(eval(&o, ".status.conditions[0].type"), Some(json!("A")));
        assert_eq!(
            eval(&o, r#".status.conditions[?(@.type=="Ready")].status"#),
            Some(json!("True"))
        );
        assert_eq!(eval(&o, ".status.missing"), None);
    }

    #[test]
    fn timestamps_parse_back_to_what_time_formats() {
        for secs in [0, 951_782_400, 1_795_419_003] {
            assert_eq!(parse_rfc3339(&crate::time::format_unix(secs)), Some(secs));
        }
    }
}
