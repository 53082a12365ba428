//! Reading a ManifestWork's outcome back (pure): whether the agent applied its latest generation,
//! whether applying failed, and the Module's node counts from the status feedback.
//!
//! Rules from OCM's behaviour: `Applied` counts only at the work's current generation; a missing
//! feedback value means 0 (the Module's counts are omitted when zero); `Available` only says the
//! Module object exists, so it is not "loaded".

use kmm_api::ocm::{FieldValue, ManifestWork};

use super::desired::manifestwork::WORKERS_FAILING_FEEDBACK;
use crate::reason::Reason;

/// What one cluster's ManifestWork says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkOutcome {
    /// The agent applied the work's current generation.
    pub applied: bool,
    /// The agent failed to apply, or to read feedback: `(reason, message)` of the failing condition.
    pub failure: Option<(String, String)>,
    /// `moduleLoader.desiredNumber` on the spoke.
    pub nodes_desired: i64,
    /// `moduleLoader.availableNumber` on the spoke.
    pub nodes_loaded: i64,
    /// `moduleLoader.nodesMatchingSelectorNumber` on the spoke.
    pub nodes_matching: i64,
}

/// Reads a ManifestWork's conditions and feedback.
pub fn work_outcome(work: &ManifestWork) -> WorkOutcome {
    let generation = work.metadata.generation;
    let status = work.status.as_ref();
    let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let applied = conditions.iter().any(|c| {
        c.type_ == "Applied"
            && c.status == "True"
            && (generation.is_none() || c.observed_generation == generation)
    });
    let manifest = status
        .and_then(|s| s.resource_status.as_ref())
        .and_then(|r| r.manifests.first());
    let values = manifest
        .and_then(|m| m.status_feedback.as_ref())
        .map(|f| f.values.as_slice())
        .unwrap_or_default();
    // Applying failed, or else the spoke's workers fail to load or unload the module.
    let workers_failing = values
        .iter()
        .find(|v| v.name == WORKERS_FAILING_FEEDBACK)
        .and_then(|v| v.field_value.string.clone())
        .filter(|m| !m.is_empty())
        .map(|m| (Reason::LoadFailed.to_string(), m));
    let failure = conditions
        .iter()
        .chain(manifest.map(|m| m.conditions.as_slice()).unwrap_or_default())
        .find(|c| matches!(c.type_.as_str(), "Applied" | "StatusFeedbackSynced") && c.status == "False")
        .map(|c| (c.reason.clone(), c.message.clone()))
        .or(workers_failing);
    let count = |name: &str| {
        values
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| integer(&v.field_value))
            .unwrap_or(0)
    };
    WorkOutcome {
        applied,
        failure,
        nodes_desired: count("moduleLoader.desiredNumber"),
        nodes_loaded: count("moduleLoader.availableNumber"),
        nodes_matching: count("moduleLoader.nodesMatchingSelectorNumber"),
    }
}

fn integer(value: &FieldValue) -> Option<i64> {
    match value.type_.as_str() {
        "Integer" => value.integer,
        "String" => value.string.as_deref().and_then(|s| s.parse().ok()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn mk_work(generation: i64, conditions: serde_json::Value, feedback: serde_json::Value) -> ManifestWork {
        serde_json::from_value(json!({
            "apiVersion": "work.open-cluster-management.io/v1", "kind": "ManifestWork",
            "metadata": {"name": "m", "namespace": "c", "generation": generation},
            "spec": {"workload": {"manifests": []}},
            "status": {"conditions": conditions,
                       "resourceStatus": {"manifests": [{"resourceMeta": {"ordinal": 0}, "conditions": [],
                                                          "statusFeedback": {"values": feedback}}]}}
        }))
        .unwrap()
    }

    fn cond(type_: &str, status: &str, generation: i64) -> serde_json::Value {
        json!({"type": type_, "status": status, "reason": "R", "message": format!("{type_} is {status}"),
               "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": generation})
    }

    #[test]
    fn applied_only_at_the_current_generation() {
        assert!(work_outcome(&mk_work(2, json!([cond("Applied", "True", 2)]), json!([]))).applied);
        assert!(!work_outcome(&mk_work(3, json!([cond("Applied", "True", 2)]), json!([]))).applied);
        assert!(!work_outcome(&mk_work(2, json!([cond("Available", "True", 2)]), json!([]))).applied);
    }

    #[test]
    fn failures_carry_reason_and_message() {
        let outcome = work_outcome(&mk_work(1, json!([cond("Applied", "False", 1)]), json!([])));
        assert_eq!(outcome.failure, Some(("R".into(), "Applied is False".into())));
        assert!(!outcome.applied);
    }

    #[test]
    fn the_spokes_failing_workers_are_a_load_failure_after_apply_failures() {
        let feedback = json!([
            {"name": "moduleLoader.workersFailing",
             "fieldValue": {"type": "String", "string": "1 node(s) failing; n1: Required key not available"}}
        ]);
        let applied = work_outcome(&mk_work(1, json!([cond("Applied", "True", 1)]), feedback.clone()));
        assert!(applied.applied);
        assert_eq!(
            applied.failure,
            Some((
                "LoadFailed".into(),
                "1 node(s) failing; n1: Required key not available".into()
            ))
        );
        let not_applied = work_outcome(&mk_work(1, json!([cond("Applied", "False", 1)]), feedback));
        assert_eq!(not_applied.failure, Some(("R".into(), "Applied is False".into())));
        let empty =
            json!([{"name": "moduleLoader.workersFailing", "fieldValue": {"type": "String", "string": ""}}]);
        assert_eq!(
            work_outcome(&mk_work(1, json!([cond("Applied", "True", 1)]), empty)).failure,
            None
        );
    }

    #[test]
    fn missing_feedback_counts_as_zero() {
        let feedback = json!([
            {"name": "moduleLoader.availableNumber", "fieldValue": {"type": "Integer", "integer": 3}},
            {"name": "moduleLoader.desiredNumber", "fieldValue": {"type": "Integer", "integer": 4}}
        ]);
        let outcome = work_outcome(&mk_work(1, json!([cond("Applied", "True", 1)]), feedback));
        assert_eq!(
            (
                outcome.nodes_loaded,
                outcome.nodes_desired,
                outcome.nodes_matching
            ),
            (3, 4, 0)
        );
    }
}
