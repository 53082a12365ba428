//! Why a reconcile of an MCM failed, and when to look again.

use std::time::Duration;

use kube::runtime::finalizer;
use thiserror::Error;

use crate::reason::Reason;

/// Why a reconcile failed; [`Error::reason`] names it for logs and metrics.
#[derive(Debug, Error)]
pub enum Error {
    /// A call to the hub's API server failed (reads and writes alike).
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("serializing: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    #[error("waiting for {0} ManifestWorks to be removed from the spokes")]
    WorksRemaining(usize),
    /// The MCM does not parse: only the user can fix it.
    #[error("the object does not parse: {0}")]
    InvalidObject(String),
}

impl Error {
    /// Bounded name for logs and metrics.
    pub fn reason(&self) -> Reason {
        match self {
            Error::Api { .. } => Reason::WriteFailed,
            Error::Serialize(_) => Reason::SerializeFailed,
            Error::Finalizer(_) => Reason::FinalizerFailed,
            Error::WorksRemaining(_) => Reason::WaitingForSpokes,
            Error::InvalidObject(_) => Reason::InvalidObject,
        }
    }

    /// When to look again: an MCM that does not parse waits for the user to change it, waiting
    /// for spokes checks back a little later, anything else is retried soon.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::InvalidObject(_) => None,
            Error::WorksRemaining(_) => Some(Duration::from_secs(5)),
            _ => Some(Duration::from_secs(10)),
        }
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::unparsable_waits_for_a_change(Error::InvalidObject("bad".into()), Reason::InvalidObject, None)]
    #[case::spokes_are_checked_back_soon(Error::WorksRemaining(2), Reason::WaitingForSpokes, Some(5))]
    #[case::serializing_is_retried(
        Error::Serialize(serde_json::from_str::<u8>("x").unwrap_err()),
        Reason::SerializeFailed,
        Some(10)
    )]
    fn errors_name_their_reason_and_when_to_retry(
        #[case] error: Error,
        #[case] reason: Reason,
        #[case] seconds: Option<u64>,
    ) {
        assert_eq!(error.reason(), reason);
        assert_eq!(error.retry_after(), seconds.map(Duration::from_secs));
    }
}
