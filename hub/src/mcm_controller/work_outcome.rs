//! Reading a ManifestWork's outcome back (pure): whether the agent applied its latest generation,
//! whether applying failed, and the Module's node counts from the status feedback.
//!
//! Rules from OCM's behaviour: `Applied` counts only at the work's current generation; a missing
//! feedback value means 0 (the Module's counts are omitted when zero); `Available` only says the
//! Module object exists, so it is not "loaded".
//!
//! Spokes are less trusted than the hub, so every count is checked before it counts: an integer
//! (or a string holding one) from 0 to [`MAX_NODES`]; anything else counts 0 and makes the
//! cluster degraded with [`INVALID_FEEDBACK`]. A cluster's loaded count is capped at its desired
//! count, so one cluster cannot cover another's missing nodes in the fleet totals.

use kmm_api::ocm::{FieldValue, ManifestWork};

use super::desired::manifestwork::WORKERS_FAILING_FEEDBACK;
use crate::reason::Reason;

/// Most nodes one cluster may report (Kubernetes supports 5,000 per cluster; room to spare).
pub const MAX_NODES: i64 = 100_000;
/// The reason of a failure made of feedback values the hub refused.
pub const INVALID_FEEDBACK: &str = Reason::InvalidFeedback.as_str();
/// The counts read from the Module's status feedback.
const COUNTS: [&str; 3] = [
    "moduleLoader.desiredNumber",
    "moduleLoader.availableNumber",
    "moduleLoader.nodesMatchingSelectorNumber",
];

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
        .map(|c| (c.reason.clone(), c.message.clone()));
    let mut refused = Vec::new();
    let [desired, loaded, matching] = COUNTS.map(|name| {
        match values
            .iter()
            .find(|v| v.name == name)
            .map(|v| count(&v.field_value))
        {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(why)) => {
                refused.push(format!("{name} {why}"));
                0
            }
        }
    });
    let invalid = (!refused.is_empty()).then(|| {
        (
            INVALID_FEEDBACK.to_string(),
            format!("the spoke's Module status was refused: {}", refused.join("; ")),
        )
    });
    WorkOutcome {
        applied,
        failure: failure.or(invalid).or(workers_failing),
        nodes_desired: desired,
        nodes_loaded: loaded.min(desired),
        nodes_matching: matching,
    }
}

/// One count from the feedback, or why it does not count.
pub fn count(value: &FieldValue) -> Result<i64, String> {
    let n = match value.type_.as_str() {
        "Integer" => value.integer.ok_or("is an Integer without a value")?,
        "String" => {
            let s = value.string.as_deref().unwrap_or_default();
            s.parse()
                .map_err(|_| format!("is {:?}, not a number", kmm_api::text::head(s, 32)))?
        }
        other => {
            return Err(format!(
                "has type {:?}, not Integer",
                kmm_api::text::head(other, 32)
            ));
        }
    };
    if (0..=MAX_NODES).contains(&n) {
        Ok(n)
    } else {
        Err(format!("is {n}, outside 0..={MAX_NODES}"))
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

    fn fb(name: &str, value: serde_json::Value) -> serde_json::Value {
        json!({"name": name, "fieldValue": value})
    }

    #[rstest::rstest]
    #[case::negative_desired(json!({"type": "Integer", "integer": -5}), json!({"type": "Integer", "integer": 0}))]
    #[case::huge(json!({"type": "Integer", "integer": i64::MAX}), json!({"type": "Integer", "integer": i64::MAX}))]
    #[case::not_a_number(json!({"type": "String", "string": "lots"}), json!({"type": "Integer", "integer": 1}))]
    #[case::wrong_type(json!({"type": "Boolean", "boolean": true}), json!({"type": "Integer", "integer": 1}))]
    fn forged_counts_do_not_count_and_degrade_the_cluster(
        #[case] desired: serde_json::Value,
        #[case] loaded: serde_json::Value,
    ) {
        let w = work_outcome(&mk_work(
            1,
            json!([cond("Applied", "True", 1)]),
            json!([
                fb("moduleLoader.desiredNumber", desired),
                fb("moduleLoader.availableNumber", loaded)
            ]),
        ));
        assert!(w.nodes_desired >= 0 && w.nodes_desired <= MAX_NODES, "{w:?}");
        assert!(w.nodes_loaded <= w.nodes_desired, "{w:?}");
        assert_eq!(
            w.failure.as_ref().map(|f| f.0.as_str()),
            Some(INVALID_FEEDBACK),
            "{w:?}"
        );
    }

    #[test]
    fn a_cluster_cannot_report_more_loaded_than_desired() {
        let w = work_outcome(&mk_work(
            1,
            json!([cond("Applied", "True", 1)]),
            json!([
                fb(
                    "moduleLoader.desiredNumber",
                    json!({"type": "Integer", "integer": 1})
                ),
                fb(
                    "moduleLoader.availableNumber",
                    json!({"type": "Integer", "integer": 50})
                )
            ]),
        ));
        assert_eq!((w.nodes_desired, w.nodes_loaded), (1, 1));
        assert_eq!(w.failure, None);
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
