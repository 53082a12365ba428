//! A Job controller: one pod per attempt, retries up to `backoffLimit`, Complete / Failed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::daemonset::{controlled_by, is_ready, node_matches};
use crate::util::is_not_found;

/// Default `spec.backoffLimit`.
pub const DEFAULT_BACKOFF_LIMIT: i32 = 6;

/// `<job>-<5 random lowercase letters or digits>`.
pub fn pod_name(job: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = (0..5)
        .map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]))
        .collect();
    format!("{job}-{suffix}")
}

/// The first Node by name that carries every label of `selector`.
pub fn pick_node(nodes: &[Node], selector: &std::collections::BTreeMap<String, String>) -> Option<String> {
    let mut names: Vec<String> = nodes
        .iter()
        .filter(|n| node_matches(n, selector))
        .map(|n| n.name_any())
        .collect();
    names.sort();
    names.into_iter().next()
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Pod counts of one Job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub active: i32,
    pub ready: i32,
    pub succeeded: i32,
    pub failed: i32,
}

pub fn counts(pods: &[Pod]) -> Counts {
    let mut c = Counts::default();
    for p in pods {
        match phase(p) {
            "Succeeded" => c.succeeded += 1,
            "Failed" => c.failed += 1,
            _ if p.metadata.deletion_timestamp.is_none() => {
                c.active += 1;
                if is_ready(p) {
                    c.ready += 1;
                }
            }
            _ => {}
        }
    }
    c
}

/// What the controller does next for a Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Finished earlier; nothing to do.
    Done,
    /// Enough pods succeeded.
    Complete,
    /// More pods failed than `backoffLimit` allows.
    BackoffLimitExceeded,
    /// A pod is running; wait.
    Wait,
    /// Start a new pod (after the backoff).
    StartPod,
}

