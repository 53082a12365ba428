//! Checks no schema can express: they need the kernel-mapping engine, the template rules or the
//! object's name and namespace together. Upstream KMM made most of them in its admission webhook.

use k8s_openapi::api::core::v1::{Toleration, Volume};
use kmm_api::{
    ManagedClusterModule, Module, ModuleSpec,
    kernel::{IMAGE_VARIABLES, KernelMapper, MappingError, SIGN_VARIABLES, merge, template},
    labels,
    module::{ModuleLoaderContainerSpec, Sign},
};
use serde_json::Value;

use super::Problem;

/// Host paths a device plugin or DRA driver may mount (upstream's webhook list).
const ALLOWED_HOST_PATHS: &[&str] = &["/dev", "/sys", "/var", "/opt", "/run"];

/// `metadata.name` present and a DNS subdomain; no namespace on cluster-scoped kinds.
pub fn metadata(doc: &Value, kind: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    match doc.pointer("/metadata/name").and_then(Value::as_str) {
        None | Some("") => problems.push(Problem::new("metadata.name", "required field is missing".into())),
        Some(name) if !is_dns_subdomain(name) => problems.push(Problem::new(
            "metadata.name",
            format!(
                "{name:?} must be a lowercase DNS subdomain (a-z, 0-9, '-', '.'; at most 253 characters)"
            ),
        )),
        Some(_) => {}
    }
    if kind == "ManagedClusterModule" && doc.pointer("/metadata/namespace").is_some() {
        problems.push(Problem::new(
            "metadata.namespace",
            "ManagedClusterModule is cluster-scoped; remove the namespace (spec.spokeNamespace says where the Module goes)"
                .into(),
        ));
    }
    problems
}

/// Module-specific checks: its name and namespace must fit the node label keys.
pub fn module(module: &Module) -> Vec<Problem> {
    let name = module.metadata.name.as_deref().unwrap_or_default();
    let (namespace, assumed) = match module.metadata.namespace.as_deref() {
        Some(ns) => (ns, ""),
        None => ("default", " (no namespace given; kubectl would use \"default\")"),
    };
    let mut problems = Vec::new();
    if let Err(e) = labels::check_namespace_and_name(namespace, name) {
        problems.push(Problem::new("metadata.name", format!("{e}{assumed}")));
    }
    problems.extend(spec(&module.spec, name, namespace, "spec"));
    problems
}

/// ManagedClusterModule checks: the embedded Module spec, as it will be rendered for the spokes.
pub fn managed_cluster_module(mcm: &ManagedClusterModule) -> Vec<Problem> {
    let name = mcm.metadata.name.as_deref().unwrap_or_default();
    let mut problems = spec(
        &mcm.spec.module_spec,
        name,
        &mcm.spec.spoke_namespace,
        "spec.moduleSpec",
    );
    // The same check the controller makes before it moves any cluster.
    if let Err(why) = crate::rollout::strategy::parse(mcm.spec.rollout_strategy.as_ref()) {
        problems.push(Problem::new("spec.rolloutStrategy", why));
    }
    problems
}

fn spec(spec: &ModuleSpec, name: &str, namespace: &str, at: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (i, t) in spec.tolerations.iter().flatten().enumerate() {
        if let Some(message) = toleration_problem(t) {
            problems.push(Problem::new(&format!("{at}.tolerations[{i}]"), message));
        }
    }
    if let Some(plugin) = &spec.device_plugin {
        host_paths(
            plugin.volumes.as_deref(),
            &format!("{at}.devicePlugin.volumes"),
            &mut problems,
        );
    }
    if let Some(dra) = &spec.dra {
        host_paths(
            dra.volumes.as_deref(),
            &format!("{at}.dra.volumes"),
            &mut problems,
        );
    }
    if let Some(loader) = &spec.module_loader {
        container(
            &loader.container,
            &format!("{at}.moduleLoader.container"),
            &mut problems,
        );
        match KernelMapper::new(spec, name, namespace) {
            Err(MappingError::InvalidRegexp { index, reason, .. }) => problems.push(Problem::new(
                &format!("{at}.moduleLoader.container.kernelMappings[{index}].regexp"),
                format!("not a valid regular expression: {reason}"),
            )),
            Err(e @ MappingError::RegexpBudget { .. }) => problems.push(Problem::new(
                &format!("{at}.moduleLoader.container.kernelMappings"),
                e.to_string(),
            )),
            _ => {}
        }
    }
    problems
}

