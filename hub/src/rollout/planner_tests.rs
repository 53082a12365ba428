//! Table tests of the wave planner.

use std::collections::BTreeMap;

use super::*;
use crate::rollout::strategy::Amount;

const T0: i64 = 1_800_000_000;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(T0 + secs).unwrap()
}

fn progressive(concurrency: Amount, failures: usize) -> Strategy {
    Strategy {
        progressive: true,
        max_concurrency: concurrency,
        max_failures: Amount::Count(failures),
        min_success_time: Duration::from_secs(60),
        progress_deadline: Some(Duration::from_secs(600)),
        canary: BTreeMap::from([("canary".into(), "true".into())]),
        ..Strategy::default()
    }
}

/// `spec` is one letter per cluster, named c0, c1, ...: `b` behind, `l` loaded since t=0,
/// `r` loaded since t=100 (recent), `p` loading since t=0, `f` failing; upper case: a canary.
fn fleet(spec: &str) -> Vec<Cluster> {
    spec.chars()
        .enumerate()
        .map(|(i, ch)| Cluster {
            name: format!("c{i}"),
            canary: ch.is_uppercase(),
            standing: match ch.to_ascii_lowercase() {
                'b' => Standing::Behind,
                'l' => Standing::Loaded { since: at(0) },
                'r' => Standing::Loaded { since: at(100) },
                'p' => Standing::Loading { since: at(0) },
                'f' => Standing::Failing {
                    reason: "LoadFailed".into(),
                    message: "insmod: Invalid module format".into(),
                },
                other => panic!("unknown standing {other}"),
            },
        })
        .collect()
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn waves_move_only_when_nothing_is_in_progress() {
    let s = progressive(Amount::Count(2), 0);
    // (fleet, now, clusters moving now)
    let cases: &[(&str, i64, &[&str])] = &[
        ("Bbbbbb", 120, &["c0"]),       // the canary alone first, though 2 may move
        ("Pbbbbb", 120, &[]),           // canary still loading: nobody else moves
        ("Rbbbbb", 120, &[]),           // canary loaded 20s ago: soaking (60s)
        ("Lbbbbb", 120, &["c1", "c2"]), // canary soaked: first wave of 2
        ("Llpbbb", 120, &[]),           // one of the wave still loading
        ("Lllbbb", 120, &["c3", "c4"]), // next wave
        ("Lllllb", 120, &["c5"]),       // the last wave holds what is left
        ("llllll", 120, &[]),           // done
        ("bbbbbb", 120, &["c0", "c1"]), // no canary: plain waves
    ];
    for (spec, now, want) in cases {
        let p = plan(&fleet(spec), &s, at(*now));
        assert_eq!(p.move_now, names(want), "{spec} at {now}");
        assert!(!p.halted, "{spec}");
    }
}

#[test]
fn counts_and_percentages_size_the_waves() {
    let cases: &[(Amount, &str, usize)] = &[
        (Amount::Count(3), "bbbbbbbbbb", 3),
        (Amount::Count(30), "bbbbbbbbbb", 10),
        (Amount::Percent(25), "bbbbbbbbbb", 2), // 2.5 rounds down
        (Amount::Percent(5), "bbbbbbbbbb", 1),  // below one cluster: still one
        (Amount::Percent(100), "bbbbbbbbbb", 10),
    ];
    for (amount, spec, want) in cases {
        let p = plan(&fleet(spec), &progressive(*amount, 0), at(0));
        assert_eq!(p.move_now.len(), *want, "{amount:?}");
        assert_eq!(p.pending.len(), 10 - want);
    }
}

#[test]
fn failures_beyond_max_failures_halt() {
    let cases: &[(&str, usize, bool, &[&str])] = &[
        ("Fbbbbb", 0, true, &[]),            // failed canary, nothing tolerated: halt
        ("Fbbbbb", 1, false, &["c1", "c2"]), // one tolerated: go on without it
        ("lffbbb", 1, true, &[]),
        ("lffbbb", 2, false, &["c3", "c4"]),
    ];
    for (spec, max, halted, want) in cases {
        let p = plan(&fleet(spec), &progressive(Amount::Count(2), *max), at(120));
        assert_eq!(p.halted, *halted, "{spec} max {max}");
        assert_eq!(p.move_now, names(want), "{spec} max {max}");
        assert_eq!(
            p.failed.iter().filter(|f| f.reason == "LoadFailed").count(),
            spec.matches(['f', 'F']).count()
        );
    }
    let pct = Strategy {
        max_failures: Amount::Percent(50),
        ..progressive(Amount::Count(2), 0)
    };
    assert!(
        !plan(&fleet("lffbbb"), &pct, at(120)).halted,
        "2 of 6 is within 50%"
    );
    assert!(plan(&fleet("fffffb"), &pct, at(120)).halted, "5 of 6 is not");
}

#[test]
fn the_progress_deadline_fails_slow_clusters_and_the_soak_time_holds_fast_ones() {
    let s = progressive(Amount::Count(2), 0);
    let p = plan(&fleet("lpbbbb"), &s, at(300));
    assert!(p.failed.is_empty() && p.in_progress == names(&["c1"]) && p.move_now.is_empty());
    assert_eq!(
        p.recheck_after,
        Some(Duration::from_secs(301)),
        "look again when the deadline passes"
    );
    let p = plan(&fleet("lpbbbb"), &s, at(601));
    assert_eq!(p.failed.len(), 1);
    assert_eq!(
        (p.failed[0].cluster.as_str(), p.failed[0].reason.as_str()),
        ("c1", DEADLINE_EXCEEDED)
    );
    assert!(p.halted && p.move_now.is_empty());
    let p = plan(&fleet("rbbbbb"), &s, at(130));
    assert_eq!(
        p.recheck_after,
        Some(Duration::from_secs(30)),
        "soak ends 60s after t=100"
    );
}

#[test]
fn pause_holds_every_move_but_keeps_counting() {
    let s = Strategy {
        paused: true,
        ..progressive(Amount::Count(2), 0)
    };
    let p = plan(&fleet("Lllbbb"), &s, at(120));
    assert!(p.paused && p.move_now.is_empty());
    assert_eq!((p.succeeded.len(), p.pending.len()), (3, 3));
    let all = Strategy {
        paused: true,
        ..Strategy::default()
    };
    assert!(plan(&fleet("bbb"), &all, at(0)).move_now.is_empty());
}

#[test]
fn all_moves_everyone_at_once_and_never_halts() {
    let p = plan(&fleet("fFbbbp"), &Strategy::default(), at(0));
    assert_eq!(p.move_now, names(&["c2", "c3", "c4"]));
    assert!(!p.halted);
}

#[test]
fn clusters_joining_and_leaving_mid_rollout() {
    let s = progressive(Amount::Count(2), 0);
    // Mid-rollout c1, c2 moved and soaked; a cluster left (five now) and a new one (c5) joined:
    // the newcomer is simply behind and rides the next wave; the wave size stays 2.
    let mut clusters = fleet("Lllbb");
    clusters.push(Cluster {
        name: "c5".into(),
        canary: false,
        standing: Standing::Behind,
    });
    clusters.remove(2);
    let p = plan(&clusters, &s, at(120));
    assert_eq!(p.move_now, names(&["c3", "c4"]));
    assert_eq!(p.pending, names(&["c5"]));
    // A canary joining after the first waves goes before anyone else.
    let p = plan(&fleet("llbBb"), &s, at(120));
    assert_eq!(p.move_now, names(&["c3"]));
}
