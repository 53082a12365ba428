//! The kinds a virtual cluster serves: the built-in ones the product uses, plus CRDs.
//!
//! Objects are stored per (group, plural) whatever version they were written in; a CRD serving
//! several versions converts with the `None` strategy (only `apiVersion` changes), as the
//! apiserver does when a CRD has no conversion webhook.

use std::{collections::BTreeMap, sync::Arc};

use serde_json::Value;

/// Storage key of a kind: its group and plural resource name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupResource {
    pub group: String,
    pub resource: String,
}

/// Everything the server needs to know about one kind.
#[derive(Clone, Debug)]
pub struct ResourceType {
    pub group: String,
    /// Served versions, storage version first.
    pub versions: Vec<String>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    /// Whether `status` is a subresource (then writes to the main resource keep the old status).
    pub status_subresource: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// `openAPIV3Schema` per version (CRDs only): pruning, defaults, list types. Shared: a
    /// schema can weigh hundreds of KiB and kinds are cloned per request.
    pub schemas: Arc<BTreeMap<String, Value>>,
    /// Field selectors this kind accepts beyond `metadata.name` / `metadata.namespace`.
    pub selectable_fields: Vec<String>,
    /// `additionalPrinterColumns` per version (CRDs only), for `kubectl get`.
    pub printer_columns: Arc<BTreeMap<String, Vec<Value>>>,
    /// Name of the CRD that registered this kind, if any.
    pub crd: Option<String>,
}

impl ResourceType {
    pub fn group_resource(&self) -> GroupResource {
        GroupResource {
            group: self.group.clone(),
            resource: self.plural.clone(),
        }
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    pub fn schema(&self, version: &str) -> Option<&Value> {
        self.schemas.get(version)
    }

    fn builtin(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        Self {
            group: group.to_string(),
            versions: vec![version.to_string()],
            plural: plural.to_string(),
            singular: kind.to_ascii_lowercase(),
            kind: kind.to_string(),
            namespaced,
            status_subresource: false,
            short_names: Vec::new(),
            categories: Vec::new(),
            schemas: Arc::default(),
            selectable_fields: Vec::new(),
            printer_columns: Arc::default(),
            crd: None,
        }
    }

    fn with_status(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    fn short(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    fn fields(mut self, names: &[&str]) -> Self {
        self.selectable_fields = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Reads a CustomResourceDefinition into the kind it defines.
    pub fn from_crd(crd: &Value) -> Result<Self, String> {
        let spec = crd.get("spec").ok_or("CRD without spec")?;
        let text = |v: Option<&Value>, what: &str| -> Result<String, String> {
            v.and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("CRD without {what}"))
        };
        let names = spec.get("names").ok_or("CRD without spec.names")?;
        let group = text(spec.get("group"), "spec.group")?;
        let plural = text(names.get("plural"), "spec.names.plural")?;
        let kind = text(names.get("kind"), "spec.names.kind")?;
        let singular = names
            .get("singular")
            .and_then(Value::as_str)
            .map_or_else(|| kind.to_ascii_lowercase(), str::to_string);
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default()
        };
        let namespaced = match spec.get("scope").and_then(Value::as_str) {
            Some("Namespaced") => true,
            Some("Cluster") => false,
            other => return Err(format!("CRD scope must be Namespaced or Cluster, got {other:?}")),
        };
        let mut versions = Vec::new();
        let mut schemas = BTreeMap::new();
        let mut printer_columns = BTreeMap::new();
        let mut status_subresource = false;
        let mut selectable_fields = Vec::new();
        for v in spec
            .get("versions")
            .and_then(Value::as_array)
            .ok_or("CRD without spec.versions")?
        {
            let name = text(v.get("name"), "spec.versions[].name")?;
            if v.get("served").and_then(Value::as_bool) == Some(false) {
                continue;
            }
            if v.pointer("/subresources/status").is_some() {
                status_subresource = true;
            }
            if let Some(schema) = v.pointer("/schema/openAPIV3Schema") {
                schemas.insert(name.clone(), schema.clone());
            }
            if let Some(cols) = v.get("additionalPrinterColumns").and_then(Value::as_array) {
                printer_columns.insert(name.clone(), cols.clone());
            }
            for f in v
                .get("selectableFields")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(path) = f.get("jsonPath").and_then(Value::as_str) {
                    selectable_fields.push(path.trim_start_matches('.').to_string());
                }
            }
            if v.get("storage").and_then(Value::as_bool) == Some(true) {
                versions.insert(0, name);
            } else {
                versions.push(name);
            }
        }
        if versions.is_empty() {
            return Err("CRD serves no version".into());
        }
        Ok(Self {
            group,
            versions,
            plural,
            singular,
            kind,
            namespaced,
            status_subresource,
            short_names: strings(names.get("shortNames")),
            categories: strings(names.get("categories")),
            schemas: Arc::new(schemas),
            selectable_fields,
            printer_columns: Arc::new(printer_columns),
            crd: crd
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }
}

/// The kinds one virtual cluster serves.
#[derive(Clone, Debug)]
pub struct Registry {
    types: BTreeMap<GroupResource, ResourceType>,
}

impl Registry {
    /// The built-in kinds kmm-fleet and its tests touch.
    pub fn builtin() -> Self {
        use ResourceType as T;
        let list = [
            T::builtin("", "v1", "Namespace", "namespaces", false)
                .with_status()
                .short(&["ns"])
                .fields(&["status.phase"]),
            T::builtin("", "v1", "Node", "nodes", false)
                .with_status()
                .short(&["no"])
                .fields(&["spec.unschedulable"]),
            T::builtin("", "v1", "Pod", "pods", true)
                .with_status()
                .short(&["po"])
                .fields(&[
                    "spec.nodeName",
                    "spec.restartPolicy",
                    "spec.schedulerName",
                    "spec.serviceAccountName",
                    "status.phase",
                    "status.podIP",
                    "status.nominatedNodeName",
                ]),
            T::builtin("", "v1", "Secret", "secrets", true).fields(&["type"]),
            T::builtin("", "v1", "ConfigMap", "configmaps", true).short(&["cm"]),
            T::builtin("", "v1", "ServiceAccount", "serviceaccounts", true).short(&["sa"]),
            T::builtin("", "v1", "Service", "services", true)
                .with_status()
                .short(&["svc"]),
            T::builtin("", "v1", "Event", "events", true)
                .short(&["ev"])
                .fields(&[
                    "involvedObject.kind",
                    "involvedObject.namespace",
                    "involvedObject.name",
                    "involvedObject.uid",
                    "involvedObject.apiVersion",
                    "involvedObject.resourceVersion",
                    "involvedObject.fieldPath",
                    "reason",
                    "reportingComponent",
                    "source",
                    "type",
                ]),
            T::builtin("events.k8s.io", "v1", "Event", "events", true)
                .short(&["ev"])
                .fields(&[
                    "regarding.kind",
                    "regarding.namespace",
                    "regarding.name",
                    "regarding.uid",
                    "reason",
                    "reportingController",
                    "type",
                ]),
            T::builtin("apps", "v1", "DaemonSet", "daemonsets", true)
                .with_status()
                .short(&["ds"]),
            T::builtin("apps", "v1", "Deployment", "deployments", true)
                .with_status()
                .short(&["deploy"]),
            // The hub keeps each MCM's rollout revisions in ControllerRevisions.
            T::builtin("apps", "v1", "ControllerRevision", "controllerrevisions", true),
            T::builtin("batch", "v1", "Job", "jobs", true)
                .with_status()
                .fields(&["status.successful"]),
            T::builtin("coordination.k8s.io", "v1", "Lease", "leases", true),
            T::builtin("rbac.authorization.k8s.io", "v1", "Role", "roles", true),
            T::builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "RoleBinding",
                "rolebindings",
                true,
            ),
            T::builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRole",
                "clusterroles",
                false,
            ),
            T::builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRoleBinding",
                "clusterrolebindings",
                false,
            ),
            T::builtin(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
                "customresourcedefinitions",
                false,
            )
            .with_status()
            .short(&["crd", "crds"]),
            T::builtin(
                "admissionregistration.k8s.io",
                "v1",
                "ValidatingAdmissionPolicy",
                "validatingadmissionpolicies",
                false,
            )
            .with_status(),
            T::builtin(
                "admissionregistration.k8s.io",
                "v1",
                "ValidatingAdmissionPolicyBinding",
                "validatingadmissionpolicybindings",
                false,
            ),
        ];
        let types = list.into_iter().map(|t| (t.group_resource(), t)).collect();
        Self { types }
    }

