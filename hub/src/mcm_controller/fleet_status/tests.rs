use k8s_openapi::jiff::Timestamp;

use super::*;

fn now() -> Time {
    Time(Timestamp::from_second(1_800_000_000).unwrap())
}

fn applied(desired: i64, loaded: i64) -> ClusterState {
    ClusterState::Work(WorkOutcome {
        applied: true,
        nodes_desired: desired,
        nodes_loaded: loaded,
        ..Default::default()
    })
}

fn view(name: &str, kernels: &[&str], state: ClusterState) -> ClusterView {
    ClusterView {
        name: name.into(),
        kernels: kernels.iter().map(|k| k.to_string()).collect(),
        refused: Vec::new(),
        state,
        unreachable: None,
    }
}

#[test]
fn an_unreachable_cluster_is_a_problem_and_its_old_feedback_is_not_counted() {
    let mut gone = view("b", &["k1"], applied(2, 2));
    gone.unreachable =
        Some("the cluster is unreachable (ManagedClusterConditionAvailable Unknown ...)".into());
    let clusters = vec![view("a", &["k1"], applied(1, 1)), gone];
    let s = fleet_status(Some(1), &Tally::of(&clusters), &BTreeMap::new(), None, now());
    assert_eq!((s.number_desired, s.number_applied), (2, 1));
    assert_eq!(
        (s.nodes_desired, s.nodes_loaded),
        (1, 1),
        "b's two loaded nodes are old news"
    );
    assert_eq!(s.problems.len(), 1);
    assert_eq!(
        (
            s.problems[0].cluster.as_str(),
            s.problems[0].state.as_str(),
            s.problems[0].reason.as_str()
        ),
        ("b", "Unreachable", "ClusterUnavailable")
    );
    assert_eq!(cond(&s, "Ready").status, "False");
}

fn blocked(reason: Reason) -> ClusterState {
    ClusterState::Blocked(Blocker {
        reason,
        message: format!("{reason} happened"),
    })
}

/// Desired, applied, blocked and degraded clusters; desired and loaded nodes.
fn counts(s: &ManagedClusterModuleStatus) -> (i32, i32, i32, i32, i64, i64) {
    (
        s.number_desired,
        s.number_applied,
        s.number_blocked,
        s.number_degraded,
        s.nodes_desired,
        s.nodes_loaded,
    )
}

fn cond<'a>(s: &'a ManagedClusterModuleStatus, t: &str) -> &'a Condition {
    s.conditions.iter().find(|c| c.type_ == t).unwrap()
}

#[test]
fn counts_kernels_and_conditions_for_a_mixed_fleet() {
    let clusters = vec![
        view("a", &["k1"], applied(2, 2)),
        view("b", &["k1", "k2"], applied(3, 1)),
        view("c", &[], blocked(Reason::NoKernelClaim)),
        view(
            "d",
            &["k2"],
            ClusterState::Work(WorkOutcome {
                failure: Some(("AppliedManifestWorkFailed".into(), "conflict".into())),
                ..Default::default()
            }),
        ),
    ];
    let images = BTreeMap::from([("k1".to_string(), "r/m@sha256:1".to_string())]);
    let s = fleet_status(Some(3), &Tally::of(&clusters), &images, None, now());
    assert_eq!(counts(&s), (4, 2, 1, 1, 5, 3));
    assert_eq!(
        s.kernels,
        vec![
            KernelSummary {
                kernel: "k1".into(),
                image: "r/m@sha256:1".into(),
                clusters: 2
            },
            KernelSummary {
                kernel: "k2".into(),
                image: String::new(),
                clusters: 2
            },
        ]
    );
    let names: Vec<(&str, &str)> = s
        .problems
        .iter()
        .map(|p| (p.cluster.as_str(), p.reason.as_str()))
        .collect();
    assert_eq!(
        names,
        [("c", "NoKernelClaim"), ("d", "AppliedManifestWorkFailed")]
    );
    assert_eq!(cond(&s, "Ready").status, "False");
    assert_eq!(cond(&s, "Progressing").status, "True");
    assert_eq!(cond(&s, "Degraded").status, "True");
    assert_eq!(cond(&s, "Ready").observed_generation, Some(3));
}

#[test]
fn a_fully_loaded_fleet_is_ready_and_transition_times_stay_put() {
    let clusters = vec![view("a", &["k1"], applied(2, 2))];
    let first = fleet_status(Some(1), &Tally::of(&clusters), &BTreeMap::new(), None, now());
    assert_eq!(cond(&first, "Ready").status, "True");
    assert_eq!(cond(&first, "Degraded").status, "False");
    let later = Time(Timestamp::from_second(1_800_000_500).unwrap());
    let second = fleet_status(
        Some(1),
        &Tally::of(&clusters),
        &BTreeMap::new(),
        Some(&first),
        later,
    );
    assert_eq!(
        first, second,
        "an unchanged fleet gives a byte-identical status (no write)"
    );
}

