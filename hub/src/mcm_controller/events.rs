//! Events on MCMs, as data: the steps decide which to publish ([`Announcement`]s), and
//! [`publish`] is the one place that sends them (one shared recorder, so repeats aggregate).

use std::collections::BTreeSet;

use k8s_openapi::api::{batch::v1::Job, core::v1::ObjectReference};
use kmm_api::ManagedClusterModuleStatus;
use kube::{
    ResourceExt,
    runtime::{
        events::{Event, EventType},
        reflector::{ObjectRef, Store},
    },
};
use tracing::warn;

use super::{Context, build::FailedJob};
use crate::reason::Reason;

/// The action of Events that need no series of their own.
const DEFAULT_ACTION: &str = "Reconcile";

/// One Event to publish on the MCM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub type_: EventType,
    /// A [`Reason`], or the reason of a cluster's problem as its work agent reported it.
    pub reason: String,
    pub note: String,
    /// The Event's action. The recorder folds Events with the same type, reason, action and
    /// object into one series and keeps the first note, so an Event whose note must show each
    /// time (a rollout wave) needs an action of its own.
    pub action: String,
}

impl Announcement {
    /// A Normal Event about something the hub did.
    pub fn normal(reason: Reason, note: impl Into<String>) -> Self {
        Self {
            type_: EventType::Normal,
            reason: reason.to_string(),
            note: note.into(),
            action: DEFAULT_ACTION.into(),
        }
    }

    /// This Announcement with its own `action` (see [`Announcement::action`]).
    pub fn with_action(self, action: impl Into<String>) -> Self {
        Self {
            action: action.into(),
            ..self
        }
    }

    /// A Warning Event about the MCM itself.
    pub fn warning(reason: Reason, note: impl Into<String>) -> Self {
        Self {
            type_: EventType::Warning,
            ..Self::normal(reason, note)
        }
    }
}

/// What an Event says about a problem. Events of cluster-scoped MCMs land in `default`, which
/// more people read than the MCM: a failed Job's output (its log tail) stays in status only.
fn event_message(p: &kmm_api::ClusterProblem) -> String {
    let job_failed = [Reason::BuildFailed, Reason::SignFailed]
        .iter()
        .any(|r| r.as_str() == p.reason);
    if job_failed {
        let head = p.message.split(" failed:").next().unwrap_or_default();
        format!("{head} failed; its output is in the MCM's status.problems")
    } else {
        p.message.clone()
    }
}

/// Warning Events for clusters that newly need attention: listed in `new` and not (with the same
/// reason) in `old`. Only listed problems count, so there are at most `MAX_PROBLEMS`.
pub fn new_problems(
    old: Option<&ManagedClusterModuleStatus>,
    new: &ManagedClusterModuleStatus,
) -> Vec<Announcement> {
    let old: BTreeSet<(&str, &str)> = old
        .iter()
        .flat_map(|s| s.problems.iter().map(|p| (p.cluster.as_str(), p.reason.as_str())))
        .collect();
    new.problems
        .iter()
        .filter(|p| !old.contains(&(p.cluster.as_str(), p.reason.as_str())))
        .map(|p| Announcement {
            type_: EventType::Warning,
            reason: p.reason.clone(),
            note: format!("cluster {}: {}", p.cluster, event_message(p)),
            action: DEFAULT_ACTION.into(),
        })
        .collect()
}

/// Warning Events regarding failed Jobs, carrying their output: Events about a cluster-scoped
/// MCM can only live in `default` (the API server requires it), so the output goes to an Event
/// about the Job, in the hub's namespace, readable by whoever may read the Job. One per Job
/// whose failure newly shows in the MCM's problems (the message names the Job), so a kept failed
/// Job is announced once, not on every reconcile.
pub fn failed_job_events(
    old: Option<&ManagedClusterModuleStatus>,
    new: &ManagedClusterModuleStatus,
    failed: &[FailedJob],
) -> Vec<(String, Announcement)> {
    // The reason of the problem naming the Job (`Job <namespace>/<name> for ...`), if listed.
    let named = |s: &ManagedClusterModuleStatus, job: &str| -> Option<Reason> {
        let needle = format!("/{job} ");
        s.problems.iter().find_map(|p| {
            [Reason::BuildFailed, Reason::SignFailed]
                .into_iter()
                .find(|r| r.as_str() == p.reason && p.message.contains(&needle))
        })
    };
    failed
        .iter()
        .filter(|f| old.and_then(|o| named(o, &f.name)).is_none())
        .filter_map(|f| {
            let reason = named(new, &f.name)?;
            let note = format!("Job {} failed: {}", f.name, f.output);
            Some((f.name.clone(), Announcement::warning(reason, note)))
        })
        .collect()
}

