//! Apply: the Module's device plugin DaemonSet by server-side apply, then the stale ones
//! deleted. Returns what runs afterwards, so the status counts only applied objects.

use k8s_openapi::api::apps::v1::DaemonSet;
use kmm_api::Module;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};

use super::desired::Desired;
use crate::{
    context::{Ctx, FIELD_MANAGER},
    error::{Error, is_status, kube_err},
};

/// The Module's DaemonSets after the Apply step: the kept ones and the one just applied.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub daemonsets: Vec<DaemonSet>,
}

/// Makes `desired` true for `module`.
pub async fn apply(module: &Module, desired: Desired, ctx: &Ctx) -> Result<Applied, Error> {
    let ns = module.namespace().unwrap_or_default();
    let Desired {
        daemonset,
        stale_daemonsets,
        kept_daemonsets,
    } = desired;
    let mut daemonsets = kept_daemonsets;
    if let Some(ds) = daemonset {
        let applied = Api::<DaemonSet>::namespaced(ctx.client.clone(), &ns)
            .patch(
                &ds.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&ds),
            )
            .await
            .map_err(kube_err(format!("applying DaemonSet {ns}/{}", ds.name_any())))?;
        daemonsets.push(applied);
    }
    for name in &stale_daemonsets {
        delete_daemonset(ctx, &ns, name).await?;
    }
    Ok(Applied { daemonsets })
}

/// Deletes one DaemonSet; one already gone is fine.
pub async fn delete_daemonset(ctx: &Ctx, ns: &str, name: &str) -> Result<(), Error> {
    match Api::<DaemonSet>::namespaced(ctx.client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(kube_err(format!("deleting DaemonSet {ns}/{name}"))(e)),
    }
}
