//! Ordered upgrade, as a pure decision (upstream's action table): which version label to change
//! on a node for one Module, given the user's label and the two labels kmm-spoke maintains.
//!
//! - `M` = `kmm.node.kubernetes.io/version-module.<ns>.<name>`: set by the user to ask for a version;
//! - `W` = `beta.kmm.node.kubernetes.io/version-worker-pod.<ns>.<name>`: the version the worker may load;
//! - `S` = `beta.kmm.node.kubernetes.io/version-schedule-pod.<ns>.<name>`: the version the device
//!   plugin may run.
//!
//! One step at a time, so an upgrade goes: S removed, plugin pod gone, W removed, module unloaded
//! (ready label gone), W = new version, module loaded, S = new version, plugin back.

/// What to do to a node's version labels for one Module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionAction {
    /// Nothing to change.
    Keep,
    /// Remove the schedule label `S` (stops the device plugin).
    DeleteSchedule,
    /// Remove the worker label `W` (the module gets unloaded).
    DeleteWorker,
    /// Set `W` to this version (the module gets loaded).
    SetWorker(String),
    /// Set `S` to this version (the device plugin may run).
    SetSchedule(String),
    /// Wait: a device plugin pod still runs, or the old module is still loaded.
    Requeue,
}

/// The labels' values on one node, and what else on that node gates the next step.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeVersionState<'a> {
    /// `M`, the user's label.
    pub requested: Option<&'a str>,
    /// `W`.
    pub worker: Option<&'a str>,
    /// `S`.
    pub schedule: Option<&'a str>,
    /// A device plugin (or DRA) pod of this Module runs on the node.
    pub plugin_pod_running: bool,
    /// The Module's ready label is on the node (a version is still loaded).
    pub module_ready: bool,
}

/// The next step for one Module on one node.
pub fn next_action(state: NodeVersionState<'_>) -> VersionAction {
    let NodeVersionState {
        requested,
        worker,
        schedule,
        plugin_pod_running,
        module_ready,
    } = state;
    let delete_worker = || {
        if plugin_pod_running {
            VersionAction::Requeue
        } else {
            VersionAction::DeleteWorker
        }
    };
    match (requested, worker, schedule) {
        (None, None, None) => VersionAction::Keep,
        (None, Some(_), Some(_)) => VersionAction::DeleteSchedule,
        (None, Some(_), None) => delete_worker(),
        (Some(m), None, None) => {
            if module_ready {
                VersionAction::Requeue
            } else {
                VersionAction::SetWorker(m.to_owned())
            }
        }
        (Some(m), Some(w), None) if w == m => VersionAction::SetSchedule(m.to_owned()),
        (Some(m), Some(w), Some(s)) if w == m && s == m => VersionAction::Keep,
        (Some(m), Some(w), Some(s)) if w != m && s != m => VersionAction::DeleteSchedule,
        (Some(m), Some(w), None) if w != m => delete_worker(),
        _ => VersionAction::Keep,
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::{VersionAction::*, *};

    fn state<'a>(m: Option<&'a str>, w: Option<&'a str>, s: Option<&'a str>) -> NodeVersionState<'a> {
        NodeVersionState {
            requested: m,
            worker: w,
            schedule: s,
            ..Default::default()
        }
    }

    #[rstest]
    #[case(None, None, None, Keep)]
    #[case(None, Some("v1"), Some("v1"), DeleteSchedule)]
    #[case(None, Some("v1"), None, DeleteWorker)]
    #[case(Some("v2"), None, None, SetWorker("v2".into()))]
    #[case(Some("v2"), Some("v2"), None, SetSchedule("v2".into()))]
    #[case(Some("v2"), Some("v2"), Some("v2"), Keep)]
    #[case(Some("v2"), Some("v1"), Some("v1"), DeleteSchedule)]
    #[case(Some("v2"), Some("v1"), None, DeleteWorker)]
    // combinations outside the table are left alone
    #[case(Some("v2"), None, Some("v1"), Keep)]
    #[case(Some("v2"), Some("v2"), Some("v1"), Keep)]
    #[case(None, None, Some("v1"), Keep)]
    fn follows_the_action_table(
        #[case] m: Option<&str>,
        #[case] w: Option<&str>,
        #[case] s: Option<&str>,
        #[case] want: VersionAction,
    ) {
        assert_eq!(next_action(state(m, w, s)), want);
    }

    #[test]
    fn worker_label_stays_while_a_plugin_pod_runs() {
        let running = |m, w| NodeVersionState {
            plugin_pod_running: true,
            ..state(m, w, None)
        };
        assert_eq!(next_action(running(None, Some("v1"))), Requeue);
        assert_eq!(next_action(running(Some("v2"), Some("v1"))), Requeue);
    }

    #[test]
    fn new_version_waits_until_the_old_module_is_unloaded() {
        let loaded = NodeVersionState {
            module_ready: true,
            ..state(Some("v2"), None, None)
        };
        assert_eq!(next_action(loaded), Requeue);
    }

    /// Walks a whole upgrade from v1 to v2 through the table, simulating the other controllers.
    #[test]
    fn a_full_upgrade_converges_in_order() {
        let (mut w, mut s) = (Some("v1".to_owned()), Some("v1".to_owned()));
        let (mut plugin, mut ready) = (true, true);
        let mut steps = Vec::new();
        for _ in 0..10 {
            let action = next_action(NodeVersionState {
                requested: Some("v2"),
                worker: w.as_deref(),
                schedule: s.as_deref(),
                plugin_pod_running: plugin,
                module_ready: ready,
            });
            steps.push(action.clone());
            match action {
                DeleteSchedule => (s, plugin) = (None, false),
                DeleteWorker => (w, ready) = (None, false),
                SetWorker(v) => (w, ready) = (Some(v), true),
                SetSchedule(v) => (s, plugin) = (Some(v), true),
                Requeue => unreachable!("the simulated controllers act at once"),
                Keep => break,
            }
        }
        assert_eq!(
            steps,
            [
                DeleteSchedule,
                DeleteWorker,
                SetWorker("v2".into()),
                SetSchedule("v2".into()),
                Keep
            ]
        );
    }
}
