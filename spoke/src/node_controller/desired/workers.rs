//! Step 3 (pure): per Module, which worker pod should run now. Compares the record's spec with
//! what is loaded, then with the pod already there: start one, replace a stale pending one,
//! retry a failed one after its backoff, or leave it.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kmm_api::nmc::{ModuleConfig, ModuleItem, NodeModuleSpec, NodeModuleStatus};
use kube::ResourceExt;

use super::{ModuleKey, NodeEvent, NodeSettings, PodPlan, doing, earliest, pods::PodState};
use crate::{
    reason::Reason,
    worker::{pod_state, run::Action},
};

/// The worker pods to delete and start on the node.
#[derive(Debug, Default)]
pub struct WorkerPlan {
    /// Pods to delete first, `(namespace, name)`.
    pub delete_pods: Vec<(String, String)>,
    /// The failed pods among `delete_pods`, with their action.
    pub failed_pods: Vec<((String, String), Action)>,
    /// Pods to create after the deletions.
    pub create_pods: Vec<PodPlan>,
    pub events: Vec<NodeEvent>,
    /// When the first failed pod's backoff ends.
    pub wait: Option<Duration>,
}

/// Delay before retry number `attempt + 1`.
pub fn backoff(settings: &NodeSettings, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
    settings
        .backoff_base
        .saturating_mul(factor)
        .min(settings.backoff_max)
}

/// The worker step. `status` loses the entries of a boot that is over (nothing is left to
/// unload).
pub fn workers(
    spec: &BTreeMap<ModuleKey, NodeModuleSpec>,
    status: &mut BTreeMap<ModuleKey, NodeModuleStatus>,
    states: &BTreeMap<ModuleKey, PodState<'_>>,
    boot_id: Option<&str>,
    now: Timestamp,
    settings: &NodeSettings,
) -> WorkerPlan {
    let mut out = WorkerPlan::default();
    let keys: BTreeSet<ModuleKey> = spec
        .keys()
        .chain(status.keys())
        .chain(states.keys())
        .cloned()
        .collect();
    for key in keys {
        let want = wanted_worker(&key, spec, status, boot_id);
        match (states.get(&key), want) {
            (None, Some(want)) => out.create_pods.push(want),
            (None, None) => {}
            (Some(PodState::InFlight { pod, pending }), want) => {
                let stale = want.as_ref().is_none_or(|w| !runs(pod, w));
                if *pending && stale && pod.metadata.deletion_timestamp.is_none() {
                    out.delete_pods.push((key.0.clone(), pod.name_any()));
                }
            }
            (
                Some(PodState::Failed {
                    pod,
                    attempt,
                    finished,
                    message,
                }),
                want,
            ) => {
                let failed = Failed {
                    pod,
                    attempt: *attempt,
                    finished: *finished,
                    message,
                };
                failed.next(&key, want, now, settings, &mut out);
            }
        }
    }
    out
}

/// The worker the record asks for: load what the spec wants and is not loaded (or was loaded
/// in an earlier boot); unload a loaded version first when the kernel is the same.
fn wanted_worker(
    key: &ModuleKey,
    spec: &BTreeMap<ModuleKey, NodeModuleSpec>,
    status: &mut BTreeMap<ModuleKey, NodeModuleStatus>,
    boot_id: Option<&str>,
) -> Option<PodPlan> {
    let rebooted =
        |st: &NodeModuleStatus| st.boot_id.is_some() && boot_id.is_some() && st.boot_id.as_deref() != boot_id;
    match (spec.get(key), status.get(key)) {
        (Some(s), None) => Some(plan(Action::Load, &s.item, &s.config)),
        (Some(s), Some(st)) => match &st.config {
            None => Some(plan(Action::Load, &s.item, &s.config)),
            Some(loaded) if loaded != &s.config => {
                if loaded.kernel_version == s.config.kernel_version {
                    Some(plan(Action::Unload, &st.item, loaded))
                } else {
                    Some(plan(Action::Load, &s.item, &s.config))
                }
            }
            Some(_) if rebooted(st) => Some(plan(Action::Load, &s.item, &s.config)),
            Some(_) => None,
        },
        (None, Some(st)) => {
            if rebooted(st) {
                // Rebooted since it was loaded: nothing of it is left to unload.
                status.remove(key);
                None
            } else {
                st.config.as_ref().map(|c| plan(Action::Unload, &st.item, c))
            }
        }
        (None, None) => None,
    }
}

/// Whether `pod` runs the worker `want` describes.
fn runs(pod: &Pod, want: &PodPlan) -> bool {
    pod_state::action(pod) == Some(want.action) && pod_state::config(pod).as_ref() == Some(&want.config)
}

/// A failed worker pod of one Module.
struct Failed<'a> {
    pod: &'a Pod,
    attempt: u32,
    finished: Option<Timestamp>,
    message: &'a str,
}

impl Failed<'_> {
    /// The same worker is retried once its backoff has passed; a different one (or none)
    /// replaces it now.
    fn next(
        &self,
        key: &ModuleKey,
        want: Option<PodPlan>,
        now: Timestamp,
        settings: &NodeSettings,
        out: &mut WorkerPlan,
    ) {
        match want {
            Some(mut want) if runs(self.pod, &want) => {
                let wait = backoff(settings, self.attempt);
                let since = self
                    .finished
                    .map(|f| now.duration_since(f).unsigned_abs())
                    .unwrap_or(Duration::ZERO);
                if since < wait {
                    out.wait = earliest(out.wait, wait - since);
                    return;
                }
                out.events.push(NodeEvent::warning(
                    Reason::WorkerFailed,
                    format!(
                        "{} of {}/{} failed (attempt {}), retrying: {}",
                        doing(want.action),
                        key.0,
                        key.1,
                        self.attempt + 1,
                        self.message
                    ),
                ));
                self.delete(key, out);
                want.attempt = self.attempt + 1;
                want.last_failure = Some(self.message.to_owned());
                out.create_pods.push(want);
            }
            Some(want) => {
                self.delete(key, out);
                out.create_pods.push(want);
            }
            None => self.delete(key, out),
        }
    }

    fn delete(&self, key: &ModuleKey, out: &mut WorkerPlan) {
        let pod_ref = (key.0.clone(), self.pod.name_any());
        if let Some(action) = pod_state::action(self.pod) {
            out.failed_pods.push((pod_ref.clone(), action));
        }
        out.delete_pods.push(pod_ref);
    }
}

fn plan(action: Action, item: &ModuleItem, config: &ModuleConfig) -> PodPlan {
    PodPlan {
        last_failure: None,
        action,
        item: item.clone(),
        config: config.clone(),
        attempt: 0,
    }
}
