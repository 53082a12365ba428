//! Every Kubernetes API call `kmm-spoke run` makes, as data, and the RBAC rendered from it.
//!
//! `kmm-spoke rbac` prints the ClusterRole and its binding, plus the ClusterRole that lets OCM's
//! work agent apply Modules; `just gen` writes them to `manifests/spoke/rbac.yaml`, and a test
//! fails when that file differs from [`render`]. Another test runs the real `kmm-spoke run`
//! as the spoke's ServiceAccount, records its requests and checks that every one is granted
//! here. When the code starts calling something new, add a row below, with the reason.
//!
//! Everything is cluster-wide: Modules, their worker pods, device-plugin DaemonSets and Events
//! live in namespaces chosen by the Module authors, and the other kinds are cluster-scoped.
//! Worker pods (`kmm-spoke worker`) need no API access at all.

use std::fmt::Write as _;

/// One group of API calls: what and why.
#[derive(Clone, Copy, Debug)]
pub struct Access {
    /// API group (`""` is the core group).
    pub group: &'static str,
    /// Resource plural, or `plural/subresource`.
    pub resource: &'static str,
    /// RBAC verbs, as the apiserver authorizes the calls.
    pub verbs: &'static [&'static str],
    /// One line: which code makes the call.
    pub reason: &'static str,
    /// The objects the verbs are limited to (`resourceNames`).
    pub names: Names,
}

/// Which objects of a resource a rule covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Names {
    /// Every object.
    Any,
    /// Only the kernel-versions and next-kernel ClusterClaims
    /// ([`crate::kernel_claim::kernel_claim_names`]).
    KernelClaims,
}

impl Names {
    /// The `resourceNames` of the rule (empty: every object).
    pub fn list(self) -> Vec<String> {
        match self {
            Names::Any => Vec::new(),
            Names::KernelClaims => crate::kernel_claim::kernel_claim_names(),
        }
    }
}

/// Default name of the spoke's ServiceAccount and ClusterRole.
pub const NAME: &str = "kmm-spoke";

/// Default namespace of the spoke (`OPERATOR_NAMESPACE`).
pub const NAMESPACE: &str = "kmm-operator-system";

/// Name of the ClusterRole that OCM's klusterlet folds into its work agent's permissions.
pub const WORK_AGENT_ROLE: &str = "open-cluster-management:kmm-fleet:work-agent";

/// The label that makes the klusterlet aggregate a ClusterRole into the work agent's role
/// (OCM 0.12 and later).
pub const WORK_AGENT_AGGREGATION_LABEL: &str = "open-cluster-management.io/aggregate-to-work";

/// What `kmm-spoke run` calls.
pub const ACCESS: &[Access] = &[
    Access {
        group: "kmm.sigs.x-k8s.io",
        resource: "modules",
        verbs: &["list", "watch", "patch"],
        reason: "the Module controller lists and watches Modules and adds or removes its finalizer (server-side apply, JSON patch)",
        names: Names::Any,
    },
    Access {
        group: "kmm.sigs.x-k8s.io",
        resource: "modules/status",
        verbs: &["patch"],
        reason: "module_controller writes each Module's status (server-side apply)",
        names: Names::Any,
    },
    Access {
        group: "kmm.sigs.x-k8s.io",
        resource: "nodemodulesconfigs",
        verbs: &["get", "list", "watch", "create", "patch"],
        reason: "one NodeModulesConfig per node: read by both controllers, written with server-side apply (a create when new)",
        names: Names::Any,
    },
    Access {
        group: "kmm.sigs.x-k8s.io",
        resource: "nodemodulesconfigs/status",
        verbs: &["patch"],
        reason: "node_controller records what each node has loaded (server-side apply)",
        names: Names::Any,
    },
    Access {
        group: "",
        resource: "nodes",
        verbs: &["list", "watch", "patch"],
        reason: "the node controller and the kernel claim writer watch nodes; node labels are set with server-side apply",
        names: Names::Any,
    },
    Access {
        group: "",
        resource: "pods",
        verbs: &["list", "watch", "create", "delete"],
        reason: "worker pods that load and unload modules, in each Module's namespace",
        names: Names::Any,
    },
    Access {
        group: "apps",
        resource: "daemonsets",
        verbs: &["list", "watch", "create", "patch", "delete"],
        reason: "device-plugin DaemonSets: owned and watched by the Module controller, server-side apply (a create when new), deleted when no longer wanted",
        names: Names::Any,
    },
    // RBAC cannot limit list, watch or create to names: a collection request and a POST carry no
    // object name when they are authorized. Changing and deleting can be, so every other claim
    // on the cluster (OCM's own, other agents') stays out of reach.
    Access {
        group: "cluster.open-cluster-management.io",
        resource: "clusterclaims",
        verbs: &["list", "watch", "create"],
        reason: "kernel_claim watches ClusterClaims and creates the kernel-versions claims (a server-side apply of a new claim is authorized as a create too)",
        names: Names::Any,
    },
    Access {
        group: "cluster.open-cluster-management.io",
        resource: "clusterclaims",
        verbs: &["patch", "delete"],
        reason: "kernel_claim writes the kernel-versions and next-kernel claims the hub reads (server-side apply) and deletes those no longer needed; only those names",
        names: Names::KernelClaims,
    },
    Access {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        reason: "the event Recorder: Events about Modules (their namespace) and Nodes (namespace default)",
        names: Names::Any,
    },
];

