//! A small evaluator for kubectl-style JSONPath, as the work agent uses it for status feedback.
//!
//! Supported: optional `$` and surrounding braces, `.field`, `['field']`, `[n]` (negative counts
//! from the end), `[*]` / `.*`, and filters `[?(@.a.b == "x")]` with `==`, `!=`, `<`, `<=`, `>`,
//! `>=` against a string, number or boolean literal, or `[?(@.a)]` for existence. Not supported:
//! recursive descent (`..`), slices and unions; they are reported as parse errors.

use serde_json::Value;

/// One step of a parsed path.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    /// A map key.
    Field(String),
    /// A list index; negative counts from the end.
    Index(i64),
    /// Every list element or map value.
    Wildcard,
    /// The list elements for which the filter holds.
    Filter(Filter),
}

/// A `[?(@.path op literal)]` filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// Path from the element (`@`), fields only.
    pub path: Vec<String>,
    /// Comparison; `None` tests that the path exists and is not null/false.
    pub compare: Option<(Op, Value)>,
}

/// Comparison operators in filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// What a path found in an object.
#[derive(Debug, Clone, PartialEq)]
pub enum Found<'a> {
    /// Nothing, or only nulls.
    Nothing,
    /// Exactly one non-null value.
    One(&'a Value),
    /// Several non-null values.
    Many(Vec<&'a Value>),
}

/// A path that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSONPath {path:?}: {reason}")]
pub struct ParseError {
    pub path: String,
    pub reason: String,
}

/// Parses a path such as `.status.conditions[?(@.type=="Ready")].status`.
pub fn parse(path: &str) -> Result<Vec<Segment>, ParseError> {
    let err = |reason: &str| ParseError {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    let mut s = path.trim();
    if let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        s = inner.trim();
    }
    if let Some(rest) = s.strip_prefix('$') {
        s = rest;
    }
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        match chars[i] {
            '.' => {
                i += 1;
                if i < chars.len() && chars[i] == '.' {
                    return Err(err("recursive descent (..) is not supported"));
                }
                if i < chars.len() && chars[i] == '*' {
                    out.push(Segment::Wildcard);
                    i += 1;
                    continue;
                }
                let mut name = String::new();
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    name.push(chars[i]);
                    i += 1;
                }
                if name.is_empty() {
                    return Err(err("empty field name"));
                }
                out.push(Segment::Field(name));
            }
            '[' => {
                let close = find_bracket_end(&chars, i).ok_or_else(|| err("unclosed ["))?;
                let inner: String = chars[i + 1..close].iter().collect();
                out.push(parse_bracket(inner.trim()).map_err(|r| err(&r))?);
                i = close + 1;
            }
            c if out.is_empty() && (c.is_alphanumeric() || c == '_') => {
                // A path without the leading dot ("status.x"), as people often write it.
                let mut name = String::new();
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    name.push(chars[i]);
                    i += 1;
                }
                out.push(Segment::Field(name));
            }
            c => return Err(err(&format!("unexpected character {c:?}"))),
        }
    }
    Ok(out)
}

/// Index of the `]` closing the bracket opened at `start`, skipping quoted text and nested
/// brackets.
fn find_bracket_end(chars: &[char], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for (j, &c) in chars.iter().enumerate().skip(start) {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '\'' | '"' => quote = Some(c),
                '[' => depth += 1,
                ']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(j);
                    }
                }
                _ => {}
            },
        }
    }
    None
}

fn parse_bracket(inner: &str) -> Result<Segment, String> {
    if inner == "*" {
        return Ok(Segment::Wildcard);
    }
    if let Some(lit) = unquote(inner) {
        return Ok(Segment::Field(lit));
    }
    if let Some(expr) = inner.strip_prefix('?') {
        let expr = expr.trim();
        let expr = expr
            .strip_prefix('(')
            .and_then(|e| e.strip_suffix(')'))
            .ok_or_else(|| "a filter must look like ?(...)".to_string())?;
        return parse_filter(expr.trim()).map(Segment::Filter);
    }
    if inner.contains(':') || inner.contains(',') {
        return Err("slices and unions are not supported".into());
    }
    inner
        .parse::<i64>()
        .map(Segment::Index)
        .map_err(|_| format!("bad index {inner:?}"))
}

