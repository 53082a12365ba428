//! Bounds the CRDs add to what the hub and the spoke would refuse later anyway, so it is refused
//! when written (issue 13):
//! - kernel mapping regexps: one may not be longer than the whole per-Module budget of the mapper
//!   ([`MAX_REGEXP_BYTES`]); the budget itself (count and total size across mappings) stays with
//!   the mapper and `kmm-hub lint`, since CEL has no sum;
//! - worker input: `modulesLoadingOrder` entries are module names (a newline would add a
//!   modprobe directive), `dirName` and `firmwarePath` plain paths without `.` or `..`
//!   components (the spoke's worker checks the same, in `kmm_spoke::worker::input`).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};

use crate::kernel::MAX_REGEXP_BYTES;

/// A kernel module name, as a loading-order entry must be.
pub const MODULE_NAME_PATTERN: &str = "^[A-Za-z0-9_][A-Za-z0-9_-]*$";

/// One path component other than `.` and `..`, of plain characters.
const COMPONENT: &str =
    r"(?:[A-Za-z0-9_+@-][A-Za-z0-9._+@-]*|\.[A-Za-z0-9_+@-][A-Za-z0-9._+@-]*|\.\.[A-Za-z0-9._+@-]+)";

/// A plain path: components of [`COMPONENT`] separated by `/`.
pub fn path_pattern() -> String {
    format!("^/*(?:{COMPONENT}/+)*{COMPONENT}?$")
}

/// `crd` with patterns on the worker input of every `modprobe`.
pub fn bound_worker_input(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    super::edit_schemas(crd, walk_modprobe)
}

fn walk_modprobe(schema: &mut JSONSchemaProps) {
    for (name, child) in schema.properties.iter_mut().flat_map(|p| p.iter_mut()) {
        if name == "modprobe"
            && let Some(props) = child.properties.as_mut()
        {
            for field in ["dirName", "firmwarePath"] {
                if let Some(path) = props.get_mut(field) {
                    path.pattern = Some(path_pattern());
                }
            }
            if let Some(JSONSchemaPropsOrArray::Schema(item)) = props
                .get_mut("modulesLoadingOrder")
                .and_then(|o| o.items.as_mut())
            {
                item.pattern = Some(MODULE_NAME_PATTERN.to_owned());
            }
        }
        walk_modprobe(child);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(item)) = schema.items.as_mut() {
        walk_modprobe(item);
    }
}

/// `crd` with `maxLength` on every `kernelMappings[].regexp`.
pub fn bound_regexps(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    super::edit_schemas(crd, walk)
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
