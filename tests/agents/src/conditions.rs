//! Kubernetes `Condition` bookkeeping shared by the agents.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Builds a condition; `lastTransitionTime` is filled by [`set_condition`].
pub(crate) fn condition(type_: &str, status: bool, reason: &str, message: impl Into<String>) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: None,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    }
}

/// Puts `new` into `conds` (keyed by type). The transition time of an existing condition with the
/// same status is kept, so rewriting an unchanged condition produces an identical list.
pub(crate) fn set_condition(conds: &mut Vec<Condition>, mut new: Condition) {
    match conds.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            new.last_transition_time = if old.status == new.status {
                old.last_transition_time.clone()
            } else {
                Time(k8s_openapi::jiff::Timestamp::now())
            };
            *old = new;
        }
        None => {
            new.last_transition_time = Time(k8s_openapi::jiff::Timestamp::now());
            conds.push(new);
        }
    }
}

/// Builds the condition list `wanted` keeping transition times from `previous` where the status
/// did not change. Types absent from `wanted` are dropped.
pub(crate) fn merge_conditions(previous: &[Condition], wanted: Vec<Condition>) -> Vec<Condition> {
    let mut out: Vec<Condition> = Vec::with_capacity(wanted.len());
    for w in wanted {
        let mut prev: Vec<Condition> = previous.iter().filter(|c| c.type_ == w.type_).cloned().collect();
        set_condition(&mut prev, w);
        out.extend(prev);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_status_keeps_transition_time_and_changed_status_moves_it() {
        let mut conds = vec![];
        set_condition(&mut conds, condition("Applied", true, "A", "m1"));
        let first = conds[0].last_transition_time.clone();
        assert_ne!(first.0, k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        std::thread::sleep(std::time::Duration::from_millis(5));
        set_condition(&mut conds, condition("Applied", true, "B", "m2"));
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, first);
        assert_eq!(conds[0].reason, "B");
        set_condition(&mut conds, condition("Applied", false, "C", "m3"));
        assert!(conds[0].last_transition_time.0 > first.0);
        assert_eq!(conds[0].status, "False");
    }

    #[test]
    fn merge_drops_types_not_wanted() {
        let prev = merge_conditions(
            &[],
            vec![condition("A", true, "r", ""), condition("B", true, "r", "")],
        );
        let next = merge_conditions(&prev, vec![condition("B", true, "r", "")]);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].type_, "B");
        assert_eq!(next[0].last_transition_time, prev[1].last_transition_time);
    }
}
