//! Deleting a Module that is still loaded on a node, on a real control plane: the finalizer
//! holds it with reason `StillLoaded`, looks again about every 5 s (not the generic 2 s retry),
//! and lets it go once the unload worker has run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod common;

use common::*;

use k8s_openapi::{
    api::{core::v1::Pod, events::v1::Event},
    jiff::Timestamp,
};
use kmm_agents::{KubeletScript, Outcome, PodMatcher};
use kmm_api::{Module, labels};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams},
};

const IMAGE: &str =
    "registry.example/kmm-ci@sha256:1111111111111111111111111111111111111111111111111111111111111111";

const UNLOAD_LABEL: (&str, &str) = ("kmm.node.kubernetes.io/worker-action", "Unload");

/// The `StillLoaded` Event about the Module, if published.
async fn still_loaded_event(client: &Client) -> Option<Event> {
    Api::<Event>::namespaced(client.clone(), "drivers")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|e| {
            e.reason.as_deref() == Some("StillLoaded")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("kmm-ci")
        })
}

/// How many times the Event was published, and when last.
fn series_of(event: &Event) -> (i32, Timestamp) {
    match &event.series {
        Some(s) => (s.count, s.last_observed_time.0),
        None => (1, event.event_time.as_ref().unwrap().0),
    }
}

async fn unload_pods(client: &Client) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), "drivers")
        .list(&ListParams::default().labels(&format!("{}={}", UNLOAD_LABEL.0, UNLOAD_LABEL.1)))
        .await
        .unwrap()
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_still_loaded_is_held_with_still_loaded_retried_every_five_seconds_then_released() {
    let _serial = one_at_a_time().await;
    // The first unload worker never starts (an image that cannot be pulled); the next succeeds.
    let script = KubeletScript::new().rule(
        PodMatcher::any().label(UNLOAD_LABEL.0, UNLOAD_LABEL.1),
        [Outcome::Pending, Outcome::Succeeded],
    );
    let mut setup = Setup::with_nodes([gpu_node("node-a", K_DEBIAN)]);
    setup.kubelet.script = script;
    let cluster = spoke_cluster("module-finalizer", setup).await;
    let client = cluster.client();
    let spoke = start_spoke(&cluster);
    cluster.apply_yaml(&ci_module(IMAGE, None, false)).await;
    let ready = labels::module_ready("drivers", "kmm-ci");
    eventually("node-a labelled ready", WAIT, || async {
        node_labels(&client, "node-a").await.contains_key(&ready)
    })
    .await;

    let modules = Api::<Module>::namespaced(client.clone(), "drivers");
    modules.delete("kmm-ci", &DeleteParams::default()).await.unwrap();
    eventually("an unload worker waits on node-a", WAIT, || async {
        !unload_pods(&client).await.is_empty()
    })
    .await;
    eventually("a StillLoaded Event", WAIT, || async {
        still_loaded_event(&client).await.is_some()
    })
    .await;
    let event = still_loaded_event(&client).await.unwrap();
    assert_eq!(event.type_.as_deref(), Some("Normal"));
    assert!(
        event
            .note
            .as_deref()
            .is_some_and(|n| n.contains("still loaded on 1 node(s)")),
        "{:?}",
        event.note
    );
    // The deletion itself brings a burst of looks (the record and the worker pod change); once
    // that settles only the retry brings the controller back.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let (count_a, seen_a) = series_of(&still_loaded_event(&client).await.unwrap());
    eventually("three more looks", WAIT, || async {
        series_of(&still_loaded_event(&client).await.unwrap()).0 >= count_a + 3
    })
    .await;
    let (count_b, seen_b) = series_of(&still_loaded_event(&client).await.unwrap());
    let spent = seen_b.duration_since(seen_a).as_secs_f64();
    let interval = spent / f64::from(count_b - count_a);
    assert!(
        (4.0..=8.0).contains(&interval),
        "a look about every 5 s, not the generic 2 s retry: {} looks in {spent:.1} s",
        count_b - count_a
    );
    assert!(
        modules.get_opt("kmm-ci").await.unwrap().is_some(),
        "the finalizer holds the Module while it is loaded"
    );

    // The stuck worker goes; the next unload worker succeeds and the Module is released.
    for pod in unload_pods(&client).await {
        Api::<Pod>::namespaced(client.clone(), "drivers")
            .delete(&pod.name_any(), &DeleteParams::default())
            .await
            .unwrap();
    }
    eventually("node-a unloaded", WAIT, || async {
        loaded(&nmc(&client, "node-a").await) == 0
            && !node_labels(&client, "node-a").await.contains_key(&ready)
    })
    .await;
    eventually("Module released", WAIT, || async {
        modules.get_opt("kmm-ci").await.unwrap().is_none()
    })
    .await;
    assert!(spoke.running());
    spoke.stop().await;
}
