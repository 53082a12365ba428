//! Who asked for what: every resource request's identity and what an authorizer would check
//! (verb, API group, resource, subresource, namespace, name), kept per cluster so tests can
//! prove a ClusterRole grants everything a binary does. Nothing is enforced.

use std::sync::Mutex;

use axum::http::{HeaderMap, header};

/// The identity of requests that carry no bearer token.
pub const ANONYMOUS: &str = "system:anonymous";

/// One authorization check, as the Kubernetes RBAC authorizer sees a request.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AuditRecord {
    /// The bearer token's user (`SimCluster::kubeconfig_as`), or [`ANONYMOUS`].
    pub user: String,
    /// get, list, watch, create, update, patch, delete or deletecollection.
    pub verb: String,
    /// The API group of the URL (`""` for the core group).
    pub group: String,
    /// The resource's plural name.
    pub resource: String,
    /// `status`, `log`, ... (`None` for the main resource).
    pub subresource: Option<String>,
    /// `None` for cluster-scoped resources and for requests across all namespaces.
    pub namespace: Option<String>,
    /// The object's name (`None` for list, watch, collection create and deletecollection).
    pub name: Option<String>,
}

impl AuditRecord {
    /// `resource` or `resource/subresource`, as RBAC rules name it.
    pub fn resource_path(&self) -> String {
        match &self.subresource {
            Some(s) => format!("{}/{s}", self.resource),
            None => self.resource.clone(),
        }
    }
}

impl std::fmt::Display for AuditRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {} {group}/{}", self.user, self.verb, self.resource_path())?;
        if let Some(ns) = &self.namespace {
            write!(f, " in {ns}")?;
        }
        if let Some(name) = &self.name {
            write!(f, " named {name}")?;
        }
        Ok(())
    }
}

/// The audit log of one cluster.
#[derive(Default)]
pub(crate) struct AuditLog {
    records: Mutex<Vec<AuditRecord>>,
}

impl AuditLog {
    pub fn push(&self, record: AuditRecord) {
        crate::store::lock(&self.records).push(record);
    }

    pub fn snapshot(&self) -> Vec<AuditRecord> {
        crate::store::lock(&self.records).clone()
    }

    pub fn clear(&self) {
        crate::store::lock(&self.records).clear();
    }
}

/// The user a request authenticates as: its bearer token is the user name.
pub(crate) fn user_of(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map_or_else(|| ANONYMOUS.to_string(), str::to_string)
}

/// One RBAC rule, and where it applies (`None`: everywhere, from a ClusterRoleBinding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// `None` for a ClusterRoleBinding, the RoleBinding's namespace otherwise.
    pub namespace: Option<String>,
    /// `Role/<ns>/<name>` or `ClusterRole/<name>`, for messages.
    pub role: String,
    pub groups: Vec<String>,
    pub resources: Vec<String>,
    pub names: Vec<String>,
    pub verbs: Vec<String>,
}

impl Grant {
    /// Whether this rule allows the request, as the Kubernetes RBAC authorizer decides it.
    pub fn allows(&self, r: &AuditRecord) -> bool {
        let any = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
        let in_scope = match &self.namespace {
            None => true,
            Some(ns) => r.namespace.as_deref() == Some(ns.as_str()),
        };
        let resource = r.resource_path();
        let resource_ok = self.resources.iter().any(|x| {
            x == "*"
                || *x == resource
                || (r.subresource.is_some() && x.strip_suffix("/*").is_some_and(|base| base == r.resource))
        });
        let name_ok = self.names.is_empty() || r.name.as_ref().is_some_and(|n| self.names.contains(n));
        in_scope && any(&self.groups, &r.group) && resource_ok && any(&self.verbs, &r.verb) && name_ok
    }
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} groups={:?} resources={:?} verbs={:?}",
            self.role, self.groups, self.resources, self.verbs
        )?;
        if !self.names.is_empty() {
            write!(f, " names={:?}", self.names)?;
        }
        if let Some(ns) = &self.namespace {
            write!(f, " in {ns}")?;
        }
        Ok(())
    }
}

