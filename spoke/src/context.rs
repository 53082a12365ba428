//! What every controller of the spoke shares: the client, the event recorder, settings, the
//! caches, and the error type of reconciles.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kmm_api::{Module, nmc::NodeModulesConfig};
use kube::{
    Client,
    core::DeserializeGuard,
    runtime::{
        controller::{Action, Error as ControllerError},
        events::{Event, EventType, Recorder},
        finalizer,
        reflector::Store,
    },
};
use thiserror::Error;
use tokio::sync::mpsc;

use crate::{
    metrics::Metrics,
    node_controller::desired::{ModuleKey, NodeSettings},
    reason::Reason,
    worker::pod::WorkerPodSettings,
};

/// Field manager of every write kmm-spoke makes.
pub const FIELD_MANAGER: &str = "kmm-spoke";

/// Everything that shapes what the spoke writes.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub node: NodeSettings,
    pub worker: WorkerPodSettings,
    /// Resync period of a healthy object.
    pub resync: Duration,
}

/// Shared by the reconciles.
pub struct Ctx {
    /// API client of the spoke cluster.
    pub client: Client,
    /// One recorder for every Event (so the API server can aggregate repeats).
    pub recorder: Recorder,
    /// Read-only settings.
    pub settings: Settings,
    /// Every Module (the Module controller's cache).
    pub modules: Store<DeserializeGuard<Module>>,
    /// Every Node (the node controller's cache).
    pub nodes: Store<Node>,
    /// Every NodeModulesConfig (a watch of its own): the Module controller's counts and
    /// finalizer release read it instead of listing.
    pub records: Store<NodeModulesConfig>,
    /// Tells the node controller to look at every node again (a Module changed).
    pub nodes_tx: mpsc::Sender<()>,
    /// Last (generation, deleting) seen per Module, to signal only real changes.
    pub seen_modules: Mutex<HashMap<ModuleKey, (Option<i64>, bool)>>,
    /// Per node, the keys of the once-per-key Events its last pass published or held back
    /// (`NodeEvent::once_per`), so a lasting state is reported once, not on every pass.
    pub reported_once: Mutex<HashMap<String, BTreeSet<String>>>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
}

impl Ctx {
    /// Every Module that parses.
    pub fn modules(&self) -> Vec<Module> {
        self.modules
            .state()
            .iter()
            .filter_map(|g| g.0.as_ref().ok().cloned())
            .collect()
    }
}

impl Ctx {
    /// Publishes one Event about `regarding` (its note cut to what the API server accepts); a
    /// failure is logged, never fatal: the state it reports is in status or the next pass.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: Reason,
        action: &str,
        note: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(kmm_api::event_note::note(note)),
            action: action.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, regarding).await {
            tracing::warn!(%error, %reason, object = ?regarding.name, "publishing an event failed");
        }
    }
}

/// Shared pointer to the context.
pub type SharedCtx = Arc<Ctx>;

/// Why a reconcile failed.
#[derive(Debug, Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("serializing {what}: {reason}")]
    Serialize { what: &'static str, reason: String },
    #[error("the object does not parse: {0}")]
    InvalidObject(String),
    #[error("the module is still loaded on {0} node(s); waiting for the unload workers")]
    StillLoaded(usize),
    /// The finalizer helper failed for a reason of its own (no name, a bad finalizer path).
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// The bounded reason for Events and metric labels.
    pub fn reason(&self) -> Reason {
        match self {
            Error::Api { .. } => Reason::ApiError,
            Error::Serialize { .. } => Reason::SerializeError,
            Error::InvalidObject(_) => Reason::InvalidObject,
            Error::StillLoaded(_) => Reason::StillLoaded,
            Error::Finalizer(_) => Reason::FinalizerError,
        }
    }

    /// The error a finalizer step ends with: the Apply or Cleanup step's own error as it is (so
    /// [`Error::reason`] and [`Error::retry_after`] see `StillLoaded` and the rest), the
    /// finalizer patches as API errors on `object`.
    pub fn from_finalizer(err: finalizer::Error<Error>, object: &str) -> Error {
        match err {
            finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
            finalizer::Error::AddFinalizer(source) => Error::Api {
                action: format!("adding the finalizer to {object}"),
                source,
            },
            finalizer::Error::RemoveFinalizer(source) => Error::Api {
                action: format!("removing the finalizer from {object}"),
                source,
            },
            other @ (finalizer::Error::UnnamedObject | finalizer::Error::InvalidFinalizer) => {
                Error::Finalizer(other.to_string())
            }
        }
    }

    /// Errors the user must fix wait for a change; the rest are retried soon.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::InvalidObject(_) => None,
            Error::StillLoaded(_) => Some(Duration::from_secs(5)),
            _ => Some(Duration::from_secs(2)),
        }
    }
}

