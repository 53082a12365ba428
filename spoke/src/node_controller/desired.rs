//! What one node should look like (pure): its NodeModulesConfig spec and status, which worker
//! pods to start or remove, and the labels kmm-spoke owns on the node.
//!
//! Inputs are what `observe` read: the Node, its record, every Module, and the pods on the node
//! that carry the module-name label (workers and device plugins).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{Node, Pod, Taint, Toleration},
    jiff::Timestamp,
};
use kmm_api::{
    Module,
    kernel::KernelMapper,
    labels,
    nmc::{ModuleConfig, ModuleItem, NodeModuleSpec, NodeModuleStatus, NodeModulesConfig},
};
use kube::ResourceExt;

use self::decision::{NodeDecision, node_decision, worker_service_account};
use crate::{
    ordered_upgrade::{NodeVersionState, VersionAction, next_action},
    reason::Reason,
    worker::{
        pod::{
            MODULE_NAME_LABEL, WORKER_ACTION_LABEL, WORKER_ATTEMPT_ANNOTATION, WORKER_CONFIG_ANNOTATION,
            WORKER_VERSION_ANNOTATION,
        },
        run::Action,
    },
};

/// `(namespace, name)` of a Module.
pub type ModuleKey = (String, String);

/// Settings that shape the decisions.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Namespace kmm-spoke runs in.
    pub operator_namespace: String,
    /// Worker service account of Modules in the operator's namespace.
    pub operator_module_loader_sa: String,
    /// First retry delay after a failed worker pod; doubled per failure.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            operator_namespace: "kmm-operator-system".into(),
            operator_module_loader_sa: "kmm-operator-module-loader".into(),
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// A worker pod to start.
#[derive(Debug, Clone, PartialEq)]
pub struct PodPlan {
    pub action: Action,
    pub item: ModuleItem,
    pub config: ModuleConfig,
    pub attempt: u32,
    /// The previous attempt's reason, on a retry.
    pub last_failure: Option<String>,
}

/// A Kubernetes Event about the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEvent {
    pub warning: bool,
    pub reason: Reason,
    pub note: String,
    /// Published once while this key (a pod uid) keeps coming back in the node's passes, rather
    /// than on every pass: for a state that lasts, not for a step that happened.
    pub once_per: Option<String>,
}

/// What `apply` makes true for one node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeDesired {
    /// The record's spec (sorted by namespace, name).
    pub spec: Vec<NodeModuleSpec>,
    /// The record's status (sorted).
    pub status: Vec<NodeModuleStatus>,
    /// Worker pods to delete first, `(namespace, name)`.
    pub delete_pods: Vec<(String, String)>,
    /// The failed worker pods among `delete_pods`, with their action (counted once deleted).
    pub failed_pods: Vec<((String, String), Action)>,
    /// Worker pods to create after the deletions.
    pub create_pods: Vec<PodPlan>,
    /// Every node label kmm-spoke owns, with its value (anything else it owned goes).
    pub labels: BTreeMap<String, String>,
    /// Come back after this long even without a change (failed worker backoff).
    pub requeue_after: Option<Duration>,
    /// Events to publish on the node.
    pub events: Vec<NodeEvent>,
}

/// The observed state of one node.
#[derive(Debug, Clone, Copy)]
pub struct NodeObserved<'a> {
    pub node: &'a Node,
    pub nmc: Option<&'a NodeModulesConfig>,
    pub modules: &'a [Module],
    /// Pods on the node carrying the module-name label.
    pub pods: &'a [Pod],
    pub now: Timestamp,
}

/// Taints the node-lifecycle controller puts on a node from its conditions, which never decide
/// whether a module belongs on it. `not-ready` and `unreachable` mean the kubelet stopped
/// reporting (a crash, a partition): the module is still loaded in that kernel, and an unload
/// queued on the node would run the moment its kubelet is back. The pressure taints are the
/// ones upstream KMM tolerates internally. The admin's `unschedulable` (cordon) still counts.
pub const NODE_CONDITION_TAINTS: [&str; 5] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
    "node.kubernetes.io/memory-pressure",
    "node.kubernetes.io/disk-pressure",
    "node.kubernetes.io/pid-pressure",
];