/// The rules that Roles, ClusterRoles and their bindings (YAML documents, e.g. a rendered
/// kustomization) grant to `user` (`system:serviceaccount:<ns>:<name>` for a ServiceAccount).
pub fn grants_for(docs: &[serde_json::Value], user: &str) -> Vec<Grant> {
    use serde_json::Value;
    let str_list = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let meta = |d: &Value, f: &str| d["metadata"][f].as_str().unwrap_or_default().to_string();
    let kind = |d: &Value| d["kind"].as_str().unwrap_or_default().to_string();
    let subject_is_user = |s: &Value| {
        let name = s["name"].as_str().unwrap_or_default();
        match s["kind"].as_str().unwrap_or_default() {
            "ServiceAccount" => {
                format!(
                    "system:serviceaccount:{}:{name}",
                    s["namespace"].as_str().unwrap_or_default()
                ) == user
            }
            "User" => name == user,
            _ => false,
        }
    };
    let mut out = Vec::new();
    for b in docs {
        let binding = kind(b);
        if binding != "ClusterRoleBinding" && binding != "RoleBinding" {
            continue;
        }
        if !b["subjects"]
            .as_array()
            .is_some_and(|s| s.iter().any(subject_is_user))
        {
            continue;
        }
        let namespace = (binding == "RoleBinding").then(|| meta(b, "namespace"));
        let role_kind = b["roleRef"]["kind"].as_str().unwrap_or_default();
        let role_name = b["roleRef"]["name"].as_str().unwrap_or_default();
        let role = docs.iter().find(|d| {
            kind(d) == role_kind
                && meta(d, "name") == role_name
                && (role_kind == "ClusterRole" || Some(meta(d, "namespace")) == namespace)
        });
        let Some(role) = role else { continue };
        let label = match &namespace {
            Some(ns) if role_kind == "Role" => format!("Role/{ns}/{role_name}"),
            _ => format!("ClusterRole/{role_name}"),
        };
        for rule in role["rules"].as_array().into_iter().flatten() {
            out.push(Grant {
                namespace: namespace.clone(),
                role: label.clone(),
                groups: str_list(&rule["apiGroups"]),
                resources: str_list(&rule["resources"]),
                names: str_list(&rule["resourceNames"]),
                verbs: str_list(&rule["verbs"]),
            });
        }
    }
    out
}

/// The outcome of checking a user's requests against its grants.
#[derive(Debug, Default)]
pub struct RbacCheck {
    /// Requests no grant allows (deduplicated, sorted).
    pub denied: Vec<AuditRecord>,
    /// `(grant, verb, resource)` triples granted but never requested.
    pub unused: Vec<String>,
    /// Requests checked.
    pub checked: usize,
}

/// Checks every request `user` made against `grants`, and lists what was granted but not used.
pub fn check(records: &[AuditRecord], user: &str, grants: &[Grant]) -> RbacCheck {
    let mine: Vec<&AuditRecord> = records.iter().filter(|r| r.user == user).collect();
    let mut denied: Vec<AuditRecord> = mine
        .iter()
        .filter(|r| !grants.iter().any(|g| g.allows(r)))
        .map(|r| (*r).clone())
        .collect();
    denied.sort();
    denied.dedup();
    let mut unused = Vec::new();
    for g in grants {
        for verb in &g.verbs {
            for res in &g.resources {
                let used = mine
                    .iter()
                    .any(|r| r.verb == *verb && r.resource_path() == *res && g.allows(r));
                if !used {
                    unused.push(format!("{verb} {res} ({})", g.role));
                }
            }
        }
    }
    RbacCheck {
        denied,
        unused,
        checked: mine.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_token_names_the_user() {
        let mut h = HeaderMap::new();
        assert_eq!(user_of(&h), ANONYMOUS);
        h.insert(
            header::AUTHORIZATION,
            "Bearer system:serviceaccount:kmm-hub:kmm-hub".parse().unwrap(),
        );
        assert_eq!(user_of(&h), "system:serviceaccount:kmm-hub:kmm-hub");
    }

    /// Through kube-rs and a kubeconfig file, as a child process would use it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_are_recorded_per_user_with_the_verbs_rbac_checks() {
        use k8s_openapi::api::core::v1::ConfigMap;
        use kube::api::{Api, ListParams, Patch, PatchParams, WatchParams};
        let sim = crate::Sim::new().unwrap();
        let cluster = sim.add_cluster("audit").await.unwrap();
        cluster
            .apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: ns}\n")
            .unwrap();
        let user = "system:serviceaccount:ns:robot";
        let path = cluster.kubeconfig_as(user).unwrap();
        let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "ns");
        let body = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c"}, "data": {"a": "1"}});
        let pp = PatchParams::apply("t");
        cms.patch("c", &pp, &Patch::Apply(&body)).await.unwrap();
        cms.patch("c", &pp, &Patch::Apply(&body)).await.unwrap();
        cms.get("c").await.unwrap();
        Api::<ConfigMap>::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap();
        let _ = cms.watch(&WatchParams::default().timeout(1), "0").await.unwrap();
        cluster.client().list_api_groups().await.unwrap();
        Api::<ConfigMap>::all(cluster.client())
            .list(&ListParams::default())
            .await
            .unwrap();

        let mine: Vec<(String, Option<String>)> = cluster
            .audit()
            .into_iter()
            .filter(|r| r.user == user)
            .map(|r| (r.verb, r.namespace))
            .collect();
        let ns = Some("ns".to_string());
        assert_eq!(
            mine,
            vec![
                ("create".into(), ns.clone()),
                ("patch".into(), ns.clone()),
                ("patch".into(), ns.clone()),
                ("get".into(), ns.clone()),
                ("list".into(), None),
                ("watch".into(), ns),
            ],
            "an apply that creates is also a create; a list with watch=true is a watch"
        );
        assert!(
            cluster
                .audit()
                .iter()
                .any(|r| r.user == ANONYMOUS && r.verb == "list" && r.resource == "configmaps"),
            "the in-process client carries no token"
        );
        cluster.clear_audit();
        assert!(cluster.audit().is_empty());
    }

    fn rec(verb: &str, group: &str, resource: &str, ns: Option<&str>, name: Option<&str>) -> AuditRecord {
        AuditRecord {
            user: "system:serviceaccount:app:sa".into(),
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: None,
            namespace: ns.map(str::to_string),
            name: name.map(str::to_string),
        }
    }

    #[test]
    fn grants_follow_bindings_namespaces_and_resource_names() {
        let yaml = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: reader}
