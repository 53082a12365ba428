//! Rounds of a progressive rollout from works annotated with their revisions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kmm_api::mcm::{CanaryClusters, ProgressiveRollout, RolloutStrategy, RolloutType};
use serde_json::json;

use super::*;
use crate::{
    fixtures,
    mcm_controller::{
        desired::{
            self, WorkPlan,
            plan::{self as mplan, Pin},
        },
        observe::Observed,
    },
    reason::Reason,
    rollout::strategy,
};

const K1: &str = "6.1.0-1-amd64";
const K2: &str = "6.1.0-2-amd64";

fn mcm(version: &str) -> ManagedClusterModule {
    let mut m = fixtures::mk_mcm(&format!(
        "apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1\nkind: ManagedClusterModule\nmetadata: {{name: m, uid: u}}\n\
         spec:\n  spokeNamespace: drivers\n  selector: {{}}\n  moduleSpec:\n    selector: {{}}\n    moduleLoader:\n      container:\n\
         \x20       modprobe: {{moduleName: k}}\n        kernelMappings:\n          - regexp: '^.+$'\n\
         \x20           containerImage: reg.example/kmod-{version}:${{KERNEL_FULL_VERSION}}\n"
    ));
    m.spec.rollout_strategy = Some(RolloutStrategy {
        type_: RolloutType::Progressive,
        progressive: Some(ProgressiveRollout {
            max_concurrency: Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2)),
            canary: Some(CanaryClusters {
                cluster_selector: BTreeMap::from([("canary".into(), "true".into())]),
            }),
            ..Default::default()
        }),
        paused: false,
    });
    m
}

fn all_pins() -> BTreeMap<String, Pin> {
    let mut out = BTreeMap::new();
    for v in ["v1", "v2"] {
        for k in [K1, K2] {
            let image = format!("reg.example/kmod-{v}:{k}");
            out.insert(
                image.clone(),
                Pin::Pinned(format!("reg.example/kmod-{v}@sha256:{k}")),
            );
        }
    }
    out
}

fn cluster(name: &str, kernel: &str) -> SelectedCluster {
    SelectedCluster {
        name: name.into(),
        kernels: Ok(vec![kernel.into()]),
        refused: Vec::new(),
        unreachable: None,
    }
}

/// The work `at` renders for `cluster` on `kernel`, annotated as moved at t=0; `loaded` adds
/// the feedback of a cluster whose nodes all loaded it.
fn work(at: &ManagedClusterModule, cluster: &str, kernel: &str, loaded: bool) -> Arc<ManifestWork> {
    let mut w = mplan::render(at, cluster, &[kernel.into()], &all_pins()).unwrap();
    let ann = w.annotations_mut();
    ann.insert(revision::REVISION_ANNOTATION.into(), Content::of(at).hash());
    ann.insert(MOVED_AT_ANNOTATION.into(), "2027-01-15T08:00:00Z".into());
    w.metadata.generation = Some(1);
    if loaded {
        w.status = serde_json::from_value(json!({
            "conditions": [{"type": "Applied", "status": "True", "reason": "R", "message": "",
                            "lastTransitionTime": "2027-01-15T08:00:00Z", "observedGeneration": 1}],
            "resourceStatus": {"manifests": [{"resourceMeta": {"ordinal": 0}, "conditions": [],
                "statusFeedback": {"values": [
                    {"name": "moduleLoader.desiredNumber", "fieldValue": {"type": "Integer", "integer": 2}},
                    {"name": "moduleLoader.availableNumber", "fieldValue": {"type": "Integer", "integer": 2}}]}}]}
        }))
        .unwrap();
    }
    Arc::new(w)
}

fn labels(name: &str) -> BTreeMap<String, String> {
    if name == "c0" {
        BTreeMap::from([("canary".to_string(), "true".to_string())])
    } else {
        BTreeMap::new()
    }
}

fn now() -> Timestamp {
    "2027-01-15T09:00:00Z".parse().unwrap()
}

fn stored() -> BTreeMap<String, Content> {
    [mcm("v1"), mcm("v2")]
        .iter()
        .map(|m| (Content::of(m).hash(), Content::of(m)))
        .collect()
}

#[test]
fn a_new_revision_moves_the_canary_first_and_keeps_the_rest_on_theirs() {
    let (v1, v2) = (mcm("v1"), mcm("v2"));
    let clusters: Vec<SelectedCluster> = (0..4).map(|i| cluster(&format!("c{i}"), K1)).collect();
    let works = (0..4)
        .map(|i| (format!("c{i}"), work(&v1, &format!("c{i}"), K1, true)))
        .collect();
    let s = strategy::parse(v2.spec.rollout_strategy.as_ref()).unwrap();
    let round = decide(&v2, &clusters, &labels, &works, s, &stored(), now());
    assert_eq!(round.plan.move_now, vec!["c0".to_string()]);
    assert_eq!(round.wave, 1);
    assert_eq!(round.previous.as_deref(), Some(Content::of(&v1).hash().as_str()));
    let Some(Assignment::Render { revision, moved_at }) = round.assignments.get("c0") else {
        panic!("c0 moves")
    };
    assert_eq!((revision, moved_at), (&round.target, &now().to_string()));
    for c in ["c1", "c2", "c3"] {
        assert_eq!(
            round.assignments.get(c),
            Some(&Assignment::Render {
                revision: Content::of(&v1).hash(),
                moved_at: "2027-01-15T08:00:00Z".into()
            })
        );
    }
}

