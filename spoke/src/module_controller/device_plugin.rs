//! The device plugin DaemonSet of a Module (pure), as upstream renders it (reference 4.7).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, DaemonSetSpec},
        core::v1::{
            Container, HostPathVolumeSource, PodSpec, PodTemplateSpec, SecurityContext, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
};
use kmm_api::{
    Module, labels,
    module::{DevicePluginContainerSpec, DevicePluginSpec},
};
use kube::{Resource, ResourceExt};

use crate::worker::pod::MODULE_NAME_LABEL;

/// Role label of device plugin DaemonSets and pods.
pub const ROLE_LABEL: &str = "kmm.node.kubernetes.io/role";
/// Where the kubelet's device plugin sockets live.
pub const DEVICE_PLUGINS_DIR: &str = "/var/lib/kubelet/device-plugins";

/// Name of the DaemonSet for the Module's current version.
pub fn daemonset_name(module: &Module) -> String {
    let base = format!("{}-device-plugin", module.name_any());
    match version(module) {
        None => base,
        Some(v) => format!("{base}-{}", v.to_ascii_lowercase().replace('_', "-")),
    }
}

fn version(module: &Module) -> Option<&str> {
    module
        .spec
        .module_loader
        .as_ref()?
        .container
        .version
        .as_deref()
        .filter(|v| !v.is_empty())
}

/// Labels every device plugin DaemonSet of the Module carries (and its pods).
pub fn selector_labels(module: &Module) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MODULE_NAME_LABEL.to_owned(), module.name_any()),
        (ROLE_LABEL.to_owned(), "device-plugin".to_owned()),
    ])
}

