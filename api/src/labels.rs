//! Label keys kmm-fleet writes or reads, and the Module name-length limit they impose.
//!
//! A label key is `prefix/name`, and the name part may hold at most 63 characters. Several keys
//! embed `<namespace>.<module name>` in that name part, so the longest key decides how long a
//! Module's name plus namespace may be. [`MAX_NAMESPACE_AND_NAME_LEN`] is derived from the key
//! shapes in [`NODE_LABEL_KEY_SHAPES`]; a test keeps the two in step.

/// Prefix of the labels kmm-spoke sets on nodes.
pub const NODE_LABEL_PREFIX: &str = "kmm.node.kubernetes.io";
/// Prefix of the internal ordered-upgrade and node-record labels.
pub const BETA_LABEL_PREFIX: &str = "beta.kmm.node.kubernetes.io";
/// Longest name part of a label key (Kubernetes limit).
pub const MAX_LABEL_NAME_LEN: usize = 63;
/// Longest label value (Kubernetes limit).
pub const MAX_LABEL_VALUE_LEN: usize = 63;

/// Label on every ManifestWork the hub writes, naming its ManagedClusterModule.
pub const MCM_NAME_LABEL: &str = "kmm.node.kubernetes.io/managedclustermodule.name";

/// Every node or node-record label key shape that embeds a Module's namespace and name, as
/// `(prefix, name part)` with `{ns}` and `{name}` placeholders.
pub const NODE_LABEL_KEY_SHAPES: &[(&str, &str)] = &[
    (NODE_LABEL_PREFIX, "{ns}.{name}.ready"),
    (NODE_LABEL_PREFIX, "{ns}.{name}.version.ready"),
    (NODE_LABEL_PREFIX, "{ns}.{name}.device-plugin-ready"),
    (NODE_LABEL_PREFIX, "{ns}.{name}.device-plugin-target"),
    (NODE_LABEL_PREFIX, "{ns}.{name}.dra-ready"),
    (NODE_LABEL_PREFIX, "version-module.{ns}.{name}"),
    (BETA_LABEL_PREFIX, "version-worker-pod.{ns}.{name}"),
    (BETA_LABEL_PREFIX, "version-schedule-pod.{ns}.{name}"),
    (BETA_LABEL_PREFIX, "{ns}.{name}.module-configured"),
    (BETA_LABEL_PREFIX, "{ns}.{name}.module-in-use"),
];

/// Longest `len(namespace) + len(name)` of a Module (or `len(spokeNamespace) + len(MCM name)`)
/// for which every key in [`NODE_LABEL_KEY_SHAPES`] stays within [`MAX_LABEL_NAME_LEN`].
///
/// Upstream's webhook uses the same number; its ordered-upgrade page says 39.
pub const MAX_NAMESPACE_AND_NAME_LEN: usize = 41;

/// [`MAX_NAMESPACE_AND_NAME_LEN`] computed from the key shapes.
pub fn derived_namespace_and_name_limit() -> usize {
    let longest_overhead = NODE_LABEL_KEY_SHAPES
        .iter()
        .map(|(_, shape)| shape.replace("{ns}", "").replace("{name}", "").len())
        .max()
        .unwrap_or(0);
    MAX_LABEL_NAME_LEN - longest_overhead
}

fn key(prefix: &str, shape: &str, namespace: &str, name: &str) -> String {
    format!(
        "{prefix}/{}",
        shape.replace("{ns}", namespace).replace("{name}", name)
    )
}

/// `kmm.node.kubernetes.io/<ns>.<name>.ready`: set on a node once the module is loaded.
pub fn module_ready(namespace: &str, name: &str) -> String {
    key(NODE_LABEL_PREFIX, "{ns}.{name}.ready", namespace, name)
}

/// `kmm.node.kubernetes.io/<ns>.<name>.version.ready`: the loaded version, for ordered upgrades.
pub fn module_version_ready(namespace: &str, name: &str) -> String {
    key(NODE_LABEL_PREFIX, "{ns}.{name}.version.ready", namespace, name)
}

/// `kmm.node.kubernetes.io/<ns>.<name>.device-plugin-ready`: the device plugin pod is ready.
pub fn device_plugin_ready(namespace: &str, name: &str) -> String {
    key(
        NODE_LABEL_PREFIX,
        "{ns}.{name}.device-plugin-ready",
        namespace,
        name,
    )
}

/// `kmm.node.kubernetes.io/<ns>.<name>.device-plugin-target`: the device plugin may run here.
pub fn device_plugin_target(namespace: &str, name: &str) -> String {
    key(
        NODE_LABEL_PREFIX,
        "{ns}.{name}.device-plugin-target",
        namespace,
        name,
    )
}