fn unquote(s: &str) -> Option<String> {
    let first = s.chars().next()?;
    if (first == '\'' || first == '"') && s.len() >= 2 && s.ends_with(first) {
        Some(s[1..s.len() - 1].to_string())
    } else {
        None
    }
}

fn parse_filter(expr: &str) -> Result<Filter, String> {
    const OPS: [(&str, Op); 6] = [
        ("==", Op::Eq),
        ("!=", Op::Ne),
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("<", Op::Lt),
        (">", Op::Gt),
    ];
    let (lhs, compare) = match OPS
        .iter()
        .find_map(|(tok, op)| expr.find(tok).map(|at| (at, *tok, *op)))
    {
        Some((at, tok, op)) => {
            let rhs = expr[at + tok.len()..].trim();
            let lit = if let Some(s) = unquote(rhs) {
                Value::String(s)
            } else {
                serde_json::from_str::<Value>(rhs).map_err(|_| format!("bad literal {rhs:?}"))?
            };
            (expr[..at].trim(), Some((op, lit)))
        }
        None => (expr, None),
    };
    let rel = lhs
        .strip_prefix('@')
        .ok_or_else(|| "a filter must start with @".to_string())?;
    let mut path = Vec::new();
    for seg in parse(rel).map_err(|e| e.reason)? {
        match seg {
            Segment::Field(f) => path.push(f),
            _ => return Err("only field names are supported inside a filter".into()),
        }
    }
    Ok(Filter { path, compare })
}

/// Evaluates parsed segments against `root`.
pub fn evaluate<'a>(segments: &[Segment], root: &'a Value) -> Found<'a> {
    let mut current: Vec<&'a Value> = vec![root];
    for seg in segments {
        let mut next = Vec::new();
        for v in current {
            match (seg, v) {
                (Segment::Field(f), Value::Object(m)) => next.extend(m.get(f)),
                (Segment::Index(n), Value::Array(a)) => {
                    let idx = if *n < 0 { a.len() as i64 + n } else { *n };
                    if idx >= 0 {
                        next.extend(a.get(idx as usize));
                    }
                }
                (Segment::Wildcard, Value::Array(a)) => next.extend(a.iter()),
                (Segment::Wildcard, Value::Object(m)) => next.extend(m.values()),
                (Segment::Filter(f), Value::Array(a)) => next.extend(a.iter().filter(|e| filter_holds(f, e))),
                _ => {}
            }
        }
        current = next;
    }
    let mut non_null: Vec<&Value> = current.into_iter().filter(|v| !v.is_null()).collect();
    match non_null.len() {
        0 => Found::Nothing,
        1 => Found::One(non_null.remove(0)),
        _ => Found::Many(non_null),
    }
}

fn filter_holds(f: &Filter, element: &Value) -> bool {
    let mut v = element;
    for key in &f.path {
        match v.get(key) {
            Some(x) => v = x,
            None => return false,
        }
    }
    let Some((op, lit)) = &f.compare else {
        return !(v.is_null() || *v == Value::Bool(false));
    };
    let ord = match (v, lit) {
        (Value::Number(a), Value::Number(b)) => {
            a.as_f64().zip(b.as_f64()).and_then(|(a, b)| a.partial_cmp(&b))
        }
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (a, b) if a == b => Some(std::cmp::Ordering::Equal),
        _ => None,
    };
    use std::cmp::Ordering::*;
    match op {
        Op::Eq => ord == Some(Equal),
        Op::Ne => ord != Some(Equal),
        Op::Lt => ord == Some(Less),
        Op::Le => matches!(ord, Some(Less | Equal)),
        Op::Gt => ord == Some(Greater),
        Op::Ge => matches!(ord, Some(Greater | Equal)),
    }
}

