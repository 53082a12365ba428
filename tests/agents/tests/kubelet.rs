//! The kubelet, DaemonSet and Job controller stand-ins against a simulator cluster.
// Test helpers too: a panic there is a failed assertion, as clippy.toml says for tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{WAIT, create_namespace, eventually};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kmm_agents::kubelet::daemonset::REVISION_LABEL;
use kmm_agents::kubelet::status;
use kmm_agents::{Kubelet, KubeletOptions, KubeletScript, MemoryLogSink, Outcome, PodLogSink, PodMatcher};
use kmm_sim::{Sim, SimCluster};
use kube::api::{Api, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

async fn cluster() -> (Sim, SimCluster, Client) {
    let sim = Sim::new().unwrap();
    let c = sim.add_cluster("spoke1").await.unwrap();
    let client = c.client();
    create_namespace(&client, "kmm").await;
    (sim, c, client)
}

async fn node(client: &Client, name: &str, labels: Value) {
    let n: Node = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &n)
        .await
        .unwrap();
}

fn pod(name: &str, node: Option<&str>, labels: Value, restart: &str, command: Value) -> Pod {
    let mut spec = json!({"restartPolicy": restart, "containers": [{"name": "main", "image": "busybox", "command": command,
        "env": [{"name": "GREETING", "value": "hello from the pod"}]}]});
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": "kmm", "labels": labels}, "spec": spec}),
    )
    .unwrap()
}

fn phase(p: &Pod) -> Option<String> {
    p.status.as_ref()?.phase.clone()
}

