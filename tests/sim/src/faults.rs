//! Fault injection for one virtual cluster, for reliability tests: errors, latency, dropped
//! watches, refused writes, or the whole cluster unreachable.

use std::time::Duration;

/// What goes wrong with a cluster's API, set with [`crate::SimCluster::set_faults`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Fraction (0.0 to 1.0) of requests answered with an error instead of being served.
    pub error_rate: f64,
    /// Codes the failing requests get, picked at random (429, 500, 503, ...); 500 when empty.
    pub error_codes: Vec<u16>,
    /// Added to every request before it is served.
    pub latency: Duration,
    /// Every write (create, update, patch, delete) is refused with this code.
    pub reject_writes: Option<u16>,
    /// Watch streams end right after their initial events, so clients keep re-watching.
    pub drop_watches: bool,
    /// Every request gets 503 and open watch streams end: the cluster is down.
    pub unreachable: bool,
}

impl Faults {
    /// Requests fail at `rate` with the given codes.
    pub fn errors(rate: f64, codes: &[u16]) -> Self {
        Self {
            error_rate: rate,
            error_codes: codes.to_vec(),
            ..Self::default()
        }
    }

    /// The cluster answers nothing but 503.
    pub fn unreachable() -> Self {
        Self {
            unreachable: true,
            ..Self::default()
        }
    }

    /// The error, if any, this request gets.
    pub fn pick(&self, is_write: bool) -> Option<u16> {
        if self.unreachable {
            return Some(503);
        }
        if is_write && let Some(code) = self.reject_writes {
            return Some(code);
        }
        if self.error_rate > 0.0 && fastrand::f64() < self.error_rate {
            let codes = if self.error_codes.is_empty() {
                &[500][..]
            } else {
                &self.error_codes[..]
            };
            return Some(codes[fastrand::usize(..codes.len())]);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_rate_is_honoured_roughly_and_codes_come_from_the_list() {
        fastrand::seed(7);
        let f = Faults::errors(0.3, &[429, 503]);
        let picks: Vec<Option<u16>> = (0..2000).map(|_| f.pick(false)).collect();
        let failed = picks.iter().flatten().count();
        assert!(
            (450..750).contains(&failed),
            "{failed} of 2000 failed at rate 0.3"
        );
        assert!(picks.iter().flatten().all(|c| *c == 429 || *c == 503));
    }

    #[test]
    fn rejected_writes_spare_reads_and_unreachable_fails_everything() {
        let f = Faults {
            reject_writes: Some(403),
            ..Faults::default()
        };
        assert_eq!(f.pick(true), Some(403));
        assert_eq!(f.pick(false), None);
        assert_eq!(Faults::unreachable().pick(false), Some(503));
        assert_eq!(Faults::default().pick(true), None);
    }
}
