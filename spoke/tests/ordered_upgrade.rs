//! An ordered upgrade (moduleLoader.container.version v1 -> v2) walked node by node through the
//! version labels, as the seeds describe it, on a real control plane: kube-controller-manager
//! runs the device plugin DaemonSets (and deletes their pods when the schedule label goes),
//! kube-scheduler binds their pods, the kmm-agents kubelet runs them and the worker pods.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod common;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use common::*;
use futures::StreamExt;
use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Pod};
use kmm_api::labels;
use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
    runtime::{WatchStreamExt, watcher},
};

const IMAGE_V1: &str =
    "registry.example/kmm-ci@sha256:1111111111111111111111111111111111111111111111111111111111111111";
const IMAGE_V2: &str =
    "registry.example/kmm-ci@sha256:2222222222222222222222222222222222222222222222222222222222222222";

/// Worker pods as they are created: (node, action, image).
type Journal = Arc<Mutex<Vec<(String, String, String)>>>;

fn record_worker_pods(client: &Client) -> (Journal, tokio::task::JoinHandle<()>) {
    let journal: Journal = Arc::default();
    let api = Api::<Pod>::namespaced(client.clone(), "drivers");
    let task = tokio::spawn({
        let journal = journal.clone();
        async move {
            let cfg = watcher::Config::default().labels("kmm.node.kubernetes.io/worker-action");
            let mut seen = std::collections::BTreeSet::new();
            let mut pods = std::pin::pin!(watcher(api, cfg).applied_objects());
            while let Some(Ok(pod)) = pods.next().await {
                if !seen.insert(pod.uid().unwrap_or_default()) {
                    continue;
                }
                let spec = pod.spec.clone().unwrap_or_default();
                let image = spec.init_containers.unwrap_or_default()[0]
                    .image
                    .clone()
                    .unwrap_or_default();
                journal.lock().unwrap().push((
                    spec.node_name.unwrap_or_default(),
                    pod.labels()["kmm.node.kubernetes.io/worker-action"].clone(),
                    image,
                ));
            }
        }
    });
    (journal, task)
}

fn history(journal: &Journal, node: &str) -> Vec<(String, String)> {
    journal
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _, _)| n == node)
        .map(|(_, action, image)| (action.clone(), image.clone()))
        .collect()
}

async fn plugin_pods(client: &Client) -> BTreeMap<String, String> {
    Api::<Pod>::namespaced(client.clone(), "drivers")
        .list(&ListParams::default().labels("kmm.node.kubernetes.io/role=device-plugin"))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let node = p.spec.as_ref()?.node_name.clone()?;
            let ds = p.owner_references().first()?.name.clone();
            Some((node, ds))
        })
        .collect()
}

/// What the node shows for the Module: (W, S, ready, version.ready).
async fn version_state(
    client: &Client,
    node: &str,
) -> (Option<String>, Option<String>, bool, Option<String>) {
    let l = node_labels(client, node).await;
    (
        l.get(&labels::version_worker_pod("drivers", "kmm-ci")).cloned(),
        l.get(&labels::version_schedule_pod("drivers", "kmm-ci")).cloned(),
        l.contains_key(&labels::module_ready("drivers", "kmm-ci")),
        l.get(&labels::module_version_ready("drivers", "kmm-ci")).cloned(),
    )
}

