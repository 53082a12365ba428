//! The ManifestWork that carries one cluster's Module (named like the MCM, in the cluster's
//! namespace), with the feedback rules that bring the Module's node counts back to the hub.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kmm_api::{
    ManagedClusterModule, Module, ModuleSpec,
    labels::MCM_NAME_LABEL,
    ocm::{
        DeleteOption, FeedbackRule, JsonPath, ManifestConfigOption, ManifestWork, ManifestWorkSpec,
        ManifestsTemplate, ResourceIdentifier, ServerSideApplyConfig, UpdateStrategy,
    },
};
use kube::Resource;

/// Field manager the OCM work agent uses for the Module on the spoke; must start with `work-agent`.
pub const WORK_AGENT_FIELD_MANAGER: &str = "work-agent-kmm";

/// Feedback name of the spoke's `WorkersFailing` condition message (why workers fail).
pub const WORKERS_FAILING_FEEDBACK: &str = "moduleLoader.workersFailing";

/// The Module status fields each ManifestWork reads back, as `(feedback name, JSONPath)`: the
/// nine node counts and the message of kmm-spoke's `WorkersFailing` condition.
pub fn feedback_paths() -> Vec<(String, String)> {
    let mut paths = Vec::new();
    for section in ["moduleLoader", "devicePlugin", "dra"] {
        for field in ["nodesMatchingSelectorNumber", "desiredNumber", "availableNumber"] {
            paths.push((format!("{section}.{field}"), format!(".status.{section}.{field}")));
        }
    }
    paths.push((
        WORKERS_FAILING_FEEDBACK.to_owned(),
        r#".status.conditions[?(@.type=="WorkersFailing")].message"#.to_owned(),
    ));
    paths
}

/// The ManifestWork for `cluster`, carrying a Module with the already-rendered `module_spec`.
pub fn manifest_work(
    mcm: &ManagedClusterModule,
    cluster: &str,
    module_spec: ModuleSpec,
) -> Result<ManifestWork, serde_json::Error> {
    Ok(ManifestWork {
        metadata: work_metadata(mcm, cluster),
        spec: work_spec(mcm, module_spec)?,
        status: None,
    })
}

/// The metadata of `mcm`'s ManifestWork in `cluster`'s namespace: name, MCM label, owner.
pub fn work_metadata(mcm: &ManagedClusterModule, cluster: &str) -> ObjectMeta {
    let name = mcm.metadata.name.clone().unwrap_or_default();
    let owner = mcm.metadata.uid.as_ref().map(|uid| OwnerReference {
        api_version: ManagedClusterModule::api_version(&()).into_owned(),
        kind: ManagedClusterModule::kind(&()).into_owned(),
        name: name.clone(),
        uid: uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    });
    ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(cluster.to_owned()),
        labels: Some(BTreeMap::from([(MCM_NAME_LABEL.to_owned(), name)])),
        owner_references: owner.map(|o| vec![o]),
        ..Default::default()
    }
}

/// The spec of `mcm`'s ManifestWorks for a rendered Module: the same for every cluster whose
/// kernels render the same `module_spec` (the namespace is in the metadata).
pub fn work_spec(
    mcm: &ManagedClusterModule,
    module_spec: ModuleSpec,
) -> Result<ManifestWorkSpec, serde_json::Error> {
    let name = mcm.metadata.name.clone().unwrap_or_default();
    let spoke_namespace = mcm.spec.spoke_namespace.clone();
    let mut module = Module::new(&name, module_spec);
    module.metadata.namespace = Some(spoke_namespace.clone());
    let mut module_json = serde_json::to_value(&module)?;
    if let Some(obj) = module_json.as_object_mut() {
        obj.remove("status"); // the spoke owns status; an empty one here would only fight it
    }
    Ok(ManifestWorkSpec {
        workload: ManifestsTemplate {
            manifests: vec![module_json],
        },
        // Foreground: deleting the work (or dropping the Module) unloads it on the spoke.
        delete_option: Some(DeleteOption {
            propagation_policy: Some("Foreground".into()),
        }),
        manifest_configs: vec![ManifestConfigOption {
            resource_identifier: ResourceIdentifier {
                group: Module::group(&()).into_owned(),
                resource: Module::plural(&()).into_owned(),
                name,
                namespace: spoke_namespace,
            },
            feedback_rules: vec![FeedbackRule {
                type_: "JSONPaths".into(),
                json_paths: feedback_paths()
                    .into_iter()
                    .map(|(name, path)| JsonPath {
                        name,
                        path,
                        version: None,
                    })
                    .collect(),
            }],
            update_strategy: Some(UpdateStrategy {
                type_: "ServerSideApply".into(),
                server_side_apply: Some(ServerSideApplyConfig {
                    field_manager: Some(WORK_AGENT_FIELD_MANAGER.into()),
                    force: true,
                }),
            }),
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn mk_mcm() -> ManagedClusterModule {
        fixtures::mk_mcm(
            "apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1\nkind: ManagedClusterModule\n\
             metadata: {name: my-kmod}\nspec: {spokeNamespace: kmm-spoke, selector: {}, moduleSpec: {selector: {}}}\n",
        )
    }

    #[test]
    fn carries_one_module_named_like_the_mcm_in_the_spoke_namespace() {
        let work = manifest_work(&mk_mcm(), "cluster-7", ModuleSpec::default()).unwrap();
        assert_eq!(work.metadata.name.as_deref(), Some("my-kmod"));
        assert_eq!(work.metadata.namespace.as_deref(), Some("cluster-7"));
        assert_eq!(
            work.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(MCM_NAME_LABEL))
                .map(String::as_str),
            Some("my-kmod")
        );
        let owner = &work.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("ManagedClusterModule", "uid-1", Some(true))
        );
        let manifests = &work.spec.workload.manifests;
        assert_eq!(manifests.len(), 1);
        assert_eq!(manifests[0]["apiVersion"], "kmm.sigs.x-k8s.io/v1beta1");
        assert_eq!(manifests[0]["kind"], "Module");
        assert_eq!(manifests[0]["metadata"]["namespace"], "kmm-spoke");
        assert!(manifests[0].get("status").is_none());
    }

    #[test]
    fn asks_for_the_nine_status_counts_and_the_worker_failure_and_applies_with_a_work_agent_manager() {
        let work = manifest_work(&mk_mcm(), "c", ModuleSpec::default()).unwrap();
        let config = &work.spec.manifest_configs[0];
        assert_eq!(config.resource_identifier.resource, "modules");
        assert_eq!(config.resource_identifier.namespace, "kmm-spoke");
        let paths = &config.feedback_rules[0].json_paths;
        assert_eq!(paths.len(), 10);
        assert!(paths.iter().any(|p| p.name == WORKERS_FAILING_FEEDBACK
            && p.path == r#".status.conditions[?(@.type=="WorkersFailing")].message"#));
        assert!(
            paths.iter().any(|p| p.name == "moduleLoader.availableNumber"
                && p.path == ".status.moduleLoader.availableNumber")
        );
        let ssa = config
            .update_strategy
            .as_ref()
            .and_then(|u| u.server_side_apply.as_ref())
            .expect("ssa");
        assert!(
            ssa.force
                && ssa
                    .field_manager
                    .as_deref()
                    .is_some_and(|m| m.starts_with("work-agent"))
        );
        assert_eq!(
            work.spec
                .delete_option
                .and_then(|d| d.propagation_policy)
                .as_deref(),
            Some("Foreground")
        );
    }
}