#[test]
fn ten_thousand_blocked_clusters_keep_the_object_small() {
    let long = "x".repeat(4000);
    let clusters: Vec<ClusterView> = (0..10_000)
        .map(|i| {
            let kernels = vec![format!("5.14.0-{}.el9.x86_64", i % 300)];
            let state = if i % 2 == 0 {
                ClusterState::Blocked(Blocker {
                    reason: Reason::ImageNotFound,
                    message: long.clone(),
                })
            } else {
                applied(10, 9)
            };
            ClusterView {
                unreachable: None,
                name: format!("cluster-{i:05}"),
                kernels,
                refused: Vec::new(),
                state,
            }
        })
        .collect();
    let images: BTreeMap<String, String> = (0..300)
        .map(|k| {
            (
                format!("5.14.0-{k}.el9.x86_64"),
                format!("registry.example.com/org/kmod@sha256:{:064x}", k),
            )
        })
        .collect();
    let s = fleet_status(Some(1), &Tally::of(&clusters), &images, None, now());
    let size = serde_json::to_vec(&s).unwrap().len();
    assert!(size < 64 * 1024, "status is {size} bytes");
    assert_eq!(s.problems.len(), MAX_PROBLEMS);
    assert_eq!(s.problems_omitted, 5000 - MAX_PROBLEMS as i32);
    assert_eq!(s.problems[0].cluster, "cluster-00000");
    assert_eq!(s.kernels.len(), MAX_KERNELS);
    assert_eq!(
        (
            s.number_desired,
            s.number_blocked,
            s.nodes_desired,
            s.nodes_loaded
        ),
        (10_000, 5000, 50_000, 45_000)
    );
}

#[test]
fn kernels_most_clusters_run_come_first_and_the_rest_are_counted() {
    // One spoke invents 300 kernels; the 5 clusters' real kernel must stay listed.
    let invented: Vec<String> = (0..300).map(|i| format!("1.0.{i}")).collect();
    let invented: Vec<&str> = invented.iter().map(String::as_str).collect();
    let mut clusters: Vec<ClusterView> = (0..5)
        .map(|i| view(&format!("c{i}"), &["9.9.9-real"], applied(1, 1)))
        .collect();
    clusters.push(view("liar", &invented, applied(1, 1)));
    let s = fleet_status(Some(1), &Tally::of(&clusters), &BTreeMap::new(), None, now());
    assert_eq!(s.kernels[0].kernel, "9.9.9-real");
    assert_eq!(s.kernels[0].clusters, 5);
    assert_eq!(s.kernels.len(), MAX_KERNELS);
    assert_eq!(s.kernels_omitted, 301 - MAX_KERNELS as i32);
}

#[test]
fn a_tally_kept_by_replacing_views_equals_one_counted_afresh() {
    let failed = ClusterState::Work(WorkOutcome {
        applied: true,
        nodes_desired: 3,
        nodes_loaded: 1,
        failure: Some(("AppliedManifestWorkFailed".into(), "conflict".into())),
        ..Default::default()
    });
    let mut unreachable = view("d", &["k2"], applied(4, 4));
    unreachable.unreachable = Some("lease expired".into());
    let mut refused = view("e", &["k1", "k3"], applied(1, 1));
    refused.refused = vec!["k 3: not a kernel version".into()];
    let before = vec![
        view("a", &["k1"], applied(2, 2)),
        view("b", &["k1", "k2"], blocked(Reason::ImageNotFound)),
        view("c", &["k2"], failed.clone()),
        unreachable,
        refused,
    ];
    // Every cluster changes in some way: kernels move, problems come and go.
    let after = vec![
        view("a", &["k4"], failed),
        view("b", &["k1", "k2"], applied(5, 5)),
        view("c", &["k2"], applied(1, 0)),
        view("d", &["k2"], applied(4, 4)),
        view("e", &["k1"], blocked(Reason::ImageNotFound)),
    ];
    let mut tally = Tally::of(&before);
    for (old, new) in before.iter().zip(&after) {
        tally.replace(old, new);
    }
    assert_eq!(tally, Tally::of(&after));
    let kernels: Vec<&String> = tally.kernels().collect();
    assert_eq!(kernels, ["k1", "k2", "k4"], "k3 left with e's refusal");
    let kinds: Vec<(&str, String)> = tally.problem_kinds().collect();
    assert_eq!(
        kinds,
        [
            ("Degraded", "AppliedManifestWorkFailed".to_owned()),
            ("Blocked", Reason::ImageNotFound.to_string())
        ]
    );
    let s = fleet_status(Some(1), &tally, &BTreeMap::new(), None, now());
    assert_eq!(counts(&s), (5, 4, 1, 1, 13, 10));
}