/// The DaemonSet, or `None` when the Module has no device plugin.
pub fn daemonset(module: &Module, operator_namespace: &str) -> Option<DaemonSet> {
    let plugin: &DevicePluginSpec = module.spec.device_plugin.as_ref()?;
    let name = module.name_any();
    let ns = module.namespace().unwrap_or_default();
    let mut ds_labels = selector_labels(module);
    let node_selector = if module.spec.module_loader.is_some() {
        let mut sel = BTreeMap::from([
            (labels::module_ready(&ns, &name), String::new()),
            (labels::device_plugin_target(&ns, &name), String::new()),
        ]);
        if let Some(v) = version(module) {
            sel.insert(labels::version_schedule_pod(&ns, &name), v.to_owned());
            ds_labels.insert(labels::version_schedule_pod(&ns, &name), v.to_owned());
        }
        sel
    } else {
        module.spec.selector.clone()
    };
    let mut pod_labels = ds_labels.clone();
    pod_labels.extend([
        ("app.kubernetes.io/name".to_owned(), "kmm".to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            "device-plugin".to_owned(),
        ),
        ("app.kubernetes.io/part-of".to_owned(), "kmm".to_owned()),
    ]);
    let mut volumes = vec![Volume {
        name: "kubelet-device-plugins".into(),
        host_path: Some(HostPathVolumeSource {
            path: DEVICE_PLUGINS_DIR.into(),
            type_: Some("Directory".into()),
        }),
        ..Default::default()
    }];
    volumes.extend(plugin.volumes.clone().unwrap_or_default());
    let service_account = plugin
        .service_account_name
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| (ns == operator_namespace).then(|| "kmm-operator-device-plugin".to_owned()));
    Some(DaemonSet {
        metadata: ObjectMeta {
            name: Some(daemonset_name(module)),
            namespace: Some(ns),
            labels: Some(ds_labels.clone()),
            owner_references: module.controller_owner_ref(&()).map(|o: OwnerReference| vec![o]),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(ds_labels),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container("device-plugin", &plugin.container, true)],
                    init_containers: plugin
                        .init_container
                        .as_ref()
                        .map(|c| vec![container("device-plugin-init", c, false)]),
                    node_selector: Some(node_selector),
                    priority_class_name: Some("system-node-critical".into()),
                    tolerations: module.spec.tolerations.clone(),
                    service_account_name: service_account,
                    automount_service_account_token: plugin.automount_service_account_token,
                    image_pull_secrets: module.spec.image_repo_secret.clone().map(|s| vec![s]),
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}

fn container(name: &str, spec: &DevicePluginContainerSpec, main: bool) -> Container {
    let mut mounts = Vec::new();
    if main {
        mounts.push(VolumeMount {
            name: "kubelet-device-plugins".into(),
            mount_path: DEVICE_PLUGINS_DIR.into(),
            ..Default::default()
        });
    }
    mounts.extend(spec.volume_mounts.clone().unwrap_or_default());
    Container {
        name: name.into(),
        image: Some(spec.image.clone()),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: spec.env.clone(),
        image_pull_policy: spec.image_pull_policy.clone(),
        resources: spec.resources.clone(),
        security_context: Some(SecurityContext {
            privileged: Some(true),
            ..Default::default()
        }),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixtures::{loader, mk_module_in};

    const PULL_AND_TOLERATIONS: &str = "  imageRepoSecret: {name: pull}\n  tolerations: [{key: gpu, operator: Exists, effect: NoSchedule}]\n";

    fn module_with_pull_secret(ns: &str, extra: &str) -> Module {
        mk_module_in(ns, &format!("{PULL_AND_TOLERATIONS}{extra}"))
    }

    /// A loader with `version: V_2`.
    fn versioned_loader() -> String {
        loader("") + "      version: V_2\n"
    }

    const PLUGIN: &str = "  devicePlugin:\n    container: {image: registry.example/plugin:1}\n";

    #[test]
    fn targets_only_nodes_where_the_module_is_ready_and_scheduled_for_its_version() {
        let ds = daemonset(
            &module_with_pull_secret("drivers", &format!("{}{PLUGIN}", versioned_loader())),
            "kmm-operator-system",
        )
        .unwrap();
        assert_eq!(ds.metadata.name.as_deref(), Some("m-device-plugin-v-2"));
        let owner = &ds.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("Module", "m", Some(true))
        );
        let spec = ds.spec.unwrap();
        let pod = spec.template.spec.unwrap();
        assert_eq!(
            pod.node_selector.unwrap(),
            BTreeMap::from([
                (labels::module_ready("drivers", "m"), String::new()),
                (labels::device_plugin_target("drivers", "m"), String::new()),
                (labels::version_schedule_pod("drivers", "m"), "V_2".to_owned()),
            ])
        );
        let c = &pod.containers[0];
        assert_eq!(c.name, "device-plugin");
        assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
        assert_eq!(
            c.volume_mounts.as_ref().unwrap()[0].mount_path,
            DEVICE_PLUGINS_DIR
        );
        assert_eq!(
            pod.volumes.unwrap()[0].host_path.as_ref().unwrap().path,
            DEVICE_PLUGINS_DIR
        );
        assert_eq!(
            pod.service_account_name, None,
            "namespace default outside the operator's"
        );
        assert_eq!(pod.tolerations.unwrap()[0].key.as_deref(), Some("gpu"));
        assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "pull");
        assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
        assert_eq!(
            spec.selector
                .match_labels
                .unwrap()
                .get(ROLE_LABEL)
                .map(String::as_str),
            Some("device-plugin")
        );
    }

    #[test]
    fn without_a_loader_the_plugin_follows_the_selector_and_in_the_operator_namespace_its_account() {
        let ds = daemonset(
            &module_with_pull_secret("kmm-operator-system", PLUGIN),
            "kmm-operator-system",
        )
        .unwrap();
        assert_eq!(ds.metadata.name.as_deref(), Some("m-device-plugin"));
        let pod = ds.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            pod.node_selector.unwrap(),
            BTreeMap::from([("role".to_owned(), "gpu".to_owned())])
        );
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("kmm-operator-device-plugin")
        );
    }

    #[test]
    fn no_device_plugin_section_no_daemonset() {
        assert!(
            daemonset(
                &module_with_pull_secret("drivers", &versioned_loader()),
                "kmm-operator-system"
            )
            .is_none()
        );
    }
}