/// The retry policy of both controllers: errors the user must fix wait for a change, the rest
/// come back after [`Error::retry_after`].
pub fn error_policy<K>(_object: Arc<K>, err: &Error, _ctx: SharedCtx) -> Action {
    requeue_for(err)
}

/// What comes after a failed reconcile ([`error_policy`] without the context it ignores).
pub fn requeue_for(err: &Error) -> Action {
    match err.retry_after() {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    }
}

/// Counts one reconcile of `controller` and, when it failed, its bounded reason (and logs it).
pub fn record_reconcile<T, E: std::fmt::Display>(
    metrics: &Metrics,
    controller: &'static str,
    result: &Result<T, ControllerError<Error, E>>,
) {
    metrics.reconciled(controller);
    if let Err(error) = result {
        let reason = match error {
            ControllerError::ReconcilerFailed(e, _) => e.reason(),
            ControllerError::QueueError(_) => Reason::WatchError,
            _ => Reason::Other,
        }
        .as_str();
        metrics.reconcile_failed(controller, reason);
        tracing::warn!(%error, reason, controller, "reconcile failed");
    }
}

/// Wraps a kube error with what was being done.
pub fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Api { action, source }
}

/// Whether a kube error is an API answer with this HTTP code.
pub fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == code)
}

#[cfg(test)]
mod tests {
    use kube::core::Status;
    use rstest::rstest;

    use super::*;

    fn api_error() -> kube::Error {
        kube::Error::Api(Box::new(Status::failure("conflict", "Conflict").with_code(409)))
    }

    fn still_loaded() -> Error {
        Error::StillLoaded(2)
    }

    fn invalid() -> Error {
        Error::InvalidObject("spec: missing field".into())
    }

    #[rstest]
    #[case::still_loaded(still_loaded(), "StillLoaded", Some(5))]
    #[case::invalid_object(invalid(), "InvalidObject", None)]
    #[case::api(kube_err("reading")(api_error()), "ApiError", Some(2))]
    #[case::serialize(Error::Serialize { what: "x", reason: "y".into() }, "SerializeError", Some(2))]
    #[case::cleanup_still_loaded(
        Error::from_finalizer(finalizer::Error::CleanupFailed(still_loaded()), "Module drivers/m"),
        "StillLoaded",
        Some(5)
    )]
    #[case::apply_invalid(
        Error::from_finalizer(finalizer::Error::ApplyFailed(invalid()), "Module drivers/m"),
        "InvalidObject",
        None
    )]
    #[case::add_finalizer(
        Error::from_finalizer(finalizer::Error::AddFinalizer(api_error()), "Module drivers/m"),
        "ApiError",
        Some(2)
    )]
    #[case::remove_finalizer(
        Error::from_finalizer(finalizer::Error::RemoveFinalizer(api_error()), "Module drivers/m"),
        "ApiError",
        Some(2)
    )]
    #[case::unnamed(
        Error::from_finalizer(finalizer::Error::UnnamedObject, "Module drivers/m"),
        "FinalizerError",
        Some(2)
    )]
    fn each_error_has_its_reason_and_retry(
        #[case] err: Error,
        #[case] reason: &str,
        #[case] retry_secs: Option<u64>,
    ) {
        assert_eq!(err.reason(), reason);
        assert_eq!(err.retry_after(), retry_secs.map(Duration::from_secs));
    }

    #[test]
    fn the_error_policy_requeues_still_loaded_after_five_seconds_and_waits_on_invalid_objects() {
        assert_eq!(
            requeue_for(&Error::from_finalizer(
                finalizer::Error::CleanupFailed(still_loaded()),
                "Module drivers/m"
            )),
            Action::requeue(Duration::from_secs(5))
        );
        assert_eq!(requeue_for(&invalid()), Action::await_change());
    }

    #[test]
    fn a_finalizer_patch_error_names_what_was_patched() {
        let err = Error::from_finalizer(finalizer::Error::RemoveFinalizer(api_error()), "Module drivers/m");
        assert!(
            err.to_string()
                .starts_with("removing the finalizer from Module drivers/m: "),
            "{err}"
        );
    }
}