    pub fn get(&self, gr: &GroupResource) -> Option<&ResourceType> {
        self.types.get(gr)
    }

    /// The kind served at `group/version/plural`, if that version is served.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        let gr = GroupResource {
            group: group.to_string(),
            resource: plural.to_string(),
        };
        self.types
            .get(&gr)
            .filter(|t| t.versions.iter().any(|v| v == version))
    }

    /// The kind with this apiVersion and kind, if served.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        let (group, version) = split_api_version(api_version);
        self.types
            .values()
            .find(|t| t.group == group && t.kind == kind && t.versions.iter().any(|v| v == version))
    }

    pub fn insert(&mut self, t: ResourceType) {
        self.types.insert(t.group_resource(), t);
    }

    pub fn remove(&mut self, gr: &GroupResource) {
        self.types.remove(gr);
    }

    pub fn all(&self) -> impl Iterator<Item = &ResourceType> {
        self.types.values()
    }
}

/// `apps/v1` -> ("apps", "v1"); `v1` -> ("", "v1").
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_versions_put_the_storage_version_first_and_skip_unserved_ones() {
        let crd = serde_json::json!({
            "metadata": {"name": "things.example.com"},
            "spec": {"group": "example.com", "scope": "Cluster",
                "names": {"plural": "things", "kind": "Thing", "shortNames": ["th"]},
                "versions": [
                    {"name": "v1alpha1", "served": true, "storage": false},
                    {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}},
                    {"name": "v0", "served": false, "storage": false}
                ]}
        });
        let t = ResourceType::from_crd(&crd).unwrap();
        assert_eq!(t.versions, ["v1", "v1alpha1"]);
        assert!(t.status_subresource);
        assert!(!t.namespaced);
        assert_eq!(t.singular, "thing");
        assert_eq!(t.short_names, ["th"]);
    }

    #[test]
    fn crd_with_a_bad_scope_is_refused() {
        let crd = serde_json::json!({"spec": {"group": "g", "scope": "Galaxy",
            "names": {"plural": "xs", "kind": "X"}, "versions": [{"name": "v1", "served": true, "storage": true}]}});
        assert!(ResourceType::from_crd(&crd).unwrap_err().contains("Galaxy"));
    }
}