/// Parses and evaluates in one go.
pub fn find<'a>(path: &str, root: &'a Value) -> Result<Found<'a>, ParseError> {
    Ok(evaluate(&parse(path)?, root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj() -> Value {
        json!({
            "metadata": {"name": "m", "labels": {"app.kubernetes.io/name": "kmm"}},
            "status": {
                "moduleLoader": {"availableNumber": 3, "desiredNumber": 4},
                "flag": true,
                "gone": null,
                "conditions": [
                    {"type": "Progressing", "status": "False", "n": 1},
                    {"type": "Ready", "status": "True", "reason": "Loaded", "n": 2}
                ],
                "nodes": ["a", "b", "c"]
            }
        })
    }

    #[test]
    fn dotted_fields_and_indexes() {
        let o = obj();
        assert_eq!(
            find(".status.moduleLoader.availableNumber", &o).unwrap(),
            Found::One(&json!(3))
        );
        assert_eq!(find("$.status.flag", &o).unwrap(), Found::One(&json!(true)));
        assert_eq!(find("{.status.nodes[1]}", &o).unwrap(), Found::One(&json!("b")));
        assert_eq!(find(".status.nodes[-1]", &o).unwrap(), Found::One(&json!("c")));
        assert_eq!(find(".status.nodes[7]", &o).unwrap(), Found::Nothing);
        assert_eq!(find("status.flag", &o).unwrap(), Found::One(&json!(true)));
    }

    #[test]
    fn keys_with_dots_via_brackets_or_escapes() {
        let o = obj();
        let want = Found::One(&o["metadata"]["labels"]["app.kubernetes.io/name"]);
        assert_eq!(
            find(".metadata.labels['app.kubernetes.io/name']", &o).unwrap(),
            want
        );
        assert_eq!(
            find(r".metadata.labels.app\.kubernetes\.io/name", &o).unwrap(),
            want
        );
    }

    #[test]
    fn missing_and_null_find_nothing() {
        let o = obj();
        assert_eq!(find(".status.absent.deeper", &o).unwrap(), Found::Nothing);
        assert_eq!(find(".status.gone", &o).unwrap(), Found::Nothing);
        assert_eq!(find(".status.flag.x", &o).unwrap(), Found::Nothing);
    }

    #[test]
    fn filters_select_list_elements() {
        let o = obj();
        assert_eq!(
            find(r#".status.conditions[?(@.type=="Ready")].status"#, &o).unwrap(),
            Found::One(&json!("True"))
        );
        assert_eq!(
            find(".status.conditions[?(@.type == 'Ready')].reason", &o).unwrap(),
            Found::One(&json!("Loaded"))
        );
        assert_eq!(
            find(r#".status.conditions[?(@.type!="Ready")].type"#, &o).unwrap(),
            Found::One(&json!("Progressing"))
        );
        assert_eq!(
            find(".status.conditions[?(@.n>1)].type", &o).unwrap(),
            Found::One(&json!("Ready"))
        );
        assert_eq!(
            find(".status.conditions[?(@.reason)].n", &o).unwrap(),
            Found::One(&json!(2))
        );
        assert_eq!(
            find(r#".status.conditions[?(@.type=="Nope")].status"#, &o).unwrap(),
            Found::Nothing
        );
    }

    #[test]
    fn several_matches_and_containers_are_reported_as_such() {
        let o = obj();
        assert!(matches!(find(".status.conditions[*].type", &o).unwrap(), Found::Many(v) if v.len() == 2));
        assert_eq!(
            find(".status.nodes", &o).unwrap(),
            Found::One(&json!(["a", "b", "c"]))
        );
    }

    #[test]
    fn unsupported_syntax_is_a_parse_error() {
        let o = obj();
        assert!(find("..name", &o).is_err());
        assert!(find(".status.nodes[0:2]", &o).is_err());
        assert!(find(".status.nodes[x]", &o).is_err());
        assert!(find(".status.conditions[?(@.type==\"Ready\")", &o).is_err());
        assert!(find(".a.", &o).is_err());
    }
}
