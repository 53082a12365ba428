//! What the proxy does to each request: the fault settings and the draw from them.

use std::time::Duration;

use http::Uri;

use super::XorShift;

/// What the proxy does to traffic; [`Faults::default`] is a transparent proxy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Share of requests answered by the proxy with an error instead of being forwarded.
    pub error_rate: f64,
    /// The status codes injected errors use, picked uniformly (429, 500, 503 when empty).
    pub error_codes: Vec<u16>,
    /// The Retry-After of an injected 429 or 503 (whole seconds; 1 s when zero).
    pub retry_after: Duration,
    /// Each forwarded request waits a uniform time in `[latency / 2, latency]` first.
    pub latency: Duration,
    /// Watch responses (`watch=true`) are broken off after a uniform time in this range.
    pub watch_cut: Option<(Duration, Duration)>,
}

impl Faults {
    /// The chaos scenario's weather: `error_rate` errors of every kind, 100 to 200 ms latency,
    /// watches cut within 2 to 10 s.
    pub fn weather(error_rate: f64) -> Self {
        Self {
            error_rate,
            error_codes: Vec::new(),
            retry_after: Duration::from_secs(1),
            latency: Duration::from_millis(200),
            watch_cut: Some((Duration::from_secs(2), Duration::from_secs(10))),
        }
    }

    fn codes(&self) -> &[u16] {
        if self.error_codes.is_empty() {
            &[429, 500, 503]
        } else {
            &self.error_codes
        }
    }
}

/// What happens to one request, drawn before it is forwarded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// Answer with this status instead of forwarding.
    pub error: Option<u16>,
    pub delay: Duration,
    /// Break the response body off after this long (watches only).
    pub cut: Option<Duration>,
}

/// Draws the fate of one request from `faults` (pure apart from the generator).
pub fn decide(faults: &Faults, rng: &mut XorShift, is_watch: bool) -> Decision {
    if rng.chance(faults.error_rate) {
        let codes = faults.codes();
        let pick = rng.between(0, codes.len() as u64 - 1) as usize;
        return Decision {
            error: Some(codes[pick]),
            ..Decision::default()
        };
    }
    let max = faults.latency.as_millis() as u64;
    let delay = Duration::from_millis(rng.between(max / 2, max));
    let cut = match faults.watch_cut {
        Some((lo, hi)) if is_watch => Some(Duration::from_millis(
            rng.between(lo.as_millis() as u64, hi.as_millis() as u64),
        )),
        _ => None,
    };
    Decision {
        error: None,
        delay,
        cut,
    }
}

/// Whether a request is a watch (`watch=true` or `watch=1` in its query).
pub fn is_watch(uri: &Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::Uri;

    use super::*;
    use crate::faults::XorShift;

    #[test]
    fn decisions_follow_the_rates_and_replay_from_the_seed() {
        let faults = Faults::weather(0.2);
        let draw = |seed| {
            let mut rng = XorShift::new(seed);
            (0..1000)
                .map(|i| decide(&faults, &mut rng, i % 2 == 0))
                .collect::<Vec<_>>()
        };
        let run = draw(42);
        assert_eq!(run, draw(42));
        let errors = run.iter().filter(|d| d.error.is_some()).count();
        assert!((120..280).contains(&errors), "{errors} errors of 1000 at 20 %");
        assert!(run.iter().all(|d| d.error.is_some()
            || (Duration::from_millis(100)..=Duration::from_millis(200)).contains(&d.delay)));
        assert!(
            run.iter()
                .enumerate()
                .all(|(i, d)| d.error.is_some() || (d.cut.is_some() == (i % 2 == 0)))
        );
        let off = decide(&Faults::default(), &mut XorShift::new(1), true);
        assert_eq!(off, Decision::default());
    }

    #[test]
    fn watches_are_recognised_by_their_query() {
        let uri = |s: &str| s.parse::<Uri>().unwrap_or_default();
        assert!(is_watch(&uri("/api/v1/pods?watch=true&resourceVersion=1")));
        assert!(is_watch(&uri("/api/v1/pods?allowWatchBookmarks=true&watch=1")));
        assert!(!is_watch(&uri("/api/v1/pods?allowWatchBookmarks=true")));
        assert!(!is_watch(&uri("/api/v1/pods")));
    }
}
