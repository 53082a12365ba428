//! The kubelet stand-in (`kmm_agents::Kubelet`) on a real control plane: its Nodes register and
//! the real node-lifecycle controller finds them Ready, the real scheduler binds pods to them,
//! the real Job and DaemonSet controllers count what it writes through `pods/status`, and a
//! node taken down turns Unknown and keeps its deleted pods Terminating until it is back.
//! Every write of the kubelet must pass the real apiserver's validation (no 4xx refusals in the
//! audit log).

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kmm_agents::kubelet::images::InitFailure;
use kmm_agents::kubelet::status::{self, PodNet};
use kmm_agents::{
    AgentHandle, Kubelet, KubeletOptions, KubeletScript, NodeControl, NodeRegistration, Outcome, PodMatcher,
};
use kmm_fleet_tests::controlplane::{ControlPlane, Options};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const KERNEL: &str = "6.1.0-25-cloud-amd64";

fn dir(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// The kubelet for `nodes` on a real control plane: the kube-controller-manager runs Jobs and
/// DaemonSets.
fn kubelet(
    cp: &ControlPlane,
    nodes: Vec<NodeRegistration>,
    script: KubeletScript,
    control: Option<NodeControl>,
) -> AgentHandle {
    Kubelet::spawn(
        cp.client(),
        KubeletOptions {
            script,
            nodes,
            node_control: control,
            daemonsets: false,
            jobs: false,
            ..Default::default()
        },
    )
}

/// [`kubelet`], once every node of it is Ready and untainted.
async fn ready_kubelet(
    cp: &ControlPlane,
    nodes: Vec<NodeRegistration>,
    script: KubeletScript,
    control: Option<NodeControl>,
) -> anyhow::Result<AgentHandle> {
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let handle = kubelet(cp, nodes, script, control);
    for name in &names {
        cp.wait_node_ready(name).await?;
    }
    Ok(handle)
}

fn condition(node: &Node, type_: &str) -> Option<(String, String)> {
    let c = node
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((
        c.status.clone(),
        c.last_heartbeat_time
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
    ))
}

/// No write of this test was refused as invalid (422) or malformed (400).
async fn assert_nothing_refused(cp: &ControlPlane) -> anyhow::Result<()> {
    let refused: Vec<String> = cp
        .audit_settled()
        .await?
        .into_iter()
        .filter(|e| e.is_write() && matches!(e.code(), 400 | 422))
        .map(|e| format!("{} {} -> {}", e.verb, e.request_uri, e.code()))
        .collect();
    assert!(refused.is_empty(), "the apiserver refused: {refused:#?}");
    Ok(())
}

fn job_condition(job: &Job, type_: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

async fn job_pod(client: &Client, job: &str) -> anyhow::Result<Pod> {
    let pods = Api::<Pod>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await?
        .items;
    anyhow::ensure!(pods.len() == 1, "job {job} has {} pods", pods.len());
    Ok(pods.into_iter().next().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_turn_ready_renew_their_leases_and_keep_a_patched_kernel() -> anyhow::Result<()> {
    let cp = ControlPlane::start(&dir("kubelet-nodes"), "nodes", Options::default()).await?;
    let first_kubelet = ready_kubelet(
        &cp,
        vec![
            NodeRegistration::new("n1", KERNEL).label("role", "gpu"),
            NodeRegistration::new("n2", KERNEL),
        ],
        KubeletScript::new(),
        None,
    )
    .await?;
    let n1 = cp.wait_node_ready("n1").await?;

    let labels = n1.labels();
    assert_eq!(labels.get("role").map(String::as_str), Some("gpu"));
    assert_eq!(
        labels.get("kubernetes.io/hostname").map(String::as_str),
        Some("n1")
    );
    assert_eq!(labels.get("kubernetes.io/os").map(String::as_str), Some("linux"));
    let status = n1.status.clone().unwrap_or_default();
    let info = status.node_info.clone().unwrap_or_default();
    assert_eq!(info.kernel_version, KERNEL);
    assert_eq!(info.boot_id, "boot-1");
    assert_eq!(info.kubelet_version, "v1.34.3");
    assert!(!info.machine_id.is_empty() && !info.system_uuid.is_empty());
    assert_eq!(status.allocatable.unwrap_or_default()["pods"].0, "110");
    let addresses = status.addresses.unwrap_or_default();
    assert!(
        addresses
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == "127.0.0.1")
    );
    for pressure in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert_eq!(
            condition(&n1, pressure).map(|c| c.0).as_deref(),
            Some("False"),
            "{pressure}"
        );
    }

    // The Lease is held by the node, owned by it, and renewed.
    let leases = Api::<Lease>::namespaced(cp.client(), "kube-node-lease");
    let lease = leases.get("n1").await?;
    let spec = lease.spec.clone().unwrap_or_default();
    assert_eq!(spec.holder_identity.as_deref(), Some("n1"));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    assert_eq!(
        lease
            .owner_references()
            .first()
            .map(|o| (o.kind.as_str(), o.uid.as_str())),
        Some(("Node", n1.uid().unwrap_or_default().as_str()))
    );
    let first = spec.renew_time.map(|t| t.0).expect("a renew time");
    cp.wait("the lease of n1 renewed", Duration::from_secs(10))
        .until(|| async {
            let t = leases.get("n1").await.ok()?.spec?.renew_time?.0;
            (t > first).then_some(())
        })
        .await?;

    // A kernel upgrade patched into nodeInfo survives the next heartbeats.
    let nodes = Api::<Node>::all(cp.client());
    nodes
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"nodeInfo": {"kernelVersion": "6.12.0-1-cloud-amd64", "bootID": "boot-2"}}})),
        )
        .await?;
    let beat = condition(&nodes.get("n1").await?, "Ready").map(|c| c.1);
    cp.wait("a new heartbeat of n1", Duration::from_secs(25))
        .until(|| async {
            let now = condition(&nodes.get("n1").await.ok()?, "Ready")?.1;
            (Some(&now) != beat.as_ref()).then_some(())
        })
        .await?;
    let info = nodes
        .get("n1")
        .await?
        .status
        .and_then(|s| s.node_info)
        .unwrap_or_default();
    assert_eq!(
        (info.kernel_version.as_str(), info.boot_id.as_str()),
        ("6.12.0-1-cloud-amd64", "boot-2")
    );

    // A restarted kubelet registers n1 again without touching the kernel it reports.
    first_kubelet.shutdown();
    // A renewal already sent may still land: the next one is the new kubelet's.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let renewed = leases
        .get("n1")
        .await?
        .spec
        .and_then(|s| s.renew_time)
        .map(|t| t.0);
    let _kubelet = kubelet(
        &cp,
        vec![NodeRegistration::new("n1", "5.10.0-1-amd64")],
        KubeletScript::new(),
        None,
    );
    cp.wait(
        "the lease of n1 renewed after the restart",
        Duration::from_secs(10),
    )
    .until(|| async {
        let t = leases.get("n1").await.ok()?.spec?.renew_time?.0;
        (Some(t) > renewed).then_some(())
    })
    .await?;
    let info = nodes
        .get("n1")
        .await?
        .status
        .and_then(|s| s.node_info)
        .unwrap_or_default();
    assert_eq!(info.kernel_version, "6.12.0-1-cloud-amd64");
    assert_nothing_refused(&cp).await
}

