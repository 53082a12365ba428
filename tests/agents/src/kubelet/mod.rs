//! Stand-in for the kubelets of one cluster, plus the DaemonSet and Job controllers of the
//! simulator tests.
//!
//! With [`KubeletOptions::nodes`] it registers those Nodes and keeps their Leases and Ready
//! condition fresh ([`nodes`]), and runs only the pods bound to them; [`NodeControl`] takes a
//! node down like a dead kubelet. Pods move through their phases as a [`KubeletScript`] says,
//! written through `pods/status` as a real apiserver accepts it ([`status`]). No image is pulled
//! and nothing runs, except with [`Outcome::Exec`], which runs the first container's command on
//! this machine. A pod being deleted gracefully is stopped and then deleted with grace period 0
//! (precondition on its uid), unless its node is down.

pub mod binaries;
pub mod daemonset;
pub mod images;
pub mod job;
pub mod nodes;
pub mod pods;
pub mod script;
pub mod status;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tokio::task::{AbortHandle, JoinSet};

pub use nodes::{NodeControl, NodeRegistration};
pub use script::{KubeletScript, Outcome, PodMatcher, ScriptRule};

use crate::handle::AgentHandle;
use crate::util::{Backoff, is_conflict, is_not_found, spawn_trigger, wait};
use images::InitFailure;
use script::ScriptState;
use status::PodNet;

/// Where the kubelet puts the output of pods it ran with [`Outcome::Exec`] (what `kubectl logs`
/// should show).
pub trait PodLogSink: Send + Sync {
    fn pod_log(&self, namespace: &str, name: &str, text: &str);
}

/// A [`PodLogSink`] that keeps the logs in memory.
#[derive(Debug, Clone, Default)]
pub struct MemoryLogSink {
    logs: Arc<Mutex<BTreeMap<(String, String), String>>>,
}

impl MemoryLogSink {
    pub fn new() -> Self {
        Self::default()
    }

    /// The log of a pod, if it ran.
    pub fn get(&self, namespace: &str, name: &str) -> Option<String> {
        self.logs
            .lock()
            .ok()?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
}

impl PodLogSink for MemoryLogSink {
    fn pod_log(&self, namespace: &str, name: &str, text: &str) {
        if let Ok(mut logs) = self.logs.lock() {
            logs.insert((namespace.to_string(), name.to_string()), text.to_string());
        }
    }
}

/// Settings of a [`Kubelet`].
#[derive(Clone)]
pub struct KubeletOptions {
    pub script: KubeletScript,
    /// Nodes to register and keep alive (Lease, Ready condition); only pods bound to them are
    /// run. Empty: no Node is registered and every pod with a `spec.nodeName` is run.
    pub nodes: Vec<NodeRegistration>,
    /// How often each node's Lease is renewed; default 2 s.
    pub lease_interval: Duration,
    /// Takes nodes down and up; `None`: they stay up.
    pub node_control: Option<NodeControl>,
    /// Receives the output of `Exec` pods.
    pub log_sink: Option<Arc<dyn PodLogSink>>,
    /// Pass period without watch events (Job backoff and exec results are also picked up on
    /// events); default 250 ms.
    pub sync_interval: Duration,
    /// First Job retry delay, doubled per failure; default 50 ms.
    pub job_backoff: Duration,
    /// Longest an `Exec` pod may run; default 60 s.
    pub exec_timeout: Duration,
    /// Run the DaemonSet controller stand-in; default true. Off on a real control plane (its
    /// kube-controller-manager runs DaemonSets).
    pub daemonsets: bool,
    /// Run the Job controller stand-in; default true. Off on a real control plane.
    pub jobs: bool,
    /// For `Exec` pods: write the container's ConfigMap and Secret volumes under this directory
    /// (one folder per pod) and point every mount path in its command and env there, so a pod
    /// that reads `/workspace/...` runs here without touching `/`. `None`: no volumes.
    pub exec_root: Option<std::path::PathBuf>,
    /// Extra environment for `Exec` pods (e.g. `PATH` to find a test binary).
    pub exec_env: BTreeMap<String, String>,
    /// For `Exec` pods (with `exec_root`): pull the init containers' images and run them
    /// first, chrooted (see [`images`]). `None`: init containers are skipped.
    pub exec_images: Option<images::ImageOptions>,
    /// Long-running pods of these images run as binaries of this machine (see [`binaries`]).
    pub binaries: Option<binaries::BinaryOptions>,
    /// For `Exec` pods (with `exec_images`): run the main containers of these images chrooted
    /// in their image (see [`images::run_main_container`]). `None`: as commands of this machine.
    pub exec_main_images: Option<images::MainImages>,
}

impl Default for KubeletOptions {
    fn default() -> Self {
        Self {
            script: KubeletScript::default(),
            nodes: Vec::new(),
            lease_interval: Duration::from_secs(2),
            node_control: None,
            log_sink: None,
            sync_interval: Duration::from_millis(250),
            job_backoff: Duration::from_millis(50),
            exec_timeout: Duration::from_secs(60),
            daemonsets: true,
            jobs: true,
            exec_root: None,
            exec_env: BTreeMap::new(),
            exec_images: None,
            binaries: None,
            exec_main_images: None,
        }
    }
}

impl fmt::Debug for KubeletOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeletOptions")
            .field("script", &self.script)
            .field("nodes", &self.nodes)
            .field("lease_interval", &self.lease_interval)
            .field("node_control", &self.node_control.is_some())
            .field("log_sink", &self.log_sink.is_some())
            .field("sync_interval", &self.sync_interval)
            .field("job_backoff", &self.job_backoff)
            .field("exec_timeout", &self.exec_timeout)
            .field("daemonsets", &self.daemonsets)
            .field("jobs", &self.jobs)
            .finish()
    }
}