fn on(version: &str) -> (Option<String>, Option<String>, bool, Option<String>) {
    (
        Some(version.into()),
        Some(version.into()),
        true,
        Some(version.into()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_upgrade_moves_one_node_at_a_time_through_the_version_labels() {
    let requested = labels::version_module("drivers", "kmm-ci");
    let cluster = spoke_cluster(
        "ordered-upgrade",
        Setup::with_nodes(["node-a", "node-b"].map(|n| gpu_node(n, K_DEBIAN).label(&requested, "v1"))),
    )
    .await;
    let client = cluster.client();
    let (journal, recorder) = record_worker_pods(&client);
    let spoke = start_spoke(&cluster);
    cluster.apply_yaml(&ci_module(IMAGE_V1, Some("v1"), true)).await;

    // v1 everywhere: W and S follow M, the module loads, the v1 device plugin runs.
    for node in ["node-a", "node-b"] {
        eventually(&format!("{node} on v1"), WAIT, || async {
            version_state(&client, node).await == on("v1")
        })
        .await;
    }
    let both_v1 = BTreeMap::from([
        ("node-a".to_owned(), "kmm-ci-device-plugin-v1".to_owned()),
        ("node-b".to_owned(), "kmm-ci-device-plugin-v1".to_owned()),
    ]);
    eventually("v1 plugins", WAIT, || async {
        plugin_pods(&client).await == both_v1
    })
    .await;

    // The Module moves to v2 (image and version together): nothing moves on the nodes yet.
    cluster.apply_yaml(&ci_module(IMAGE_V2, Some("v2"), true)).await;
    let dsets = Api::<DaemonSet>::namespaced(client.clone(), "drivers");
    eventually("the v2 DaemonSet exists", WAIT, || async {
        dsets.get_opt("kmm-ci-device-plugin-v2").await.unwrap().is_some()
    })
    .await;
    for node in ["node-a", "node-b"] {
        assert_eq!(version_state(&client, node).await, on("v1"), "{node} untouched");
        let record = nmc(&client, node).await.unwrap();
        assert_eq!(record.spec.modules[0].config.container_image, IMAGE_V1);
    }
    assert_eq!(plugin_pods(&client).await, both_v1);

    // node-a: the admin removes M. S goes (plugin stops), then W (module unloaded).
    label_node(&client, "node-a", &[(requested.as_str(), None)]).await;
    eventually("node-a drained", WAIT, || async {
        version_state(&client, "node-a").await == (None, None, false, None)
            && loaded(&nmc(&client, "node-a").await) == 0
    })
    .await;
    assert_eq!(
        plugin_pods(&client).await,
        BTreeMap::from([("node-b".to_owned(), "kmm-ci-device-plugin-v1".to_owned())])
    );
    assert_eq!(
        version_state(&client, "node-b").await,
        on("v1"),
        "node-b untouched"
    );

    // node-a: M = v2. W = v2, the v2 image loads, then S = v2 and the v2 plugin runs there.
    label_node(&client, "node-a", &[(requested.as_str(), Some("v2"))]).await;
    eventually("node-a on v2", WAIT, || async {
        version_state(&client, "node-a").await == on("v2")
    })
    .await;
    eventually("v2 plugin on node-a", WAIT, || async {
        plugin_pods(&client).await.get("node-a").map(String::as_str) == Some("kmm-ci-device-plugin-v2")
    })
    .await;
    assert_eq!(
        history(&journal, "node-a"),
        [
            ("Load".to_owned(), IMAGE_V1.to_owned()),
            ("Unload".to_owned(), IMAGE_V1.to_owned()),
            ("Load".to_owned(), IMAGE_V2.to_owned()),
        ]
    );
    assert_eq!(
        version_state(&client, "node-b").await,
        on("v1"),
        "node-b still on v1"
    );
    assert_eq!(
        nmc(&client, "node-b").await.unwrap().status.unwrap().modules[0]
            .config
            .as_ref()
            .unwrap()
            .container_image,
        IMAGE_V1
    );

    // node-b: the shortcut, M changed straight to v2; same order of steps.
    label_node(&client, "node-b", &[(requested.as_str(), Some("v2"))]).await;
    eventually("node-b on v2", WAIT, || async {
        version_state(&client, "node-b").await == on("v2")
    })
    .await;
    let both_v2 = BTreeMap::from([
        ("node-a".to_owned(), "kmm-ci-device-plugin-v2".to_owned()),
        ("node-b".to_owned(), "kmm-ci-device-plugin-v2".to_owned()),
    ]);
    eventually("v2 plugins everywhere", WAIT, || async {
        plugin_pods(&client).await == both_v2
    })
    .await;
    assert_eq!(
        history(&journal, "node-b"),
        [
            ("Load".to_owned(), IMAGE_V1.to_owned()),
            ("Unload".to_owned(), IMAGE_V1.to_owned()),
            ("Load".to_owned(), IMAGE_V2.to_owned()),
        ]
    );
    eventually("the idle v1 DaemonSet is removed", WAIT, || async {
        dsets.get_opt("kmm-ci-device-plugin-v1").await.unwrap().is_none()
    })
    .await;

    recorder.abort();
    spoke.stop().await;
}
