//! `spec.rolloutStrategy` read into numbers the planner can use, or a clear error naming the
//! field. The CRD schema already refuses most malformed values; this also guards YAML that never
//! went through an API server (lint, render) and values the schema lets through (`"0%"`).

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kmm_api::mcm::{RolloutStrategy, RolloutType};

/// A count of clusters, or a share of the selected ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Count(usize),
    Percent(u8),
}

impl Amount {
    /// The number of clusters out of `total` (percentages round down).
    pub fn of(self, total: usize) -> usize {
        match self {
            Self::Count(n) => n,
            Self::Percent(p) => total * usize::from(p) / 100,
        }
    }
}

/// A rollout strategy, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Strategy {
    /// `false` for `All`: every cluster moves at once, no gate.
    pub progressive: bool,
    /// Clusters per wave (at least 1 once applied to a fleet).
    pub max_concurrency: Amount,
    /// Soak time from a cluster's move before it counts as succeeded.
    pub min_success_time: Duration,
    /// Time from a cluster's move after which a cluster not yet succeeded fails.
    pub progress_deadline: Option<Duration>,
    /// Failures tolerated; one more halts the rollout.
    pub max_failures: Amount,
    /// Labels picking the canaries; empty: no canaries.
    pub canary: BTreeMap<String, String>,
    pub paused: bool,
}

impl Default for Strategy {
    fn default() -> Self {
        Self {
            progressive: false,
            max_concurrency: Amount::Count(1),
            min_success_time: Duration::ZERO,
            progress_deadline: None,
            max_failures: Amount::Count(0),
            canary: BTreeMap::new(),
            paused: false,
        }
    }
}

impl Strategy {
    /// Clusters per wave for a fleet of `total`: at least one, so a small percentage still moves.
    pub fn wave_size(&self, total: usize) -> usize {
        self.max_concurrency.of(total).max(1)
    }
}

/// Reads `spec.rolloutStrategy`; an absent one is `All`.
pub fn parse(spec: Option<&RolloutStrategy>) -> Result<Strategy, String> {
    let Some(spec) = spec else {
        return Ok(Strategy::default());
    };
    let mut out = Strategy {
        paused: spec.paused,
        ..Strategy::default()
    };
    match spec.type_ {
        RolloutType::All => {
            if spec.progressive.is_some() {
                return Err("spec.rolloutStrategy.progressive: set type: Progressive to use it".into());
            }
        }
        RolloutType::Progressive => {
            out.progressive = true;
            let Some(p) = &spec.progressive else {
                return Ok(out);
            };
            let at = "spec.rolloutStrategy.progressive";
            if let Some(v) = &p.max_concurrency {
                out.max_concurrency = amount(v).map_err(|e| format!("{at}.maxConcurrency: {e}"))?;
                if out.max_concurrency == Amount::Count(0) || out.max_concurrency == Amount::Percent(0) {
                    return Err(format!("{at}.maxConcurrency: must be at least 1 (or 1%)"));
                }
            }
            if let Some(v) = &p.max_failures {
                out.max_failures = amount(v).map_err(|e| format!("{at}.maxFailures: {e}"))?;
            }
            if let Some(v) = &p.min_success_time {
                out.min_success_time = duration(v).map_err(|e| format!("{at}.minSuccessTime: {e}"))?;
            }
            if let Some(v) = p.progress_deadline.as_deref().filter(|v| *v != "None") {
                out.progress_deadline = Some(duration(v).map_err(|e| format!("{at}.progressDeadline: {e}"))?);
            }
            if let Some(c) = &p.canary {
                out.canary = c.cluster_selector.clone();
            }
        }
    }
    Ok(out)
}

/// `3`, `"3"` or `"25%"`.
pub fn amount(v: &IntOrString) -> Result<Amount, String> {
    match v {
        IntOrString::Int(n) => usize::try_from(*n)
            .map(Amount::Count)
            .map_err(|_| format!("{n} is negative")),
        IntOrString::String(s) => {
            if let Some(p) = s.strip_suffix('%') {
                match p.parse::<u8>() {
                    Ok(p) if p <= 100 => Ok(Amount::Percent(p)),
                    _ => Err(format!("{s:?} is not a percentage from 0% to 100%")),
                }
            } else {
                s.parse::<usize>()
                    .map(Amount::Count)
                    .map_err(|_| format!("{s:?} is neither a count nor a percentage like \"25%\""))
            }
        }
    }
}

