//! kmm-spoke's controllers on a real control plane (kube-apiserver, etcd, kube-controller-manager
//! running the device plugin DaemonSets and garbage collection, kube-scheduler binding their
//! pods), as its ServiceAccount, with the kmm-agents kubelet running the pods of its nodes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod common;

use common::*;
use std::time::{Duration, Instant};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Node, Pod},
    events::v1::Event,
};
use kmm_agents::{NodeRegistration, Outcome};
use kmm_api::{Module, labels};
use kmm_fleet_tests::controlplane::AuditEvent;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams},
};

const MODULE: &str = r#"
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: kmm-ci, namespace: drivers}
spec:
  selector: {role: gpu}
  imageRepoSecret: {name: pull}
  moduleLoader:
    container:
      modprobe: {moduleName: kmm_ci_a}
      build:
        dockerfileConfigMap: {name: dockerfile}
      kernelMappings:
        - literal: 6.1.0-18-cloud-amd64
          containerImage: registry.example/kmm-ci@sha256:1111111111111111111111111111111111111111111111111111111111111111
        - regexp: '^5\.14.*el9'
          containerImage: registry.example/kmm-ci@sha256:2222222222222222222222222222222222222222222222222222222222222222
  devicePlugin:
    container: {image: registry.example/plugin:1}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_unloads_and_survives_a_restart() {
    let _serial = one_at_a_time().await;
    // The first worker on node-b fails; the retry succeeds.
    let setup = Setup::with_nodes([
        gpu_node("node-a", K_DEBIAN),
        gpu_node("node-b", K_RHEL),
        NodeRegistration::new("node-c", K_DEBIAN).label("role", "other"),
    ])
    .workers_on("node-b", first_fails());
    let cluster = spoke_cluster("loads-unloads", setup).await;
    let client = cluster.client();
    let spoke = start_spoke(&cluster);
    cluster.apply_yaml(MODULE).await;

    let ready = labels::module_ready("drivers", "kmm-ci");
    for node in ["node-a", "node-b"] {
        eventually(&format!("{node} labelled ready"), WAIT, || async {
            node_labels(&client, node).await.contains_key(&ready)
        })
        .await;
    }
    assert!(!node_labels(&client, "node-c").await.contains_key(&ready));
    let record = nmc(&client, "node-b").await.unwrap();
    assert_eq!(record.spec.modules.len(), 1);
    assert_eq!(
        record.spec.modules[0].config.container_image,
        "registry.example/kmm-ci@sha256:2222222222222222222222222222222222222222222222222222222222222222"
    );
    let boot_id = Api::<Node>::all(client.clone())
        .get("node-b")
        .await
        .unwrap()
        .status
        .unwrap()
        .node_info
        .unwrap()
        .boot_id;
    assert_eq!(
        record.status.as_ref().unwrap().modules[0].boot_id.as_deref(),
        Some(boot_id.as_str()),
        "the load is recorded against the boot the kubelet reports"
    );
    let events = Api::<Event>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert!(
        events.iter().any(|e| e.reason.as_deref() == Some("WorkerFailed")
            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("node-b")
            && e.note.as_deref().is_some_and(|m| m.contains("not found"))),
        "a WorkerFailed event names the failure"
    );
    // Finished worker pods are gone once read back.
    eventually("worker pods cleaned up", WAIT, || async {
        Api::<Pod>::namespaced(client.clone(), "drivers")
            .list(&ListParams::default().labels("kmm.node.kubernetes.io/worker-action"))
            .await
            .unwrap()
            .items
            .is_empty()
    })
    .await;

    // Status, the managed-mode condition, and the device plugin only where the module is loaded.
    let modules = Api::<Module>::namespaced(client.clone(), "drivers");
    eventually("module status counts", WAIT, || async {
        let m = modules.get("kmm-ci").await.unwrap();
        let s = m.status.unwrap_or_default();
        s.module_loader.is_some_and(|l| {
            l.desired_number == 2 && l.available_number == 2 && l.nodes_matching_selector_number == 2
        }) && s
            .conditions
            .iter()
            .any(|c| c.type_ == "BuildSignIgnored" && c.status == "True")
    })
    .await;
    let plugin_nodes = || async {
        let mut nodes: Vec<String> = Api::<Pod>::namespaced(client.clone(), "drivers")
            .list(&ListParams::default().labels("kmm.node.kubernetes.io/role=device-plugin"))
            .await
            .unwrap()
            .items
            .iter()
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect();
        nodes.sort();
        nodes
    };
    eventually("device plugin on loaded nodes", WAIT, || async {
        plugin_nodes().await == ["node-a", "node-b"]
    })
    .await;

    // node-b relabelled out: unloaded, ready label gone, plugin gone.
    label_node(&client, "node-b", &[("role", Some("other"))]).await;
    eventually("node-b unloaded", WAIT, || async {
        loaded(&nmc(&client, "node-b").await) == 0
            && !node_labels(&client, "node-b").await.contains_key(&ready)
    })
    .await;
    eventually("device plugin left node-b", WAIT, || async {
        plugin_nodes().await == ["node-a"]
    })
    .await;

    // Restart the spoke, delete the Module while it is down: the new spoke unloads node-a.
    spoke.stop().await;
    modules.delete("kmm-ci", &DeleteParams::default()).await.unwrap();
    assert!(
        modules.get_opt("kmm-ci").await.unwrap().is_some(),
        "the finalizer holds the Module"
    );
    let spoke = start_spoke(&cluster);
    eventually("node-a unloaded after the restart", WAIT, || async {
        loaded(&nmc(&client, "node-a").await) == 0
            && !node_labels(&client, "node-a").await.contains_key(&ready)
    })
    .await;
    eventually("Module released", WAIT, || async {
        modules.get_opt("kmm-ci").await.unwrap().is_none()
    })
    .await;
    let ds = Api::<DaemonSet>::namespaced(client.clone(), "drivers")
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(ds.items.is_empty(), "device plugin DaemonSet removed");

    spoke.stop().await;
}