/// What OCM's work agent needs to apply the Modules in the hub's ManifestWorks, and to read their
/// status back for the status feedback.
pub const WORK_AGENT: &[Access] = &[Access {
    group: "kmm.sigs.x-k8s.io",
    resource: "modules",
    verbs: &["get", "list", "watch", "create", "update", "patch", "delete"],
    reason: "the work agent applies, updates and deletes the Modules of kmm-hub's ManifestWorks and reads their status",
    names: Names::Any,
}];

/// Header of the generated file.
pub const HEADER: &str =
    "# Generated from spoke/src/rbac.rs by `just gen` (`kmm-spoke rbac`); do not edit by hand.\n";

/// The spoke's ClusterRole and its binding to the ServiceAccount `name` in `namespace`, and the
/// work agent's aggregated ClusterRole, as a YAML stream with each rule's reason as a comment.
pub fn render(namespace: &str, name: &str) -> String {
    let mut out = String::from(HEADER);
    out.push_str("---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\n");
    let _ = writeln!(out, "metadata:\n  name: {name}");
    rules(&mut out, ACCESS);
    out.push_str("---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n");
    let _ = writeln!(out, "metadata:\n  name: {name}");
    let _ = write!(
        out,
        "roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {name}\n\
         subjects:\n- kind: ServiceAccount\n  name: {name}\n  namespace: {namespace}\n"
    );
    out.push_str("---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\n");
    let _ = writeln!(
        out,
        "metadata:\n  name: {WORK_AGENT_ROLE}\n  labels:\n    {WORK_AGENT_AGGREGATION_LABEL}: \"true\""
    );
    rules(&mut out, WORK_AGENT);
    out
}

fn rules(out: &mut String, list: &[Access]) {
    out.push_str("rules:\n");
    for a in list {
        let _ = writeln!(out, "# {}", a.reason);
        let _ = writeln!(out, "- apiGroups: [\"{}\"]", a.group);
        let _ = writeln!(out, "  resources: [\"{}\"]", a.resource);
        let names: Vec<String> = a.names.list().iter().map(|n| format!("\"{n}\"")).collect();
        if !names.is_empty() {
            let _ = writeln!(out, "  resourceNames: [{}]", names.join(", "));
        }
        let verbs: Vec<String> = a.verbs.iter().map(|v| format!("\"{v}\"")).collect();
        let _ = writeln!(out, "  verbs: [{}]", verbs.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_a_real_verb_with_a_one_line_reason() {
        let verbs = [
            "get",
            "list",
            "watch",
            "create",
            "update",
            "patch",
            "delete",
            "deletecollection",
        ];
        for a in ACCESS.iter().chain(WORK_AGENT) {
            assert!(!a.reason.is_empty() && !a.reason.contains('\n'), "{a:?}");
            assert!(a.verbs.iter().all(|v| verbs.contains(v)), "{a:?}");
        }
    }

    #[test]
    fn renders_the_role_its_binding_and_the_aggregated_work_agent_role() {
        let text = render("ns", "sa");
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
        let docs: Vec<_> = docs.into_iter().filter(|d| !d.is_null()).collect();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0]["kind"], "ClusterRole");
        assert_eq!(docs[0]["rules"].as_array().unwrap().len(), ACCESS.len());
        assert_eq!(docs[0]["rules"][4]["apiGroups"][0], "");
        assert_eq!(docs[1]["subjects"][0]["namespace"], "ns");
        assert_eq!(docs[1]["roleRef"]["name"], "sa");
        assert_eq!(
            docs[2]["metadata"]["labels"][WORK_AGENT_AGGREGATION_LABEL],
            "true"
        );
        assert_eq!(docs[2]["rules"][0]["resources"][0], "modules");
    }

    /// Issue 13: ClusterClaims other than the kernel-versions ones can be read but never
    /// changed or deleted by the spoke.
    #[test]
    fn claim_changes_are_limited_to_the_kernel_claims() {
        let text = render("ns", "sa");
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
        let claims: Vec<&serde_json::Value> = docs[0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["resources"][0] == "clusterclaims")
            .collect();
        for rule in &claims {
            let verbs: Vec<&str> = rule["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v.as_str())
                .collect();
            let named = rule["resourceNames"].as_array().is_some_and(|n| !n.is_empty());
            if verbs
                .iter()
                .any(|v| ["patch", "update", "delete", "get"].contains(v))
            {
                assert!(named, "{rule}");
                let names = rule["resourceNames"].as_array().unwrap();
                assert!(
                    names
                        .iter()
                        .all(|n| crate::kernel_claim::is_kernel_claim(n.as_str().unwrap()))
                );
                assert!(names.iter().any(|n| n == kmm_api::ocm::KERNEL_VERSIONS_CLAIM));
            }
        }
        assert_eq!(claims.len(), 2);
    }
}
