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
