//! `events.k8s.io/v1` Event -> `v1` Event, field by field as the apiserver converts them.

use serde_json::{Map, Value, json};

/// The `v1` view of an `events.k8s.io/v1` Event.
pub fn to_core(ev: &Value) -> Value {
    let get = |k: &str| ev.get(k).filter(|v| !v.is_null()).cloned();
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!("v1"));
    out.insert("kind".into(), json!("Event"));
    let mut meta = ev.get("metadata").cloned().unwrap_or_else(|| json!({}));
    if let Some(m) = meta.as_object_mut() {
        m.remove("managedFields");
    }
    out.insert("metadata".into(), meta);
    let pairs = [
        ("regarding", "involvedObject"),
        ("related", "related"),
        ("reason", "reason"),
        ("note", "message"),
        ("type", "type"),
        ("action", "action"),
        ("reportingController", "reportingComponent"),
        ("reportingInstance", "reportingInstance"),
        ("eventTime", "eventTime"),
        ("series", "series"),
        ("deprecatedSource", "source"),
    ];
    for (from, to) in pairs {
        if let Some(v) = get(from) {
            out.insert(to.into(), v);
        }
    }
    if let (false, Some(c)) = (out.contains_key("source"), get("reportingController")) {
        out.insert("source".into(), json!({"component": c}));
    }
    let last_seen = ev
        .pointer("/series/lastObservedTime")
        .cloned()
        .or_else(|| get("eventTime"));
    let first = get("deprecatedFirstTimestamp").or_else(|| get("eventTime"));
    let last = get("deprecatedLastTimestamp").or(last_seen);
    // v1 timestamps have whole seconds; eventTime is a MicroTime.
    let seconds = |v: Value| {
        v.as_str()
            .map(|s| json!(format!("{}Z", &s[..s.len().min(19)])))
            .unwrap_or(v)
    };
    if let Some(f) = first {
        out.insert("firstTimestamp".into(), seconds(f));
    }
    if let Some(l) = last {
        out.insert("lastTimestamp".into(), seconds(l));
    }
    let count = get("deprecatedCount")
        .or_else(|| ev.pointer("/series/count").cloned())
        .unwrap_or(json!(1));
    out.insert("count".into(), count);
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_move_to_their_v1_names() {
        let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "default"},
            "regarding": {"kind": "ManagedClusterModule", "name": "gpu"}, "reason": "ImageNotFound",
            "note": "push it", "type": "Warning", "action": "Reconcile", "reportingController": "kmm-hub",
            "reportingInstance": "hub-0", "eventTime": "2026-11-23T08:00:00.123456Z",
            "series": {"count": 3, "lastObservedTime": "2026-11-23T08:05:00.000001Z"}});
        let core = to_core(&ev);
        assert_eq!(core["involvedObject"]["name"], "gpu");
        assert_eq!(core["message"], "push it");
        assert_eq!(core["reportingComponent"], "kmm-hub");
        assert_eq!(core["source"]["component"], "kmm-hub");
        assert_eq!(core["count"], 3);
        assert_eq!(core["firstTimestamp"], "2026-11-23T08:00:00Z");
        assert_eq!(core["lastTimestamp"], "2026-11-23T08:05:00Z");
    }
}
