//! The kube-apiserver's static cost estimate of CRD CEL rules, for the constructs our rules use.
//!
//! When a CRD is created, the API server prices every `x-kubernetes-validations` rule at its worst
//! case (cel-go `checker/cost.go` with the sizes of `k8s.io/apiserver/pkg/cel/common/schemas.go`)
//! and multiplies it by how often the rule can run in one object (the product of `maxItems` of
//! the lists above it). It refuses the CRD when one rule or message expression exceeds
//! [`PER_RULE_LIMIT`] or all of them together exceed [`PER_CRD_LIMIT`]. A string without
//! `maxLength` counts as long as the whole 3 MiB request, a list without `maxItems` as holding as
//! many items as fit in it. kube-cel's own estimate (`analyze_rule`) ignores both, so it cannot
//! tell what the API server will refuse.
//!
//! This follows the API server's arithmetic (checked rule by rule against k8s.io/apiextensions-
//! apiserver v0.34 on the shipped CRDs) and panics on a function it does not know, so that a new
//! kind of rule gets priced here before it ships.

use cel::common::ast::{Expr, LiteralValue};
use kube_cel::cel;
use serde_json::Value;

/// `StaticEstimatedCostLimit`: most one rule (times its cardinality) or message expression may cost.
pub const PER_RULE_LIMIT: u64 = 10_000_000;
/// `StaticEstimatedCRDCostLimit`: most all rules of one CRD may cost together.
pub const PER_CRD_LIMIT: u64 = 100_000_000;
/// The request size the API server assumes for anything unbounded.
const MAX_REQUEST_BYTES: u64 = 3 * 1024 * 1024;
/// cel-go's `StringTraversalCostFactor` and `RegexStringLengthCostFactor`.
const STRING_FACTOR: f64 = 0.1;
const REGEX_FACTOR: f64 = 0.25;
/// A size nothing bounds (`string(x)`, `format(...)`).
const UNKNOWN: u64 = u64::MAX;

/// One priced rule or message expression.
#[derive(Debug)]
pub struct Priced {
    /// Schema path of the node that carries it, such as `.spec.modules[].config.modprobe`.
    pub path: String,
    pub expression: String,
    /// Cost of one evaluation.
    pub cost: u64,
    /// How often it can run in one object (1 for message expressions, which run once on failure).
    pub cardinality: u64,
}

impl Priced {
    pub fn total(&self) -> u64 {
        self.cost.saturating_mul(self.cardinality)
    }
}

/// Every rule and message expression of a CRD schema, priced as the API server prices them.
pub fn price_schema(schema: &Value) -> Vec<Priced> {
    let mut out = Vec::new();
    walk(schema, Some(1), "", &mut out);
    out
}

fn walk(schema: &Value, cardinality: Option<u64>, path: &str, out: &mut Vec<Priced>) {
    if let Some(rules) = schema.get("x-kubernetes-validations").and_then(Value::as_array) {
        // An unbounded site: as many copies of the node as fit in one request.
        let cardinality = cardinality.unwrap_or(MAX_REQUEST_BYTES / (min_size(schema) + 1));
        for rule in rules {
            for (key, cardinality) in [("rule", cardinality), ("messageExpression", 1)] {
                if let Some(expression) = rule.get(key).and_then(Value::as_str) {
                    out.push(Priced {
                        path: path.to_owned(),
                        expression: expression.to_owned(),
                        cost: price(expression, schema),
                        cardinality,
                    });
                }
            }
        }
    }
    // What each child multiplies the cardinality by (`extractMaxElements`): 1 for a field.
    let count = |bound: &str| schema.get(bound).and_then(Value::as_u64);
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            walk(child, cardinality, &format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = schema.get("items").filter(|v| v.is_object()) {
        let times = count("maxItems").and_then(|n| cardinality.map(|c| c.saturating_mul(n)));
        walk(items, times, &format!("{path}[]"), out);
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        let times = count("maxProperties").and_then(|n| cardinality.map(|c| c.saturating_mul(n)));
        walk(values, times, &format!("{path}{{}}"), out);
    }
}

/// Smallest serialized size of a value of this schema (`MinSerializedSize`).
fn min_size(schema: &Value) -> u64 {
    match schema_type(schema) {
        Some("object") if schema.get("properties").is_some() => {
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let props = schema.get("properties").and_then(Value::as_object);
            2 + props
                .into_iter()
                .flatten()
                .filter(|(name, prop)| required.contains(&name.as_str()) && prop.get("default").is_none())
                .map(|(name, prop)| name.len() as u64 + min_size(prop) + 4)
                .sum::<u64>()
        }
        Some("string") => 2,
        Some("boolean") => 4,
        Some("integer" | "number") => 1,
        _ => 2,
    }
}

/// Largest size of a value of this schema: bytes of a string, items of a list, entries of a map.
fn max_size(schema: &Value) -> u64 {
    let bound = |key: &str| schema.get(key).and_then(Value::as_u64);
    match schema_type(schema) {
        // maxLength counts characters, and one character may take 4 bytes.
        Some("string") => bound("maxLength").map_or(MAX_REQUEST_BYTES - 2, |n| n * 4),
        Some("array") => bound("maxItems").unwrap_or_else(|| {
            let items = schema.get("items").map_or(2, min_size);
            (MAX_REQUEST_BYTES - 2) / (items + 1)
        }),
        Some("object") if schema.get("additionalProperties").is_some() => bound("maxProperties")
            .unwrap_or_else(|| {
                let values = schema.get("additionalProperties").map_or(2, min_size);
                (MAX_REQUEST_BYTES - 2) / (values + 6)
            }),
        _ => 1,
    }
}

fn schema_type(schema: &Value) -> Option<&str> {
    schema.get("type").and_then(Value::as_str)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Str,
    List,
    Map,
    Object,
    Scalar,
    Unknown,
}

/// What the estimator knows about a subexpression.
#[derive(Clone)]
struct Est<'a> {
    cost: u64,
    size: u64,
    kind: Kind,
    schema: Option<&'a Value>,
}