#[test]
fn a_new_kernel_on_a_cluster_not_yet_moved_is_rendered_from_its_revision_at_once() {
    let (v1, v2) = (mcm("v1"), mcm("v2"));
    // c0 (the canary) is mid-rollout; c1 still on v1 reports a second kernel.
    let clusters = vec![cluster("c0", K1), cluster("c1", K2)];
    let works: BTreeMap<String, Arc<ManifestWork>> = BTreeMap::from([
        ("c0".into(), work(&v2, "c0", K1, false)),
        ("c1".into(), work(&v1, "c1", K1, true)),
    ]);
    let s = strategy::parse(v2.spec.rollout_strategy.as_ref()).unwrap();
    let round = decide(&v2, &clusters, &labels, &works, s, &stored(), now());
    assert!(round.plan.move_now.is_empty(), "the canary is still loading");
    let observed = Observed {
        clusters,
        works,
        pins: all_pins(),
        spec_error: None,
    };
    let d = desired::desired_in(&v2, &observed, Some(&round));
    let WorkPlan::Write(w) = &d.clusters[1].work else {
        panic!("c1 gets its new kernel now: {:?}", d.clusters[1].work)
    };
    let w = w.to_work();
    let text = serde_json::to_string(&w.spec).unwrap();
    assert!(
        text.contains(&format!("reg.example/kmod-v1@sha256:{K2}")),
        "{text}"
    );
    assert!(!text.contains("kmod-v2"), "{text}");
    assert_eq!(revision::of_work(&w), Some(Content::of(&v1).hash().as_str()));
    assert!(
        matches!(d.clusters[0].work, WorkPlan::Keep(_)),
        "the canary's work is unchanged"
    );
}

#[test]
fn a_cluster_without_a_work_waits_for_its_wave_and_a_known_one_resumes_its_soak() {
    let v2 = mcm("v2");
    let clusters = vec![cluster("c0", K1), cluster("c1", K1), cluster("c2", K1)];
    // After a restart: c0 moved at 08:00 and is loaded; c1, c2 have nothing yet.
    let works = BTreeMap::from([("c0".to_string(), work(&v2, "c0", K1, true))]);
    let s = strategy::parse(v2.spec.rollout_strategy.as_ref()).unwrap();
    let round = decide(&v2, &clusters, &labels, &works, s.clone(), &stored(), now());
    assert_eq!(round.plan.succeeded, vec!["c0".to_string()]);
    assert_eq!(round.plan.move_now, vec!["c1".to_string(), "c2".to_string()]);
    let Some(Assignment::Render { moved_at, .. }) = round.assignments.get("c0") else {
        panic!()
    };
    assert_eq!(moved_at, "2027-01-15T08:00:00Z", "the move time survives");
    // Each wave's Event is its own series: the recorder folds Events by action, not by note.
    let wave = |round: &Round| {
        let events = crate::rollout::status::events(false, round);
        assert_eq!(events.len(), 1, "{events:?}");
        (events[0].action.clone(), events[0].note.clone())
    };
    let canary_round = {
        let works = BTreeMap::new();
        decide(&v2, &clusters, &labels, &works, s.clone(), &stored(), now())
    };
    let (first, second) = (wave(&canary_round), wave(&round));
    assert_ne!(first.0, second.0, "one action per wave");
    assert!(second.1.starts_with("wave 2: moving c1, c2"), "{}", second.1);
    let paused = Strategy { paused: true, ..s };
    let round = decide(&v2, &clusters, &labels, &works, paused, &stored(), now());
    assert_eq!(round.assignments.get("c1"), Some(&Assignment::Wait));
    let observed = Observed {
        clusters,
        works,
        pins: all_pins(),
        spec_error: None,
    };
    let d = desired::desired_in(&v2, &observed, Some(&round));
    assert!(matches!(&d.clusters[1].work, WorkPlan::Blocked(b) if b.reason == Reason::RolloutPending));
}

#[test]
fn a_failing_canary_halts_and_is_named_in_the_condition() {
    let v2 = mcm("v2");
    let mut failing = (*work(&v2, "c0", K1, true)).clone();
    if let Some(m) = failing.status.as_mut().and_then(|s| s.resource_status.as_mut()) {
        m.manifests[0].status_feedback.as_mut().unwrap().values.push(
            serde_json::from_value(json!({"name": desired::manifestwork::WORKERS_FAILING_FEEDBACK,
                "fieldValue": {"type": "String", "string": "insmod: ERROR: Invalid module format"}}))
            .unwrap(),
        );
    }
    let clusters = vec![cluster("c0", K1), cluster("c1", K1)];
    let works = BTreeMap::from([("c0".to_string(), Arc::new(failing))]);
    let s = strategy::parse(v2.spec.rollout_strategy.as_ref()).unwrap();
    let round = decide(&v2, &clusters, &labels, &works, s, &stored(), now());
    assert!(round.plan.halted && round.plan.move_now.is_empty());
    let mut status = kmm_api::ManagedClusterModuleStatus::default();
    crate::rollout::status::apply(&mut status, None, &round, None, Time(now()));
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == "RolloutHalted")
        .unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "RolloutHalted"));
    assert!(
        c.message
            .contains("c0 (LoadFailed: insmod: ERROR: Invalid module format)"),
        "{}",
        c.message
    );
    // Later, while still halted, the transition time stays: a steady rollout writes no status.
    let mut again = kmm_api::ManagedClusterModuleStatus::default();
    let later: Timestamp = "2027-01-15T10:00:00Z".parse().unwrap();
    crate::rollout::status::apply(&mut again, Some(&status), &round, None, Time(later));
    assert_eq!(again, status);
    let r = status.rollout.unwrap();
    assert_eq!((r.failed, r.pending, r.phase.as_str()), (1, 1, "Halted"));
    let events = crate::rollout::status::events(false, &round);
    assert_eq!(events.len(), 1);
    assert!(
        crate::rollout::status::events(true, &round).is_empty(),
        "one Warning per halt"
    );
}