/// Whether a node matches a Module's selector and tolerates its NoSchedule/NoExecute taints
/// (other than [`NODE_CONDITION_TAINTS`]).
pub fn targets(module: &Module, node: &Node) -> bool {
    let node_labels = node.labels();
    let selected = module
        .spec
        .selector
        .iter()
        .all(|(k, v)| node_labels.get(k) == Some(v));
    let tolerations = module.spec.tolerations.as_deref().unwrap_or_default();
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    selected
        && taints
            .iter()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .filter(|t| !NODE_CONDITION_TAINTS.contains(&t.key.as_str()))
            .all(|t| tolerations.iter().any(|tol| tolerates(tol, t)))
}

fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    let effect_ok = tol
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key_ok = match tol.key.as_deref() {
        None | Some("") => tol.operator.as_deref() == Some("Exists"),
        Some(k) => k == taint.key,
    };
    let value_ok = match tol.operator.as_deref() {
        Some("Exists") => true,
        _ => tol.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default(),
    };
    effect_ok && key_ok && value_ok
}

fn node_kernel(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .node_info
        .as_ref()
        .map(|i| i.kernel_version.as_str())
        .filter(|k| !k.is_empty())
}

fn node_boot_id(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .node_info
        .as_ref()
        .map(|i| i.boot_id.as_str())
        .filter(|b| !b.is_empty())
}

fn key_of(namespace: &str, name: &str) -> ModuleKey {
    (namespace.to_owned(), name.to_owned())
}

/// The record entry a Module wants on a node with `kernel`, or why there is none.
pub enum Mapping {
    Entry(Box<NodeModuleSpec>),
    NoMapping,
    Error(String),
}

/// The entry for `module` on a node running `kernel`.
pub fn module_entry(module: &Module, kernel: &str, settings: &NodeSettings) -> Mapping {
    let (name, namespace) = (module.name_any(), module.namespace().unwrap_or_default());
    let Some(loader) = module.spec.module_loader.as_ref() else {
        return Mapping::NoMapping;
    };
    let mapper = match KernelMapper::new(&module.spec, &name, &namespace) {
        Ok(m) => m,
        Err(e) => return Mapping::Error(e.to_string()),
    };
    let resolved = match mapper.resolve(kernel) {
        Ok(r) => r,
        Err(e) if e.is_no_mapping() => return Mapping::NoMapping,
        Err(e) => return Mapping::Error(e.to_string()),
    };
    let container = &loader.container;
    let sa = worker_service_account(
        loader.service_account_name.as_deref(),
        &namespace,
        &settings.operator_namespace,
        &settings.operator_module_loader_sa,
    );
    Mapping::Entry(Box::new(NodeModuleSpec {
        item: ModuleItem {
            name,
            namespace,
            service_account_name: sa.to_owned(),
            image_repo_secret: module.spec.image_repo_secret.clone(),
            tolerations: module.spec.tolerations.clone().unwrap_or_default(),
            version: container.version.clone().filter(|v| !v.is_empty()),
        },
        config: ModuleConfig {
            kernel_version: resolved.kernel,
            container_image: resolved.container_image,
            insecure_pull: resolved.registry_tls.insecure || resolved.registry_tls.insecure_skip_tls_verify,
            modprobe: container.modprobe.clone(),
            image_pull_policy: container
                .image_pull_policy
                .clone()
                .unwrap_or_else(|| "IfNotPresent".into()),
            in_tree_modules_to_remove: (!resolved.in_tree_modules_to_remove.is_empty())
                .then_some(resolved.in_tree_modules_to_remove),
            in_tree_module_to_remove: None,
        },
    }))
}

enum PodState<'a> {
    InFlight {
        pod: &'a Pod,
        pending: bool,
    },
    Failed {
        pod: &'a Pod,
        attempt: u32,
        finished: Option<Timestamp>,
        message: String,
    },
}

