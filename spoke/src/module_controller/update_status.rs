//! Update status: the Module's status from what was observed and applied, written only when it
//! differs (no hot loop), and a Warning Event the first time build/sign is reported ignored.

use k8s_openapi::jiff::Timestamp;
use kmm_api::{Module, module::ModuleStatus};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::EventType,
};
use serde_json::json;

use super::{
    apply::Applied,
    observe::Observed,
    status::{BUILD_SIGN_IGNORED, module_status},
};
use crate::{
    context::{Ctx, FIELD_MANAGER},
    error::{Error, kube_err},
    reason::Reason,
};

/// What the status step does once the new status is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusChange {
    /// The new status differs from the one on the Module.
    pub write: bool,
    /// `BuildSignIgnored` is new: say so once with an Event.
    pub announce_build_sign_ignored: bool,
}

/// Compares the Module's current status with `status`.
pub fn status_change(module: &Module, status: &ModuleStatus) -> StatusChange {
    let ignored = |s: &ModuleStatus| s.conditions.iter().any(|c| c.type_ == BUILD_SIGN_IGNORED);
    StatusChange {
        write: module.status.as_ref() != Some(status),
        announce_build_sign_ignored: ignored(status) && !module.status.as_ref().is_some_and(ignored),
    }
}

/// Writes the status `observed` and `applied` give, when it changed.
pub async fn update_status(
    module: &Module,
    observed: &Observed,
    applied: &Applied,
    ctx: &Ctx,
) -> Result<(), Error> {
    let (ns, name) = (module.namespace().unwrap_or_default(), module.name_any());
    let status = module_status(
        module,
        &observed.nodes,
        &observed.records,
        &applied.daemonsets,
        &observed.worker_failures,
        Timestamp::now(),
    );
    let change = status_change(module, &status);
    if change.write {
        Api::<Module>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(json!({
                    "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
                    "kind": "Module",
                    "status": status,
                })),
            )
            .await
            .map_err(kube_err(format!("writing the status of Module {ns}/{name}")))?;
    }
    if change.announce_build_sign_ignored {
        ctx.publish(
            &module.object_ref(&()),
            EventType::Warning,
            Reason::BuildSignIgnored,
            "Reconcile",
            "managed mode: build and sign are ignored; the hub builds and signs, the spoke loads images as given",
        )
        .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::*;

    fn with_conditions(types: &[&str]) -> ModuleStatus {
        ModuleStatus {
            conditions: types
                .iter()
                .map(|t| Condition {
                    type_: (*t).into(),
                    status: "True".into(),
                    reason: "R".into(),
                    message: String::new(),
                    observed_generation: None,
                    last_transition_time: Time(Timestamp::UNIX_EPOCH),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn module_with_status(status: Option<ModuleStatus>) -> Module {
        let mut module = crate::fixtures::mk_module("");
        module.status = status;
        module
    }

    #[test]
    fn an_unchanged_status_is_not_written() {
        let status = with_conditions(&[BUILD_SIGN_IGNORED]);
        let change = status_change(&module_with_status(Some(status.clone())), &status);
        assert_eq!(
            change,
            StatusChange {
                write: false,
                announce_build_sign_ignored: false
            }
        );
    }

    #[test]
    fn build_sign_ignored_is_announced_only_when_it_appears() {
        let new = with_conditions(&[BUILD_SIGN_IGNORED]);
        assert!(status_change(&module_with_status(None), &new).announce_build_sign_ignored);
        assert!(
            status_change(&module_with_status(Some(with_conditions(&[]))), &new).announce_build_sign_ignored
        );
        let mut older = new.clone();
        older.conditions[0].reason = "Other".into();
        let change = status_change(&module_with_status(Some(older)), &new);
        assert!(change.write && !change.announce_build_sign_ignored);
    }
}