impl<'a> Est<'a> {
    fn of_schema(schema: Option<&'a Value>, cost: u64) -> Self {
        let kind = match schema.and_then(schema_type) {
            Some("string") => Kind::Str,
            Some("array") => Kind::List,
            Some("object") if schema.is_some_and(|s| s.get("additionalProperties").is_some()) => Kind::Map,
            Some("object") => Kind::Object,
            Some(_) => Kind::Scalar,
            // A field the schema does not declare, such as `metadata.name` at the root: an
            // unbounded string, as the API server assumes.
            None => Kind::Str,
        };
        let size = schema.map_or(MAX_REQUEST_BYTES - 2, max_size);
        Self {
            cost,
            size,
            kind,
            schema,
        }
    }

    fn value(kind: Kind, size: u64, cost: u64) -> Self {
        Self {
            cost,
            size,
            kind,
            schema: None,
        }
    }
}

fn factor(size: u64, f: f64) -> u64 {
    if size == UNKNOWN {
        return UNKNOWN;
    }
    (size as f64 * f).ceil() as u64
}

/// Price one CEL expression evaluated with `self` bound to a value of `schema`.
pub fn price(expression: &str, schema: &Value) -> u64 {
    let program = cel::Program::compile(expression).unwrap_or_else(|e| panic!("{expression}: {e}"));
    let mut scope = vec![("self".to_owned(), Some(schema))];
    estimate(&program.expression().expr, &mut scope).cost
}