/// OCM's duration spelling: a number and one unit (`90s`, `5m`, `2h`), or `0`.
pub fn duration(v: &str) -> Result<Duration, String> {
    if v == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("{v:?} is not a duration like 90s, 5m or 2h");
    let unit = v.chars().last().ok_or_else(bad)?;
    let n: u64 = v[..v.len() - 1].parse().map_err(|_| bad())?;
    let secs = match unit {
        's' => n,
        'm' => n.checked_mul(60).ok_or_else(bad)?,
        'h' => n.checked_mul(3600).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use kmm_api::mcm::{CanaryClusters, ProgressiveRollout};

    use super::*;

    fn progressive(p: ProgressiveRollout) -> RolloutStrategy {
        RolloutStrategy {
            type_: RolloutType::Progressive,
            progressive: Some(p),
            paused: false,
        }
    }

    #[test]
    fn absent_means_all_at_once() {
        assert_eq!(parse(None), Ok(Strategy::default()));
        assert!(!parse(None).unwrap().progressive);
    }

    #[test]
    fn reads_counts_percentages_durations_and_canaries() {
        let s = parse(Some(&progressive(ProgressiveRollout {
            max_concurrency: Some(IntOrString::String("25%".into())),
            min_success_time: Some("90s".into()),
            progress_deadline: Some("5m".into()),
            max_failures: Some(IntOrString::Int(2)),
            canary: Some(CanaryClusters {
                cluster_selector: BTreeMap::from([("canary".into(), "true".into())]),
            }),
        })))
        .unwrap();
        assert!(s.progressive);
        assert_eq!(s.max_concurrency, Amount::Percent(25));
        assert_eq!(s.wave_size(10), 2);
        assert_eq!(
            s.wave_size(3),
            1,
            "a percentage below one cluster still moves one"
        );
        assert_eq!(s.min_success_time, Duration::from_secs(90));
        assert_eq!(s.progress_deadline, Some(Duration::from_secs(300)));
        assert_eq!(s.max_failures, Amount::Count(2));
        assert_eq!(s.canary.get("canary").map(String::as_str), Some("true"));
    }

    #[test]
    fn none_deadline_waits_for_ever() {
        let s = parse(Some(&progressive(ProgressiveRollout {
            progress_deadline: Some("None".into()),
            ..Default::default()
        })))
        .unwrap();
        assert_eq!(s.progress_deadline, None);
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (
                ProgressiveRollout {
                    max_concurrency: Some(IntOrString::Int(0)),
                    ..Default::default()
                },
                "maxConcurrency: must be at least 1",
            ),
            (
                ProgressiveRollout {
                    max_failures: Some(IntOrString::String("150%".into())),
                    ..Default::default()
                },
                "maxFailures: \"150%\" is not a percentage",
            ),
            (
                ProgressiveRollout {
                    max_failures: Some(IntOrString::Int(-1)),
                    ..Default::default()
                },
                "maxFailures: -1 is negative",
            ),
            (
                ProgressiveRollout {
                    min_success_time: Some("ten minutes".into()),
                    ..Default::default()
                },
                "minSuccessTime: \"ten minutes\" is not a duration",
            ),
            (
                ProgressiveRollout {
                    progress_deadline: Some("5d".into()),
                    ..Default::default()
                },
                "progressDeadline: \"5d\" is not a duration",
            ),
        ];
        for (p, want) in cases {
            let err = parse(Some(&progressive(p))).unwrap_err();
            assert!(err.contains(want), "{err} should contain {want}");
        }
        let all_with_settings = RolloutStrategy {
            type_: RolloutType::All,
            progressive: Some(ProgressiveRollout::default()),
            paused: false,
        };
        assert!(
            parse(Some(&all_with_settings))
                .unwrap_err()
                .contains("type: Progressive")
        );
    }
}
