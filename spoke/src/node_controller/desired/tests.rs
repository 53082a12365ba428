//! The pure per-node decisions: what the record says, which worker pod runs, which labels.

use k8s_openapi::api::core::v1::Taint;
use k8s_openapi::{
    api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kmm_api::{
    labels,
    nmc::{NodeModulesConfigSpec, NodeModulesConfigStatus},
};

use super::*;
use crate::{
    fixtures::{KERNEL, loader, mk_module, mk_node},
    targeting::targets,
    worker::pod::{WorkerPodInput, WorkerPodSettings, worker_pod},
};

fn entry(module: &Module) -> NodeModuleSpec {
    match module_entry(module, KERNEL, &NodeSettings::default()) {
        Mapping::Entry(e) => *e,
        _ => panic!("no entry"),
    }
}

fn mk_nmc(spec: Vec<NodeModuleSpec>, loaded: Option<(&NodeModuleSpec, &str)>) -> NodeModulesConfig {
    let mut nmc = NodeModulesConfig::new("node-a", NodeModulesConfigSpec { modules: spec });
    nmc.status = loaded.map(|(e, boot)| NodeModulesConfigStatus {
        modules: vec![NodeModuleStatus {
            item: e.item.clone(),
            config: Some(e.config.clone()),
            boot_id: Some(boot.into()),
            last_transition_time: None,
        }],
    });
    nmc
}

fn mk_pod(action: Action, e: &NodeModuleSpec, phase: &str, finished: Option<Timestamp>, attempt: u32) -> Pod {
    let mut pod = worker_pod(
        &WorkerPodInput {
            node: "node-a",
            action,
            item: &e.item,
            config: &e.config,
            owner: None,
            attempt,
            last_failure: None,
        },
        &WorkerPodSettings::default(),
    )
    .unwrap();
    pod.status = Some(PodStatus {
        phase: Some(phase.into()),
        container_statuses: finished.map(|f| {
            vec![ContainerStatus {
                name: "worker".into(),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 1,
                        message: Some("modprobe: FATAL: Module kmm_m not found".into()),
                        finished_at: Some(Time(f)),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]
        }),
        ..Default::default()
    });
    pod
}

fn settings() -> NodeSettings {
    NodeSettings {
        backoff_base: Duration::from_secs(10),
        ..Default::default()
    }
}

fn decide(
    node: &Node,
    nmc: Option<&NodeModulesConfig>,
    modules: &[Module],
    pods: &[Pod],
    now: Timestamp,
) -> NodeDesired {
    desired(
        NodeObserved {
            node,
            nmc,
            modules,
            pods,
            now,
        },
        &settings(),
    )
}

fn actions(d: &NodeDesired) -> Vec<(Action, Vec<String>)> {
    d.create_pods
        .iter()
        .map(|p| (p.action, p.config.modprobe.parameters.clone().unwrap_or_default()))
        .collect()
}

#[test]
fn a_selected_node_gets_the_entry_and_a_load_pod_but_no_ready_label_yet() {
    let module = mk_module(&loader("p=3"));
    let d = decide(
        &mk_node(&[("role", "gpu")], "b1"),
        None,
        std::slice::from_ref(&module),
        &[],
        Timestamp::now(),
    );
    assert_eq!(d.spec, [entry(&module)]);
    assert_eq!(actions(&d), [(Action::Load, vec!["p=3".to_owned()])]);
    assert!(d.labels.is_empty(), "{:?}", d.labels);
    assert_eq!(d.spec[0].item.service_account_name, "default");
}

/// Finding 9: what the worker would refuse never becomes a record entry, so no worker runs.
#[test]
fn a_module_the_worker_would_refuse_gets_no_entry_and_no_worker() {
    for bad in [
        "modulesLoadingOrder: [kmm_m, \"kmm_x\\ninstall kmm_m /bin/sh -c id\"], ",
        "firmwarePath: /../outside, ",
        "dirName: \"/opt;id\", ",
    ] {
        let spec = loader("p=3").replace(
            "modprobe: {moduleName: kmm_m, ",
            &format!("modprobe: {{moduleName: kmm_m, {bad}"),
        );
        let module = mk_module(&spec);
        assert!(
            matches!(module_entry(&module, KERNEL, &settings()), Mapping::Error(_)),
            "{bad}"
        );
        let d = decide(
            &mk_node(&[("role", "gpu")], "b1"),
            None,
            std::slice::from_ref(&module),
            &[],
            Timestamp::now(),
        );
        assert!(d.spec.is_empty() && d.create_pods.is_empty(), "{bad}: {d:?}");
    }
    // A node whose kernel breaks the grammar, under a catch-all mapping.
    let any = mk_module(&loader("p=3").replace(&format!("literal: {KERNEL}"), "regexp: '^.+$'"));
    assert!(matches!(
        module_entry(&any, KERNEL, &settings()),
        Mapping::Entry(_)
    ));
    assert!(matches!(
        module_entry(&any, "6.1.0;id", &settings()),
        Mapping::Error(_)
    ));
}

#[test]
fn an_unselected_node_gets_nothing() {
    let d = decide(
        &mk_node(&[("role", "cpu")], "b1"),
        None,
        &[mk_module(&loader("p=3"))],
        &[],
        Timestamp::now(),
    );
    assert_eq!(d, NodeDesired::default());
}

#[test]
fn a_finished_load_is_recorded_the_pod_removed_and_the_node_labelled() {
    let module = mk_module(&loader("p=3"));
    let e = entry(&module);
    let nmc = mk_nmc(vec![e.clone()], None);
    let pod = mk_pod(Action::Load, &e, "Succeeded", None, 0);
    let d = decide(
        &mk_node(&[("role", "gpu")], "b1"),
        Some(&nmc),
        &[module],
        &[pod],
        Timestamp::now(),
    );
    assert_eq!(d.status.len(), 1);
    assert_eq!(d.status[0].config.as_ref(), Some(&e.config));
    assert_eq!(d.status[0].boot_id.as_deref(), Some("b1"));
    assert_eq!(
        d.delete_pods,
        [("drivers".to_owned(), "kmm-worker-node-a-m".to_owned())]
    );
    assert!(d.create_pods.is_empty());
    assert!(d.labels.contains_key(&labels::module_ready("drivers", "m")));
    assert_eq!(d.events[0].reason, "ModuleLoaded");
}

#[test]
fn changed_parameters_on_the_same_kernel_unload_the_loaded_module_first() {
    let old = entry(&mk_module(&loader("p=3")));
    let module = mk_module(&loader("p=4"));
    let nmc = mk_nmc(vec![old.clone()], Some((&old, "b1")));
    let d = decide(
        &mk_node(&[("role", "gpu")], "b1"),
        Some(&nmc),
        std::slice::from_ref(&module),
        &[],
        Timestamp::now(),
    );
    assert_eq!(d.spec, [entry(&module)], "the record asks for the new parameters");
    assert_eq!(
        actions(&d),
        [(Action::Unload, vec!["p=3".to_owned()])],
        "unloaded with what was loaded"
    );
    assert!(
        !d.labels.contains_key(&labels::module_ready("drivers", "m")),
        "not ready while the loaded config differs"
    );

    // Once the unload finished, the new parameters load.
    let unloaded = mk_pod(Action::Unload, &old, "Succeeded", None, 0);
    let d = decide(
        &mk_node(&[("role", "gpu")], "b1"),
        Some(&nmc),
        &[module],
        &[unloaded],
        Timestamp::now(),
    );
    assert!(d.status.is_empty());
    assert_eq!(actions(&d), [(Action::Load, vec!["p=4".to_owned()])]);
}

#[test]
fn a_new_kernel_loads_without_unloading() {
    let module = mk_module(&loader("p=3"));
    let mut old = entry(&module);
    old.config.kernel_version = "6.1.0-17-cloud-amd64".into();
    let nmc = mk_nmc(vec![old.clone()], Some((&old, "b1")));
    let d = decide(
        &mk_node(&[("role", "gpu")], "b2"),
        Some(&nmc),
        &[module],
        &[],
        Timestamp::now(),
    );
    assert_eq!(actions(&d), [(Action::Load, vec!["p=3".to_owned()])]);
}

#[test]
fn a_deleted_module_or_a_deselected_node_is_unloaded() {
    let module = mk_module(&loader("p=3"));
    let e = entry(&module);
    let nmc = mk_nmc(vec![e.clone()], Some((&e, "b1")));
    for (node, modules) in [
        (mk_node(&[("role", "gpu")], "b1"), vec![]),
        (mk_node(&[("role", "cpu")], "b1"), vec![module.clone()]),
    ] {
        let d = decide(&node, Some(&nmc), &modules, &[], Timestamp::now());
        assert!(d.spec.is_empty());
        assert_eq!(actions(&d), [(Action::Unload, vec!["p=3".to_owned()])]);
    }
}

#[test]
fn after_a_reboot_a_wanted_module_loads_again_and_an_unwanted_one_is_forgotten() {
    let module = mk_module(&loader("p=3"));
    let e = entry(&module);
    let nmc = mk_nmc(vec![e.clone()], Some((&e, "b1")));
    let node = mk_node(&[("role", "gpu")], "b2");
    let d = decide(&node, Some(&nmc), &[module], &[], Timestamp::now());
    assert_eq!(actions(&d), [(Action::Load, vec!["p=3".to_owned()])]);

    let d = decide(&node, Some(&nmc), &[], &[], Timestamp::now());
    assert!(d.create_pods.is_empty(), "nothing left to unload after a reboot");
    assert!(d.status.is_empty());
}

#[test]
fn a_failed_worker_is_retried_only_after_its_backoff() {
    let module = mk_module(&loader("p=3"));
    let e = entry(&module);
    let nmc = mk_nmc(vec![e.clone()], None);
    let node = mk_node(&[("role", "gpu")], "b1");
    let finished = Timestamp::now();
    // Second failure (attempt 1): 20 s backoff.
    let pod = mk_pod(Action::Load, &e, "Failed", Some(finished), 1);

    let early = finished + Duration::from_secs(5);
    let d = decide(
        &node,
        Some(&nmc),
        std::slice::from_ref(&module),
        std::slice::from_ref(&pod),
        early,
    );
    assert!(d.create_pods.is_empty() && d.delete_pods.is_empty());
    assert_eq!(d.requeue_after, Some(Duration::from_secs(15)));

    let later = finished + Duration::from_secs(20);
    let d = decide(&node, Some(&nmc), &[module], &[pod], later);
    assert_eq!(
        d.delete_pods,
        [("drivers".to_owned(), "kmm-worker-node-a-m".to_owned())]
    );
    assert_eq!(d.create_pods.len(), 1);
    assert_eq!(d.create_pods[0].attempt, 2);
    assert_eq!(
        d.create_pods[0].last_failure.as_deref(),
        Some("modprobe: FATAL: Module kmm_m not found"),
        "the retry carries the reason it retries for"
    );
    assert_eq!(d.events[0].reason, "WorkerFailed");
    assert!(
        d.events[0].note.contains("Module kmm_m not found"),
        "{}",
        d.events[0].note
    );
}

#[test]
fn versioned_modules_follow_the_worker_label_and_set_it_from_the_users_label() {
    let module = mk_module(&(loader("p=3") + "      version: v2\n"));
    let requested = labels::version_module("drivers", "m");
    // M = v2, no W yet: W is set first; no entry until it is.
    let node = mk_node(&[("role", "gpu"), (requested.as_str(), "v2")], "b1");
    let d = decide(&node, None, std::slice::from_ref(&module), &[], Timestamp::now());
    assert!(d.spec.is_empty());
    assert_eq!(
        d.labels
            .get(&labels::version_worker_pod("drivers", "m"))
            .map(String::as_str),
        Some("v2")
    );
    // W = v2: the entry carries the version.
    let worker = labels::version_worker_pod("drivers", "m");
    let node = mk_node(
        &[
            ("role", "gpu"),
            (requested.as_str(), "v2"),
            (worker.as_str(), "v2"),
        ],
        "b1",
    );
    let d = decide(&node, None, &[module], &[], Timestamp::now());
    assert_eq!(d.spec[0].item.version.as_deref(), Some("v2"));
    assert_eq!(d.create_pods[0].action, Action::Load);
}

#[rstest::rstest]
#[case::no_taint(&[], "", true)]
#[case::untolerated_no_schedule(&[("gpu-maintenance", "NoSchedule")], "", false)]
#[case::untolerated_no_execute(&[("gpu-maintenance", "NoExecute")], "", false)]
#[case::tolerated(&[("gpu-maintenance", "NoSchedule")], "gpu-maintenance", true)]
#[case::prefer_no_schedule_is_ignored(&[("gpu-maintenance", "PreferNoSchedule")], "", true)]
#[case::cordoned(&[("node.kubernetes.io/unschedulable", "NoSchedule")], "", false)]
#[case::kubelet_silent(
    &[("node.kubernetes.io/unreachable", "NoSchedule"), ("node.kubernetes.io/unreachable", "NoExecute")],
    "",
    true
)]
#[case::not_ready(&[("node.kubernetes.io/not-ready", "NoExecute")], "", true)]
#[case::disk_pressure(&[("node.kubernetes.io/disk-pressure", "NoSchedule")], "", true)]
fn node_condition_taints_never_untarget_a_node(
    #[case] taints: &[(&str, &str)],
    #[case] tolerated_key: &str,
    #[case] want: bool,
) {
    let extra = if tolerated_key.is_empty() {
        String::new()
    } else {
        format!("  tolerations: [{{key: {tolerated_key}, operator: Exists}}]\n")
    };
    let module = mk_module(&(loader("p=3") + &extra));
    let mut node = mk_node(&[("role", "gpu")], "b1");
    node.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
        taints: Some(
            taints
                .iter()
                .map(|(key, effect)| Taint {
                    key: (*key).into(),
                    effect: (*effect).into(),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    });
    assert_eq!(targets(&module, &node), want);
}

/// A stale Load pod being deleted on a node whose kubelet died: its deletion deadline
/// (`deletionTimestamp`) passes and the pod is still there.
fn deleting_pod(e: &NodeModuleSpec, deadline: Timestamp) -> Pod {
    let mut pod = mk_pod(Action::Load, e, "Pending", None, 0);
    pod.metadata.uid = Some("uid-1".into());
    pod.metadata.deletion_timestamp = Some(Time(deadline));
    pod
}

fn not_ready(mut node: Node) -> Node {
    node.status.get_or_insert_default().conditions = Some(vec![k8s_openapi::api::core::v1::NodeCondition {
        type_: "Ready".into(),
        status: "Unknown".into(),
        reason: Some("NodeStatusUnknown".into()),
        message: Some("Kubelet stopped posting node status.".into()),
        ..Default::default()
    }]);
    node
}

#[test]
fn a_worker_pod_still_there_after_its_grace_period_is_reported_and_nothing_replaces_it() {
    let old = mk_module(&loader("p=3"));
    let new = mk_module(&loader("p=4"));
    let nmc = mk_nmc(vec![entry(&new)], None);
    let node = not_ready(mk_node(&[("role", "gpu")], "b1"));
    let deadline = Timestamp::now();
    let pod = deleting_pod(&entry(&old), deadline);

    let d = decide(
        &node,
        Some(&nmc),
        std::slice::from_ref(&new),
        std::slice::from_ref(&pod),
        deadline + Duration::from_secs(5),
    );
    assert!(
        d.create_pods.is_empty() && d.delete_pods.is_empty(),
        "the name is taken until the pod is gone, and it is already being deleted"
    );
    let stuck: Vec<&NodeEvent> = d
        .events
        .iter()
        .filter(|e| e.reason == Reason::WorkerPodStuck)
        .collect();
    assert_eq!(stuck.len(), 1);
    assert!(stuck[0].warning);
    assert_eq!(
        stuck[0].once_per.as_deref(),
        Some("uid-1"),
        "reported once per pod"
    );
    for part in [
        "worker pod drivers/kmm-worker-node-a-m (loading drivers/m)",
        "node node-a is NotReady (Ready=Unknown, NodeStatusUnknown: Kubelet stopped posting node status.)",
        "kubectl delete pod -n drivers kmm-worker-node-a-m --force --grace-period=0",
    ] {
        assert!(stuck[0].note.contains(part), "{part:?} in {}", stuck[0].note);
    }

    // Once the kubelet is back and the pod gone, the new worker starts.
    let d = decide(&node, Some(&nmc), &[new], &[], deadline + Duration::from_secs(60));
    assert_eq!(actions(&d), [(Action::Load, vec!["p=4".to_owned()])]);
    assert!(d.events.iter().all(|e| e.reason != Reason::WorkerPodStuck));
}

#[test]
fn a_worker_pod_within_its_grace_period_brings_the_node_back_when_it_ends() {
    let module = mk_module(&loader("p=3"));
    let e = entry(&module);
    let nmc = mk_nmc(vec![e.clone()], None);
    let node = mk_node(&[("role", "gpu")], "b1");
    let now = Timestamp::now();
    let pod = deleting_pod(&e, now + Duration::from_secs(20));
    let d = decide(&node, Some(&nmc), &[module], &[pod], now);
    assert!(d.create_pods.is_empty() && d.events.is_empty());
    assert_eq!(
        d.requeue_after,
        Some(Duration::from_secs(21)),
        "a second after the grace period, to report the pod if it is still there"
    );
}

#[test]
fn backoff_doubles_up_to_the_maximum() {
    let s = NodeSettings {
        backoff_base: Duration::from_secs(10),
        backoff_max: Duration::from_secs(60),
        ..Default::default()
    };
    let got: Vec<u64> = (0..6).map(|a| backoff(&s, a).as_secs()).collect();
    assert_eq!(got, [10, 20, 40, 60, 60, 60]);
}

#[test]
fn owned_labels_are_only_the_ones_kmm_spoke_writes() {
    use crate::node_controller::apply::is_owned_label;
    assert!(is_owned_label(&labels::module_ready("drivers", "m")));
    assert!(is_owned_label(&labels::module_version_ready("drivers", "m")));
    assert!(is_owned_label(&labels::device_plugin_target("drivers", "m")));
    assert!(is_owned_label(&labels::version_worker_pod("drivers", "m")));
    assert!(is_owned_label(&labels::version_schedule_pod("drivers", "m")));
    assert!(
        !is_owned_label(&labels::version_module("drivers", "m")),
        "the user's"
    );
    assert!(!is_owned_label(&labels::device_plugin_ready("drivers", "m")));
    assert!(!is_owned_label("role"));
}
