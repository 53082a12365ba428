//! Apply: carry out a [`Desired`] (SSA writes, deletes, its Events) and write the status when it
//! changed. Nothing here decides anything.

use futures::{StreamExt, stream};
use kmm_api::{ManagedClusterModule, ManagedClusterModuleStatus, ocm::ManifestWork};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;
use tracing::info;

use super::{
    Context, Error,
    desired::{Desired, WorkPlan},
    events,
    fleet_status::{ClusterState, ClusterView},
    work_outcome::work_outcome,
};

/// ManifestWork writes in flight at once for one MCM.
const WRITE_CONCURRENCY: usize = 16;

/// Field manager of everything the hub writes.
pub const FIELD_MANAGER: &str = "kmm-hub";

/// Carries out `desired`: deletes the works of clusters no longer selected, writes the works
/// that changed (a few at a time: a cold start over thousands of clusters is bound by round
/// trips), then publishes its Events. Returns each selected cluster as the status sees it.
pub async fn apply(
    ctx: &Context,
    mcm: &ManagedClusterModule,
    desired: Desired,
) -> Result<Vec<ClusterView>, Error> {
    let Desired {
        clusters,
        deletes,
        events,
    } = desired;
    for work in &deletes {
        delete_work(ctx, work).await?;
        info!(cluster = %work.namespace().unwrap_or_default(), "cluster no longer selected; ManifestWork deleted");
    }
    let views: Vec<Result<ClusterView, Error>> = stream::iter(clusters)
        .map(|c| async move {
            let state = match c.work {
                WorkPlan::Write(work) => {
                    ClusterState::Work(work_outcome(&write_work(ctx, work.to_work()).await?))
                }
                WorkPlan::Keep(current) => ClusterState::Work(work_outcome(&current)),
                WorkPlan::Blocked(blocker) => ClusterState::Blocked(blocker),
            };
            Ok(ClusterView {
                name: c.cluster,
                kernels: c.kernels,
                refused: c.refused,
                state,
                unreachable: c.unreachable,
            })
        })
        .buffered(WRITE_CONCURRENCY)
        .collect()
        .await;
    let views = views.into_iter().collect::<Result<Vec<_>, _>>()?;
    events::publish(ctx, &mcm.object_ref(&()), events).await;
    Ok(views)
}

/// Writes `work` with server-side apply; returns what the server holds.
async fn write_work(ctx: &Context, desired: ManifestWork) -> Result<ManifestWork, Error> {
    let ns = desired.namespace().unwrap_or_default();
    let name = desired.name_any();
    let api: Api<ManifestWork> = Api::namespaced(ctx.client.clone(), &ns);
    let mut body = serde_json::to_value(&desired).map_err(Error::Serialize)?;
    if let Some(obj) = body.as_object_mut() {
        obj.remove("status");
    }
    let written = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(|source| Error::Api {
            what: format!("applying ManifestWork {ns}/{name}"),
            source,
        })?;
    ctx.metrics.work_writes.inc();
    ctx.recent_writes.record(&written);
    Ok(written)
}

/// Deletes a ManifestWork (404 is fine: it is already gone).
pub async fn delete_work(ctx: &Context, work: &ManifestWork) -> Result<(), Error> {
    if work.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let ns = work.namespace().unwrap_or_default();
    let name = work.name_any();
    let api: Api<ManifestWork> = Api::namespaced(ctx.client.clone(), &ns);
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {
            ctx.metrics.work_deletes.inc();
            ctx.recent_writes.forget(&ns, &name);
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => {
            ctx.recent_writes.forget(&ns, &name);
            Ok(())
        }
        Err(source) => Err(Error::Api {
            what: format!("deleting ManifestWork {ns}/{name}"),
            source,
        }),
    }
}

/// Writes the status subresource when it differs from what is stored.
/// Adds the hub's finalizer by server-side apply: the API server merges it into the finalizer set
/// whatever the cache shows. (kube-runtime's own add is a JSON patch that tests the cached list,
/// so a reconcile that starts before the watch delivers the first one's add was answered 422.)
/// Returns the MCM as stored.
pub async fn add_finalizer(ctx: &Context, mcm: &ManagedClusterModule) -> Result<ManagedClusterModule, Error> {
    let api: Api<ManagedClusterModule> = Api::all(ctx.client.clone());
    let body = json!({
        "apiVersion": ManagedClusterModule::api_version(&()),
        "kind": ManagedClusterModule::kind(&()),
        "metadata": {"finalizers": [super::FINALIZER]},
    });
    let name = mcm.name_any();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(body))
        .await
        .map_err(|source| Error::Api {
            what: format!("adding the finalizer to {name}"),
            source,
        })
}

pub async fn write_status(
    ctx: &Context,
    mcm: &ManagedClusterModule,
    status: &ManagedClusterModuleStatus,
) -> Result<bool, Error> {
    if mcm.status.as_ref() == Some(status) {
        return Ok(false);
    }
    let api: Api<ManagedClusterModule> = Api::all(ctx.client.clone());
    let body = json!({
        "apiVersion": ManagedClusterModule::api_version(&()),
        "kind": ManagedClusterModule::kind(&()),
        "status": status,
    });
    let name = mcm.name_any();
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(|source| Error::Api {
        what: format!("writing the status of ManagedClusterModule {name}"),
        source,
    })?;
    ctx.metrics.status_writes.inc();
    Ok(true)
}