const IMAGE_1: &str =
    "registry.example/kmm-ci@sha256:5555555555555555555555555555555555555555555555555555555555555555";
const IMAGE_2: &str =
    "registry.example/kmm-ci@sha256:6666666666666666666666666666666666666666666666666666666666666666";

/// `resource` or `resource/subresource` of an audit record.
fn resource_path(e: &AuditEvent) -> String {
    match e.subresource() {
        "" => e.resource().to_owned(),
        sub => format!("{}/{sub}", e.resource()),
    }
}

/// Warning Events about `node` with `reason`, their notes.
async fn node_events(client: &Client, node: &str, reason: &str) -> Vec<String> {
    Api::<Event>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(node)
        })
        .map(|e| e.note.unwrap_or_default())
        .collect()
}

/// The worker pods bound to `node`: (uid, image of the module, deleting).
async fn workers_on(client: &Client, node: &str) -> Vec<(String, String, bool)> {
    worker_pods(client)
        .await
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .map(|p| {
            let image = p.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0]
                .image
                .clone()
                .unwrap_or_default();
            (
                p.uid().unwrap_or_default(),
                image,
                p.metadata.deletion_timestamp.is_some(),
            )
        })
        .collect()
}

/// A worker pod whose node died (its kubelet stops: no heartbeats, pods untouched) while the
/// pod waited to start. The node turns NotReady; the Module's image changes, so kmm-spoke
/// deletes the stale pod, which stays Terminating: nobody can finish the deletion. kmm-spoke
/// keeps running, makes no second pod of the same fixed name, does not loop, reports the stuck
/// pod on the node, moves the healthy node along meanwhile, and finishes the job on the dead
/// node once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stuck_terminating_on_a_dead_node_is_reported_and_replaced_once_the_node_is_back() {
    let _serial = one_at_a_time().await;
    let cluster = spoke_cluster(
        "stuck-terminating",
        // node-a's first worker never starts (its image pull hangs); the next one loads.
        Setup::with_nodes([gpu_node("node-a", K_DEBIAN), gpu_node("node-b", K_DEBIAN)])
            .workers_on("node-a", [Outcome::Pending, Outcome::Succeeded]),
    )
    .await;
    let client = cluster.client();
    let spoke = start_spoke(&cluster);
    cluster.apply_yaml(&ci_module(IMAGE_1, None, false)).await;

    let ready = labels::module_ready("drivers", "kmm-ci");
    eventually("node-b loaded", WAIT, || async {
        node_labels(&client, "node-b").await.contains_key(&ready)
    })
    .await;
    let pods = Api::<Pod>::namespaced(client.clone(), "drivers");
    let name = "kmm-worker-node-a-kmm-ci";
    eventually("node-a's worker waits to start", WAIT, || async {
        pods.get_opt(name).await.unwrap().is_some_and(|p| {
            p.status.and_then(|s| s.container_statuses).is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.state.as_ref().is_some_and(|s| s.waiting.is_some()))
            })
        })
    })
    .await;
    let first_uid = pods.get(name).await.unwrap().uid().unwrap();

    // The kubelet of node-a dies: the node-lifecycle controller marks it NotReady.
    cluster.node_control.set_down("node-a", true);
    let nodes = Api::<Node>::all(client.clone());
    eventually("node-a NotReady", Duration::from_secs(90), || async {
        !node_ready(&nodes.get("node-a").await.unwrap())
    })
    .await;
    let before = cluster.spoke_requests().await.len();
    cluster.apply_yaml(&ci_module(IMAGE_2, None, false)).await;

    // The healthy node moves on while node-a is stuck.
    eventually("node-b on the new image", WAIT, || async {
        loaded_with(&client, "node-b", IMAGE_2).await
            && node_labels(&client, "node-b").await.contains_key(&ready)
    })
    .await;
    eventually("the stale worker on node-a is being deleted", WAIT, || async {
        workers_on(&client, "node-a").await == [(first_uid.clone(), IMAGE_1.to_owned(), true)]
    })
    .await;

    // Past the pod's grace period (30 s): still Terminating (no kubelet finishes it), no second
    // pod of that name.
    let watch_from = Instant::now();
    while watch_from.elapsed() < Duration::from_secs(40) {
        assert_eq!(
            workers_on(&client, "node-a").await,
            [(first_uid.clone(), IMAGE_1.to_owned(), true)],
            "the deleted worker stays Terminating and nothing replaces it while node-a is down"
        );
        assert!(spoke.running(), "kmm-spoke keeps running");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let requests = cluster.spoke_requests().await;
    let since: Vec<&AuditEvent> = requests[before..].iter().collect();
    let node_a_writes: Vec<String> = since
        .iter()
        .filter(|e| e.is_write() && e.object_ref.as_ref().is_some_and(|o| o.name.contains("node-a")))
        .map(|e| {
            // An Event's name is its object's name and a unique suffix.
            let name = &e.object_ref.as_ref().unwrap().name;
            let name = match e.resource() {
                "events" => name.split('.').next().unwrap_or_default(),
                _ => name.as_str(),
            };
            format!("{} {} {name} -> {}", e.verb, resource_path(e), e.code())
        })
        .collect();
    println!(
        "kmm-spoke since the image changed: {} requests; its writes about node-a: {node_a_writes:#?}",
        since.len()
    );
    assert_eq!(
        node_a_writes,
        [
            "patch nodemodulesconfigs node-a -> 200".to_owned(),
            format!("delete pods {name} -> 200"),
            "create events node-a -> 201".to_owned(),
        ],
        "node-a's record takes the new image, the stale worker is deleted once and reported \
         once; no pod is created on node-a while the old one is there"
    );
    let collisions: Vec<String> = requests
        .iter()
        .filter(|e| e.resource() == "pods" && e.code() == 409)
        .map(|e| format!("{} {}", e.verb, e.object_ref.as_ref().unwrap().name))
        .collect();
    assert!(
        collisions.is_empty(),
        "no pod of a taken name was tried: {collisions:#?}"
    );
    assert!(
        since.len() < 200,
        "no request loop while node-a is stuck: {} requests in about a minute",
        since.len()
    );
    let notes = node_events(&client, "node-a", "WorkerPodStuck").await;
    println!("WorkerPodStuck: {notes:#?}");
    assert!(
        notes.len() == 1 && notes[0].contains(name) && notes[0].contains("NotReady"),
        "one WorkerPodStuck event on node-a names the pod and the NotReady node: {notes:#?}"
    );

    // node-a is back: its kubelet finishes the deletion, the new image loads.
    cluster.node_control.set_down("node-a", false);
    eventually("node-a loaded with the new image", WAIT, || async {
        loaded_with(&client, "node-a", IMAGE_2).await
            && node_labels(&client, "node-a").await.contains_key(&ready)
    })
    .await;
    eventually("node-a's workers cleaned up", WAIT, || async {
        workers_on(&client, "node-a").await.is_empty()
    })
    .await;
    assert_eq!(
        node_events(&client, "node-a", "WorkerPodStuck").await.len(),
        1,
        "the stuck pod was reported once"
    );
    spoke.stop().await;
}

