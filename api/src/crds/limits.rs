//! Bounds the CRDs put on kernel mapping regexps, so an oversized pattern is refused when it is
//! written rather than when the hub or the spoke compiles it. One regexp may not be longer than
//! the whole per-Module budget of the mapper ([`MAX_REGEXP_BYTES`]); the budget itself (count and
//! total size across mappings) stays with the mapper and `kmm-hub lint`, since CEL has no sum.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};

use crate::kernel::MAX_REGEXP_BYTES;

/// `crd` with `maxLength` on every `kernelMappings[].regexp`.
pub fn bound_regexps(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            walk(schema);
        }
    }
    crd
}

fn walk(schema: &mut JSONSchemaProps) {
    for (name, child) in schema.properties.iter_mut().flat_map(|p| p.iter_mut()) {
        if name == "kernelMappings"
            && let Some(JSONSchemaPropsOrArray::Schema(item)) = child.items.as_mut()
            && let Some(regexp) = item.properties.as_mut().and_then(|p| p.get_mut("regexp"))
        {
            regexp.max_length = Some(MAX_REGEXP_BYTES as i64);
        }
        walk(child);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(item)) = schema.items.as_mut() {
        walk(item);
    }
}
