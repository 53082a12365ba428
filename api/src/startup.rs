//! The first API call of kmm-hub and kmm-spoke, which checks that the CRDs are installed and the
//! account may read them. An answer that says so (404, 403, 401) ends the process with advice;
//! a throttled, failing or unreachable API server (429, 5xx, a refused connection while it
//! restarts) is waited out, so a process started during an apiserver hiccup does not crash-loop
//! with a misleading "are the CRDs installed?".

use std::{future::Future, time::Duration};

/// First and longest wait between attempts.
const FIRST_WAIT: Duration = Duration::from_millis(500);
const LONGEST_WAIT: Duration = Duration::from_secs(30);

/// Whether `error` may pass by itself: throttling, a server error, or no answer at all.
pub fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// Runs `attempt` until it succeeds or fails with an error that is not transient, waiting
/// longer after each transient failure (logged with `what`).
pub async fn until_answered<T, Fut>(what: &str, mut attempt: impl FnMut() -> Fut) -> Result<T, kube::Error>
where
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut wait = FIRST_WAIT;
    loop {
        match attempt().await {
            Err(error) if is_transient(&error) => {
                tracing::warn!(%error, retry_in = ?wait, "{what}: the API server did not answer yet; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(LONGEST_WAIT);
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use kube::core::Status;

    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(Status {
            code,
            ..Status::default()
        }))
    }

    #[test]
    fn throttling_and_server_errors_pass_missing_crds_and_refusals_do_not() {
        for code in [429, 500, 503, 504] {
            assert!(is_transient(&api(code)), "{code}");
        }
        for code in [400, 401, 403, 404, 422] {
            assert!(!is_transient(&api(code)), "{code}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_waited_out_and_a_final_one_is_returned() {
        let calls = AtomicU32::new(0);
        let answer = until_answered("listing", || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move { if n < 3 { Err(api(503)) } else { Ok(n) } }
        })
        .await;
        assert_eq!(answer.unwrap(), 3);
        let calls = AtomicU32::new(0);
        let answer: Result<(), _> = until_answered("listing", || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(api(404)) }
        })
        .await;
        assert!(matches!(answer, Err(kube::Error::Api(s)) if s.code == 404));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a missing CRD is not retried");
    }
}
