//! Every Kubernetes API call `kmm-hub run` makes, as data, and the RBAC rendered from it.
//!
//! `kmm-hub rbac` prints the ClusterRole, Roles and bindings; `just gen` writes them to
//! `manifests/hub/rbac.yaml`, and a test fails when that file differs from [`render`]. Another
//! test runs the real `kmm-hub run` as the hub's ServiceAccount, records its requests and checks
//! that every one is granted here. When the code starts calling something new, add a
//! row below, with the reason.
//!
//! The read-only subcommands (`render`, `status`) run with the user's own kubeconfig and need only
//! `list` on ManagedClusterModules, ManagedClusters and ManifestWorks; they are not listed here.

use std::fmt::Write as _;

/// Where a rule applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Cluster-scoped kinds, or namespaced kinds in namespaces not known in advance
    /// (ManifestWorks live in each cluster's namespace): the ClusterRole.
    Cluster,
    /// The hub's own namespace (`--namespace`): a Role there.
    HubNamespace,
    /// A fixed namespace: a Role there.
    Namespace(&'static str),
}

/// One group of API calls: what, where, and why.
#[derive(Clone, Copy, Debug)]
pub struct Access {
    /// API group (`""` is the core group).
    pub group: &'static str,
    /// Resource plural, or `plural/subresource`.
    pub resource: &'static str,
    /// RBAC verbs, as the apiserver authorizes the calls.
    pub verbs: &'static [&'static str],
    /// When not empty, only these object names (`resourceNames`; never restricts create, list
    /// or watch, which the apiserver checks without a name).
    pub names: &'static [&'static str],
    pub scope: Scope,
    /// One line: which code makes the call.
    pub reason: &'static str,
}

/// Default name of the hub's namespace, ServiceAccount, roles and leader Lease.
pub const NAME: &str = "kmm-hub";

/// What `kmm-hub run` calls.
pub const ACCESS: &[Access] = &[
    Access {
        group: "hub.kmm.sigs.x-k8s.io",
        resource: "managedclustermodules",
        verbs: &["list", "watch", "patch"],
        names: &[],
        scope: Scope::Cluster,
        reason: "the MCM controller (run.rs) lists and watches MCMs; mcm_controller::reconcile adds and removes its finalizer with a JSON patch",
    },
    Access {
        group: "hub.kmm.sigs.x-k8s.io",
        resource: "managedclustermodules/status",
        verbs: &["patch"],
        names: &[],
        scope: Scope::Cluster,
        reason: "apply::patch_status writes the MCM status with server-side apply",
    },
    Access {
        group: "hub.kmm.sigs.x-k8s.io",
        resource: "managedclustermodules/finalizers",
        verbs: &["update"],
        names: &[],
        scope: Scope::Cluster,
        reason: "ManifestWorks carry an owner reference to their MCM with blockOwnerDeletion: the OwnerReferencesPermissionEnforcement admission plugin (on in OpenShift hubs) refuses it without this",
    },
    Access {
        group: "cluster.open-cluster-management.io",
        resource: "managedclusters",
        verbs: &["list", "watch"],
        names: &[],
        scope: Scope::Cluster,
        reason: "the ManagedCluster store and the controller's watch (labels, kernel claims, availability)",
    },
    Access {
        group: "work.open-cluster-management.io",
        resource: "manifestworks",
        verbs: &["list", "watch", "create", "patch", "delete"],
        names: &[],
        scope: Scope::Cluster,
        reason: "one ManifestWork per cluster namespace: store and watch, server-side apply (a create when new), delete when a cluster stops matching or the MCM goes",
    },
    Access {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        names: &[],
        scope: Scope::Namespace("default"),
        reason: "the event Recorder: Events about cluster-scoped MCMs go to namespace default (a repeat is a patch)",
    },
    Access {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        names: &[],
        scope: Scope::HubNamespace,
        reason: "events::failed_job_events: a failed build or sign Job's output goes to an Event about the Job, in the hub namespace, never to namespace default",
    },
    Access {
        group: "batch",
        resource: "jobs",
        verbs: &["get", "list", "watch", "create", "delete"],
        names: &[],
        scope: Scope::HubNamespace,
        reason: "build and sign Jobs: the Job store, create (and get when another hub created it first) in build::jobs, delete once succeeded in build::gc (--job-gc-delay-seconds)",
    },
    Access {
        group: "",
        resource: "pods",
        verbs: &["list"],
        names: &[],
        scope: Scope::HubNamespace,
        reason: "build::jobs::failure_message reads the termination message of a failed Job's pod",
    },
    Access {
        group: "",
        resource: "secrets",
        verbs: &["get"],
        names: &[],
        scope: Scope::HubNamespace,
        reason: "observe::pull_auth reads an MCM's imageRepoSecret to resolve tags to digests; build::jobs::first_missing checks build secrets and the signing key and certificate before a Job starts",
    },
    Access {
        group: "",
        resource: "configmaps",
        verbs: &["get"],
        names: &[],
        scope: Scope::HubNamespace,
        reason: "build::jobs::first_missing checks the dockerfileConfigMap before a build Job starts",
    },
    Access {
        group: "apps",
        resource: "controllerrevisions",
        verbs: &["list", "create", "delete"],
        names: &[],
        scope: Scope::HubNamespace,
        reason: "rollout::revision keeps each MCM's revisions in rollout (target and those clusters are still on) so a restarted hub renders every cluster from its own revision",
    },
    Access {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["create"],
        names: &[],
        scope: Scope::HubNamespace,
        reason: "leader election creates the Lease the first time",
    },
    Access {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "update"],
        names: &[NAME],
        scope: Scope::HubNamespace,
        reason: "leader election reads and renews the Lease (only the default --lease-name)",
    },
    Access {
        group: "hub.kmm.sigs.x-k8s.io",
        resource: "managedclusterpreflights",
        verbs: &["list", "watch"],
        names: &[],
        scope: Scope::Cluster,
        reason: "the preflight controller (run.rs) lists and watches ManagedClusterPreflights",
    },
    Access {
        group: "hub.kmm.sigs.x-k8s.io",
        resource: "managedclusterpreflights/status",
        verbs: &["patch"],
        names: &[],
        scope: Scope::Cluster,
        reason: "preflight::controller::reconcile writes the per-(MCM, kernel) verdicts with a merge patch",
    },
    Access {
        group: "hub.kmm.sigs.x-k8s.io",
        resource: "managedclusterpreflights",
        verbs: &["create"],
        names: &[],
        scope: Scope::Cluster,
        reason: "preflight::generated creates the next-kernel preflight (a server-side apply of a new object is authorized as a create)",
    },
    Access {
        group: "hub.kmm.sigs.x-k8s.io",
        resource: "managedclusterpreflights",
        verbs: &["get", "patch", "delete"],
        names: &[kmm_api::preflight::NEXT_KERNELS_PREFLIGHT],
        scope: Scope::Cluster,
        reason: "preflight::generated reads the next-kernel preflight, keeps its spec (server-side apply) and deletes it when no claim asks; only that name",
    },
];

