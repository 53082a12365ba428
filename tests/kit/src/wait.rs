//! Waiting for a condition: a check is polled until it holds or a bound passes. The bound is
//! there so a broken component fails its test instead of hanging it; it is no speed check.

use std::{
    future::Future,
    time::{Duration, Instant},
};

/// What a check answers: `true`, or `Some(value)`, ends the wait.
pub trait Done {
    /// What the wait gives back.
    type Value;
    /// The value once the check holds.
    fn done(self) -> Option<Self::Value>;
}

impl Done for bool {
    type Value = ();
    fn done(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Done for Option<T> {
    type Value = T;
    fn done(self) -> Option<T> {
        self
    }
}

/// How often a check runs: a two-hundredth of the bound, between 50 and 250 ms (quick on the
/// in-memory simulator, gentle on a real apiserver).
fn interval(timeout: Duration) -> Duration {
    (timeout / 200).clamp(Duration::from_millis(50), Duration::from_millis(250))
}

/// Polls `check` until it holds (its value) or `timeout` passes (`None`).
pub async fn poll<F, Fut>(timeout: Duration, mut check: F) -> Option<<Fut::Output as Done>::Value>
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Done,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await.done() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(interval(timeout)).await;
    }
}

/// [`poll`], or an error naming `what` was awaited.
pub async fn wait_for<F, Fut>(
    what: &str,
    timeout: Duration,
    check: F,
) -> anyhow::Result<<Fut::Output as Done>::Value>
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Done,
{
    match poll(timeout, check).await {
        Some(value) => Ok(value),
        None => anyhow::bail!("not within {timeout:?}: {what}"),
    }
}

/// [`poll`], panicking (a failed test) with `what` when `timeout` passes.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, check: F) -> <Fut::Output as Done>::Value
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Done,
{
    match poll(timeout, check).await {
        Some(value) => value,
        None => panic!("not within {timeout:?}: {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_follows_the_bound_within_limits() {
        assert_eq!(interval(Duration::from_secs(1)), Duration::from_millis(50));
        assert_eq!(interval(Duration::from_secs(20)), Duration::from_millis(100));
        assert_eq!(interval(Duration::from_secs(600)), Duration::from_millis(250));
    }

    #[tokio::test]
    async fn a_wait_gives_the_value_or_names_what_never_came() {
        let mut n = 0;
        let v = eventually("the third try", Duration::from_secs(5), || {
            n += 1;
            let n = n;
            async move { (n == 3).then_some(n) }
        })
        .await;
        assert_eq!(v, 3);
        let err = wait_for("never", Duration::from_millis(60), || async { false })
            .await
            .unwrap_err();
        assert!(err.to_string().ends_with(": never"), "{err}");
    }
}