rules:
- {apiGroups: [""], resources: [nodes], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: reader}
subjects: [{kind: ServiceAccount, name: sa, namespace: app}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: lease, namespace: app}
rules:
- {apiGroups: [coordination.k8s.io], resources: [leases], resourceNames: [l], verbs: [get, update]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: lease, namespace: app}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: lease}
subjects: [{kind: ServiceAccount, name: sa, namespace: app}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: other, namespace: app}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: lease}
subjects: [{kind: ServiceAccount, name: someone-else, namespace: app}]
"#;
        let docs = crate::parse_documents(yaml).unwrap();
        let grants = grants_for(&docs, "system:serviceaccount:app:sa");
        assert_eq!(grants.len(), 2);
        let allowed = |r: &AuditRecord| grants.iter().any(|g| g.allows(r));
        assert!(allowed(&rec("watch", "", "nodes", None, None)));
        assert!(!allowed(&rec("patch", "", "nodes", None, Some("n"))));
        assert!(allowed(&rec(
            "get",
            "coordination.k8s.io",
            "leases",
            Some("app"),
            Some("l")
        )));
        assert!(!allowed(&rec(
            "get",
            "coordination.k8s.io",
            "leases",
            Some("app"),
            Some("m")
        )));
        assert!(!allowed(&rec(
            "get",
            "coordination.k8s.io",
            "leases",
            Some("other"),
            Some("l")
        )));
        assert!(!allowed(&rec(
            "list",
            "coordination.k8s.io",
            "leases",
            None,
            None
        )));
        let result = check(
            &[
                rec("list", "", "nodes", None, None),
                rec("delete", "", "nodes", None, Some("n")),
            ],
            "system:serviceaccount:app:sa",
            &grants,
        );
        assert_eq!(result.checked, 2);
        assert_eq!(result.denied.len(), 1);
        assert!(
            result.unused.iter().any(|u| u.starts_with("watch nodes")),
            "{:?}",
            result.unused
        );
        assert!(!result.unused.iter().any(|u| u.starts_with("list nodes")));
    }

    #[test]
    fn records_print_like_an_authorizer_decision() {
        let r = AuditRecord {
            user: "u".into(),
            verb: "patch".into(),
            group: String::new(),
            resource: "pods".into(),
            subresource: Some("status".into()),
            namespace: Some("ns".into()),
            name: Some("p".into()),
        };
        assert_eq!(r.to_string(), "u patch core/pods/status in ns named p");
    }
}