fn job(name: &str) -> anyhow::Result<Job> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox:1.36", "command": ["true"]}],
        }}},
    }))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_jobs_complete_or_fail_with_the_last_4096_bytes_of_the_message() -> anyhow::Result<()> {
    let cp = ControlPlane::start(&dir("kubelet-jobs"), "jobs", Options::default()).await?;
    // 5000 bytes: one ASCII byte, then two-byte characters, then an ASCII tail; the last 4096
    // bytes would start inside a character, so the message starts one byte later.
    let message = format!(
        "a{}{}",
        "é".repeat(2000),
        "0123456789".repeat(100)[..999].to_owned()
    );
    assert_eq!(message.len(), 5000);
    let script = KubeletScript::new().rule(
        PodMatcher::any().label("batch.kubernetes.io/job-name", "fails"),
        [Outcome::Failed {
            exit_code: 3,
            message: message.clone(),
            reason: "Error".into(),
        }],
    );
    let _kubelet = ready_kubelet(
        &cp,
        vec![
            NodeRegistration::new("n1", KERNEL),
            NodeRegistration::new("n2", KERNEL),
        ],
        script,
        None,
    )
    .await?;

    let jobs = Api::<Job>::namespaced(cp.client(), "default");
    jobs.create(&PostParams::default(), &job("works")?).await?;
    jobs.create(&PostParams::default(), &job("fails")?).await?;

    let done = cp
        .wait("job works Complete", Duration::from_secs(60))
        .until(|| async {
            let j = jobs.get("works").await.ok()?;
            job_condition(&j, "Complete").then_some(j)
        })
        .await?;
    assert_eq!(done.status.as_ref().and_then(|s| s.succeeded), Some(1));
    let pod = job_pod(&cp.client(), "works").await?;
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    assert!(node == "n1" || node == "n2", "scheduled onto {node:?}");
    let status = pod.status.clone().unwrap_or_default();
    assert_eq!(status.phase.as_deref(), Some("Succeeded"));
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    assert!(
        status
            .pod_ip
            .as_deref()
            .is_some_and(|ip| ip.starts_with("10.244.")),
        "{status:?}"
    );
    assert_eq!(
        status::terminated(&pod).map(|t| (t.0, t.1)),
        Some((0, "Completed".to_owned()))
    );

    let failed = cp
        .wait("job fails Failed", Duration::from_secs(60))
        .until(|| async {
            let j = jobs.get("fails").await.ok()?;
            job_condition(&j, "Failed").then_some(j)
        })
        .await?;
    assert_eq!(failed.status.as_ref().and_then(|s| s.failed), Some(1));
    let pod = job_pod(&cp.client(), "fails").await?;
    let (code, reason, stored) = status::terminated(&pod).expect("a terminated container");
    assert_eq!((code, reason.as_str()), (3, "Error"));
    assert!(stored.len() <= 4096, "{} bytes", stored.len());
    assert_eq!(stored.len(), 4095, "cut at the character boundary");
    assert!(message.ends_with(&stored));
    assert_nothing_refused(&cp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_daemonset_gets_one_ready_pod_on_the_matching_node() -> anyhow::Result<()> {
    let cp = ControlPlane::start(&dir("kubelet-daemonset"), "ds", Options::default()).await?;
    let _kubelet = ready_kubelet(
        &cp,
        vec![
            NodeRegistration::new("n1", KERNEL).label("kmm.example/loaded", "yes"),
            NodeRegistration::new("n2", KERNEL),
        ],
        KubeletScript::new(),
        None,
    )
    .await?;

    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "loader", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "loader"}},
            "template": {
                "metadata": {"labels": {"app": "loader"}},
                "spec": {
                    "nodeSelector": {"kmm.example/loaded": "yes"},
                    "initContainers": [{"name": "setup", "image": "busybox:1.36", "command": ["true"]}],
                    "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sleep", "infinity"]}],
                },
            },
        },
    }))?;
    let sets = Api::<DaemonSet>::namespaced(cp.client(), "default");
    sets.create(&PostParams::default(), &ds).await?;
    let status = cp
        .wait("daemonset loader with one ready pod", Duration::from_secs(60))
        .until(|| async {
            let s = sets.get("loader").await.ok()?.status?;
            (s.number_ready == 1).then_some(s)
        })
        .await?;
    assert_eq!(status.desired_number_scheduled, 1);
    assert_eq!(status.number_available, Some(1));

    let pods = Api::<Pod>::namespaced(cp.client(), "default")
        .list(&ListParams::default().labels("app=loader"))
        .await?
        .items;
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    assert_eq!(pod.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some("n1"));
    let st = pod.status.clone().unwrap_or_default();
    assert_eq!(st.phase.as_deref(), Some("Running"));
    let main = &st.container_statuses.unwrap_or_default()[0];
    assert!(main.ready && main.started == Some(true));
    assert!(
        main.container_id
            .as_deref()
            .is_some_and(|id| id.starts_with("stand-in://"))
    );
    assert!(main.image_id.starts_with("busybox@sha256:"), "{}", main.image_id);
    let init = &st.init_container_statuses.unwrap_or_default()[0];
    let done = init
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(|t| (t.exit_code, t.reason.clone()));
    assert_eq!(done, Some((0, Some("Completed".to_owned()))));
    assert_nothing_refused(&cp).await
}