/// `kmm.node.kubernetes.io/version-module.<ns>.<name>`: set by the user to start an upgrade.
pub fn version_module(namespace: &str, name: &str) -> String {
    key(NODE_LABEL_PREFIX, "version-module.{ns}.{name}", namespace, name)
}

/// `beta.kmm.node.kubernetes.io/version-worker-pod.<ns>.<name>`: version the worker may load.
pub fn version_worker_pod(namespace: &str, name: &str) -> String {
    key(
        BETA_LABEL_PREFIX,
        "version-worker-pod.{ns}.{name}",
        namespace,
        name,
    )
}

/// `beta.kmm.node.kubernetes.io/version-schedule-pod.<ns>.<name>`: version the device plugin may run.
pub fn version_schedule_pod(namespace: &str, name: &str) -> String {
    key(
        BETA_LABEL_PREFIX,
        "version-schedule-pod.{ns}.{name}",
        namespace,
        name,
    )
}

/// Checks that a Module's namespace and name fit every label key; the error says by how much not.
pub fn check_namespace_and_name(namespace: &str, name: &str) -> Result<(), String> {
    let total = namespace.len() + name.len();
    if total <= MAX_NAMESPACE_AND_NAME_LEN {
        return Ok(());
    }
    Err(format!(
        "namespace and name together are {total} characters, {} too many: at most \
         {MAX_NAMESPACE_AND_NAME_LEN} fit in the node label keys kmm writes \
         (such as {NODE_LABEL_PREFIX}/<namespace>.<name>.device-plugin-target)",
        total - MAX_NAMESPACE_AND_NAME_LEN
    ))
}

/// Whether `value` is a valid label value (empty, or up to 63 alphanumerics, `-`, `_`, `.`,
/// starting and ending alphanumeric).
pub fn is_label_value(value: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    value.is_empty()
        || (value.len() <= MAX_LABEL_VALUE_LEN
            && value.starts_with(alnum)
            && value.ends_with(alnum)
            && value.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.')))
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[test]
    fn limit_is_derived_from_the_longest_key() {
        assert_eq!(derived_namespace_and_name_limit(), MAX_NAMESPACE_AND_NAME_LEN);
    }

    #[test]
    fn every_key_fits_at_the_limit_and_one_over_does_not() {
        let ns = "n".repeat(20);
        let at_limit = "m".repeat(MAX_NAMESPACE_AND_NAME_LEN - ns.len());
        let over = "m".repeat(MAX_NAMESPACE_AND_NAME_LEN - ns.len() + 1);
        let mut some_key_overflows = false;
        for (prefix, shape) in NODE_LABEL_KEY_SHAPES {
            let fits = key(prefix, shape, &ns, &at_limit);
            let name_part = fits.split_once('/').map(|(_, n)| n).unwrap_or_default();
            assert!(name_part.len() <= MAX_LABEL_NAME_LEN, "{fits} is too long");
            let overflow = key(prefix, shape, &ns, &over);
            some_key_overflows |= overflow.split_once('/').map(|(_, n)| n.len()).unwrap_or(0) > 63;
        }
        assert!(
            some_key_overflows,
            "one more character must break at least one key"
        );
        assert!(check_namespace_and_name(&ns, &at_limit).is_ok());
        let err = check_namespace_and_name(&ns, &over).unwrap_err();
        assert!(err.contains("42 characters, 1 too many"), "{err}");
    }

    #[test]
    fn key_builders_write_upstream_keys() {
        assert_eq!(module_ready("ns", "m"), "kmm.node.kubernetes.io/ns.m.ready");
        assert_eq!(
            module_version_ready("ns", "m"),
            "kmm.node.kubernetes.io/ns.m.version.ready"
        );
        assert_eq!(
            device_plugin_ready("ns", "m"),
            "kmm.node.kubernetes.io/ns.m.device-plugin-ready"
        );
        assert_eq!(
            device_plugin_target("ns", "m"),
            "kmm.node.kubernetes.io/ns.m.device-plugin-target"
        );
        assert_eq!(
            version_module("ns", "m"),
            "kmm.node.kubernetes.io/version-module.ns.m"
        );
        assert_eq!(
            version_worker_pod("ns", "m"),
            "beta.kmm.node.kubernetes.io/version-worker-pod.ns.m"
        );
        assert_eq!(
            version_schedule_pod("ns", "m"),
            "beta.kmm.node.kubernetes.io/version-schedule-pod.ns.m"
        );
    }

    #[rstest]
    #[case("", true)]
    #[case("v1.2.3", true)]
    #[case("1_0-rc.1", true)]
    #[case("-v1", false)]
    #[case("v1.", false)]
    #[case("v 1", false)]
    #[case(&"a".repeat(63), true)]
    #[case(&"a".repeat(64), false)]
    fn label_values(#[case] value: &str, #[case] ok: bool) {
        assert_eq!(is_label_value(value), ok, "{value:?}");
    }
}