fn pod_action(pod: &Pod) -> Option<Action> {
    match pod.labels().get(WORKER_ACTION_LABEL).map(String::as_str) {
        Some("Load") => Some(Action::Load),
        Some("Unload") => Some(Action::Unload),
        _ => None,
    }
}

fn pod_config(pod: &Pod) -> Option<ModuleConfig> {
    serde_saphyr::from_str(pod.annotations().get(WORKER_CONFIG_ANNOTATION)?).ok()
}

fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// When the pod's worker container (or a failed init container) ended, and its one-line reason.
pub fn termination(pod: &Pod) -> (Option<Timestamp>, String) {
    kmm_api::pod_failure::termination(pod, "worker").unwrap_or((None, "the worker pod failed".into()))
}

/// Delay before retry number `attempt + 1`.
pub fn backoff(settings: &NodeSettings, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
    settings
        .backoff_base
        .saturating_mul(factor)
        .min(settings.backoff_max)
}

/// Everything `apply` should do for one node.
pub fn desired(observed: NodeObserved<'_>, settings: &NodeSettings) -> NodeDesired {
    let NodeObserved {
        node,
        nmc,
        modules,
        pods,
        now,
    } = observed;
    let node_labels = node.labels();
    let kernel = node_kernel(node);
    let boot_id = node_boot_id(node);
    let mut out = NodeDesired::default();

    let current_spec: BTreeMap<ModuleKey, &NodeModuleSpec> = nmc
        .map(|n| n.spec.modules.iter())
        .into_iter()
        .flatten()
        .map(|e| (key_of(&e.item.namespace, &e.item.name), e))
        .collect();
    let mut status: BTreeMap<ModuleKey, NodeModuleStatus> = nmc
        .and_then(|n| n.status.as_ref())
        .map(|s| s.modules.iter())
        .into_iter()
        .flatten()
        .map(|e| (key_of(&e.item.namespace, &e.item.name), e.clone()))
        .collect();

    // 1. Read finished worker pods back into the record.
    let mut min_wait: Option<Duration> = None;
    let mut pod_states: BTreeMap<ModuleKey, PodState<'_>> = BTreeMap::new();
    for pod in pods {
        let Some(action) = pod_action(pod) else { continue };
        let Some(module) = pod.labels().get(MODULE_NAME_LABEL) else {
            continue;
        };
        let key = key_of(&pod.namespace().unwrap_or_default(), module);
        let pod_ref = (key.0.clone(), pod.name_any());
        if let Some(deadline) = pod.metadata.deletion_timestamp.as_ref().map(|t| t.0) {
            // Being deleted: nothing replaces it (the name is taken) until the kubelet has
            // stopped it and it is gone. Past its grace period, that kubelet is not doing it.
            if now > deadline {
                out.events.push(stuck_event(node, pod, &key, action, deadline));
            } else {
                let left = deadline.duration_since(now).unsigned_abs() + Duration::from_secs(1);
                min_wait = Some(min_wait.map_or(left, |m| m.min(left)));
            }
            pod_states.insert(key, PodState::InFlight { pod, pending: false });
            continue;
        }
        match pod_phase(pod) {
            "Succeeded" => {
                match action {
                    Action::Load => match pod_config(pod) {
                        Some(config) => {
                            let spec = pod.spec.as_ref();
                            status.insert(
                                key.clone(),
                                NodeModuleStatus {
                                    item: ModuleItem {
                                        name: key.1.clone(),
                                        namespace: key.0.clone(),
                                        service_account_name: spec
                                            .and_then(|s| s.service_account_name.clone())
                                            .unwrap_or_else(|| "default".into()),
                                        image_repo_secret: spec
                                            .and_then(|s| s.image_pull_secrets.as_ref()?.first().cloned()),
                                        tolerations: spec
                                            .and_then(|s| s.tolerations.clone())
                                            .unwrap_or_default(),
                                        version: pod.annotations().get(WORKER_VERSION_ANNOTATION).cloned(),
                                    },
                                    config: Some(config),
                                    boot_id: boot_id.map(str::to_owned),
                                    last_transition_time: None,
                                },
                            );
                            out.events.push(NodeEvent {
                                warning: false,
                                reason: Reason::ModuleLoaded,
                                note: format!("module {}/{} loaded", key.0, key.1),
                                once_per: None,
                            });
                        }
                        None => out.events.push(NodeEvent {
                            warning: true,
                            reason: Reason::WorkerConfigUnreadable,
                            note: format!("worker pod {} has no readable config; loading again", pod_ref.1),
                            once_per: None,
                        }),
                    },
                    Action::Unload => {
                        status.remove(&key);
                        out.events.push(NodeEvent {
                            warning: false,
                            reason: Reason::ModuleUnloaded,
                            note: format!("module {}/{} unloaded", key.0, key.1),
                            once_per: None,
                        });
                    }
                }
                out.delete_pods.push(pod_ref);
            }
            "Failed" => {
                let attempt = pod
                    .annotations()
                    .get(WORKER_ATTEMPT_ANNOTATION)
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0);
                let (finished, message) = termination(pod);
                pod_states.insert(
                    key,
                    PodState::Failed {
                        pod,
                        attempt,
                        finished,
                        message,
                    },
                );
            }
            phase => {
                pod_states.insert(
                    key,
                    PodState::InFlight {
                        pod,
                        pending: phase == "Pending",
                    },
                );
            }
        }
    }

    // 2. The record's spec from the Modules.
    let mut spec: BTreeMap<ModuleKey, NodeModuleSpec> = BTreeMap::new();
    for module in modules {
        if module.metadata.deletion_timestamp.is_some() || module.spec.module_loader.is_none() {
            continue;
        }
        let key = key_of(&module.namespace().unwrap_or_default(), &module.name_any());
        let version = module
            .spec
            .module_loader
            .as_ref()
            .and_then(|l| l.container.version.as_deref())
            .filter(|v| !v.is_empty());
        let current = current_spec.get(&key).copied();
        let mapping = match kernel {
            Some(kernel) => module_entry(module, kernel, settings),
            None => Mapping::Error("the node reports no kernel version".into()),
        };
        let entry = match mapping {
            Mapping::Entry(entry) => Some(*entry),
            Mapping::NoMapping => None,
            Mapping::Error(_) => {
                // Leave the record as it is until the Module is fixed (its status says why).
                if let Some(current) = current {
                    spec.insert(key, current.clone());
                }
                continue;
            }
        };
        let worker_label = node_labels
            .get(&labels::version_worker_pod(&key.0, &key.1))
            .map(String::as_str);
        match node_decision(
            targets(module, node),
            entry.is_some(),
            current.is_some(),
            version,
            worker_label,
        ) {
            NodeDecision::Load => {
                if let Some(entry) = entry {
                    spec.insert(key, entry);
                }
            }
            NodeDecision::Leave => {
                if let Some(current) = current {
                    spec.insert(key, current.clone());
                }
            }
            NodeDecision::Unload => {}
        }
    }

    // 3. Per module: which worker pod should run now.
    let keys: BTreeSet<ModuleKey> = spec
        .keys()
        .chain(status.keys())
        .chain(pod_states.keys())
        .cloned()
        .collect();
    for key in keys {
        let want: Option<PodPlan> = match (spec.get(&key), status.get(&key)) {
            (Some(s), None) => Some(plan(Action::Load, &s.item, &s.config)),
            (Some(s), Some(st)) => match &st.config {
                None => Some(plan(Action::Load, &s.item, &s.config)),
                Some(loaded) if loaded != &s.config => {
                    if loaded.kernel_version == s.config.kernel_version {
                        Some(plan(Action::Unload, &st.item, loaded))
                    } else {
                        Some(plan(Action::Load, &s.item, &s.config))
                    }
                }
                Some(_) if st.boot_id.is_some() && boot_id.is_some() && st.boot_id.as_deref() != boot_id => {
                    Some(plan(Action::Load, &s.item, &s.config))
                }
                Some(_) => None,
            },
            (None, Some(st)) => {
                if st.boot_id.is_some() && boot_id.is_some() && st.boot_id.as_deref() != boot_id {
                    // Rebooted since it was loaded: nothing of it is left to unload.
                    status.remove(&key);
                    None
                } else {
                    st.config.as_ref().map(|c| plan(Action::Unload, &st.item, c))
                }
            }
            (None, None) => None,
        };
        let matches = |pod: &Pod, want: &PodPlan| {
            pod_action(pod) == Some(want.action) && pod_config(pod).as_ref() == Some(&want.config)
        };
        match (pod_states.get(&key), want) {
            (None, Some(want)) => out.create_pods.push(want),
            (None, None) => {}
            (Some(PodState::InFlight { pod, pending }), want) => {
                let stale = want.as_ref().is_none_or(|w| !matches(pod, w));
                if *pending && stale && pod.metadata.deletion_timestamp.is_none() {
                    out.delete_pods.push((key.0.clone(), pod.name_any()));
                }
            }
            (
                Some(PodState::Failed {
                    pod,
                    attempt,
                    finished,
                    message,
                }),
                want,
            ) => {
                let pod_ref = (key.0.clone(), pod.name_any());
                let failed_action = pod_action(pod);
                let delete_failed = |out: &mut NodeDesired, pod_ref: (String, String)| {
                    if let Some(action) = failed_action {
                        out.failed_pods.push((pod_ref.clone(), action));
                    }
                    out.delete_pods.push(pod_ref);
                };
                match want {
                    Some(mut want) if matches(pod, &want) => {
                        let wait = backoff(settings, *attempt);
                        let since = finished
                            .map(|f| now.duration_since(f).unsigned_abs())
                            .unwrap_or(Duration::ZERO);
                        if since >= wait {
                            out.events.push(NodeEvent {
                                warning: true,
                                reason: Reason::WorkerFailed,
                                note: format!(
                                    "{} of {}/{} failed (attempt {}), retrying: {message}",
                                    action_name(want.action),
                                    key.0,
                                    key.1,
                                    attempt + 1
                                ),
                                once_per: None,
                            });
                            delete_failed(&mut out, pod_ref);
                            want.attempt = attempt + 1;
                            want.last_failure = Some(message.clone());
                            out.create_pods.push(want);
                        } else {
                            let left = wait - since;
                            min_wait = Some(min_wait.map_or(left, |m| m.min(left)));
                        }
                    }
                    Some(want) => {
                        delete_failed(&mut out, pod_ref);
                        out.create_pods.push(want);
                    }
                    None => delete_failed(&mut out, pod_ref),
                }
            }
        }
    }
    out.requeue_after = min_wait;

    // 4. Node labels.
    for (key, s) in &spec {
        let loaded = status.get(key).and_then(|st| st.config.as_ref()) == Some(&s.config);
        if loaded {
            out.labels
                .insert(labels::module_ready(&key.0, &key.1), String::new());
            if let Some(v) = status.get(key).and_then(|st| st.item.version.clone()) {
                out.labels.insert(labels::module_version_ready(&key.0, &key.1), v);
            }
        }
    }
    for module in modules {
        if module.metadata.deletion_timestamp.is_none()
            && module.spec.device_plugin.is_some()
            && targets(module, node)
        {
            let ns = module.namespace().unwrap_or_default();
            out.labels.insert(
                labels::device_plugin_target(&ns, &module.name_any()),
                String::new(),
            );
        }
    }
    for (ns, name) in version_label_modules(node_labels) {
        let worker_key = labels::version_worker_pod(&ns, &name);
        let schedule_key = labels::version_schedule_pod(&ns, &name);
        let state = NodeVersionState {
            requested: node_labels
                .get(&labels::version_module(&ns, &name))
                .map(String::as_str),
            worker: node_labels.get(&worker_key).map(String::as_str),
            schedule: node_labels.get(&schedule_key).map(String::as_str),
            plugin_pod_running: pods.iter().any(|p| {
                p.namespace().as_deref() == Some(ns.as_str())
                    && p.labels().get(MODULE_NAME_LABEL) == Some(&name)
                    && pod_action(p).is_none()
                    && pod_phase(p) != "Succeeded"
                    && pod_phase(p) != "Failed"
            }),
            module_ready: node_labels.contains_key(&labels::module_ready(&ns, &name)),
        };
        let (mut w, mut s) = (state.worker.map(str::to_owned), state.schedule.map(str::to_owned));
        match next_action(state) {
            VersionAction::Keep => {}
            VersionAction::DeleteSchedule => s = None,
            VersionAction::DeleteWorker => w = None,
            VersionAction::SetWorker(v) => w = Some(v),
            VersionAction::SetSchedule(v) => s = Some(v),
            VersionAction::Requeue => {
                out.requeue_after = Some(
                    out.requeue_after
                        .map_or(Duration::from_secs(5), |d| d.min(Duration::from_secs(5))),
                );
            }
        }
        if let Some(w) = w {
            out.labels.insert(worker_key, w);
        }
        if let Some(s) = s {
            out.labels.insert(schedule_key, s);
        }
    }

    out.spec = spec.into_values().collect();
    out.status = status.into_values().collect();
    out
}

