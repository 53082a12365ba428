//! How container-level defaults and a kernel mapping combine (upstream KMM's rules).

use crate::module::{Build, KernelMapping, ModuleLoaderContainerSpec, Sign};

/// Build for a mapping: either one alone, or the container's with the mapping's Dockerfile,
/// build args merged by name (same name replaced in place, new ones appended sorted by name) and
/// secrets appended. Selector, base-image TLS and Kaniko settings come from the container only.
pub fn build(container: Option<&Build>, mapping: Option<&Build>) -> Option<Build> {
    let (container, mapping) = match (container, mapping) {
        (None, None) => return None,
        (Some(only), None) | (None, Some(only)) => return Some(only.clone()),
        (Some(c), Some(m)) => (c, m),
    };
    let mut merged = container.clone();
    if !mapping.dockerfile_config_map.name.is_empty() {
        merged.dockerfile_config_map = mapping.dockerfile_config_map.clone();
    }
    if let Some(mapping_args) = &mapping.build_args {
        let mut args = merged.build_args.take().unwrap_or_default();
        let mut extra = Vec::new();
        for arg in mapping_args {
            match args.iter_mut().find(|a| a.name == arg.name) {
                Some(existing) => existing.value.clone_from(&arg.value),
                None => extra.push(arg.clone()),
            }
        }
        extra.sort_by(|a, b| a.name.cmp(&b.name));
        args.extend(extra);
        merged.build_args = Some(args);
    }
    if let Some(mapping_secrets) = &mapping.secrets {
        merged
            .secrets
            .get_or_insert_with(Vec::new)
            .extend(mapping_secrets.iter().cloned());
    }
    Some(merged)
}

/// Sign for a mapping: either one alone, or the container's with the mapping's unsigned image,
/// key and cert where set, and the mapping's files appended to the container's.
pub fn sign(container: Option<&Sign>, mapping: Option<&Sign>) -> Option<Sign> {
    let (container, mapping) = match (container, mapping) {
        (None, None) => return None,
        (Some(only), None) | (None, Some(only)) => return Some(only.clone()),
        (Some(c), Some(m)) => (c, m),
    };
    let mut merged = container.clone();
    if mapping.unsigned_image.as_deref().is_some_and(|i| !i.is_empty()) {
        merged.unsigned_image.clone_from(&mapping.unsigned_image);
    }
    if !mapping.key_secret.name.is_empty() {
        merged.key_secret = mapping.key_secret.clone();
    }
    if !mapping.cert_secret.name.is_empty() {
        merged.cert_secret = mapping.cert_secret.clone();
    }
    if let Some(files) = &mapping.files_to_sign {
        merged
            .files_to_sign
            .get_or_insert_with(Vec::new)
            .extend(files.iter().cloned());
    }
    Some(merged)
}

/// In-tree modules to unload: the container list, replaced by the mapping's list when it has one;
/// the deprecated single field (mapping first, then container) wins over both.
pub fn in_tree_modules_to_remove(
    container: &ModuleLoaderContainerSpec,
    mapping: &KernelMapping,
) -> Vec<String> {
    let single = mapping
        .in_tree_module_to_remove
        .as_deref()
        .filter(|s| !s.is_empty())
        .or(container
            .in_tree_module_to_remove
            .as_deref()
            .filter(|s| !s.is_empty()));
    if let Some(single) = single {
        return vec![single.to_owned()];
    }
    mapping
        .in_tree_modules_to_remove
        .as_ref()
        .or(container.in_tree_modules_to_remove.as_ref())
        .cloned()
        .unwrap_or_default()
}
