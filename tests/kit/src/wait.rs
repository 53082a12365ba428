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

/// A check: an async closure answering [`Done`].
pub trait Check: FnMut() -> Self::Fut {
    type Fut: Future<Output = Self::Answer>;
    type Answer: Done;
}

impl<F, Fut> Check for F
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Done,
{
    type Fut = Fut;
    type Answer = Fut::Output;
}

/// What waiting on check `C` gives.
pub type Value<C> = <<C as Check>::Answer as Done>::Value;

/// One wait: what is awaited, for how long, and what a failure adds (e.g. log tails).
pub struct Wait<'a> {
    what: String,
    timeout: Duration,
    context: Option<Box<dyn Fn() -> String + Send + Sync + 'a>>,
}

impl<'a> Wait<'a> {
    pub fn new(what: &str, timeout: Duration) -> Self {
        Self {
            what: what.to_owned(),
            timeout,
            context: None,
        }
    }

    /// Adds `context()` to the failure.
    pub fn context(self, context: impl Fn() -> String + Send + Sync + 'a) -> Self {
        Self {
            context: Some(Box::new(context)),
            ..self
        }
    }

    /// Polls `check` until it holds (its value), or fails naming what was awaited once the
    /// bound passed.
    pub async fn until<C: Check>(self, mut check: C) -> anyhow::Result<Value<C>> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(value) = check().await.done() {
                return Ok(value);
            }
            if Instant::now() > deadline {
                let context = self.context.map(|c| format!("\n{}", c())).unwrap_or_default();
                anyhow::bail!("not within {:?}: {}{context}", self.timeout, self.what);
            }
            tokio::time::sleep(interval(self.timeout)).await;
        }
    }

    /// [`Self::until`], a failure failing the test (a panic).
    pub async fn eventually<C: Check>(self, check: C) -> Value<C> {
        self.until(check).await.unwrap_or_else(|e| panic!("{e}"))
    }
}

/// How often a check runs: a two-hundredth of the bound, between 50 and 250 ms (quick on the
/// in-memory simulator, gentle on a real apiserver).
fn interval(timeout: Duration) -> Duration {
    (timeout / 200).clamp(Duration::from_millis(50), Duration::from_millis(250))
}

/// Polls `check` until it holds; panics (a failed test) naming `what` once `timeout` passed.
pub async fn eventually<C: Check>(what: &str, timeout: Duration, check: C) -> Value<C> {
    Wait::new(what, timeout).eventually(check).await
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
    async fn a_wait_gives_the_value_or_names_what_never_came_with_its_context() {
        let mut n = 0;
        let v = eventually("the third try", Duration::from_secs(5), || {
            n += 1;
            let n = n;
            async move { (n == 3).then_some(n) }
        })
        .await;
        assert_eq!(v, 3);
        let err = Wait::new("never", Duration::from_millis(60))
            .context(|| "the logs".to_owned())
            .until(|| async { false })
            .await
            .unwrap_err();
        assert!(err.to_string().ends_with(": never\nthe logs"), "{err}");
    }
}