/// The kubelet stand-in for one cluster.
#[derive(Debug)]
pub struct Kubelet;

impl Kubelet {
    /// Starts the kubelet (node registration, the pod loop and the enabled controllers) against
    /// `client`.
    pub fn spawn(client: Client, opts: KubeletOptions) -> AgentHandle {
        let notify = Arc::new(Notify::new());
        let control = opts.node_control.clone().unwrap_or_default();
        let mut tasks = nodes::spawn_all(&client, &opts.nodes, &control, opts.lease_interval);
        tasks.push(spawn_trigger(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            notify.clone(),
            "pods",
        ));
        if opts.daemonsets || opts.jobs {
            tasks.push(spawn_trigger(
                Api::<Node>::all(client.clone()),
                watcher::Config::default(),
                notify.clone(),
                "nodes",
            ));
        }
        if opts.daemonsets {
            tasks.push(spawn_trigger(
                Api::<DaemonSet>::all(client.clone()),
                watcher::Config::default(),
                notify.clone(),
                "daemonsets",
            ));
        }
        if opts.jobs {
            tasks.push(spawn_trigger(
                Api::<Job>::all(client.clone()),
                watcher::Config::default(),
                notify.clone(),
                "jobs",
            ));
        }
        tasks.push(tokio::spawn(async move {
            let mut node_changes = control.subscribe();
            let mut k = KubeletLoop::new(client, opts, control, notify.clone());
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                match k.pass().await {
                    Ok(()) => {
                        backoff.reset();
                        tokio::select! {
                            _ = wait(&notify, k.opts.sync_interval) => {}
                            Some(done) = k.finished_rx.recv() => k.finish_exec(done).await,
                            Ok(()) = node_changes.changed() => {}
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kubelet pass failed");
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        }));
        AgentHandle::new(tasks)
    }
}

/// Where the kubelet is with one pod (by uid).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// The status for this outcome was written; nothing more to do.
    Written(Outcome),
    /// An exec is running (`started`: its init containers are done and its first container
    /// runs); its reports arrive on the channel.
    Executing { started: bool },
}

/// What an exec task reports: the status to write for its pod.
struct ExecReport {
    pod: Pod,
    outcome: Outcome,
    failed_init: Option<InitFailure>,
    /// The final outcome (else: the init containers are done, the container runs).
    last: bool,
}

/// What an exec task needs besides the pod.
struct ExecPlan {
    timeout: Duration,
    sink: Option<Arc<dyn PodLogSink>>,
    extra_env: BTreeMap<String, String>,
    /// Mount paths and their folders (ConfigMap and Secret volumes), or why they failed.
    volumes: Result<Vec<(String, String)>, String>,
    /// The termination message path and the file standing in for it.
    termination: Option<(String, std::path::PathBuf)>,
    /// The pod's folder and how to pull images, to run init containers.
    init: Option<(std::path::PathBuf, images::ImageOptions)>,
    /// The main container runs from its image (see [`images::run_main_container`]).
    main: Option<images::MainImages>,
}

struct KubeletLoop {
    client: Client,
    opts: KubeletOptions,
    control: NodeControl,
    /// The registered nodes' names; empty: every node.
    nodes: BTreeSet<String>,
    script: ScriptState,
    stages: HashMap<String, Stage>,
    /// Outcomes decided for pods whose first status write failed (retried with the same one).
    decided: HashMap<String, Outcome>,
    /// Pods deleted with grace period 0 by this kubelet (their finalizers may keep them a while).
    finished: HashSet<String>,
    /// The exec task of each pod running one.
    running: HashMap<String, AbortHandle>,
    /// Exec results of pods whose node went down meanwhile; written once it is back.
    held: Vec<ExecReport>,
    pod_ips: HashMap<String, String>,
    next_ip: u32,
    execs: JoinSet<()>,
    finished_tx: mpsc::UnboundedSender<ExecReport>,
    finished_rx: mpsc::UnboundedReceiver<ExecReport>,
    jobs: job::JobMemory,
    notify: Arc<Notify>,
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

impl KubeletLoop {
    fn new(client: Client, opts: KubeletOptions, control: NodeControl, notify: Arc<Notify>) -> Self {
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        Self {
            client,
            script: ScriptState::new(opts.script.clone()),
            nodes: opts.nodes.iter().map(|n| n.name.clone()).collect(),
            opts,
            control,
            stages: HashMap::new(),
            decided: HashMap::new(),
            finished: HashSet::new(),
            running: HashMap::new(),
            held: Vec::new(),
            pod_ips: HashMap::new(),
            next_ip: 0,
            execs: JoinSet::new(),
            finished_tx,
            finished_rx,
            jobs: job::JobMemory::default(),
            notify,
        }
    }

    /// Whether this kubelet runs the pods of `node`, and it is up.
    fn serves(&self, node: &str) -> bool {
        (self.nodes.is_empty() || self.nodes.contains(node)) && !self.control.is_down(node)
    }

    async fn pass(&mut self) -> Result<(), kube::Error> {
        while self.execs.try_join_next().is_some() {}
        // Results held while their node was down.
        let held = std::mem::take(&mut self.held);
        for done in held {
            if node_of(&done.pod).is_some_and(|n| self.control.is_down(n)) {
                self.held.push(done);
            } else {
                let _ = self.finished_tx.send(done);
            }
        }
        if self.opts.daemonsets {
            daemonset::sync_all(&self.client).await?;
        }
        if self.opts.jobs {
            job::sync_all(&self.client, self.opts.job_backoff, &mut self.jobs).await?;
        }
        self.sync_pods().await
    }

    async fn sync_pods(&mut self) -> Result<(), kube::Error> {
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let live: HashSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
        self.stages.retain(|uid, _| live.contains(uid));
        self.decided.retain(|uid, _| live.contains(uid));
        self.finished.retain(|uid| live.contains(uid));
        self.pod_ips.retain(|uid, _| live.contains(uid));
        // A pod removed from the API (force-deleted) has its containers stopped.
        self.running.retain(|uid, task| {
            let keep = live.contains(uid);
            if !keep {
                task.abort();
            }
            keep
        });
        for pod in pods {
            let Some(uid) = pod.uid() else { continue };
            if !node_of(&pod).is_some_and(|n| self.serves(n)) {
                continue;
            }
            if pod.metadata.deletion_timestamp.is_some() {
                self.finish_deletion(&pod, &uid).await;
                continue;
            }
            match self.stages.get(&uid) {
                Some(Stage::Written(Outcome::Running) | Stage::Executing { started: true })
                    if !is_terminal(&pod) && !status::is_ready(&pod) =>
                {
                    // Someone else (the node-lifecycle controller while the node was
                    // unreachable) marked it not ready: the kubelet's own status wins again.
                    if let Err(e) = self.write(&pod, &Outcome::Running, None).await {
                        tracing::warn!(pod = %pod.name_any(), error = %e, "pod status repair failed");
                    }
                    continue;
                }
                Some(_) => continue,
                None => {}
            }
            if is_terminal(&pod) {
                // Finished before this kubelet started.
                self.stages.insert(uid, Stage::Written(Outcome::Succeeded));
                continue;
            }
            if self.start_binary(&pod, &uid).await {
                continue;
            }
            let outcome = match self.decided.remove(&uid) {
                Some(o) => o,
                None => self.script.decide(&pod),
            };
            let plan = match outcome {
                Outcome::Exec => Some(self.exec_plan(&pod).await),
                _ => None,
            };
            // Pending while init containers run, as on a node.
            let initializing = plan.as_ref().is_some_and(|p| p.init.is_some()) && has_init_containers(&pod);
            let first = if initializing { &Outcome::Pending } else { &outcome };
            if let Err(e) = self.write(&pod, first, None).await {
                tracing::warn!(pod = %pod.name_any(), error = %e, "pod status write failed");
                self.decided.insert(uid, outcome);
                continue;
            }
            if let Some(plan) = plan {
                self.stages.insert(
                    uid.clone(),
                    Stage::Executing {
                        started: !initializing,
                    },
                );
                let tx = self.finished_tx.clone();
                let task = self.execs.spawn(async move {
                    let done = execute(pod, plan, &tx).await;
                    let _ = tx.send(done);
                });
                self.running.insert(uid, task);
            } else {
                self.stages.insert(uid, Stage::Written(outcome));
            }
        }
        Ok(())
    }

    /// A pod being deleted on an up node: its containers stop (an exec is killed and its result
    /// never written), a pod that ran gets its terminal status, then the pod is deleted with
    /// grace period 0 and a precondition on its uid (a new pod of the same name is never hit).
    async fn finish_deletion(&mut self, pod: &Pod, uid: &str) {
        if self.finished.contains(uid) {
            return;
        }
        if let Some(task) = self.running.remove(uid) {
            task.abort();
        }
        let ran = matches!(
            self.stages.get(uid),
            Some(Stage::Written(Outcome::Running) | Stage::Executing { started: true })
        );
        if ran && !is_terminal(pod) {
            // Stopped by the kubelet: killed after the grace period as far as anyone can tell.
            let killed = Outcome::Failed {
                exit_code: 137,
                message: String::new(),
                reason: "Error".into(),
            };
            match self.write(pod, &killed, None).await {
                Ok(()) => {
                    self.stages.insert(uid.to_owned(), Stage::Written(killed));
                }
                Err(e) => tracing::debug!(pod = %pod.name_any(), error = %e, "final status of a deleted pod"),
            }
        }
        let api = Api::<Pod>::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&pod.name_any(), &params).await {
            Ok(_) => {
                self.finished.insert(uid.to_owned());
            }
            // Gone already, or the name now belongs to another pod.
            Err(e) if is_not_found(&e) || is_conflict(&e) => {
                self.finished.insert(uid.to_owned());
            }
            Err(e) => tracing::warn!(pod = %pod.name_any(), error = %e, "final pod delete failed"),
        }
    }

    /// Starts `pod` as a binary when its image is mapped ([`binaries`]): Pending until its
    /// process starts. Whether it was taken.
    async fn start_binary(&mut self, pod: &Pod, uid: &str) -> bool {
        let Some(opts) = self.opts.binaries.clone() else {
            return false;
        };
        let Some(image) = opts.image_for(pod).cloned() else {
            return false;
        };
        if let Err(e) = self.write(pod, &Outcome::Pending, None).await {
            tracing::warn!(pod = %pod.name_any(), error = %e, "pod status write failed");
            return true;
        }
        self.stages
            .insert(uid.to_owned(), Stage::Executing { started: false });
        let (client, sink, tx, pod) = (
            self.client.clone(),
            self.opts.log_sink.clone(),
            self.finished_tx.clone(),
            pod.clone(),
        );
        let task = self.execs.spawn(async move {
            let done = binaries::run(client, pod, image, opts, sink, tx.clone()).await;
            let _ = tx.send(done);
        });
        self.running.insert(uid.to_owned(), task);
        true
    }

    async fn exec_plan(&self, pod: &Pod) -> ExecPlan {
        let pod_dir = |root: &std::path::Path| root.join(pod.uid().unwrap_or_else(|| pod.name_any()));
        ExecPlan {
            timeout: self.opts.exec_timeout,
            sink: self.opts.log_sink.clone(),
            extra_env: self.opts.exec_env.clone(),
            volumes: match &self.opts.exec_root {
                Some(root) => pods::materialize_volumes(&self.client, pod, root).await,
                None => Ok(Vec::new()),
            },
            // The container's termination message file, as a file of the pod's folder.
            termination: self
                .opts
                .exec_root
                .as_ref()
                .and_then(|root| pods::termination_file(pod, &pod_dir(root))),
            init: match (&self.opts.exec_root, &self.opts.exec_images) {
                (Some(root), Some(images)) => Some((pod_dir(root), images.clone())),
                _ => None,
            },
            main: self
                .opts
                .exec_main_images
                .clone()
                .filter(|m| m.runs_from_image(pod)),
        }
    }

    async fn finish_exec(&mut self, done: ExecReport) {
        if node_of(&done.pod).is_some_and(|n| self.control.is_down(n)) {
            self.held.push(done);
            return;
        }
        let uid = done.pod.uid().unwrap_or_default();
        if done.last {
            self.running.remove(&uid);
        }
        // Re-read so the start time written with the running state is kept.
        let api = Api::<Pod>::namespaced(self.client.clone(), &done.pod.namespace().unwrap_or_default());
        let pod = match api.get_opt(&done.pod.name_any()).await {
            Ok(Some(p)) if p.uid().as_deref() == Some(uid.as_str()) => p,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(pod = %done.pod.name_any(), error = %e, "reading an exec pod failed, retrying");
                let _ = self.finished_tx.send(done);
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            }
        };
        if pod.metadata.deletion_timestamp.is_some() {
            // Being deleted: the deletion path owns its last status.
            return;
        }
        match self.write(&pod, &done.outcome, done.failed_init.as_ref()).await {
            Ok(()) if !done.last => {
                self.stages.insert(uid, Stage::Executing { started: true });
            }
            Ok(()) => {
                self.stages.insert(uid, Stage::Written(done.outcome));
                self.notify.notify_one();
            }
            Err(e) => {
                tracing::warn!(pod = %pod.name_any(), error = %e, "exec pod status write failed, retrying");
                let _ = self.finished_tx.send(ExecReport { pod, ..done });
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// The pod's host and pod IPs: the node's address; its own IP kept once it has one.
    fn net(&mut self, pod: &Pod) -> PodNet {
        let host_ip = nodes::NODE_IP.to_owned();
        let host_network = pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
        let existing = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty());
        let pod_ip = if host_network {
            host_ip.clone()
        } else if let Some(ip) = existing {
            ip
        } else {
            let uid = pod.uid().unwrap_or_else(|| pod.name_any());
            let next = &mut self.next_ip;
            self.pod_ips
                .entry(uid)
                .or_insert_with(|| {
                    *next += 1;
                    status::nth_pod_ip(*next - 1)
                })
                .clone()
        };
        PodNet { host_ip, pod_ip }
    }

    async fn write(
        &mut self,
        pod: &Pod,
        outcome: &Outcome,
        failed_init: Option<&InitFailure>,
    ) -> Result<(), kube::Error> {
        let net = self.net(pod);
        let status = status::pod_status(
            pod,
            outcome,
            failed_init,
            &net,
            k8s_openapi::jiff::Timestamp::now(),
        );
        let api = Api::<Pod>::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        api.patch_status(
            &pod.name_any(),
            &PatchParams {
                field_manager: Some(nodes::FIELD_MANAGER.into()),
                ..Default::default()
            },
            &Patch::Strategic(&json!({"status": status})),
        )
        .await?;
        Ok(())
    }
}

fn has_init_containers(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|c| !c.is_empty())
}

/// Runs an `Exec` pod: its init containers (when images are on; reported on `progress` once
/// done), then its first container. The final report is returned.
async fn execute(pod: Pod, plan: ExecPlan, progress: &mpsc::UnboundedSender<ExecReport>) -> ExecReport {
    let ExecPlan {
        timeout,
        sink,
        extra_env,
        volumes,
        termination,
        init,
        main,
    } = plan;
    let sort = |mounts: &mut Vec<(String, String)>| mounts.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
    let mut mounts = match volumes {
        Ok(mounts) => mounts,
        Err(e) => {
            if let Some(sink) = &sink {
                sink.pod_log(&pod.namespace().unwrap_or_default(), &pod.name_any(), &e);
            }
            return ExecReport {
                pod,
                outcome: Outcome::failed(126, e),
                failed_init: None,
                last: true,
            };
        }
    };
    if let Some((path, file)) = &termination {
        mounts.push((path.clone(), file.display().to_string()));
        sort(&mut mounts);
    }
    if let Some((pod_dir, images)) = &init {
        match images::run_init_containers(&pod, pod_dir, images, timeout).await {
            Ok(extra) => {
                mounts.extend(extra);
                sort(&mut mounts);
                if has_init_containers(&pod) {
                    let _ = progress.send(ExecReport {
                        pod: pod.clone(),
                        outcome: Outcome::Running,
                        failed_init: None,
                        last: false,
                    });
                }
            }
            Err(f) => {
                if let Some(sink) = &sink {
                    sink.pod_log(
                        &pod.namespace().unwrap_or_default(),
                        &pod.name_any(),
                        &format!("init container {}: {}", f.container, f.message),
                    );
                }
                return ExecReport {
                    pod,
                    outcome: Outcome::failed(f.exit_code, f.message.clone()),
                    failed_init: Some(f),
                    last: true,
                };
            }
        }
    }
    let mut result = match (&init, &main) {
        (Some((pod_dir, images)), Some(main)) => {
            images::run_main_container(&pod, pod_dir, images, main, &mounts, timeout).await
        }
        _ => pods::run_exec_with(&pod, timeout, &mounts, &extra_env).await,
    };
    if let Some((_, file)) = &termination {
        let fallback = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .is_some_and(status::falls_back_to_logs);
        result = pods::with_termination_message(result, file, fallback);
    }
    if let Some(sink) = sink {
        sink.pod_log(
            &pod.namespace().unwrap_or_default(),
            &pod.name_any(),
            &result.output,
        );
    }
    ExecReport {
        pod,
        outcome: result.outcome,
        failed_init: None,
        last: true,
    }
}
