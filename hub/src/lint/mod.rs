//! `kmm-hub lint`: checks Module and ManagedClusterModule YAML before it reaches a cluster.
//!
//! Each document goes through three passes, the first two driven by the CRDs this project ships,
//! so lint and API server can never disagree:
//! 1. structural: the CRD's OpenAPI schema (types, required and unknown fields, sizes, patterns);
//! 2. CEL: the CRD's `x-kubernetes-validations` rules, evaluated client-side;
//! 3. semantic: what no schema can say (regexps compile, `${VARS}` exist, name lengths fit the
//!    node label keys, files to sign sit under `dirName`).
//!
//! Documents of other kinds are skipped, so a file holding a ConfigMap and a Module lints fine.

mod semantic;
mod structural;

use std::{fmt, sync::OnceLock};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kmm_api::{ManagedClusterModule, Module, crds};
use kube_cel::{CompiledSchema, Validator, compile_schema};
use serde_json::Value;
use thiserror::Error;

/// One thing wrong with a document, at a field path such as `spec.moduleLoader.container`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path from the object root; empty for the whole object.
    pub path: String,
    /// What is wrong, and where possible how to fix it.
    pub message: String,
}

impl Problem {
    fn new(path: &str, message: String) -> Self {
        Self {
            path: path.to_owned(),
            message,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The lint result of one YAML document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentReport {
    /// Position in the stream, from 1.
    pub index: usize,
    /// `Module ns/name`, `ManagedClusterModule name`, or the skipped kind.
    pub object: String,
    /// Whether the document is one lint knows (others are skipped).
    pub checked: bool,
    /// What is wrong; empty when valid.
    pub problems: Vec<Problem>,
}

/// A stream that is not YAML at all.
#[derive(Debug, Error)]
#[error("not valid YAML: {0}")]
pub struct ParseError(String);

/// The kinds lint checks: the CRD that defines each, its schema, and its compiled CEL rules.
struct Kinds {
    module: Kind,
    mcm: Kind,
}

struct Kind {
    crd: CustomResourceDefinition,
    schema: Value,
    rules: CompiledSchema,
}

impl Kind {
    fn new(crd: CustomResourceDefinition) -> Self {
        let schema = crd
            .spec
            .versions
            .first()
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null);
        let rules = compile_schema(&schema);
        Self { crd, schema, rules }
    }
}

/// Compiling the CEL rules of the large CRD schemas is the slow part of lint; do it once.
fn kinds() -> &'static Kinds {
    static KINDS: OnceLock<Kinds> = OnceLock::new();
    KINDS.get_or_init(|| Kinds {
        module: Kind::new(
            crds::spoke_crds()
                .into_iter()
                .find(|c| c.spec.names.kind == "Module")
                .unwrap_or_default(),
        ),
        mcm: Kind::new(crds::hub_crds().into_iter().next().unwrap_or_default()),
    })
}

/// Lints a YAML stream of one or more documents.
pub fn lint_str(yaml: &str) -> Result<Vec<DocumentReport>, ParseError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).map_err(|e| ParseError(e.to_string()))?;
    let kinds = kinds();
    let validator = Validator::new();
    Ok(docs
        .iter()
        .enumerate()
        .filter(|(_, doc)| !doc.is_null())
        .map(|(i, doc)| kinds.lint_document(&validator, i + 1, doc))
        .collect())
}

impl Kinds {
    fn lint_document(&self, validator: &Validator, index: usize, doc: &Value) -> DocumentReport {
        let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("<no name>");
        let namespace = doc.pointer("/metadata/namespace").and_then(Value::as_str);
        let Kind { crd, schema, rules } = match kind {
            "Module" => &self.module,
            "ManagedClusterModule" => &self.mcm,
            _ => {
                return DocumentReport {
                    index,
                    object: if kind.is_empty() {
                        "a document without kind".into()
                    } else {
                        kind.to_owned()
                    },
                    checked: false,
                    problems: Vec::new(),
                };
            }
        };
        let object = match namespace {
            Some(ns) => format!("{kind} {ns}/{name}"),
            None => format!("{kind} {name}"),
        };
        let mut problems = Vec::new();
        let expected = format!(
            "{}/{}",
            crd.spec.group,
            crd.spec.versions.first().map(|v| v.name.as_str()).unwrap_or("")
        );
        if api_version != expected {
            problems.push(Problem::new(
                "apiVersion",
                format!("{kind} needs apiVersion {expected}, not {api_version:?}"),
            ));
        }
        problems.extend(semantic::metadata(doc, kind));
        let before_schema = problems.len();
        structural::check(schema, doc, "", &mut problems);
        problems[before_schema..]
            .iter_mut()
            .for_each(explain_stricter_rule);
        if problems.len() > before_schema {
            return DocumentReport {
                index,
                object,
                checked: true,
                problems,
            };
        }
        if let Err(errors) = validator.validate_compiled(rules, doc, None) {
            problems.extend(
                errors
                    .iter()
                    .map(|e| Problem::new(&e.field_path, e.message.clone())),
            );
        }
        problems.extend(match kind {
            "Module" => serde_json::from_value::<Module>(doc.clone())
                .map(|m| semantic::module(&m))
                .unwrap_or_else(|e| vec![Problem::new("", format!("cannot read the Module: {e}"))]),
            _ => serde_json::from_value::<ManagedClusterModule>(doc.clone())
                .map(|m| semantic::managed_cluster_module(&m))
                .unwrap_or_else(|e| {
                    vec![Problem::new(
                        "",
                        format!("cannot read the ManagedClusterModule: {e}"),
                    )]
                }),
        });
        DocumentReport {
            index,
            object,
            checked: true,
            problems,
        }
    }
}

/// Upstream KMM's schema accepts what a deliberately stricter rule of ours refuses: say so, and why.
fn explain_stricter_rule(problem: &mut Problem) {
    let type_error = ["must be a ", "must be an ", "unknown field"]
        .iter()
        .any(|start| problem.message.starts_with(start));
    if let Some(stricter) = kmm_api::crds::upstream::stricter_at(&problem.path)
        && !type_error
    {
        problem.message.push_str(&format!(
            " (upstream KMM accepts this; kmm-fleet refuses it on purpose: {})",
            stricter.why
        ));
    }
}

#[cfg(test)]
mod tests;