fn container(c: &ModuleLoaderContainerSpec, at: &str, problems: &mut Vec<Problem>) {
    if let Some(image) = &c.container_image {
        variables(image, IMAGE_VARIABLES, &format!("{at}.containerImage"), problems);
    }
    if let Some(sign) = &c.sign {
        sign_fields(sign, &c.modprobe.dir_name, &format!("{at}.sign"), problems);
    }
    for (i, m) in c.kernel_mappings.iter().enumerate() {
        let m_at = format!("{at}.kernelMappings[{i}]");
        if let Some(image) = &m.container_image {
            variables(
                image,
                IMAGE_VARIABLES,
                &format!("{m_at}.containerImage"),
                problems,
            );
        }
        if let Some(sign) = &m.sign {
            sign_fields(sign, &c.modprobe.dir_name, &format!("{m_at}.sign"), problems);
        }
        if let Some(sign) = merge::sign(c.sign.as_ref(), m.sign.as_ref()) {
            files_to_sign(&sign, &m_at, problems);
        }
    }
}

fn sign_fields(sign: &Sign, dir_name: &str, at: &str, problems: &mut Vec<Problem>) {
    files_under_dir(sign, dir_name, at, problems);
    if let Some(image) = &sign.unsigned_image {
        variables(image, SIGN_VARIABLES, &format!("{at}.unsignedImage"), problems);
    }
    for (i, file) in sign.files_to_sign.iter().flatten().enumerate() {
        variables(file, SIGN_VARIABLES, &format!("{at}.filesToSign[{i}]"), problems);
    }
}

/// A mapping that signs has files to sign (container and mapping lists together).
fn files_to_sign(sign: &Sign, at: &str, problems: &mut Vec<Problem>) {
    if sign.files_to_sign.as_deref().unwrap_or_default().is_empty() {
        problems.push(Problem::new(
            &format!("{at}.sign.filesToSign"),
            "sign needs filesToSign: the paths of the .ko files to sign, under modprobe.dirName".into(),
        ));
    }
}

/// Files to sign must sit under dirName: only that directory of the image is signed and shipped.
fn files_under_dir(sign: &Sign, dir_name: &str, at: &str, problems: &mut Vec<Problem>) {
    let prefix = format!("{}/", dir_name.trim_end_matches('/'));
    for (i, file) in sign.files_to_sign.iter().flatten().enumerate() {
        if !file.starts_with(&prefix) {
            problems.push(Problem::new(
                &format!("{at}.filesToSign[{i}]"),
                format!(
                    "{file:?} is not under modprobe.dirName {dir_name:?}; only files under it are signed"
                ),
            ));
        }
    }
}

fn variables(template: &str, offered: &[&str], at: &str, problems: &mut Vec<Problem>) {
    match template::referenced(template) {
        Err(e) => problems.push(Problem::new(at, e.to_string())),
        Ok(names) => {
            for name in names.iter().filter(|n| !offered.contains(&n.as_str())) {
                let hint = if name.starts_with("MOD_") && !offered.contains(&"MOD_NAME") {
                    "; MOD_NAME and MOD_NAMESPACE are only substituted in containerImage".to_owned()
                } else {
                    format!("; known: {}", offered.join(", "))
                };
                problems.push(Problem::new(at, format!("unknown variable ${{{name}}}{hint}")));
            }
        }
    }
}

fn toleration_problem(t: &Toleration) -> Option<String> {
    let operator = t.operator.as_deref().unwrap_or("Equal");
    let key = t.key.as_deref().unwrap_or_default();
    let value = t.value.as_deref().unwrap_or_default();
    if !matches!(operator, "Equal" | "Exists") {
        return Some(format!("operator {operator:?} must be Equal or Exists"));
    }
    if key.is_empty() && operator != "Exists" {
        return Some("an empty key matches every taint and needs operator Exists".into());
    }
    if operator == "Exists" && !value.is_empty() {
        return Some(format!("operator Exists takes no value (got {value:?})"));
    }
    if operator == "Equal" && !labels::is_label_value(value) {
        return Some(format!("value {value:?} is not a valid label value"));
    }
    if let Some(effect) = t.effect.as_deref().filter(|e| !e.is_empty())
        && !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute")
    {
        return Some(format!(
            "effect {effect:?} must be NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    if t.toleration_seconds.is_some() && t.effect.as_deref() != Some("NoExecute") {
        return Some("tolerationSeconds only applies to effect NoExecute".into());
    }
    None
}

fn host_paths(volumes: Option<&[Volume]>, at: &str, problems: &mut Vec<Problem>) {
    for (i, v) in volumes.unwrap_or_default().iter().enumerate() {
        let Some(path) = v.host_path.as_ref().map(|h| h.path.as_str()) else {
            continue;
        };
        let clean = clean_path(path);
        let allowed = ALLOWED_HOST_PATHS
            .iter()
            .any(|a| clean == *a || clean.strip_prefix(a).is_some_and(|rest| rest.starts_with('/')));
        if !allowed {
            problems.push(Problem::new(
                &format!("{at}[{i}].hostPath.path"),
                format!(
                    "{path:?} is outside the host paths a plugin may mount ({})",
                    ALLOWED_HOST_PATHS.join(", ")
                ),
            ));
        }
    }
}

/// Lexically cleans a path: no `.`/empty segments, `..` resolved.
fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}