fn has_true(status: Option<&JobStatus>, type_: &str) -> bool {
    status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// Decides the next step from the Job's spec, status and pod counts (pods run one at a time).
pub fn next_step(job: &Job, c: Counts) -> Step {
    if has_true(job.status.as_ref(), "Complete") || has_true(job.status.as_ref(), "Failed") {
        return Step::Done;
    }
    let spec = job.spec.as_ref();
    let completions = spec.and_then(|s| s.completions).unwrap_or(1);
    let backoff_limit = spec
        .and_then(|s| s.backoff_limit)
        .unwrap_or(DEFAULT_BACKOFF_LIMIT);
    if c.succeeded >= completions {
        Step::Complete
    } else if c.failed > backoff_limit {
        Step::BackoffLimitExceeded
    } else if c.active > 0 {
        Step::Wait
    } else {
        Step::StartPod
    }
}

/// Delay before the attempt that follows `failed` failures: `base` doubled per failure, at most 10 s.
pub fn backoff_delay(base: Duration, failed: i32) -> Duration {
    if failed <= 0 {
        return Duration::ZERO;
    }
    let shift = u32::try_from(failed - 1).unwrap_or(0).min(16);
    (base * 2u32.pow(shift)).min(Duration::from_secs(10))
}

fn job_condition(type_: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.to_string(),
        status: "True".to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// The Job's status after `step`, keeping times already set.
pub fn job_status(job: &Job, c: Counts, step: &Step, now: Timestamp) -> JobStatus {
    let old = job.status.clone().unwrap_or_default();
    let positive = |n: i32| (n > 0).then_some(n);
    let mut s = JobStatus {
        start_time: old.start_time.clone().or(Some(Time(now))),
        completion_time: old.completion_time.clone(),
        active: positive(c.active),
        ready: Some(c.ready),
        succeeded: positive(c.succeeded),
        failed: positive(c.failed),
        conditions: old.conditions.clone(),
        ..old.clone()
    };
    let mut add = |cond: JobCondition| {
        let conds = s.conditions.get_or_insert_with(Vec::new);
        if !conds.iter().any(|x| x.type_ == cond.type_) {
            conds.push(cond);
        }
    };
    match step {
        Step::Complete => {
            add(job_condition(
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            ));
            add(job_condition(
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            ));
            s.completion_time = s.completion_time.or(Some(Time(now)));
            s.active = None;
        }
        Step::BackoffLimitExceeded => {
            add(job_condition(
                "FailureTarget",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
                now,
            ));
            add(job_condition(
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
                now,
            ));
            s.active = None;
        }
        _ => {}
    }
    s
}

/// The pod for the next attempt of `job`.
pub fn pod_for(job: &Job, node: Option<String>) -> Pod {
    let template = job.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let uid = job.uid().unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    for (k, v) in [
        ("job-name", job.name_any()),
        ("batch.kubernetes.io/job-name", job.name_any()),
        ("controller-uid", uid.clone()),
        ("batch.kubernetes.io/controller-uid", uid.clone()),
    ] {
        labels.insert(k.to_string(), v);
    }
    let mut spec = template.spec.unwrap_or_default();
    spec.node_name = node;
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&job.name_any())),
            namespace: job.namespace(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: Job::api_version(&()).into_owned(),
                kind: Job::kind(&()).into_owned(),
                name: job.name_any(),
                uid,
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// When each Job's failure count last grew, for the retry backoff.
#[derive(Debug, Default)]
pub(crate) struct JobMemory {
    failures: HashMap<String, (i32, Instant)>,
}

/// One pass over every Job of the cluster.
pub(crate) async fn sync_all(
    client: &Client,
    base_backoff: Duration,
    mem: &mut JobMemory,
) -> Result<(), kube::Error> {
    let jobs = Api::<Job>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let mut nodes: Option<Vec<Node>> = None;
    for job in &jobs {
        if job.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Err(e) = sync_one(client, job, base_backoff, mem, &mut nodes).await {
            tracing::warn!(job = %job.name_any(), error = %e, "Job sync failed");
        }
    }
    let live: std::collections::HashSet<String> = jobs.iter().filter_map(|j| j.uid()).collect();
    mem.failures.retain(|uid, _| live.contains(uid));
    Ok(())
}

async fn sync_one(
    client: &Client,
    job: &Job,
    base_backoff: Duration,
    mem: &mut JobMemory,
    nodes: &mut Option<Vec<Node>>,
) -> Result<(), kube::Error> {
    if matches!(next_step(job, Counts::default()), Step::Done) {
        return Ok(());
    }
    let ns = job.namespace().unwrap_or_default();
    let uid = job.uid().unwrap_or_default();
    let pods_api = Api::<Pod>::namespaced(client.clone(), &ns);
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels(&format!("controller-uid={uid}")))
        .await?
        .items
        .into_iter()
        .filter(|p| controlled_by(p, &uid))
        .collect();
    let c = counts(&pods);
    let step = next_step(job, c);
    let now = Timestamp::now();
    let seen = mem.failures.entry(uid.clone()).or_insert((0, Instant::now()));
    if c.failed > seen.0 {
        *seen = (c.failed, Instant::now());
    }
    let mut c_after = c;
    match step {
        Step::StartPod if seen.1.elapsed() >= backoff_delay(base_backoff, c.failed) => {
            if nodes.is_none() {
                *nodes = Some(
                    Api::<Node>::all(client.clone())
                        .list(&ListParams::default())
                        .await?
                        .items,
                );
            }
            let selector = job
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|s| s.node_selector.clone())
                .unwrap_or_default();
            let node = pick_node(nodes.as_deref().unwrap_or_default(), &selector);
            pods_api
                .create(
                    &PostParams {
                        field_manager: Some("job-controller".into()),
                        ..Default::default()
                    },
                    &pod_for(job, node),
                )
                .await?;
            c_after.active += 1;
        }
        Step::BackoffLimitExceeded => {
            for p in pods
                .iter()
                .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
            {
                match pods_api.delete(&p.name_any(), &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        _ => {}
    }
    let new = job_status(job, c_after, &step, now);
    if job.status.as_ref() != Some(&new) {
        let api = Api::<Job>::namespaced(client.clone(), &ns);
        // A merge patch keeps fields it does not mention: counts that dropped to zero are nulled.
        let mut status = serde_json::to_value(&new).map_err(kube::Error::SerdeError)?;
        if let Some(obj) = status.as_object_mut() {
            for key in ["active", "succeeded", "failed"] {
                obj.entry(key).or_insert(serde_json::Value::Null);
            }
        }
        let pp = PatchParams {
            field_manager: Some("job-controller".into()),
            ..Default::default()
        };
        api.patch_status(&job.name_any(), &pp, &Patch::Merge(&json!({"status": status})))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobSpec;
    use k8s_openapi::api::core::v1::PodStatus;

    fn job(backoff_limit: Option<i32>) -> Job {
        let mut j = Job::default();
        j.metadata.name = Some("pull".into());
        j.metadata.namespace = Some("kmm".into());
        j.metadata.uid = Some("u9".into());
        j.spec = Some(JobSpec {
            backoff_limit,
            ..Default::default()
        });
        j
    }

    fn pod_in(phase: &str) -> Pod {
        Pod {
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pod_name_has_a_five_char_lowercase_suffix_and_the_job_labels() {
        let j = job(None);
        let p = pod_for(&j, Some("n1".into()));
        let name = p.name_any();
        let suffix = name.strip_prefix("pull-").unwrap();
        assert_eq!(suffix.len(), 5);
        assert!(
            suffix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        for k in ["job-name", "batch.kubernetes.io/job-name"] {
            assert_eq!(p.labels().get(k).map(String::as_str), Some("pull"));
        }
        assert_eq!(p.labels().get("controller-uid").map(String::as_str), Some("u9"));
        assert!(controlled_by(&p, "u9"));
        assert_eq!(p.spec.unwrap().node_name.as_deref(), Some("n1"));
    }

    #[test]
    fn steps_follow_counts_and_backoff_limit() {
        let j = job(Some(1));
        assert_eq!(next_step(&j, counts(&[])), Step::StartPod);
        assert_eq!(next_step(&j, counts(&[pod_in("Running")])), Step::Wait);
        assert_eq!(next_step(&j, counts(&[pod_in("Failed")])), Step::StartPod);
        assert_eq!(
            next_step(&j, counts(&[pod_in("Failed"), pod_in("Failed")])),
            Step::BackoffLimitExceeded
        );
        assert_eq!(
            next_step(&j, counts(&[pod_in("Failed"), pod_in("Succeeded")])),
            Step::Complete
        );
        assert_eq!(
            next_step(&job(None), counts(&vec![pod_in("Failed"); 6])),
            Step::StartPod
        );
        assert_eq!(
            next_step(&job(None), counts(&vec![pod_in("Failed"); 7])),
            Step::BackoffLimitExceeded
        );
    }

    #[test]
    fn status_sets_conditions_and_times_once() {
        let mut j = job(Some(0));
        let t0 = Timestamp::from_second(1_000).unwrap();
        let c = counts(&[pod_in("Failed")]);
        let s = job_status(&j, c, &Step::BackoffLimitExceeded, t0);
        assert_eq!(s.failed, Some(1));
        assert_eq!(s.active, None);
        let failed = s
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Failed")
            .unwrap();
        assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
        assert_eq!(s.start_time, Some(Time(t0)));
        j.status = Some(s.clone());
        assert_eq!(next_step(&j, c), Step::Done);
        // A later pass keeps the start time.
        let again = job_status(&j, c, &Step::Done, Timestamp::from_second(2_000).unwrap());
        assert_eq!(again.start_time, Some(Time(t0)));

        let ok = job_status(&job(None), counts(&[pod_in("Succeeded")]), &Step::Complete, t0);
        assert_eq!(ok.succeeded, Some(1));
        assert_eq!(ok.completion_time, Some(Time(t0)));
        assert!(
            ok.conditions
                .unwrap()
                .iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        );
    }

    #[test]
    fn backoff_doubles_per_failure() {
        let b = Duration::from_millis(50);
        assert_eq!(backoff_delay(b, 0), Duration::ZERO);
        assert_eq!(backoff_delay(b, 1), b);
        assert_eq!(backoff_delay(b, 3), b * 4);
        assert_eq!(backoff_delay(b, 100), Duration::from_secs(10));
    }

    #[test]
    fn first_matching_node_by_name() {
        let node = |name: &str, l: &[(&str, &str)]| {
            let mut n = Node::default();
            n.metadata.name = Some(name.into());
            n.metadata.labels = Some(l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
            n
        };
        let nodes = vec![
            node("c", &[("gpu", "y")]),
            node("b", &[]),
            node("a", &[("gpu", "y")]),
        ];
        let sel = std::collections::BTreeMap::from([("gpu".to_string(), "y".to_string())]);
        assert_eq!(pick_node(&nodes, &sel).as_deref(), Some("a"));
        assert_eq!(pick_node(&nodes, &Default::default()).as_deref(), Some("a"));
        let none = std::collections::BTreeMap::from([("x".to_string(), "y".to_string())]);
        assert_eq!(pick_node(&nodes, &none), None);
    }
}