async fn wait_phase(pods: &Api<Pod>, name: &str, want: &str) -> Pod {
    eventually(&format!("pod {name} in phase {want}"), WAIT, || async {
        let p = pods.get(name).await.ok()?;
        (phase(&p).as_deref() == Some(want)).then_some(p)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_move_through_the_phases_the_script_gives() {
    let (_sim, _c, client) = cluster().await;
    let script = KubeletScript::new()
        .rule(
            PodMatcher::any().node("node-3").label("role", "worker"),
            [Outcome::failed(3, "modprobe: FATAL"), Outcome::Succeeded],
        )
        .rule(PodMatcher::any().name_prefix("stuck-"), [Outcome::Pending]);
    let _k = Kubelet::spawn(
        client.clone(),
        KubeletOptions {
            script,
            ..Default::default()
        },
    );
    let pods = Api::<Pod>::namespaced(client.clone(), "kmm");
    let worker = json!({"role": "worker"});
    let create = |p: Pod| {
        let pods = pods.clone();
        async move { pods.create(&PostParams::default(), &p).await.unwrap() }
    };

    create(pod(
        "worker-1",
        Some("node-3"),
        worker.clone(),
        "Never",
        json!(["true"]),
    ))
    .await;
    let p = wait_phase(&pods, "worker-1", "Failed").await;
    assert_eq!(
        status::terminated(&p),
        Some((3, "Error".to_string(), "modprobe: FATAL".to_string()))
    );
    // The same kind of pod on another node is not affected by the rule.
    create(pod(
        "worker-other",
        Some("node-1"),
        worker.clone(),
        "Never",
        json!(["true"]),
    ))
    .await;
    wait_phase(&pods, "worker-other", "Succeeded").await;
    create(pod("worker-2", Some("node-3"), worker, "Never", json!(["true"]))).await;
    let p = wait_phase(&pods, "worker-2", "Succeeded").await;
    assert_eq!(status::terminated(&p).map(|t| t.0), Some(0));

    create(pod(
        "server",
        Some("node-1"),
        json!({}),
        "Always",
        json!(["sleep"]),
    ))
    .await;
    let p = wait_phase(&pods, "server", "Running").await;
    let status = p.status.unwrap();
    assert!(
        status
            .conditions
            .unwrap()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
    assert!(status.container_statuses.unwrap()[0].ready);

    create(pod("stuck-1", Some("node-1"), json!({}), "Always", json!(["x"]))).await;
    wait_phase(&pods, "stuck-1", "Pending").await;
    create(pod("unscheduled", None, json!({}), "Never", json!(["x"]))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let p = pods.get("unscheduled").await.unwrap();
    assert!(
        !matches!(phase(&p).as_deref(), Some("Running" | "Succeeded" | "Failed")),
        "{:?}",
        phase(&p)
    );
    assert_eq!(
        phase(&pods.get("stuck-1").await.unwrap()).as_deref(),
        Some("Pending")
    );
}

/// Hands exec output to the simulator, so `kubectl logs` (the log subresource) shows it.
struct SimLogs(SimCluster, MemoryLogSink);

impl PodLogSink for SimLogs {
    fn pod_log(&self, namespace: &str, name: &str, text: &str) {
        self.0.set_pod_log(namespace, name, text);
        self.1.pod_log(namespace, name, text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_pods_really_run_and_their_exit_code_decides() {
    let (_sim, c, client) = cluster().await;
    let memory = MemoryLogSink::new();
    let script = KubeletScript::new().rule(PodMatcher::any().name_prefix("exec-"), [Outcome::Exec]);
    let opts = KubeletOptions {
        script,
        log_sink: Some(Arc::new(SimLogs(c.clone(), memory.clone()))),
        ..Default::default()
    };
    let _k = Kubelet::spawn(client.clone(), opts);
    let pods = Api::<Pod>::namespaced(client.clone(), "kmm");
    let ok = pod(
        "exec-ok",
        Some("n1"),
        json!({}),
        "Never",
        json!(["sh", "-c", "echo $GREETING; echo to-stderr >&2"]),
    );
    pods.create(&PostParams::default(), &ok).await.unwrap();
    let bad = pod(
        "exec-bad",
        Some("n1"),
        json!({}),
        "Never",
        json!(["sh", "-c", "echo insmod: ERROR could not insert; exit 7"]),
    );
    pods.create(&PostParams::default(), &bad).await.unwrap();

    let p = wait_phase(&pods, "exec-ok", "Succeeded").await;
    assert_eq!(status::terminated(&p).map(|t| t.0), Some(0));
    assert_eq!(
        memory.get("kmm", "exec-ok").as_deref(),
        Some("hello from the pod\nto-stderr\n")
    );
    let logs = pods.logs("exec-ok", &LogParams::default()).await.unwrap();
    assert_eq!(logs, "hello from the pod\nto-stderr\n");

    let p = wait_phase(&pods, "exec-bad", "Failed").await;
    let (code, reason, message) = status::terminated(&p).unwrap();
    assert_eq!((code, reason.as_str()), (7, "Error"));
    assert!(message.contains("insmod: ERROR could not insert"), "{message}");
}

fn daemonset(template_extra: Value) -> DaemonSet {
    let mut ds = json!({"metadata": {"name": "loader", "namespace": "kmm"}, "spec": {
        "selector": {"matchLabels": {"app": "loader"}},
        "template": {"metadata": {"labels": {"app": "loader"}}, "spec": {
            "nodeSelector": {"kmm": "yes"},
            "containers": [{"name": "c", "image": "busybox"}]}}}});
    if let Some(extra) = template_extra.as_object() {
        for (k, v) in extra {
            ds["spec"]["template"]["metadata"]["annotations"][k] = v.clone();
        }
    }
    serde_json::from_value(ds).unwrap()
}

type Counts = (i32, i32, i32, Option<i32>, Option<i32>, Option<i32>);

fn ds_counts(ds: &DaemonSet) -> Option<Counts> {
    let s = ds.status.as_ref()?;
    (s.observed_generation == ds.metadata.generation).then_some((
        s.desired_number_scheduled,
        s.current_number_scheduled,
        s.number_ready,
        s.number_available,
        s.number_unavailable,
        s.updated_number_scheduled,
    ))
}

async fn wait_counts(sets: &Api<DaemonSet>, want: Counts) -> DaemonSet {
    eventually(&format!("DaemonSet counts {want:?}"), WAIT, || async {
        let ds = sets.get("loader").await.ok()?;
        (ds_counts(&ds) == Some(want)).then_some(ds)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_runs_one_pod_per_matching_node_and_counts_them() {
    let (_sim, _c, client) = cluster().await;
    node(&client, "n1", json!({"kmm": "yes"})).await;
    node(&client, "n2", json!({"kmm": "yes"})).await;
    node(&client, "n3", json!({})).await;
    // The pod on n2 crashes once; the controller replaces it and the new one runs.
    let script = KubeletScript::new().rule(
        PodMatcher::any().node("n2"),
        [Outcome::failed(1, "crash"), Outcome::Running],
    );
    let _k = Kubelet::spawn(
        client.clone(),
        KubeletOptions {
            script,
            ..Default::default()
        },
    );
    let sets = Api::<DaemonSet>::namespaced(client.clone(), "kmm");
    let pods = Api::<Pod>::namespaced(client.clone(), "kmm");
    sets.create(&PostParams::default(), &daemonset(json!({})))
        .await
        .unwrap();

    let ds = wait_counts(&sets, (2, 2, 2, Some(2), Some(0), Some(2))).await;
    let mut names: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    names.sort();
    assert_eq!(names, ["loader-n1", "loader-n2"]);
    let p = pods.get("loader-n1").await.unwrap();
    assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
    assert_eq!(p.labels().get("app").map(String::as_str), Some("loader"));
    let owner = &p.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("DaemonSet", ds.uid().unwrap().as_str(), Some(true))
    );

    // A node starts matching, another stops.
    let nodes = Api::<Node>::all(client.clone());
    nodes
        .patch(
            "n3",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"kmm": "yes"}}})),
        )
        .await
        .unwrap();
    wait_counts(&sets, (3, 3, 3, Some(3), Some(0), Some(3))).await;
    nodes
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"kmm": null}}})),
        )
        .await
        .unwrap();
    wait_counts(&sets, (2, 2, 2, Some(2), Some(0), Some(2))).await;
    eventually("pod on n1 removed", WAIT, || async {
        pods.get_opt("loader-n1").await.unwrap().is_none().then_some(())
    })
    .await;

    // A template change replaces the pods.
    let old_hash = pods
        .get("loader-n3")
        .await
        .unwrap()
        .labels()
        .get(REVISION_LABEL)
        .cloned();
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {"rev": "2"}}}}});
    sets.patch("loader", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_counts(&sets, (2, 2, 2, Some(2), Some(0), Some(2))).await;
    let new_hash = pods
        .get("loader-n3")
        .await
        .unwrap()
        .labels()
        .get(REVISION_LABEL)
        .cloned();
    assert_ne!(old_hash, new_hash);
}

