//! Observe: what the Module controller decides from. Nodes and node records come from the
//! caches; the Module's DaemonSets and worker pods from the API (one labelled list each).

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Node, Pod},
};
use kmm_api::{
    Module,
    nmc::{ModuleItem, NodeModulesConfig},
};
use kube::{Api, ResourceExt, api::ListParams, runtime::reflector::Store};

use super::{
    device_plugin,
    status::{WorkerFailure, worker_failures},
};
use crate::{
    context::Ctx,
    error::{Error, kube_err},
    worker::pod::MODULE_NAME_LABEL,
};

/// What one Module's reconcile read.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The Module's device plugin DaemonSets, of every version.
    pub daemonsets: Vec<DaemonSet>,
    /// Every Node.
    pub nodes: Vec<Node>,
    /// The node records that name the Module, in their spec or status.
    pub records: Vec<NodeModulesConfig>,
    /// Nodes whose worker for the Module is failing.
    pub worker_failures: Vec<WorkerFailure>,
}

/// Reads everything the Apply step decides from.
pub async fn observe(module: &Module, ctx: &Ctx) -> Result<Observed, Error> {
    let (ns, name) = (module.namespace().unwrap_or_default(), module.name_any());
    let workers = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&format!("{MODULE_NAME_LABEL}={name}")))
        .await
        .map_err(kube_err(format!("listing the worker pods of {ns}/{name}")))?
        .items;
    Ok(Observed {
        daemonsets: daemonsets(module, ctx).await?,
        nodes: ctx.nodes.state().iter().map(|n| (**n).clone()).collect(),
        records: records_naming(&ctx.records, &ns, &name),
        worker_failures: worker_failures(&workers),
    })
}

/// The Module's device plugin DaemonSets, found by their labels.
pub async fn daemonsets(module: &Module, ctx: &Ctx) -> Result<Vec<DaemonSet>, Error> {
    let ns = module.namespace().unwrap_or_default();
    let selector = device_plugin::selector_labels(module)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    Ok(Api::<DaemonSet>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_err(format!("listing device plugin DaemonSets in {ns}")))?
        .items)
}

/// The cached node records that still name Module `namespace/name` (wanted or loaded).
pub fn records_naming(
    records: &Store<NodeModulesConfig>,
    namespace: &str,
    name: &str,
) -> Vec<NodeModulesConfig> {
    records
        .state()
        .iter()
        .filter(|r| names_module(r, namespace, name))
        .map(|r| (**r).clone())
        .collect()
}

/// Whether the record's spec or status holds an entry for Module `namespace/name`.
pub fn names_module(record: &NodeModulesConfig, namespace: &str, name: &str) -> bool {
    let is_it = |i: &ModuleItem| i.namespace == namespace && i.name == name;
    record.spec.modules.iter().any(|e| is_it(&e.item))
        || record
            .status
            .iter()
            .any(|s| s.modules.iter().any(|e| is_it(&e.item)))
}
