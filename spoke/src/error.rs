//! Why a reconcile fails, what its bounded reason is, and when it is tried again.

use std::{sync::Arc, time::Duration};

use kube::runtime::{
    controller::{Action, Error as ControllerError},
    finalizer,
};
use thiserror::Error;

use crate::{context::SharedCtx, metrics::Metrics, reason::Reason};

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
