//! The Module controller (managed mode): finalizer, device plugin DaemonSets, status, and the
//! signal that makes the node controller look at every node when a Module changes.
//!
//! The node records themselves are written by [`crate::node_controller`], which derives them from
//! every Module at once. Deleting a Module keeps it (finalizer) until no node record still has
//! it, so the hub sees it go only once it is unloaded everywhere.
//!
//! Each pass: [`observe`] (Nodes and node records from the caches, the Module's DaemonSets and
//! worker pods from the API), pure [`desired`] (the DaemonSet to apply, the stale ones),
//! [`apply`] (returns what runs), then [`update_status`] from what was observed and applied.

pub mod apply;
pub mod desired;
pub mod device_plugin;
pub mod observe;
pub mod status;
pub mod update_status;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Pod};
use kmm_api::{Module, nmc::NodeModulesConfig};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{
        Controller,
        controller::Action,
        events::EventType,
        finalizer::{Event as Finalizer, finalizer},
        reflector::ObjectRef,
        watcher,
    },
};
use serde_json::json;

use crate::{
    context::{FIELD_MANAGER, SharedCtx},
    error::{Error, error_policy, kube_err, record_reconcile},
    reason::Reason,
    worker::pod::MODULE_NAME_LABEL,
};

/// Finalizer kmm-spoke puts on Modules.
pub const FINALIZER: &str = "kmm.node.kubernetes.io/module-finalizer";

/// Controller name in metrics and logs.
pub const CONTROLLER: &str = "module";

/// Builds the Module controller; `records` names the Modules whose node records changed, sent
/// once the record cache holds the change.
pub fn controller(
    client: kube::Client,
    records: impl futures::Stream<Item = ObjectRef<DeserializeGuard<Module>>> + Send + 'static,
) -> Controller<DeserializeGuard<Module>> {
    Controller::new(
        Api::<DeserializeGuard<Module>>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<DaemonSet>::all(client.clone()), watcher::Config::default())
    // Worker pods: a failed one shows in the Module's status (the hub reads it back).
    .watches(
        Api::<Pod>::all(client),
        watcher::Config::default().labels(MODULE_NAME_LABEL),
        |pod| {
            let name = pod.labels().get(MODULE_NAME_LABEL)?;
            Some(ObjectRef::new(name).within(&pod.namespace()?))
        },
    )
    .reconcile_on(records)
}

/// The Modules a node record names, in its spec or its status.
pub fn modules_of(nmc: &NodeModulesConfig) -> Vec<ObjectRef<DeserializeGuard<Module>>> {
    let spec = nmc.spec.modules.iter().map(|e| &e.item);
    let status = nmc.status.iter().flat_map(|s| s.modules.iter().map(|e| &e.item));
    spec.chain(status)
        .map(|i| ObjectRef::new(&i.name).within(&i.namespace))
        .collect()
}

/// Runs the Module controller until `shutdown` resolves.
pub async fn run(
    controller: Controller<DeserializeGuard<Module>>,
    ctx: SharedCtx,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let metrics = ctx.metrics.clone();
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| {
            record_reconcile(&metrics, CONTROLLER, &res);
            std::future::ready(())
        })
        .await;
}

async fn reconcile(guard: Arc<DeserializeGuard<Module>>, ctx: SharedCtx) -> Result<Action, Error> {
    let module = match &guard.0 {
        Ok(m) => Arc::new(m.clone()),
        Err(invalid) => {
            let note = invalid.to_string();
            ctx.publish(
                &guard.object_ref(&()),
                EventType::Warning,
                Reason::InvalidObject,
                "Reconcile",
                &note,
            )
            .await;
            return Err(Error::InvalidObject(note));
        }
    };
    signal_nodes_on_change(&module, &ctx);
    let ns = module.namespace().unwrap_or_default();
    let api = Api::<Module>::namespaced(ctx.client.clone(), &ns);
    let has_finalizer = module.finalizers().iter().any(|f| f == FINALIZER);
    if !has_finalizer && module.metadata.deletion_timestamp.is_none() {
        add_finalizer(&api, &module).await?;
        return Ok(Action::requeue(std::time::Duration::from_millis(1)));
    }
    let object = format!("Module {ns}/{}", module.name_any());
    finalizer(&api, FINALIZER, module, |event| async {
        match event {
            Finalizer::Apply(m) => apply_module(m, ctx.clone()).await,
            Finalizer::Cleanup(m) => cleanup(m, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::from_finalizer(e, &object))
}

/// Asks the node controller for a pass over every node when the Module's generation or
/// deletion changed since its last reconcile (not on status-only updates).
fn signal_nodes_on_change(module: &Module, ctx: &SharedCtx) {
    let key = (module.namespace().unwrap_or_default(), module.name_any());
    let seen = (
        module.metadata.generation,
        module.metadata.deletion_timestamp.is_some(),
    );
    let changed = ctx
        .seen_modules
        .lock()
        .map(|mut m| m.insert(key, seen) != Some(seen))
        .unwrap_or(true);
    if changed {
        // Full channel: a pass over every node is already queued.
        let _ = ctx.nodes_tx.try_send(());
    }
}

/// Adds the finalizer with server-side apply (finalizers are a set, so other managers' stay).
/// kube's finalizer() would add it with a JSON patch `test` of a missing path, which kmm-sim
/// refuses; with the finalizer present it goes straight to Apply.
async fn add_finalizer(api: &Api<Module>, module: &Module) -> Result<(), Error> {
    let name = module.name_any();
    let body = json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
        "kind": "Module",
        "metadata": { "name": name, "finalizers": [FINALIZER] },
    });
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(body))
        .await
        .map_err(kube_err(format!(
            "adding the finalizer to Module {}/{name}",
            module.namespace().unwrap_or_default()
        )))?;
    Ok(())
}

/// Apply step of the finalizer: observe -> desired -> apply -> update status.
async fn apply_module(module: Arc<Module>, ctx: SharedCtx) -> Result<Action, Error> {
    let observed = observe::observe(&module, &ctx).await?;
    let want = desired::desired(&module, &observed, &ctx.settings.node.operator_namespace);
    let applied = apply::apply(&module, want, &ctx).await?;
    update_status::update_status(&module, &observed, &applied, &ctx).await?;
    Ok(Action::requeue(ctx.settings.resync))
}

/// Cleanup step of the finalizer: every device plugin DaemonSet goes; the Module itself goes
/// once no node record names it (the node controller unloads it first).
async fn cleanup(module: Arc<Module>, ctx: SharedCtx) -> Result<Action, Error> {
    let (ns, name) = (module.namespace().unwrap_or_default(), module.name_any());
    for ds in observe::daemonsets(&module, &ctx).await? {
        apply::delete_daemonset(&ctx, &ns, &ds.name_any()).await?;
    }
    let holding = observe::records_naming(&ctx.records, &ns, &name).len();
    if holding > 0 {
        let err = Error::StillLoaded(holding);
        // Says why the deleted Module stays; repeats fold into one Event's series.
        let note = err.to_string();
        ctx.publish(
            &module.object_ref(&()),
            EventType::Normal,
            err.reason(),
            "Delete",
            &note,
        )
        .await;
        return Err(err);
    }
    Ok(Action::await_change())
}