/// A node whose kubelet goes silent for a while (a crash, a network partition): the
/// node-lifecycle controller marks it NotReady and taints it `node.kubernetes.io/unreachable`
/// (NoSchedule and NoExecute). The module stays loaded in that node's kernel, so kmm-spoke keeps
/// it targeted: no unload worker is queued on the dead node (its kubelet would run it the moment
/// it is back), the ready label stays, and nothing runs when the node returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_kubelet_goes_silent_keeps_its_module() {
    let _serial = one_at_a_time().await;
    let cluster = spoke_cluster(
        "silent-kubelet",
        Setup::with_nodes([gpu_node("node-a", K_DEBIAN)]),
    )
    .await;
    let client = cluster.client();
    let spoke = start_spoke(&cluster);
    cluster.apply_yaml(&ci_module(IMAGE_1, None, false)).await;
    let ready = labels::module_ready("drivers", "kmm-ci");
    eventually("node-a loaded", WAIT, || async {
        node_labels(&client, "node-a").await.contains_key(&ready)
            && workers_on(&client, "node-a").await.is_empty()
    })
    .await;

    cluster.node_control.set_down("node-a", true);
    let nodes = Api::<Node>::all(client.clone());
    eventually(
        "node-a NotReady and tainted unreachable",
        Duration::from_secs(90),
        || async {
            let node = nodes.get("node-a").await.unwrap();
            !node_ready(&node) && node_tainted(&node)
        },
    )
    .await;
    // kmm-spoke has seen the taints (they are a Node update); give it time to act on them.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let record = nmc(&client, "node-a").await.unwrap();
    assert_eq!(record.spec.modules.len(), 1, "the entry stays");
    assert_eq!(loaded(&Some(record)), 1);
    assert!(node_labels(&client, "node-a").await.contains_key(&ready));
    assert_eq!(
        workers_on(&client, "node-a").await,
        [],
        "no worker queued on the dead node"
    );

    cluster.node_control.set_down("node-a", false);
    cluster.cp.wait_node_ready("node-a").await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let creates = cluster
        .spoke_requests()
        .await
        .iter()
        .filter(|e| e.resource() == "pods" && e.verb == "create")
        .count();
    assert_eq!(creates, 1, "only the first load ever ran a worker");
    assert!(node_events(&client, "node-a", "ModuleUnloaded").await.is_empty());
    assert!(node_labels(&client, "node-a").await.contains_key(&ready));
    spoke.stop().await;
}

