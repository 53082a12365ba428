//! Status feedback: the values a ManifestWork's `feedbackRules` ask the work agent to copy from a
//! spoke object into `status.resourceStatus.manifests[].statusFeedback`.

use kmm_api::ocm::{FeedbackRule, FeedbackValue, FieldValue};
use serde_json::Value;

use crate::jsonpath::{self, Found};

/// The values read from one object, and what could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Feedback {
    /// Values in rule order, one per name (a later duplicate name is ignored).
    pub values: Vec<FeedbackValue>,
    /// One message per path that failed; non-empty means `StatusFeedbackSynced` False.
    pub errors: Vec<String>,
}

/// The paths `WellKnownStatus` reads for an object of `apiVersion`/`kind`, or `None` when the
/// kind is not covered (the OCM agent only covers these four).
pub fn well_known_paths(api_version: &str, kind: &str) -> Option<&'static [(&'static str, &'static str)]> {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    match (group, kind) {
        ("apps", "Deployment") => Some(&[
            ("ReadyReplicas", ".status.readyReplicas"),
            ("Replicas", ".status.replicas"),
            ("AvailableReplicas", ".status.availableReplicas"),
        ]),
        ("apps", "DaemonSet") => Some(&[
            ("NumberReady", ".status.numberReady"),
            ("DesiredNumberScheduled", ".status.desiredNumberScheduled"),
            ("NumberAvailable", ".status.numberAvailable"),
        ]),
        ("batch", "Job") => Some(&[
            (
                "JobComplete",
                r#".status.conditions[?(@.type=="Complete")].status"#,
            ),
            ("JobSucceeded", ".status.succeeded"),
        ]),
        ("", "Pod") => Some(&[
            ("PodReady", r#".status.conditions[?(@.type=="Ready")].status"#),
            ("PodPhase", ".status.phase"),
        ]),
        _ => None,
    }
}

/// Turns one JSON scalar into a typed feedback value.
pub fn field_value(v: &Value) -> Result<FieldValue, String> {
    match v {
        Value::Bool(b) => Ok(FieldValue {
            type_: "Boolean".into(),
            boolean: Some(*b),
            ..Default::default()
        }),
        Value::String(s) => Ok(FieldValue {
            type_: "String".into(),
            string: Some(s.clone()),
            ..Default::default()
        }),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Ok(FieldValue {
                type_: "Integer".into(),
                integer: Some(i),
                ..Default::default()
            }),
            None => Err(format!("the value {n} is not an int64")),
        },
        Value::Array(_) | Value::Object(_) => {
            Err("the value is a list or a map, which needs the RawFeedbackJsonString feature gate".into())
        }
        Value::Null => Err("null value".into()),
    }
}

