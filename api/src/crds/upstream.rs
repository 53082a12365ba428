//! Where our CRD schemas meet upstream KMM's v1beta1 schemas, and where they deliberately do not.
//!
//! The Rust types render schemas from k8s-openapi, which differs from what controller-gen
//! renders for upstream's Go types in two ways that matter to users, both fixed by [`shape`]:
//! - An object reference's `name` (`imageRepoSecret`, `dockerfileConfigMap`, sign secrets,
//!   volume and env references) is required; upstream (and Kubernetes) default it to `""`.
//! - A free-form object (a DRA driver's `opaque.parameters`, `fieldsV1`) has no
//!   `x-kubernetes-preserve-unknown-fields`, so the API server would prune it to `{}`.
//! - A quantity (`resources.limits`, `emptyDir.sizeLimit`, `divisor`) has no pattern, so a Module
//!   the hub accepts could carry one an upstream spoke refuses.
//!
//! Every rule stricter than upstream is listed in [`STRICTER_THAN_UPSTREAM`] with its reason:
//! docs/api.md lists them, `kmm-hub lint` adds the reason to a problem it reports there, and a
//! test compares the rendered schemas with upstream's published ones field by field.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSON, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};

/// How Kubernetes describes a reference whose `name` it defaults to `""`.
const DEFAULTED_NAME: &str = "Name of the referent. This field is effectively required, but due to backwards compatibility is allowed to be empty";

/// Kubernetes' grammar of a resource quantity, as upstream's schemas check it.
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// A rule of ours that refuses something upstream's schema accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stricter {
    /// The field, as a path below `spec` with `[]` for list items (`moduleLoader.container.version`);
    /// it matches in a Module, in an MCM's `moduleSpec` and in a NodeModulesConfig alike.
    pub field: &'static str,
    /// The schema keywords that are stricter (`maxLength`, `pattern`, `enum`, `required`, ...).
    pub keywords: &'static [&'static str],
    /// Why the rule is worth the difference.
    pub why: &'static str,
}

/// Every deliberate difference that refuses YAML upstream accepts.
pub const STRICTER_THAN_UPSTREAM: &[Stricter] = &[
    Stricter {
        field: "",
        keywords: &["required"],
        why: "an object without spec has nothing to do; upstream accepts it and its controller fails on it",
    },
    Stricter {
        field: "moduleSpec",
        keywords: &["required"],
        why: "a ManagedClusterModule without moduleSpec has no Module to ship",
    },
    Stricter {
        field: "imagePullPolicy",
        keywords: &["enum"],
        why: "the pod API accepts only Always, IfNotPresent and Never, so any other value would fail \
              every worker and device-plugin pod on the spoke instead of being refused here",
    },
    Stricter {
        field: "moduleLoader.container.version",
        keywords: &["maxLength", "pattern"],
        why: "the version becomes the value of the kmm.node.kubernetes.io/version-module label on \
              nodes, so it must be a label value (63 characters at most, alphanumerics, '-', '_', '.')",
    },
    Stricter {
        field: "containerImage",
        keywords: &["maxLength"],
        why: "a CEL rule checks each image once per kernel mapping and the API server refuses rules whose \
              cost is unbounded; 8192 characters is far more than any image reference (about 520)",
    },
    Stricter {
        field: "modprobe.moduleName",
        keywords: &["maxLength"],
        why: "bounded for the CEL rule that compares it with modulesLoadingOrder; a module file name \
              is at most 255 bytes and the kernel allows 55 characters",
    },
    Stricter {
        field: "kernelMappings",
        keywords: &["maxItems"],
        why: "CEL rules iterate over the mappings, so the list needs a bound; 500 is far more kernels \
              than a cluster runs",
    },
    Stricter {
        field: "inTreeModulesToRemove",
        keywords: &["maxItems"],
        why: "CEL rules iterate over the list, so it needs a bound; 100 in-tree modules is far more than \
              any driver replaces",
    },
    Stricter {
        field: "modules",
        keywords: &["maxItems"],
        why: "a NodeModulesConfig is written by the spoke, one entry per Module on the node; CEL rules \
              iterate over it, so it needs a bound",
    },
    Stricter {
        field: "spokeNamespace",
        keywords: &["minLength", "maxLength", "pattern"],
        why: "the Module is created in this namespace on every spoke, so it must be a namespace name \
              (a DNS label); upstream accepts any string and fails when the ManifestWork is applied",
    },
    Stricter {
        field: "kernelMappings[].regexp",
        keywords: &["maxLength"],
        why: "the hub and the spoke compile at most 16 KiB of regexps per Module (count and total are \
              checked there and by lint), so a longer pattern could never work; refused when written",
    },
    Stricter {
        field: "modprobe.modulesLoadingOrder[]",
        keywords: &["pattern"],
        why: "each entry becomes a line of the worker's modprobe configuration, so it must be a module \
              name; a newline would add any directive (an install command) to the node's modprobe",
    },
    Stricter {
        field: "modprobe.dirName",
        keywords: &["pattern"],
        why: "copied from the image into the worker's shared directory; a '..' component or shell text \
              would reach outside it, and the worker refuses such a path anyway",
    },
    Stricter {
        field: "modprobe.firmwarePath",
        keywords: &["pattern"],
        why: "copied from the image to the host's firmware directory; a '..' component or shell text \
              would reach outside the image's tree, and the worker refuses such a path anyway",
    },
    Stricter {
        field: "imageRebuildTriggerGeneration",
        keywords: &["format"],
        why: "int64, the Go field's size; no value upstream stores is refused",
    },
];