/// A worker that fails with a 4 KiB termination message (the most a kubelet keeps): the
/// `WorkerFailed` Event still reaches the apiserver, which refuses an events.k8s.io note over
/// 1024 bytes, with the start of the message; the retry loads the module.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_kib_worker_failure_is_reported_in_an_event_the_apiserver_accepts() {
    let _serial = one_at_a_time().await;
    let head =
        "modprobe: FATAL: Module kmm_ci_a not found in directory /opt/lib/modules/6.1.0-18-cloud-amd64; ";
    let mut message = head.to_owned();
    while message.len() < 4096 - 1 {
        message.push('é');
    }
    while message.len() < 4096 {
        message.push('.');
    }
    assert_eq!(message.len(), 4096);
    let cluster = spoke_cluster(
        "failure-4k",
        Setup::with_nodes([gpu_node("node-a", K_DEBIAN)]).workers_on(
            "node-a",
            [Outcome::failed(1, message.clone()), Outcome::Succeeded],
        ),
    )
    .await;
    let client = cluster.client();
    let spoke = start_spoke(&cluster);
    cluster.apply_yaml(&ci_module(IMAGE_1, None, false)).await;

    let ready = labels::module_ready("drivers", "kmm-ci");
    eventually("node-a loaded after the retry", WAIT, || async {
        node_labels(&client, "node-a").await.contains_key(&ready)
    })
    .await;
    let notes = node_events(&client, "node-a", "WorkerFailed").await;
    assert_eq!(notes.len(), 1, "one WorkerFailed event: {notes:#?}");
    let note = &notes[0];
    assert!(note.len() <= 1024, "the note is {} bytes", note.len());
    assert!(note.contains(head), "the note starts the message: {note}");
    let refused: Vec<String> = cluster
        .spoke_requests()
        .await
        .iter()
        .filter(|e| e.resource() == "events" && !(200..300).contains(&e.code()))
        .map(|e| format!("{} {} -> {}", e.verb, e.request_uri, e.code()))
        .collect();
    assert!(refused.is_empty(), "every Event was accepted: {refused:#?}");
    spoke.stop().await;
}
