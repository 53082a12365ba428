//! Small helpers shared by the agents: API error classification, watch triggers, hashing.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub(crate) fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 404)
}

pub(crate) fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 409)
}

/// Watches `api` and wakes `notify` on every event (and after every watch error, once the
/// watcher's own backoff allows a retry). The objects themselves are re-read by the agent.
pub(crate) fn spawn_trigger<K>(
    api: Api<K>,
    config: watcher::Config,
    notify: Arc<Notify>,
    what: &'static str,
) -> JoinHandle<()>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = watcher(api, config).default_backoff().boxed();
        while let Some(item) = stream.next().await {
            match item {
                Ok(_) => notify.notify_one(),
                Err(e) => tracing::debug!(watch = what, error = %e, "watch failed, retrying"),
            }
        }
    })
}

/// Exponential backoff for a failing loop, capped.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            current: base,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.base;
    }

    /// The delay to wait now; the next one doubles.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        d
    }
}

/// Waits until `notify` fires or `period` elapses.
pub(crate) async fn wait(notify: &Notify, period: Duration) {
    tokio::select! {
        _ = notify.notified() => {}
        _ = tokio::time::sleep(period) => {}
    }
}

/// FNV-1a 64-bit: a stable hash for pod-template revisions (std's hasher is not stable).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Recursively checks that every field set in `desired` has the same value in `actual`. Lists
/// must be equal element by element (with the same rule per element). Fields only in `actual`
/// (server defaults, other writers) do not matter.
pub(crate) fn is_subset(desired: &serde_json::Value, actual: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (desired, actual) {
        (Value::Object(d), Value::Object(a)) => d.iter().all(|(k, dv)| match a.get(k) {
            Some(av) => is_subset(dv, av),
            // Servers may drop empty maps and lists; that is not drift.
            None => {
                dv.is_null()
                    || dv.as_object().is_some_and(|m| m.is_empty())
                    || dv.as_array().is_some_and(|a| a.is_empty())
            }
        }),
        (Value::Array(d), Value::Array(a)) => {
            d.len() == a.len() && d.iter().zip(a).all(|(x, y)| is_subset(x, y))
        }
        (d, a) => d == a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_ignores_extra_fields_but_not_changed_ones() {
        let desired = json!({"spec": {"a": 1, "l": [{"x": 1}]}});
        assert!(is_subset(
            &desired,
            &json!({"spec": {"a": 1, "b": 2, "l": [{"x": 1, "y": 0}]}})
        ));
        assert!(!is_subset(&desired, &json!({"spec": {"a": 2, "l": [{"x": 1}]}})));
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"a": 1, "l": [{"x": 1}, {"x": 2}]}})
        ));
        assert!(!is_subset(&desired, &json!({"spec": {"l": [{"x": 1}]}})));
        assert!(is_subset(&json!({"data": {}, "l": [], "n": null}), &json!({})));
        assert!(!is_subset(&json!({"data": {"a": "b"}}), &json!({})));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(35));
        assert_eq!(b.next_delay(), Duration::from_millis(10));
        assert_eq!(b.next_delay(), Duration::from_millis(20));
        assert_eq!(b.next_delay(), Duration::from_millis(35));
        assert_eq!(b.next_delay(), Duration::from_millis(35));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(10));
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
