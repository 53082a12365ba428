//! Apply: write the ManifestWorks that changed with server-side apply, delete the ones of clusters
//! that no longer match, and write the status when it changed. Nothing here decides anything.

use std::{collections::BTreeMap, sync::Arc};

use kmm_api::{ManagedClusterModule, ManagedClusterModuleStatus, ocm::ManifestWork};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;

use super::{Context, Error};

/// Field manager of everything the hub writes.
pub const FIELD_MANAGER: &str = "kmm-hub";

/// Does the stored work already say what we want? Then writing it again is pointless: a hub
/// restart over 10,000 clusters must not cost 10,000 no-op patches.
pub fn up_to_date(current: &ManifestWork, desired: &ManifestWork) -> bool {
    let subset = |want: &BTreeMap<String, String>, have: &BTreeMap<String, String>| {
        want.iter().all(|(k, v)| have.get(k) == Some(v))
    };
    current.spec == desired.spec
        && current.metadata.deletion_timestamp.is_none()
        && subset(desired.labels(), current.labels())
        && subset(desired.annotations(), current.annotations())
        && desired
            .owner_references()
            .iter()
            .all(|o| current.owner_references().contains(o))
}

/// Writes `desired` unless the stored copy is up to date; returns what the server holds and
/// whether a request was sent.
pub async fn apply_work(
    ctx: &Context,
    desired: ManifestWork,
    current: Option<&Arc<ManifestWork>>,
) -> Result<(ManifestWork, bool), Error> {
    if let Some(current) = current.filter(|c| up_to_date(c, &desired)) {
        return Ok(((**current).clone(), false));
    }
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
    Ok((written, true))
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
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::Api {
            what: format!("deleting ManifestWork {ns}/{name}"),
            source,
        }),
    }
}

/// Writes the status subresource when it differs from what is stored.
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
