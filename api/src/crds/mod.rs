//! Every CRD kmm-fleet ships, rendered from the Rust types (never hand-edited).
//!
//! `kmm-hub crds` and `kmm-spoke crds` print these; `just gen` writes them to `manifests/crds/`,
//! and a test in this crate fails when the committed files differ from what the code renders.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;

use crate::{ManagedClusterModule, Module, NodeModulesConfig};

pub mod admission;
pub mod limits;
pub mod upstream;

/// `crd` with `edit` applied to the root schema of each of its versions: the one walk the
/// schema adjustments (upstream shapes, limits) start from.
pub(crate) fn edit_schemas(
    mut crd: CustomResourceDefinition,
    edit: impl Fn(&mut JSONSchemaProps),
) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            edit(schema);
        }
    }
    crd
}

/// First line of every generated file.
pub const GENERATED_HEADER: &str =
    "# Generated from the Rust types in api/ by `just gen`; do not edit by hand.\n";

/// CRDs installed on the hub cluster.
pub fn hub_crds() -> Vec<CustomResourceDefinition> {
    vec![limits::bound_worker_input(limits::bound_regexps(
        upstream::shape(ManagedClusterModule::crd()),
    ))]
}

/// CRDs installed on each spoke cluster.
pub fn spoke_crds() -> Vec<CustomResourceDefinition> {
    vec![
        limits::bound_worker_input(limits::bound_regexps(upstream::shape(Module::crd()))),
        limits::bound_worker_input(upstream::shape(NodeModulesConfig::crd())),
    ]
}

/// File name of a CRD under `manifests/crds/`: `<plural>.<group>.yaml`, as kubectl names CRDs.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// The YAML document of a CRD, with the generated-file header.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::SerializeError> {
    Ok(format!("{GENERATED_HEADER}{}", serde_saphyr::to_string(crd)?))
}

/// `(file name, YAML)` of each CRD, as `--dir` writes them.
pub fn files(
    crds: &[CustomResourceDefinition],
) -> Result<Vec<(String, String)>, serde_saphyr::SerializeError> {
    crds.iter()
        .map(|crd| Ok((file_name(crd), to_yaml(crd)?)))
        .collect()
}

/// Several CRDs as one multi-document YAML stream (what `crds` prints to stdout).
pub fn to_yaml_stream(crds: &[CustomResourceDefinition]) -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::from(GENERATED_HEADER);
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