/// Evaluates every rule against `object` (the whole spoke object).
pub fn evaluate(object: &Value, rules: &[FeedbackRule]) -> Feedback {
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    let version = api_version.rsplit('/').next().unwrap_or_default();
    let mut out = Feedback::default();
    let push = |out: &mut Feedback, name: &str, path: &str| match jsonpath::find(path, object) {
        Err(e) => out.errors.push(e.to_string()),
        Ok(Found::Nothing) => {}
        Ok(Found::Many(v)) => out.errors.push(format!(
            "path {path:?} of {name:?} matched {} values, which needs the RawFeedbackJsonString feature gate",
            v.len()
        )),
        Ok(Found::One(v)) => match field_value(v) {
            Ok(fv) => {
                if !out.values.iter().any(|x| x.name == name) {
                    out.values.push(FeedbackValue {
                        name: name.to_string(),
                        field_value: fv,
                    });
                }
            }
            Err(e) => out.errors.push(format!("path {path:?} of {name:?}: {e}")),
        },
    };
    for rule in rules {
        match rule.type_.as_str() {
            "WellKnownStatus" => match well_known_paths(api_version, kind) {
                Some(paths) => paths.iter().for_each(|(name, path)| push(&mut out, name, path)),
                None => out.errors.push(format!(
                    "no well-known status is defined for {api_version} {kind}"
                )),
            },
            "JSONPaths" => {
                for jp in &rule.json_paths {
                    match &jp.version {
                        Some(want) if !want.is_empty() && want != version => out.errors.push(format!(
                            "path {:?} of {:?} is for version {want}, but the object is {version}",
                            jp.path, jp.name
                        )),
                        _ => push(&mut out, &jp.name, &jp.path),
                    }
                }
            }
            other => out.errors.push(format!("unknown feedback rule type {other:?}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kmm_api::ocm::JsonPath;
    use serde_json::json;

    fn jp(name: &str, path: &str) -> JsonPath {
        JsonPath {
            name: name.into(),
            path: path.into(),
            version: None,
        }
    }

    fn rule(paths: Vec<JsonPath>) -> FeedbackRule {
        FeedbackRule {
            type_: "JSONPaths".into(),
            json_paths: paths,
        }
    }

    #[test]
    fn scalars_become_typed_values_and_missing_ones_are_left_out() {
        let obj = json!({"apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module", "status": {
            "moduleLoader": {"availableNumber": 2}, "ok": false,
            "conditions": [{"type": "Ready", "status": "True"}]}});
        let fb = evaluate(
            &obj,
            &[rule(vec![
                jp("available", ".status.moduleLoader.availableNumber"),
                jp("desired", ".status.moduleLoader.desiredNumber"),
                jp("ready", r#".status.conditions[?(@.type=="Ready")].status"#),
                jp("ok", ".status.ok"),
            ])],
        );
        assert!(fb.errors.is_empty(), "{:?}", fb.errors);
        let names: Vec<_> = fb.values.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["available", "ready", "ok"]);
        assert_eq!(fb.values[0].field_value.type_, "Integer");
        assert_eq!(fb.values[0].field_value.integer, Some(2));
        assert_eq!(fb.values[1].field_value.string.as_deref(), Some("True"));
        assert_eq!(fb.values[2].field_value.boolean, Some(false));
    }

    #[test]
    fn lists_maps_floats_and_wrong_versions_are_errors_but_other_values_still_come_back() {
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "x"}, "f": 1.5, "n": 3});
        let mut versioned = jp("n2", ".n");
        versioned.version = Some("v2".into());
        let fb = evaluate(
            &obj,
            &[rule(vec![
                jp("m", ".data"),
                jp("f", ".f"),
                jp("n", ".n"),
                versioned,
            ])],
        );
        assert_eq!(fb.errors.len(), 3, "{:?}", fb.errors);
        assert_eq!(fb.values.len(), 1);
        assert_eq!(fb.values[0].name, "n");
    }

    #[test]
    fn well_known_status_covers_four_kinds_only() {
        let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "status": {"numberReady": 2, "desiredNumberScheduled": 3}});
        let fb = evaluate(
            &ds,
            &[FeedbackRule {
                type_: "WellKnownStatus".into(),
                json_paths: vec![],
            }],
        );
        assert!(fb.errors.is_empty());
        let got: Vec<_> = fb
            .values
            .iter()
            .map(|v| (v.name.as_str(), v.field_value.integer))
            .collect();
        assert_eq!(
            got,
            [("NumberReady", Some(2)), ("DesiredNumberScheduled", Some(3))]
        );

        let job = json!({"apiVersion": "batch/v1", "kind": "Job",
            "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}});
        let fb = evaluate(
            &job,
            &[FeedbackRule {
                type_: "WellKnownStatus".into(),
                json_paths: vec![],
            }],
        );
        assert_eq!(fb.values[0].name, "JobComplete");
        assert_eq!(fb.values[0].field_value.string.as_deref(), Some("True"));

        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap"});
        let fb = evaluate(
            &cm,
            &[FeedbackRule {
                type_: "WellKnownStatus".into(),
                json_paths: vec![],
            }],
        );
        assert_eq!(fb.errors.len(), 1);
        assert!(fb.values.is_empty());
    }
}
