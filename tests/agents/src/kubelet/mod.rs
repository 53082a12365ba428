//! Stand-in for the kubelets of one cluster, plus the DaemonSet and Job controllers.
//!
//! Pods with `spec.nodeName` move through their phases as a [`KubeletScript`] says. No image is
//! pulled and nothing runs, except with [`Outcome::Exec`], which runs the first container's
//! command on this machine.

pub mod daemonset;
pub mod images;
pub mod job;
pub mod pods;
pub mod script;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

pub use script::{KubeletScript, Outcome, PodMatcher, ScriptRule};

use crate::handle::AgentHandle;
use crate::util::{Backoff, is_not_found, spawn_trigger, wait};
use script::ScriptState;

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
    /// Receives the output of `Exec` pods.
    pub log_sink: Option<Arc<dyn PodLogSink>>,
    /// Pass period without watch events (Job backoff and exec results are also picked up on
    /// events); default 250 ms.
    pub sync_interval: Duration,
    /// First Job retry delay, doubled per failure; default 50 ms.
    pub job_backoff: Duration,
    /// Longest an `Exec` pod may run; default 60 s.
    pub exec_timeout: Duration,
    /// Run the DaemonSet controller; default true.
    pub daemonsets: bool,
    /// Run the Job controller; default true.
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
}

impl Default for KubeletOptions {
    fn default() -> Self {
        Self {
            script: KubeletScript::default(),
            log_sink: None,
            sync_interval: Duration::from_millis(250),
            job_backoff: Duration::from_millis(50),
            exec_timeout: Duration::from_secs(60),
            daemonsets: true,
            jobs: true,
            exec_root: None,
            exec_env: BTreeMap::new(),
            exec_images: None,
        }
    }
}