fn job(name: &str, backoff_limit: i32, node_selector: Value) -> Job {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "kmm"}, "spec": {
        "backoffLimit": backoff_limit,
        "template": {"metadata": {"labels": {"app": name}}, "spec": {
            "restartPolicy": "Never", "nodeSelector": node_selector,
            "containers": [{"name": "c", "image": "busybox"}]}}}}))
    .unwrap()
}

fn job_pods(all: &[Pod], job: &str) -> Vec<Pod> {
    all.iter()
        .filter(|p| p.labels().get("job-name").map(String::as_str) == Some(job))
        .cloned()
        .collect()
}

fn condition(j: &Job, t: &str) -> Option<(String, String)> {
    let c = j
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t && c.status == "True")?;
    Some((c.type_.clone(), c.reason.clone().unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_retries_up_to_the_backoff_limit_then_fails() {
    let (_sim, _c, client) = cluster().await;
    node(&client, "b-node", json!({"kmm": "yes"})).await;
    node(&client, "a-node", json!({"kmm": "yes"})).await;
    let script = KubeletScript::new()
        .rule(
            PodMatcher::any().label("app", "pull"),
            [Outcome::failed(1, "image not found")],
        )
        .rule(
            PodMatcher::any().label("app", "build"),
            [Outcome::failed(2, "make failed"), Outcome::Succeeded],
        );
    let _k = Kubelet::spawn(
        client.clone(),
        KubeletOptions {
            script,
            ..Default::default()
        },
    );
    let jobs = Api::<Job>::namespaced(client.clone(), "kmm");
    let pods = Api::<Pod>::namespaced(client.clone(), "kmm");
    jobs.create(&PostParams::default(), &job("pull", 2, json!({"kmm": "yes"})))
        .await
        .unwrap();
    jobs.create(&PostParams::default(), &job("build", 6, json!({})))
        .await
        .unwrap();

    let failed = eventually("Job pull Failed", WAIT, || async {
        let j = jobs.get("pull").await.ok()?;
        condition(&j, "Failed").is_some().then_some(j)
    })
    .await;
    assert_eq!(condition(&failed, "Failed").unwrap().1, "BackoffLimitExceeded");
    let st = failed.status.clone().unwrap();
    assert_eq!((st.failed, st.succeeded, st.active), (Some(3), None, None));
    assert!(st.start_time.is_some());
    assert!(st.completion_time.is_none());
    let all = pods.list(&ListParams::default()).await.unwrap().items;
    let pull = job_pods(&all, "pull");
    assert_eq!(pull.len(), 3);
    for p in &pull {
        let suffix = p
            .name_any()
            .strip_prefix("pull-")
            .map(str::to_string)
            .unwrap_or_default();
        assert_eq!(suffix.len(), 5, "{}", p.name_any());
        assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("a-node"));
        assert_eq!(p.labels().get("controller-uid"), failed.uid().as_ref());
        assert_eq!(
            p.labels().get("batch.kubernetes.io/job-name").map(String::as_str),
            Some("pull")
        );
        assert_eq!(phase(p).as_deref(), Some("Failed"));
    }
    // No more attempts once Failed.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        job_pods(&pods.list(&ListParams::default()).await.unwrap().items, "pull").len(),
        3
    );

    let done = eventually("Job build Complete", WAIT, || async {
        let j = jobs.get("build").await.ok()?;
        condition(&j, "Complete").is_some().then_some(j)
    })
    .await;
    let st = done.status.unwrap();
    assert_eq!((st.failed, st.succeeded), (Some(1), Some(1)));
    assert!(st.completion_time.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_pod_without_a_matching_node_stays_pending() {
    let (_sim, _c, client) = cluster().await;
    node(&client, "n1", json!({})).await;
    let _k = Kubelet::spawn(client.clone(), KubeletOptions::default());
    let jobs = Api::<Job>::namespaced(client.clone(), "kmm");
    let pods = Api::<Pod>::namespaced(client.clone(), "kmm");
    jobs.create(&PostParams::default(), &job("gpu", 6, json!({"gpu": "yes"})))
        .await
        .unwrap();
    let p = eventually("the Job's pod", WAIT, || async {
        job_pods(&pods.list(&ListParams::default()).await.ok()?.items, "gpu")
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(p.spec.as_ref().unwrap().node_name, None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let p = pods.get(&p.name_any()).await.unwrap();
    assert!(!matches!(
        phase(&p).as_deref(),
        Some("Running" | "Succeeded" | "Failed")
    ));
    let j = jobs.get("gpu").await.unwrap();
    assert_eq!(j.status.unwrap().active, Some(1));
    assert_eq!(
        job_pods(&pods.list(&ListParams::default()).await.unwrap().items, "gpu").len(),
        1
    );
}