/// The Warning about a worker pod whose deletion nobody finishes: which pod, why (the node's
/// readiness), what waits for it and how an admin ends it.
fn stuck_event(node: &Node, pod: &Pod, key: &ModuleKey, action: Action, deadline: Timestamp) -> NodeEvent {
    let pod_name = pod.name_any();
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    let node_state = match ready {
        Some(c) if c.status == "True" => format!(
            "node {} is Ready, but its kubelet has not finished the deletion",
            node.name_any()
        ),
        Some(c) => format!(
            "node {} is NotReady (Ready={}, {}: {}), so no kubelet finishes the deletion",
            node.name_any(),
            c.status,
            c.reason.as_deref().unwrap_or_default(),
            c.message.as_deref().unwrap_or_default()
        ),
        None => format!(
            "node {} reports no Ready condition, so no kubelet finishes the deletion",
            node.name_any()
        ),
    };
    NodeEvent {
        warning: true,
        reason: Reason::WorkerPodStuck,
        note: format!(
            "worker pod {ns}/{pod_name} ({action} {ns}/{module}) is still terminating after its grace \
             period ended at {deadline}: {node_state}. The next worker for {ns}/{module} on this node \
             starts once the pod is gone: when the node is back, or, if the node is gone for good, after \
             `kubectl delete pod -n {ns} {pod_name} --force --grace-period=0`",
            ns = key.0,
            module = key.1,
            action = action_name(action),
        ),
        once_per: Some(pod.uid().unwrap_or(pod_name)),
    }
}

fn plan(action: Action, item: &ModuleItem, config: &ModuleConfig) -> PodPlan {
    PodPlan {
        last_failure: None,
        action,
        item: item.clone(),
        config: config.clone(),
        attempt: 0,
    }
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Load => "loading",
        Action::Unload => "unloading",
    }
}

/// Modules named by any ordered-upgrade label on the node. A namespace holds no dot, so the
/// first dot after the prefix separates namespace and name (dotted Module names work).
pub fn version_label_modules(node_labels: &BTreeMap<String, String>) -> BTreeSet<ModuleKey> {
    let prefixes = [
        format!("{}/version-module.", labels::NODE_LABEL_PREFIX),
        format!("{}/version-worker-pod.", labels::BETA_LABEL_PREFIX),
        format!("{}/version-schedule-pod.", labels::BETA_LABEL_PREFIX),
    ];
    node_labels
        .keys()
        .filter_map(|k| {
            let rest = prefixes.iter().find_map(|p| k.strip_prefix(p.as_str()))?;
            let (ns, name) = rest.split_once('.')?;
            (!ns.is_empty() && !name.is_empty()).then(|| key_of(ns, name))
        })
        .collect()
}

pub mod decision;
#[cfg(test)]
mod tests;