/// The deliberate difference that explains a problem at `path` (a lint path such as
/// `spec.moduleSpec.moduleLoader.container.kernelMappings[3].containerImage`), if any.
pub fn stricter_at(path: &str) -> Option<&'static Stricter> {
    let field = below_spec(path);
    STRICTER_THAN_UPSTREAM.iter().find(|s| {
        if s.field.is_empty() {
            return path == "spec";
        }
        field == s.field || field.ends_with(&format!(".{}", s.field))
    })
}

/// `path` below `spec` (and `spec.moduleSpec`), list indices as `[]`.
fn below_spec(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[]");
            }
            ']' => in_index = false,
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    for prefix in ["spec.moduleSpec.", "spec."] {
        if let Some(rest) = out.strip_prefix(prefix) {
            return rest.to_owned();
        }
    }
    out
}

/// `crd` with the schema shapes upstream has and k8s-openapi's types do not render.
pub fn shape(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    super::edit_schemas(crd, walk)
}

fn walk(schema: &mut JSONSchemaProps) {
    default_reference_name(schema);
    let free_form = schema.type_.as_deref() == Some("object")
        && schema.properties.as_ref().is_none_or(|p| p.is_empty())
        && schema.additional_properties.is_none()
        && schema.x_kubernetes_preserve_unknown_fields.is_none();
    if free_form {
        schema.x_kubernetes_preserve_unknown_fields = Some(true);
    }
    // The only int-or-string fields of these types are quantities (a test keeps it so).
    if schema.x_kubernetes_int_or_string == Some(true) && schema.pattern.is_none() {
        schema.pattern = Some(QUANTITY_PATTERN.to_owned());
    }
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        walk(child);
    }
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(item)) => walk(item),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => items.iter_mut().for_each(walk),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(value)) = schema.additional_properties.as_mut() {
        walk(value);
    }
}

/// A reference whose `name` Kubernetes defaults to `""`: optional, with that default.
fn default_reference_name(schema: &mut JSONSchemaProps) {
    let Some(name) = schema.properties.as_mut().and_then(|p| p.get_mut("name")) else {
        return;
    };
    if !name
        .description
        .as_deref()
        .is_some_and(|d| d.starts_with(DEFAULTED_NAME))
    {
        return;
    }
    name.default = Some(JSON(serde_json::Value::String(String::new())));
    if let Some(required) = schema.required.as_mut() {
        required.retain(|r| r != "name");
        if required.is_empty() {
            schema.required = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_find_the_difference_that_explains_them() {
        let why = |path: &str| stricter_at(path).map(|s| s.field);
        assert_eq!(
            why("spec.moduleLoader.container.version"),
            Some("moduleLoader.container.version")
        );
        assert_eq!(
            why("spec.moduleSpec.moduleLoader.container.kernelMappings[3].containerImage"),
            Some("containerImage")
        );
        assert_eq!(
            why("spec.moduleSpec.devicePlugin.container.imagePullPolicy"),
            Some("imagePullPolicy")
        );
        assert_eq!(
            why("spec.moduleLoader.container.kernelMappings"),
            Some("kernelMappings")
        );
        assert_eq!(why("spec.spokeNamespace"), Some("spokeNamespace"));
        assert_eq!(why("spec"), Some(""));
        assert_eq!(why("spec.moduleLoader.container.modprobe.parameters[0]"), None);
        assert_eq!(why("spec.selector"), None);
    }
}