impl fmt::Debug for KubeletOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeletOptions")
            .field("script", &self.script)
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
    /// Starts the kubelet (and the enabled controllers) against `client`.
    pub fn spawn(client: Client, opts: KubeletOptions) -> AgentHandle {
        let notify = Arc::new(Notify::new());
        let mut tasks = vec![
            spawn_trigger(
                Api::<Pod>::all(client.clone()),
                watcher::Config::default(),
                notify.clone(),
                "pods",
            ),
            spawn_trigger(
                Api::<Node>::all(client.clone()),
                watcher::Config::default(),
                notify.clone(),
                "nodes",
            ),
        ];
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
            let mut k = KubeletLoop::new(client, opts, notify.clone());
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                match k.pass().await {
                    Ok(()) => {
                        backoff.reset();
                        tokio::select! {
                            _ = wait(&notify, k.opts.sync_interval) => {}
                            Some(done) = k.finished_rx.recv() => k.finish_exec(done).await,
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
    /// An exec is running; its result arrives on the channel.
    Executing,
}

struct ExecDone {
    pod: Pod,
    outcome: Outcome,
}

struct KubeletLoop {
    client: Client,
    opts: KubeletOptions,
    script: ScriptState,
    stages: HashMap<String, Stage>,
    killed: HashSet<String>,
    execs: JoinSet<()>,
    finished_tx: mpsc::UnboundedSender<ExecDone>,
    finished_rx: mpsc::UnboundedReceiver<ExecDone>,
    jobs: job::JobMemory,
    notify: Arc<Notify>,
}

impl KubeletLoop {
    fn new(client: Client, opts: KubeletOptions, notify: Arc<Notify>) -> Self {
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        Self {
            client,
            script: ScriptState::new(opts.script.clone()),
            opts,
            stages: HashMap::new(),
            killed: HashSet::new(),
            execs: JoinSet::new(),
            finished_tx,
            finished_rx,
            jobs: job::JobMemory::default(),
            notify,
        }
    }

    async fn pass(&mut self) -> Result<(), kube::Error> {
        while self.execs.try_join_next().is_some() {}
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
        self.killed.retain(|uid| live.contains(uid));
        for pod in pods {
            let Some(uid) = pod.uid() else { continue };
            if pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_none_or(str::is_empty)
            {
                continue;
            }
            if pod.metadata.deletion_timestamp.is_some() {
                // The containers are "stopped": finish a graceful deletion.
                if pod.finalizers().is_empty() && self.killed.insert(uid) {
                    let api =
                        Api::<Pod>::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
                    match api
                        .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => {
                            tracing::debug!(pod = %pod.name_any(), error = %e, "final pod delete failed")
                        }
                    }
                }
                continue;
            }
            if self.stages.contains_key(&uid) {
                continue;
            }
            if matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            ) {
                // Finished before this kubelet started.
                self.stages.insert(uid, Stage::Written(Outcome::Succeeded));
                continue;
            }
            let outcome = self.script.decide(&pod);
            if let Err(e) = self.write(&pod, &outcome).await {
                tracing::warn!(pod = %pod.name_any(), error = %e, "pod status write failed");
                continue;
            }
            if outcome == Outcome::Exec {
                self.stages.insert(uid, Stage::Executing);
                let tx = self.finished_tx.clone();
                let timeout = self.opts.exec_timeout;
                let sink = self.opts.log_sink.clone();
                let extra_env = self.opts.exec_env.clone();
                let volumes = match &self.opts.exec_root {
                    Some(root) => pods::materialize_volumes(&self.client, &pod, root).await,
                    None => Ok(Vec::new()),
                };
                // The container's termination message file, as a file of the pod's folder.
                let termination = self.opts.exec_root.as_ref().and_then(|root| {
                    pods::termination_file(&pod, &root.join(pod.uid().unwrap_or_else(|| pod.name_any())))
                });
                let init = match (&self.opts.exec_root, &self.opts.exec_images) {
                    (Some(root), Some(images)) => Some((
                        root.join(pod.uid().unwrap_or_else(|| pod.name_any())),
                        images.clone(),
                    )),
                    _ => None,
                };
                self.execs.spawn(async move {
                    let volumes = volumes.map(|mut mounts| {
                        if let Some((path, file)) = &termination {
                            mounts.push((path.clone(), file.display().to_string()));
                            mounts.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
                        }
                        mounts
                    });
                    let volumes = match (volumes, init) {
                        (Ok(mut mounts), Some((pod_dir, images))) => {
                            match images::run_init_containers(&pod, &pod_dir, &images, timeout).await {
                                Ok(extra) => {
                                    mounts.extend(extra);
                                    mounts.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
                                    Ok(mounts)
                                }
                                Err(f) => Err((
                                    f.exit_code,
                                    format!("init container {}: {}", f.container, f.message),
                                )),
                            }
                        }
                        (Ok(mounts), None) => Ok(mounts),
                        (Err(e), _) => Err((126, e)),
                    };
                    let result = match volumes {
                        Ok(mounts) => {
                            let result = pods::run_exec_with(&pod, timeout, &mounts, &extra_env).await;
                            match &termination {
                                Some((_, file)) => pods::with_termination_message(result, file),
                                None => result,
                            }
                        }
                        Err((code, e)) => pods::ExecResult {
                            output: e.clone(),
                            outcome: Outcome::failed(code, e),
                        },
                    };
                    if let Some(sink) = sink {
                        sink.pod_log(
                            &pod.namespace().unwrap_or_default(),
                            &pod.name_any(),
                            &result.output,
                        );
                    }
                    let _ = tx.send(ExecDone {
                        pod,
                        outcome: result.outcome,
                    });
                });
            } else {
                self.stages.insert(uid, Stage::Written(outcome));
            }
        }
        Ok(())
    }

    async fn finish_exec(&mut self, done: ExecDone) {
        let uid = done.pod.uid().unwrap_or_default();
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
        match self.write(&pod, &done.outcome).await {
            Ok(()) => {
                self.stages.insert(uid, Stage::Written(done.outcome));
                self.notify.notify_one();
            }
            Err(e) => {
                tracing::warn!(pod = %pod.name_any(), error = %e, "exec pod status write failed, retrying");
                let _ = self.finished_tx.send(ExecDone {
                    pod,
                    outcome: done.outcome,
                });
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    async fn write(&self, pod: &Pod, outcome: &Outcome) -> Result<(), kube::Error> {
        let status = pods::pod_status(pod, outcome, k8s_openapi::jiff::Timestamp::now());
        let api = Api::<Pod>::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        api.patch_status(
            &pod.name_any(),
            &PatchParams {
                field_manager: Some("kubelet".into()),
                ..Default::default()
            },
            &Patch::Merge(&json!({"status": status})),
        )
        .await?;
        Ok(())
    }
}
