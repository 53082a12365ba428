//! Garbage collection of the hub's build and sign Jobs.

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PropagationPolicy},
};
use tracing::info;

use crate::mcm_controller::{
    Context, Error,
    desired::job::{self, JobState},
};

/// Deletes succeeded Jobs once the GC delay passed. Harmless even before the image is used: what
/// runs next is decided from the registry, never from old Jobs.
pub async fn collect(ctx: &Context) -> Result<(), Error> {
    let api: Api<k8s_openapi::api::batch::v1::Job> =
        Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let now = Timestamp::now();
    for j in ctx.jobs.state() {
        let done_at = j
            .status
            .as_ref()
            .and_then(|s| s.completion_time.as_ref())
            .map(|t| t.0);
        let old_enough = done_at
            .is_some_and(|t| now.as_second() - t.as_second() >= ctx.config.job_gc_delay.as_secs() as i64);
        if job::job_state(&j, None) == JobState::Succeeded
            && old_enough
            && j.metadata.deletion_timestamp.is_none()
        {
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..Default::default()
            };
            match api.delete(&j.name_any(), &dp).await {
                Ok(_) | Err(kube::Error::Api(_)) => info!(job = %j.name_any(), "collected a finished Job"),
                Err(source) => {
                    return Err(Error::Api {
                        what: format!("deleting Job {}", j.name_any()),
                        source,
                    });
                }
            }
        }
    }
    Ok(())
}
