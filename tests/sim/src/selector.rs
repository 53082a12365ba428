//! Label selectors (equality- and set-based) and field selectors, in their query-string forms.

use std::collections::BTreeSet;

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector` query parameter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(Vec<LabelReq>);

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_label_req(part)?);
        }
        Ok(Self(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.contains(x)),
            LabelReq::NotIn(k, vs) => !get(k).is_some_and(|x| vs.contains(x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }
}

/// Splits on commas that are not inside `( )`.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

fn parse_label_req(part: &str) -> Result<LabelReq, String> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(LabelReq::NotExists(check_key(key.trim())?));
    }
    for (op, notin) in [(" notin ", true), (" in ", false)] {
        if let Some((key, set)) = part.split_once(op) {
            let set = set.trim();
            let inner = set
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(|| format!("unable to parse requirement: {part:?}: values must be in ( )"))?;
            let values = inner
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            let key = check_key(key.trim())?;
            return Ok(if notin {
                LabelReq::NotIn(key, values)
            } else {
                LabelReq::In(key, values)
            });
        }
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(LabelReq::NotEq(check_key(k.trim())?, v.trim().to_string()));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(LabelReq::Eq(check_key(k.trim())?, v.trim().to_string()));
    }
    Ok(LabelReq::Exists(check_key(part)?))
}

fn check_key(key: &str) -> Result<String, String> {
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(key.to_string())
    } else {
        Err(format!("invalid label key {key:?}"))
    }
}

/// A parsed `fieldSelector` query parameter: `path=value`, `path==value`, `path!=value`, comma-joined.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses and checks every field against what the kind supports, like the apiserver does.
    pub fn parse(text: &str, supported: &dyn Fn(&str) -> bool, kind: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: {part:?}; can't understand it"));
            };
            let field = field.trim();
            if !supported(field) {
                return Err(format!("field label not supported: {field} (for kind {kind})"));
            }
            reqs.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(Self(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let mut cur = Some(obj);
            for seg in field.split('.') {
                cur = cur.and_then(|c| c.get(seg));
            }
            let actual = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;
    use serde_json::json;

    use super::*;

    fn obj() -> Value {
        json!({"metadata": {"name": "n1", "labels": {"app": "kmm", "tier": "node", "env": "prod"}},
               "spec": {"nodeName": "node-1"}})
    }

    #[rstest]
    #[case("", true)]
    #[case("app=kmm", true)]
    #[case("app==kmm", true)]
    #[case("app=other", false)]
    #[case("app!=other", true)]
    #[case("missing!=x", true)]
    #[case("app in (kmm, x)", true)]
    #[case("app in (x,y)", false)]
    #[case("app notin (x,y)", true)]
    #[case("missing notin (x)", true)]
    #[case("tier", true)]
    #[case("!tier", false)]
    #[case("!missing", true)]
    #[case("app=kmm,tier=node,env in (prod,dev)", true)]
    #[case("app=kmm,tier=gpu", false)]
    fn label_selectors(#[case] sel: &str, #[case] expected: bool) {
        assert_eq!(
            LabelSelector::parse(sel).unwrap().matches(&obj()),
            expected,
            "{sel}"
        );
    }

    #[test]
    fn malformed_label_selectors_are_refused() {
        assert!(LabelSelector::parse("app in x").is_err());
        assert!(LabelSelector::parse("a b=c").is_err());
    }

    #[rstest]
    #[case("metadata.name=n1", true)]
    #[case("metadata.name!=n1", false)]
    #[case("spec.nodeName==node-1", true)]
    #[case("spec.nodeName=node-2", false)]
    #[case("metadata.name=n1,spec.nodeName=node-1", true)]
    #[case("metadata.namespace=", true)]
    fn field_selectors(#[case] sel: &str, #[case] expected: bool) {
        let fs = FieldSelector::parse(sel, &|_| true, "Pod").unwrap();
        assert_eq!(fs.matches(&obj()), expected, "{sel}");
    }

    #[test]
    fn unsupported_field_selectors_are_refused_with_the_apiserver_message() {
        let err = FieldSelector::parse("spec.color=red", &|f| f == "metadata.name", "Pod").unwrap_err();
        assert_eq!(err, "field label not supported: spec.color (for kind Pod)");
    }
}