/// The reference of the Job `name` in the hub namespace (with its uid when the store has it).
pub fn job_reference(namespace: &str, name: &str, jobs: &Store<Job>) -> ObjectReference {
    let uid = jobs
        .get(&ObjectRef::new(name).within(namespace))
        .and_then(|j| j.uid());
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        uid,
        ..Default::default()
    }
}

/// Publishes `events` on the object `reference` names; a failure is logged, never fatal (Events are best effort).
pub async fn publish(ctx: &Context, reference: &ObjectReference, events: Vec<Announcement>) {
    for a in events {
        let event = Event {
            type_: a.type_,
            reason: a.reason,
            note: Some(kmm_api::event_note::note(&a.note)),
            action: a.action,
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, reference).await {
            warn!(error = %e, "could not publish an Event");
        }
    }
}

#[cfg(test)]
mod tests {
    use kmm_api::ClusterProblem;

    use super::*;

    fn status(problems: &[(&str, &str)]) -> ManagedClusterModuleStatus {
        ManagedClusterModuleStatus {
            problems: problems
                .iter()
                .map(|(cluster, reason)| ClusterProblem {
                    cluster: cluster.to_string(),
                    state: "Blocked".into(),
                    reason: reason.to_string(),
                    message: "m".into(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_new_cluster_reason_pairs_are_announced() {
        let old = status(&[("a", "ImageNotFound"), ("b", "BuildFailed")]);
        let new = status(&[("a", "ImageNotFound"), ("b", "Building"), ("c", "LoadFailed")]);
        let got: Vec<(EventType, String, String)> = new_problems(Some(&old), &new)
            .into_iter()
            .map(|a| (a.type_, a.reason, a.note))
            .collect();
        assert_eq!(
            got,
            [
                (
                    EventType::Warning,
                    "Building".to_string(),
                    "cluster b: m".to_string()
                ),
                (
                    EventType::Warning,
                    "LoadFailed".to_string(),
                    "cluster c: m".to_string()
                ),
            ]
        );
        assert_eq!(new_problems(None, &status(&[("a", "X")])).len(), 1);
        assert!(new_problems(Some(&new), &new).is_empty());
    }

    #[test]
    fn a_failed_jobs_output_stays_out_of_events() {
        let new = ManagedClusterModuleStatus {
            problems: vec![ClusterProblem {
                cluster: "c".into(),
                state: "Blocked".into(),
                reason: Reason::BuildFailed.to_string(),
                message:
                    "Job kmm-hub/kmm-build-1 for reg/x:1 failed: STEP 3: secret-token=abc (fix the cause...)"
                        .into(),
            }],
            ..Default::default()
        };
        let events = new_problems(None, &new);
        assert_eq!(events.len(), 1);
        assert!(!events[0].note.contains("secret-token"), "{}", events[0].note);
        assert!(events[0].note.contains("kmm-build-1"), "{}", events[0].note);
    }

    /// Issue 13 finding 8: the output goes to one Event about the Job, only when its failure is
    /// new in the MCM's problems; the MCM's own Event stays without it.
    #[test]
    fn a_failed_jobs_output_goes_once_to_an_event_about_the_job() {
        let problem = |reason: Reason| ManagedClusterModuleStatus {
            problems: vec![ClusterProblem {
                cluster: "c".into(),
                state: "Blocked".into(),
                reason: reason.to_string(),
                message: "Job kmm-hub/kmm-sign-1 for reg/x:1 failed: bad key (fix the cause...)".into(),
            }],
            ..Default::default()
        };
        let failed = [FailedJob {
            name: "kmm-sign-1".into(),
            output: "sign-file: bad key".into(),
        }];
        let new = problem(Reason::SignFailed);
        let events = failed_job_events(None, &new, &failed);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, "kmm-sign-1");
        assert_eq!(events[0].1.reason, "SignFailed");
        assert_eq!(events[0].1.type_, EventType::Warning);
        assert!(
            events[0].1.note.contains("sign-file: bad key"),
            "{}",
            events[0].1.note
        );
        assert!(
            failed_job_events(Some(&new), &new, &failed).is_empty(),
            "announced once"
        );
        assert!(
            failed_job_events(Some(&problem(Reason::Signing)), &status(&[]), &failed).is_empty(),
            "not listed, not announced"
        );
        let other = [FailedJob {
            name: "kmm-sign-10".into(),
            output: "x".into(),
        }];
        assert!(
            failed_job_events(None, &new, &other).is_empty(),
            "names match whole"
        );
    }
}
