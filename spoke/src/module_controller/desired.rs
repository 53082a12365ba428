//! Desired (pure): the device plugin DaemonSet the Module wants now, and which of its older
//! DaemonSets go.

use k8s_openapi::api::apps::v1::DaemonSet;
use kmm_api::Module;
use kube::ResourceExt;

use super::{device_plugin, observe::Observed};

/// What the Apply step makes true for one Module.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// The DaemonSet of the Module's current version, applied whole (none without a plugin).
    pub daemonset: Option<DaemonSet>,
    /// DaemonSets to delete: every other one when no plugin is wanted, else the older versions
    /// no node runs any more.
    pub stale_daemonsets: Vec<String>,
    /// The observed DaemonSets that stay as they are (older versions still running somewhere).
    pub kept_daemonsets: Vec<DaemonSet>,
}

/// The desired device plugin state of `module`.
pub fn desired(module: &Module, observed: &Observed, operator_namespace: &str) -> Desired {
    let daemonset = device_plugin::daemonset(module, operator_namespace);
    let wanted_name = daemonset.as_ref().and_then(|d| d.metadata.name.clone());
    let mut out = Desired {
        daemonset,
        ..Desired::default()
    };
    for ds in &observed.daemonsets {
        if ds.metadata.name.is_some() && ds.metadata.name == wanted_name {
            continue;
        }
        let idle = ds.status.as_ref().is_none_or(|s| s.desired_number_scheduled == 0);
        if out.daemonset.is_none() || idle {
            out.stale_daemonsets.push(ds.name_any());
        } else {
            out.kept_daemonsets.push(ds.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DaemonSetStatus;

    use super::*;
    use crate::fixtures::{loader, mk_module};

    fn versioned_module(plugin: bool) -> Module {
        let plugin = if plugin {
            "  devicePlugin:\n    container: {image: plugin}\n"
        } else {
            ""
        };
        mk_module(&(loader("") + "      version: v2\n" + plugin))
    }

    fn mk_ds(name: &str, scheduled: Option<i32>) -> DaemonSet {
        let mut ds = DaemonSet::default();
        ds.metadata.name = Some(name.into());
        ds.status = scheduled.map(|n| DaemonSetStatus {
            desired_number_scheduled: n,
            ..Default::default()
        });
        ds
    }

    fn names(d: &[DaemonSet]) -> Vec<String> {
        d.iter().map(ResourceExt::name_any).collect()
    }

    #[test]
    fn older_versions_go_once_no_node_runs_them() {
        let observed = Observed {
            daemonsets: vec![
                mk_ds("m-device-plugin-v2", Some(1)),
                mk_ds("m-device-plugin-v1", Some(2)),
                mk_ds("m-device-plugin-v0", Some(0)),
                mk_ds("m-device-plugin", None),
            ],
            ..Observed::default()
        };
        let want = desired(&versioned_module(true), &observed, "kmm-operator-system");
        assert_eq!(
            want.daemonset.as_ref().and_then(|d| d.metadata.name.as_deref()),
            Some("m-device-plugin-v2")
        );
        assert_eq!(want.stale_daemonsets, ["m-device-plugin-v0", "m-device-plugin"]);
        assert_eq!(names(&want.kept_daemonsets), ["m-device-plugin-v1"]);
    }

    #[test]
    fn without_a_plugin_every_daemonset_goes() {
        let observed = Observed {
            daemonsets: vec![
                mk_ds("m-device-plugin-v2", Some(1)),
                mk_ds("m-device-plugin-v1", Some(2)),
            ],
            ..Observed::default()
        };
        let want = desired(&versioned_module(false), &observed, "kmm-operator-system");
        assert_eq!(want.daemonset, None);
        assert_eq!(
            want.stale_daemonsets,
            ["m-device-plugin-v2", "m-device-plugin-v1"]
        );
        assert!(want.kept_daemonsets.is_empty());
    }
}