fn estimate<'a>(expr: &Expr, scope: &mut Vec<(String, Option<&'a Value>)>) -> Est<'a> {
    match expr {
        // `self` and iteration variables have a schema; accumulators (`@result`) are booleans.
        Expr::Ident(name) => match scope.iter().rev().find(|(n, _)| n == name) {
            Some((_, Some(schema))) => Est::of_schema(Some(schema), 1),
            _ => Est::value(Kind::Unknown, 1, 1),
        },
        Expr::Literal(LiteralValue::String(s)) => Est::value(Kind::Str, s.inner().len() as u64, 0),
        Expr::Literal(_) => Est::value(Kind::Scalar, 1, 0),
        Expr::List(list) => {
            let cost = list
                .elements
                .iter()
                .map(|e| estimate(&e.expr, scope).cost)
                .sum::<u64>();
            Est::value(Kind::List, list.elements.len() as u64, cost.saturating_add(10))
        }
        Expr::Select(select) => {
            let operand = estimate(&select.operand.expr, scope);
            let field = operand.schema.and_then(|s| {
                s.get("properties")
                    .and_then(|p| p.get(&select.field))
                    .or_else(|| s.get("additionalProperties").filter(|v| v.is_object()))
            });
            if select.test {
                // has(): no cost of its own in the API server's environment.
                return Est::value(Kind::Scalar, 1, operand.cost);
            }
            Est::of_schema(field, operand.cost.saturating_add(1))
        }
        Expr::Comprehension(comp) => {
            let range = estimate(&comp.iter_range.expr, scope);
            let element = range.schema.and_then(|s| {
                s.get("items")
                    .or_else(|| s.get("additionalProperties"))
                    .filter(|v| v.is_object())
            });
            let init = estimate(&comp.accu_init.expr, scope);
            scope.push((comp.accu_var.clone(), None));
            scope.push((comp.iter_var.clone(), element));
            let per_element = estimate(&comp.loop_cond.expr, scope)
                .cost
                .saturating_add(estimate(&comp.loop_step.expr, scope).cost);
            scope.pop();
            let result = estimate(&comp.result.expr, scope);
            scope.pop();
            let cost = range
                .cost
                .saturating_add(init.cost)
                .saturating_add(result.cost)
                .saturating_add(range.size.saturating_mul(per_element));
            Est::value(result.kind, result.size, cost)
        }
        Expr::Call(call) => {
            let target = call.target.as_ref().map(|t| estimate(&t.expr, scope));
            let args: Vec<Est<'a>> = call.args.iter().map(|a| estimate(&a.expr, scope)).collect();
            let inputs = target
                .iter()
                .chain(&args)
                .fold(0u64, |sum, e| sum.saturating_add(e.cost));
            let arg = |i: usize| &args[i];
            let (kind, size, own) = match call.func_name.as_str() {
                "_&&_" | "_||_" => (Kind::Scalar, 1, 0),
                "_?_:_" => {
                    // The condition, then the dearer branch.
                    let (a, b) = (arg(1), arg(2));
                    let cost = arg(0).cost.saturating_add(a.cost.max(b.cost));
                    return Est::value(a.kind, a.size.max(b.size), cost);
                }
                "!_" | "@not_strictly_false" | "_<_" | "_<=_" | "_>_" | "_>=_" | "size" => {
                    (Kind::Scalar, 1, 1)
                }
                "_==_" | "_!=_" => {
                    let (a, b) = (arg(0), arg(1));
                    let cost = if [a.kind, b.kind].iter().all(|k| *k == Kind::Scalar) {
                        1
                    } else {
                        factor(a.size.min(b.size), STRING_FACTOR)
                    };
                    (Kind::Scalar, 1, cost)
                }
                "_+_" => {
                    let (a, b) = (arg(0), arg(1));
                    let size = a.size.saturating_add(b.size);
                    match a.kind {
                        Kind::Str => (Kind::Str, size, factor(size, STRING_FACTOR)),
                        Kind::List => (Kind::List, size, 1),
                        kind => (kind, 1, 1),
                    }
                }
                "_[_]" => {
                    let list = arg(0);
                    let element = list.schema.and_then(|s| {
                        s.get("items")
                            .or_else(|| s.get("additionalProperties"))
                            .filter(|v| v.is_object())
                    });
                    let mut est = Est::of_schema(element, inputs.saturating_add(1));
                    if element.is_none() {
                        est.kind = Kind::Unknown;
                    }
                    return est;
                }
                "contains" => {
                    let target = target.as_ref().expect("contains has a target");
                    let cost =
                        factor(target.size, STRING_FACTOR).saturating_mul(factor(arg(0).size, STRING_FACTOR));
                    (Kind::Scalar, 1, cost)
                }
                "startsWith" | "endsWith" => (Kind::Scalar, 1, factor(arg(0).size, STRING_FACTOR)),
                "matches" => {
                    let target = target.as_ref().expect("matches has a target");
                    let cost = factor(target.size.saturating_add(1), STRING_FACTOR)
                        .saturating_mul(factor(arg(0).size, REGEX_FACTOR));
                    (Kind::Scalar, 1, cost)
                }
                // The result of these has no size the estimator can bound.
                "format" => {
                    let target = target.as_ref().expect("format has a target");
                    (Kind::Str, UNKNOWN, factor(target.size, STRING_FACTOR))
                }
                "string" => (Kind::Str, UNKNOWN, 1),
                other => panic!(
                    "the test's CEL cost estimate does not know `{other}`: add its cel-go cost to cel_cost.rs"
                ),
            };
            Est::value(kind, size, own.saturating_add(inputs))
        }
        other => panic!("the test's CEL cost estimate does not know {other:?}"),
    }
}
