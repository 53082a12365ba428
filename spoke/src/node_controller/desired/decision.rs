//! Per node and Module: load, unload or leave the record entry, and the worker's service
//! account, from upstream's rules (reference 4.2, step 8-9).

/// What to do with a node's NodeModulesConfig entry for one Module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeDecision {
    /// Add or update the entry (the worker loads the module).
    Load,
    /// Remove the entry (the worker unloads what it loaded).
    Unload,
    /// Leave the entry as it is (an ordered upgrade is moving this node along).
    Leave,
}

/// The decision for one node.
///
/// - `targeted`: the node matches the Module's selector and tolerates its taints;
/// - `has_mapping`: a kernel mapping matches the node's kernel;
/// - `in_nmc`: the node's record already holds an entry for this Module;
/// - `version`: `moduleLoader.container.version`;
/// - `worker_label`: the node's `version-worker-pod` label for this Module.
pub fn node_decision(
    targeted: bool,
    has_mapping: bool,
    in_nmc: bool,
    version: Option<&str>,
    worker_label: Option<&str>,
) -> NodeDecision {
    let remove_if_present = if in_nmc {
        NodeDecision::Unload
    } else {
        NodeDecision::Leave
    };
    if !targeted || !has_mapping {
        return remove_if_present;
    }
    match (version, worker_label) {
        (None, _) => NodeDecision::Load,
        (Some(v), Some(w)) if v == w => NodeDecision::Load,
        (Some(_), Some(_)) => NodeDecision::Leave,
        (Some(_), None) => remove_if_present,
    }
}

/// Service account of the worker pods: the Module's own when set; in the operator's namespace the
/// operator's module-loader account; anywhere else the namespace's `default`.
pub fn worker_service_account<'a>(
    module_loader_sa: Option<&'a str>,
    module_namespace: &str,
    operator_namespace: &str,
    operator_module_loader_sa: &'a str,
) -> &'a str {
    match module_loader_sa.filter(|sa| !sa.is_empty()) {
        Some(sa) => sa,
        None if module_namespace == operator_namespace => operator_module_loader_sa,
        None => "default",
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::{NodeDecision::*, *};

    #[rstest]
    #[case::untargeted_node_in_record(false, true, true, None, None, Unload)]
    #[case::untargeted_node_not_in_record(false, true, false, None, None, Leave)]
    #[case::kernel_without_mapping_in_record(true, false, true, None, None, Unload)]
    #[case::kernel_without_mapping_not_in_record(true, false, false, None, None, Leave)]
    #[case::unversioned(true, true, false, None, Some("v9"), Load)]
    #[case::version_matches_worker_label(true, true, true, Some("v2"), Some("v2"), Load)]
    #[case::upgrade_in_progress(true, true, true, Some("v2"), Some("v1"), Leave)]
    #[case::worker_label_removed(true, true, true, Some("v2"), None, Unload)]
    #[case::worker_label_not_yet_set(true, true, false, Some("v2"), None, Leave)]
    fn decides_per_node(
        #[case] targeted: bool,
        #[case] has_mapping: bool,
        #[case] in_nmc: bool,
        #[case] version: Option<&str>,
        #[case] worker_label: Option<&str>,
        #[case] want: NodeDecision,
    ) {
        assert_eq!(
            node_decision(targeted, has_mapping, in_nmc, version, worker_label),
            want
        );
    }

    #[rstest]
    #[case(Some("my-sa"), "kmm-operator", "my-sa")]
    #[case(None, "kmm-operator", "kmm-operator-module-loader")]
    #[case(Some(""), "kmm-operator", "kmm-operator-module-loader")]
    #[case(None, "drivers", "default")]
    fn picks_the_worker_service_account(
        #[case] explicit: Option<&str>,
        #[case] namespace: &str,
        #[case] want: &str,
    ) {
        assert_eq!(
            worker_service_account(explicit, namespace, "kmm-operator", "kmm-operator-module-loader"),
            want
        );
    }
}
