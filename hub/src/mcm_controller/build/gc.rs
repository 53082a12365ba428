//! Garbage collection of the hub's build and sign Jobs, as its own periodic task (not part of any
//! MCM's reconcile: Jobs are shared by every MCM needing their image). Succeeded Jobs go once
//! `--job-gc-delay-seconds` passed since they finished; failed ones stay for inspection, the
//! newest [`MAX_FAILED_JOBS_KEPT`] of them (a spoke inventing kernels must not pile up failed
//! Jobs forever; an image whose failed Job went gets another try, within the per-reconcile cap).
//! Harmless even before the image is used: what runs next is decided from the registry, never
//! from old Jobs.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{api::batch::v1::Job, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PropagationPolicy},
};
use tracing::{info, warn};

use crate::mcm_controller::{
    Context, Error,
    desired::job::{self, JobState},
};

/// How often the Job store is looked at.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Failed Jobs kept for inspection; older ones are collected.
pub const MAX_FAILED_JOBS_KEPT: usize = 50;

/// The Jobs to delete now (pure): succeeded, finished at least `delay` ago, not being deleted;
/// and the failed ones past the newest [`MAX_FAILED_JOBS_KEPT`].
pub fn collectable(jobs: &[Arc<Job>], now: Timestamp, delay: Duration) -> Vec<String> {
    let mut out = succeeded(jobs, now, delay);
    out.extend(excess_failed(jobs, MAX_FAILED_JOBS_KEPT));
    out
}

/// Failed Jobs beyond the newest `keep` (by creation time, then name).
pub fn excess_failed(jobs: &[Arc<Job>], keep: usize) -> Vec<String> {
    let mut failed: Vec<&Arc<Job>> = jobs
        .iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .filter(|j| matches!(job::job_state(j, None), JobState::Failed(_)))
        .collect();
    failed.sort_by_key(|j| {
        (
            std::cmp::Reverse(j.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second())),
            j.name_any(),
        )
    });
    failed.into_iter().skip(keep).map(|j| j.name_any()).collect()
}

fn succeeded(jobs: &[Arc<Job>], now: Timestamp, delay: Duration) -> Vec<String> {
    jobs.iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .filter(|j| job::job_state(j, None) == JobState::Succeeded)
        .filter(|j| {
            j.status
                .as_ref()
                .and_then(|s| s.completion_time.as_ref())
                .is_some_and(|done| now.as_second() - done.0.as_second() >= delay.as_secs() as i64)
        })
        .map(|j| j.name_any())
        .collect()
}

/// Deletes what [`collectable`] names (a Job already gone or refused is left to the next pass).
pub async fn collect(ctx: &Context) -> Result<(), Error> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    for name in collectable(&ctx.jobs.state(), Timestamp::now(), ctx.config.job_gc_delay) {
        match api.delete(&name, &dp).await {
            Ok(_) | Err(kube::Error::Api(_)) => info!(job = %name, "collected a finished Job"),
            Err(source) => {
                return Err(Error::Api {
                    what: format!("deleting Job {name}"),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Collects every [`INTERVAL`] while this replica leads, until the process ends.
pub async fn run(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !ctx.leader.is_leader() {
            continue;
        }
        if let Err(error) = collect(&ctx).await {
            warn!(%error, "Job garbage collection failed; retrying on the next pass");
        }
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;
    use serde_json::json;

    use super::*;

    const NOW: &str = "2026-01-01T00:10:00Z";

    fn mk_job(condition: &str, completed: Option<&str>, deleting: bool) -> Arc<Job> {
        let mut status = json!({"conditions": [{"type": condition, "status": "True"}]});
        if let Some(t) = completed {
            status["completionTime"] = json!(t);
        }
        let mut metadata = json!({"name": "j", "namespace": "kmm-hub"});
        if deleting {
            metadata["deletionTimestamp"] = json!(NOW);
        }
        Arc::new(serde_json::from_value(json!({"metadata": metadata, "status": status})).unwrap())
    }

    #[rstest]
    #[case::succeeded_long_ago("Complete", Some("2026-01-01T00:00:00Z"), false, 60, true)]
    #[case::succeeded_just_now("Complete", Some("2026-01-01T00:09:30Z"), false, 60, false)]
    #[case::succeeded_exactly_at_the_delay("Complete", Some("2026-01-01T00:09:00Z"), false, 60, true)]
    #[case::no_delay("Complete", Some(NOW), false, 0, true)]
    #[case::succeeded_without_completion_time("Complete", None, false, 0, false)]
    #[case::already_being_deleted("Complete", Some("2026-01-01T00:00:00Z"), true, 0, false)]
    #[case::failed_jobs_stay("Failed", Some("2026-01-01T00:00:00Z"), false, 0, false)]
    #[case::running_jobs_stay("Suspended", None, false, 0, false)]
    fn which_jobs_go(
        #[case] condition: &str,
        #[case] completed: Option<&str>,
        #[case] deleting: bool,
        #[case] delay_seconds: u64,
        #[case] collected: bool,
    ) {
        let now: Timestamp = NOW.parse().unwrap();
        let jobs = [mk_job(condition, completed, deleting)];
        let got = collectable(&jobs, now, Duration::from_secs(delay_seconds));
        assert_eq!(!got.is_empty(), collected, "{got:?}");
    }

    #[test]
    fn only_the_newest_failed_jobs_are_kept() {
        let jobs: Vec<Arc<Job>> = (0..MAX_FAILED_JOBS_KEPT + 3)
            .map(|i| {
                let mut j = (*mk_job("Failed", None, false)).clone();
                j.metadata.name = Some(format!("j{i:03}"));
                j.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::from_second(1_700_000_000 + i as i64).unwrap(),
                ));
                Arc::new(j)
            })
            .collect();
        let now: Timestamp = NOW.parse().unwrap();
        let got = collectable(&jobs, now, Duration::from_secs(60));
        assert_eq!(got, ["j002", "j001", "j000"]);
    }
}