fn pod_on(name: &str, node: &str, command: &[&str]) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "containers": [{"name": "main", "image": "busybox:1.36", "command": command}],
        },
    }))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_node_turns_unknown_and_keeps_its_deleted_pod_terminating_until_it_is_back()
-> anyhow::Result<()> {
    let cp = ControlPlane::start(&dir("kubelet-down"), "down", Options::default()).await?;
    let marker_dir = dir("kubelet-down-markers");
    let _ = std::fs::remove_dir_all(&marker_dir);
    std::fs::create_dir_all(&marker_dir)?;
    let marker = marker_dir.join("finished");
    let control = NodeControl::new();
    let script = KubeletScript::new().rule(PodMatcher::any().name_prefix("exec-"), [Outcome::Exec]);
    let _kubelet = ready_kubelet(
        &cp,
        vec![
            NodeRegistration::new("n1", KERNEL),
            NodeRegistration::new("n2", KERNEL),
        ],
        script,
        Some(control.clone()),
    )
    .await?;
    let pods = Api::<Pod>::namespaced(cp.client(), "default");
    let nodes = Api::<Node>::all(cp.client());
    let running = |name: &'static str| {
        let pods = pods.clone();
        async move {
            let p = pods.get_opt(name).await.ok()??;
            (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
        }
    };

    // An exec pod deleted on an up node: its process is killed, the pod is gone at once.
    let touch = format!("sleep 4; touch {}", marker.display());
    pods.create(
        &PostParams::default(),
        &pod_on("exec-slow", "n1", &["sh", "-c", &touch])?,
    )
    .await?;
    cp.wait("pod exec-slow Running", Duration::from_secs(60))
        .until(|| running("exec-slow"))
        .await?;
    let deleted_at = Instant::now();
    pods.delete("exec-slow", &DeleteParams::default()).await?;
    cp.wait("pod exec-slow gone", Duration::from_secs(10))
        .until(|| async { pods.get_opt("exec-slow").await.ok()?.is_none().then_some(()) })
        .await?;
    assert!(
        deleted_at.elapsed() < Duration::from_secs(4),
        "{:?}",
        deleted_at.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!marker.exists(), "the deleted pod's process was not killed");

    // A pod on n2, then n2 goes down: Unknown once the grace period (16 s) is over.
    pods.create(
        &PostParams::default(),
        &pod_on("web", "n2", &["sleep", "infinity"])?,
    )
    .await?;
    let web = cp
        .wait("pod web Running", Duration::from_secs(60))
        .until(|| running("web"))
        .await?;
    pods.create(
        &PostParams::default(),
        &pod_on("stays", "n2", &["sleep", "infinity"])?,
    )
    .await?;
    cp.wait("pod stays Running", Duration::from_secs(60))
        .until(|| running("stays"))
        .await?;
    control.set_down("n2", true);
    let went_down = Instant::now();
    cp.wait("node n2 not Ready", Duration::from_secs(45))
        .until(|| async {
            let n = nodes.get("n2").await.ok()?;
            let (status, _) = condition(&n, "Ready")?;
            (status != "True").then_some(status)
        })
        .await?;
    assert!(
        went_down.elapsed() > Duration::from_secs(10),
        "{:?}",
        went_down.elapsed()
    );
    let n1 = nodes.get("n1").await?;
    assert_eq!(
        condition(&n1, "Ready").map(|c| c.0).as_deref(),
        Some("True"),
        "n1 stays up"
    );
    // The node-lifecycle controller marks the pods of the unreachable node not ready.
    cp.wait("pod stays marked not ready", Duration::from_secs(20))
        .until(|| async {
            let p = pods.get("stays").await.ok()?;
            (!status::is_ready(&p)).then_some(())
        })
        .await?;

    // Deleted with the default grace period, it stays Terminating while n2 is down; a pod
    // bound to n2 meanwhile is not started.
    pods.delete("web", &DeleteParams::default()).await?;
    let mut late = pod_on("late", "n2", &["sleep", "infinity"])?;
    if let Some(spec) = late.spec.as_mut() {
        spec.node_selector = None;
        spec.node_name = Some("n2".into());
    }
    pods.create(&PostParams::default(), &late).await?;
    for _ in 0..12 {
        let p = pods.get_opt("web").await?.expect("web is still there");
        assert_eq!(p.uid(), web.uid());
        assert!(p.metadata.deletion_timestamp.is_some());
        let late = pods.get("late").await?.status.unwrap_or_default();
        assert!(
            late.container_statuses.is_none() && late.start_time.is_none(),
            "{late:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Back up: Ready again, and the deletion is finished.
    control.set_down("n2", false);
    cp.wait("pod web gone after n2 came back", Duration::from_secs(15))
        .until(|| async { pods.get_opt("web").await.ok()?.is_none().then_some(()) })
        .await?;
    cp.wait_node_ready("n2").await?;
    cp.wait("pod late Running", Duration::from_secs(15))
        .until(|| running("late"))
        .await?;
    // Its other pod is Ready again: the kubelet's status wins over the controller's mark.
    cp.wait("pod stays Ready again", Duration::from_secs(15))
        .until(|| async {
            let p = pods.get("stays").await.ok()?;
            status::is_ready(&p).then_some(())
        })
        .await?;
    assert_nothing_refused(&cp).await
}

/// Writes what the kubelet would write for `outcome` (re-reading the pod first, as it does).
async fn write_status(
    pods: &Api<Pod>,
    name: &str,
    outcome: &Outcome,
    failed_init: Option<&InitFailure>,
    pod_ip: &str,
) -> anyhow::Result<Pod> {
    let pod = pods.get(name).await?;
    let net = PodNet {
        host_ip: "127.0.0.1".into(),
        pod_ip: pod_ip.into(),
    };
    let status = status::pod_status(&pod, outcome, failed_init, &net, Timestamp::now());
    let params = PatchParams {
        field_manager: Some("kubelet".into()),
        ..Default::default()
    };
    Ok(pods
        .patch_status(name, &params, &Patch::Strategic(json!({ "status": status })))
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pod_status_the_kubelet_renders_passes_pods_status_validation() -> anyhow::Result<()> {
    let cp = ControlPlane::start(&dir("kubelet-status"), "status", Options::default()).await?;
    let pods = Api::<Pod>::namespaced(cp.client(), "default");
    // Bound to a node no kubelet runs: only this test writes their status.
    let create = |name: &str, restart: &str, host_network: bool, init: bool| {
        let mut spec = json!({
            "nodeName": "ghost", "restartPolicy": restart, "hostNetwork": host_network,
            "containers": [{"name": "worker", "image": "registry.example/kmm/worker:v1"},
                           {"name": "helper", "image": "busybox"}],
        });
        if init {
            spec["initContainers"] = json!([
                {"name": "pull", "image": "registry.example/kmod@sha256:0123", "command": ["true"]},
                {"name": "proxy", "image": "busybox", "restartPolicy": "Always"},
                {"name": "copy", "image": "busybox:1.36", "command": ["true"]},
            ]);
        }
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap_or_default();
        let pods = pods.clone();
        async move { pods.create(&PostParams::default(), &pod).await }
    };
    let ip = "10.244.1.7";
    let big = "x".repeat(5000);

    // Init containers (one a sidecar): initializing, running, succeeded.
    create("init-ok", "Never", false, true).await?;
    write_status(&pods, "init-ok", &Outcome::Pending, None, ip).await?;
    let running = write_status(&pods, "init-ok", &Outcome::Running, None, ip).await?;
    assert_eq!(
        running.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running")
    );
    let done = write_status(&pods, "init-ok", &Outcome::Succeeded, None, ip).await?;
    let st = done.status.unwrap_or_default();
    assert_eq!(st.phase.as_deref(), Some("Succeeded"));
    assert_eq!(st.init_container_statuses.map(|s| s.len()), Some(3));
    assert_eq!(st.start_time, running.status.and_then(|s| s.start_time));

    // An init container fails: the containers never start.
    create("init-fails", "Never", false, true).await?;
    write_status(&pods, "init-fails", &Outcome::Pending, None, ip).await?;
    let failure = InitFailure {
        container: "copy".into(),
        exit_code: 1,
        message: big.clone(),
    };
    let failed = write_status(&pods, "init-fails", &Outcome::failed(1, &big), Some(&failure), ip).await?;
    let st = failed.status.unwrap_or_default();
    assert_eq!(st.phase.as_deref(), Some("Failed"));
    let copy = &st.init_container_statuses.unwrap_or_default()[2];
    let t = copy
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .unwrap_or_default();
    assert_eq!((t.exit_code, t.message.map(|m| m.len())), (1, Some(4096)));

    // A script's pending pod stays pending; a failed one keeps the message's tail.
    create("plain", "OnFailure", false, false).await?;
    write_status(&pods, "plain", &Outcome::Pending, None, ip).await?;
    write_status(&pods, "plain", &Outcome::Running, None, ip).await?;
    write_status(&pods, "plain", &Outcome::failed(2, &big), None, ip).await?;

    // Host network: the pod's IP is the node's. Killed on deletion: exit 137.
    create("host", "Always", true, false).await?;
    write_status(&pods, "host", &Outcome::Running, None, "127.0.0.1").await?;
    // The node-lifecycle controller marks it not ready; the kubelet's status wins again.
    pods.patch_status(
        "host",
        &PatchParams::default(),
        &Patch::Strategic(json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})),
    )
    .await?;
    let again = write_status(&pods, "host", &Outcome::Running, None, "127.0.0.1").await?;
    assert!(status::is_ready(&again));
    let killed = Outcome::Failed {
        exit_code: 137,
        message: String::new(),
        reason: "Error".into(),
    };
    write_status(&pods, "host", &killed, None, "127.0.0.1").await?;
    assert_nothing_refused(&cp).await
}
