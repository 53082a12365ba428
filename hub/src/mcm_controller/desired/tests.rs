use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::runtime::events::EventType;
use rstest::rstest;

use super::*;
use crate::{
    fixtures::{FINAL, K, lookup_failed, mk_build_mcm, pins},
    mcm_controller::{desired::plan::Pin, observe::SelectedCluster},
};

const PINNED: &str = "reg.example/kmod@sha256:1";

fn mcm() -> ManagedClusterModule {
    mk_build_mcm("m", "")
}

fn cluster(name: &str) -> SelectedCluster {
    SelectedCluster {
        name: name.into(),
        kernels: Ok(vec![K.into()]),
        refused: Vec::new(),
        unreachable: None,
    }
}

fn observed(clusters: &[&str], works: &[(&str, ManifestWork)], pin: Pin) -> Observed {
    Observed {
        clusters: clusters.iter().map(|c| cluster(c)).collect(),
        works: works
            .iter()
            .map(|(ns, w)| (ns.to_string(), Arc::new(w.clone())))
            .collect(),
        pins: pins(&[(FINAL, pin)]),
        spec_error: None,
    }
}

fn pinned() -> Pin {
    Pin::Pinned(PINNED.into())
}

/// The work `desired` renders for cluster `name` when the image is pinned.
fn current(name: &str) -> ManifestWork {
    let mcm = mcm();
    let spec = plan::render_spec(&mcm, &[K.into()], &pins(&[(FINAL, pinned())])).unwrap();
    plan::work_for(&mcm, name, &[K.into()], spec).unwrap()
}

fn stale(name: &str) -> ManifestWork {
    let mut w = current(name);
    w.spec.workload.manifests.clear();
    w
}

fn deleting(name: &str) -> ManifestWork {
    let mut w = current(name);
    w.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    w
}

/// `desired` in words: each cluster's plan, the namespaces whose work goes, the Events.
fn summary(d: &Desired) -> (Vec<String>, Vec<String>, Vec<String>) {
    let plans = d
        .clusters
        .iter()
        .map(|c| match &c.work {
            WorkPlan::Write(w) => format!(
                "{}: write {}",
                c.cluster,
                w.metadata.namespace.clone().unwrap_or_default()
            ),
            WorkPlan::Keep(_) => format!("{}: keep", c.cluster),
            WorkPlan::Blocked(b) => format!("{}: blocked {}", c.cluster, b.reason),
        })
        .collect();
    let deletes = d
        .deletes
        .iter()
        .map(|w| w.namespace().unwrap_or_default())
        .collect();
    let events = d
        .events
        .iter()
        .map(|e| {
            assert_eq!(e.type_, EventType::Normal);
            format!("{}: {}", e.reason, e.note)
        })
        .collect();
    (plans, deletes, events)
}

#[rstest]
#[case::new_cluster_gets_its_work(
    observed(&["a"], &[], pinned()),
    &["a: write a"], &[], &["ManifestWorksApplied: 1 ManifestWorks written"]
)]
#[case::up_to_date_work_is_kept_without_an_event(
    observed(&["a"], &[("a", current("a"))], pinned()),
    &["a: keep"], &[], &[]
)]
#[case::changed_work_is_rewritten(
    observed(&["a", "b"], &[("a", stale("a")), ("b", current("b"))], pinned()),
    &["a: write a", "b: keep"], &[], &["ManifestWorksApplied: 1 ManifestWorks written"]
)]
#[case::a_work_being_deleted_is_written_again(
    observed(&["a"], &[("a", deleting("a"))], pinned()),
    &["a: write a"], &[], &["ManifestWorksApplied: 1 ManifestWorks written"]
)]
#[case::unselected_clusters_lose_their_work(
    observed(&["a"], &[("a", current("a")), ("gone", current("gone"))], pinned()),
    &["a: keep"], &["gone"], &["ManifestWorkDeleted: cluster gone no longer selected"]
)]
#[case::a_missing_image_blocks_and_writes_nothing(
    observed(&["a", "b"], &[("a", current("a"))], Pin::Missing),
    &["a: blocked ImageNotFound", "b: blocked ImageNotFound"], &[], &[]
)]
#[case::a_registry_failure_blocks(
    observed(&["a"], &[], lookup_failed("down")),
    &["a: blocked RegistryError"], &[], &[]
)]
#[case::nothing_selected_deletes_everything(
    observed(&[], &[("a", current("a")), ("b", current("b"))], pinned()),
    &[], &["a", "b"],
    &["ManifestWorkDeleted: cluster a no longer selected", "ManifestWorkDeleted: cluster b no longer selected"]
)]
fn one_round(
    #[case] observed: Observed,
    #[case] plans: &[&str],
    #[case] deletes: &[&str],
    #[case] events: &[&str],
) {
    let (got_plans, got_deletes, got_events) = summary(&desired(&mcm(), &observed));
    assert_eq!(got_plans, plans);
    assert_eq!(got_deletes, deletes);
    assert_eq!(got_events, events);
}

#[test]
fn a_spec_error_or_a_kernel_problem_blocks_with_its_own_reason() {
    let mut o = observed(&["a", "b"], &[], pinned());
    o.clusters[1].kernels = Err(Blocker::new(Reason::NoKernelClaim, "no claim"));
    let (plans, _, events) = summary(&desired(&mcm(), &o));
    assert_eq!(plans, ["a: write a", "b: blocked NoKernelClaim"]);
    assert_eq!(events, ["ManifestWorksApplied: 1 ManifestWorks written"]);
    o.spec_error = Some(Blocker::new(Reason::InvalidSpec, "bad regexp"));
    let (plans, _, events) = summary(&desired(&mcm(), &o));
    assert_eq!(plans, ["a: blocked InvalidSpec", "b: blocked InvalidSpec"]);
    assert!(events.is_empty());
}

#[test]
fn clusters_keep_their_kernels_and_reachability() {
    let mut o = observed(&["a"], &[], pinned());
    o.clusters[0].unreachable = Some("silent".into());
    let d = desired(&mcm(), &o);
    assert_eq!(d.clusters[0].kernels, [K]);
    assert_eq!(d.clusters[0].unreachable.as_deref(), Some("silent"));
}