/// Header of the generated file.
pub const HEADER: &str =
    "# Generated from hub/src/rbac.rs by `just gen` (`kmm-hub rbac`); do not edit by hand.\n";

/// The ClusterRole, Roles and their bindings to the ServiceAccount `name` in `namespace`, as a
/// YAML stream with each rule's reason as a comment.
pub fn render(namespace: &str, name: &str) -> String {
    let mut out = String::from(HEADER);
    let cluster: Vec<&Access> = ACCESS.iter().filter(|a| a.scope == Scope::Cluster).collect();
    let subject = format!("subjects:\n- kind: ServiceAccount\n  name: {name}\n  namespace: {namespace}\n");
    if !cluster.is_empty() {
        out.push_str("---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\n");
        let _ = writeln!(out, "metadata:\n  name: {name}");
        rules(&mut out, &cluster);
        out.push_str("---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n");
        let _ = writeln!(out, "metadata:\n  name: {name}");
        let _ = write!(
            out,
            "roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {name}\n{subject}"
        );
    }
    let mut namespaces: Vec<&str> = Vec::new();
    for a in ACCESS {
        let ns = match a.scope {
            Scope::Cluster => continue,
            Scope::HubNamespace => namespace,
            Scope::Namespace(ns) => ns,
        };
        if !namespaces.contains(&ns) {
            namespaces.push(ns);
        }
    }
    for ns in namespaces {
        let here: Vec<&Access> = ACCESS
            .iter()
            .filter(|a| match a.scope {
                Scope::Cluster => false,
                Scope::HubNamespace => namespace == ns,
                Scope::Namespace(n) => n == ns,
            })
            .collect();
        out.push_str("---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\n");
        let _ = writeln!(out, "metadata:\n  name: {name}\n  namespace: {ns}");
        rules(&mut out, &here);
        out.push_str("---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n");
        let _ = writeln!(out, "metadata:\n  name: {name}\n  namespace: {ns}");
        let _ = write!(
            out,
            "roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: {name}\n{subject}"
        );
    }
    out
}

fn rules(out: &mut String, list: &[&Access]) {
    out.push_str("rules:\n");
    for a in list {
        let _ = writeln!(out, "# {}", a.reason);
        let _ = writeln!(out, "- apiGroups: [{}]", quoted(&[a.group]));
        let _ = writeln!(out, "  resources: [{}]", quoted(&[a.resource]));
        if !a.names.is_empty() {
            let _ = writeln!(out, "  resourceNames: [{}]", quoted(a.names));
        }
        let _ = writeln!(out, "  verbs: [{}]", quoted(a.verbs));
    }
}

fn quoted(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERBS: &[&str] = &[
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
    ];

    #[test]
    fn every_row_is_a_real_verb_with_a_reason_and_names_only_where_rbac_checks_them() {
        for a in ACCESS {
            assert!(!a.reason.is_empty() && !a.reason.contains('\n'), "{a:?}");
            assert!(a.verbs.iter().all(|v| VERBS.contains(v)), "{a:?}");
            if !a.names.is_empty() {
                assert!(
                    a.verbs
                        .iter()
                        .all(|v| matches!(*v, "get" | "update" | "patch" | "delete")),
                    "resourceNames cannot restrict {:?}",
                    a.verbs
                );
            }
        }
    }

    #[test]
    fn renders_parseable_roles_and_bindings_per_namespace() {
        let text = render("hub-ns", "hub-sa");
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
        let docs: Vec<_> = docs.into_iter().filter(|d| !d.is_null()).collect();
        let kinds: Vec<(String, String)> = docs
            .iter()
            .map(|d| {
                (
                    d["kind"].as_str().unwrap().to_string(),
                    d["metadata"]["namespace"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let k = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            kinds,
            vec![
                k("ClusterRole", ""),
                k("ClusterRoleBinding", ""),
                k("Role", "default"),
                k("RoleBinding", "default"),
                k("Role", "hub-ns"),
                k("RoleBinding", "hub-ns"),
            ]
        );
        let lease = docs[4]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resourceNames"].is_array())
            .unwrap();
        assert_eq!(lease["resources"][0], "leases");
        assert_eq!(docs[5]["subjects"][0]["namespace"], "hub-ns");
        assert_eq!(docs[1]["subjects"][0]["name"], "hub-sa");
        assert_eq!(docs[2]["rules"][0]["apiGroups"][0], "events.k8s.io");
    }
}
