//! Node registration and heartbeats, as a kubelet does them.
//!
//! For each [`NodeRegistration`] one task creates the Node when it is missing, writes its status
//! once through `nodes/status` (capacity, allocatable, `nodeInfo`, addresses, conditions), then
//! renews the `kube-node-lease/<node>` Lease every `lease_interval` and refreshes the conditions'
//! `lastHeartbeatTime` about every [`STATUS_INTERVAL`]. The node-lifecycle controller of a real
//! control plane reads both: without them a node turns `Ready=Unknown` after its grace period.
//!
//! After registration only `status.conditions` is written (a strategic merge patch), never
//! `status.nodeInfo`: tests change a node's kernel by patching `nodeInfo` themselves.
//!
//! [`NodeControl`] takes a node down: its task then writes nothing (no lease, no status) and the
//! pod loop leaves its pods alone, as with a dead kubelet. Back up, it resumes at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::util::{Backoff, fnv1a, is_conflict, is_not_found};

/// Namespace of the node Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// `leaseDurationSeconds` of a node Lease (the kubelet's default).
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// How often the conditions' `lastHeartbeatTime` is refreshed (the kubelet's
/// `nodeStatusUpdateFrequency`).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// The InternalIP of every node, and the host IP of its pods.
pub const NODE_IP: &str = "127.0.0.1";
/// `nodeInfo.kubeletVersion`.
pub const KUBELET_VERSION: &str = "v1.34.3";
/// Field manager of everything the kubelet writes.
pub const FIELD_MANAGER: &str = "kubelet";

/// A node the kubelet registers and keeps alive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRegistration {
    pub name: String,
    /// `status.nodeInfo.kernelVersion` at registration.
    pub kernel: String,
    /// Labels of the Node when the kubelet creates it (besides `kubernetes.io/hostname`,
    /// `kubernetes.io/os` and `kubernetes.io/arch`).
    pub labels: BTreeMap<String, String>,
}

impl NodeRegistration {
    pub fn new(name: &str, kernel: &str) -> Self {
        Self {
            name: name.to_owned(),
            kernel: kernel.to_owned(),
            labels: BTreeMap::new(),
        }
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// The labels the Node is created with.
    pub fn node_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert("kubernetes.io/hostname".into(), self.name.clone());
        labels.insert("kubernetes.io/os".into(), "linux".into());
        labels.insert("kubernetes.io/arch".into(), "amd64".into());
        labels
    }
}

/// Takes nodes down and up: a down node's kubelet is dead (no lease renewals, no status writes,
/// its pods untouched, graceful deletions left pending). Clones share the same state.
#[derive(Debug, Clone)]
pub struct NodeControl {
    down: Arc<watch::Sender<BTreeSet<String>>>,
}

impl Default for NodeControl {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeControl {
    /// Every node up.
    pub fn new() -> Self {
        Self {
            down: Arc::new(watch::Sender::new(BTreeSet::new())),
        }
    }

    /// Takes `node` down (`true`) or brings it back up (`false`).
    pub fn set_down(&self, node: &str, down: bool) {
        self.down.send_if_modified(|set| {
            if down {
                set.insert(node.to_owned())
            } else {
                set.remove(node)
            }
        });
    }

    pub fn is_down(&self, node: &str) -> bool {
        self.down.borrow().contains(node)
    }

    /// Woken whenever a node goes down or up.
    pub(crate) fn subscribe(&self) -> watch::Receiver<BTreeSet<String>> {
        self.down.subscribe()
    }
}

/// Starts one registration and heartbeat task per node.
pub(crate) fn spawn_all(
    client: &Client,
    nodes: &[NodeRegistration],
    control: &NodeControl,
    lease_interval: Duration,
) -> Vec<JoinHandle<()>> {
    nodes
        .iter()
        .map(|reg| {
            let agent = NodeAgent {
                client: client.clone(),
                reg: reg.clone(),
                control: control.clone(),
                lease_interval,
            };
            tokio::spawn(agent.run())
        })
        .collect()
}

fn time(t: Timestamp) -> Value {
    serde_json::to_value(Time(t)).unwrap_or(Value::Null)
}

/// A stable, non-empty id for `machineID` / `systemUUID` (32 hex digits, like `/etc/machine-id`).
fn machine_id(node: &str, salt: &str) -> String {
    format!(
        "{:016x}{:016x}",
        fnv1a(format!("{salt}/{node}").as_bytes()),
        fnv1a(format!("{node}/{salt}").as_bytes())
    )
}

/// The four conditions a healthy kubelet posts. `ready_since` is the Ready condition's
/// `lastTransitionTime`, `up_since` the pressure conditions'.
pub fn conditions(now: Timestamp, ready_since: Timestamp, up_since: Timestamp) -> Value {
    let c = |type_: &str, status: &str, reason: &str, message: &str, since: Timestamp| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": time(now), "lastTransitionTime": time(since)})
    };
    json!([
        c(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
            up_since
        ),
        c(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
            up_since
        ),
        c(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
            up_since
        ),
        c(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
            ready_since
        ),
    ])
}

/// The status the kubelet writes at registration. `node_info` is left out when the Node already
/// reports a kernel (someone set it; the kubelet keeps it).
pub fn registration_status(reg: &NodeRegistration, node_info: bool, now: Timestamp) -> Value {
    let resources = json!({"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    let mut status = json!({
        "capacity": resources,
        "allocatable": resources,
        "addresses": [
            {"type": "InternalIP", "address": NODE_IP},
            {"type": "Hostname", "address": reg.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "conditions": conditions(now, now, now),
    });
    if node_info {
        status["nodeInfo"] = json!({
            "kernelVersion": reg.kernel,
            "bootID": "boot-1",
            "osImage": "Debian GNU/Linux 12 (bookworm)",
            "operatingSystem": "linux",
            "architecture": "amd64",
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "containerRuntimeVersion": "stand-in://1",
            "machineID": machine_id(&reg.name, "machine"),
            "systemUUID": machine_id(&reg.name, "system"),
        });
    }
    status
}

/// Where one node's task is.
struct NodeAgent {
    client: Client,
    reg: NodeRegistration,
    control: NodeControl,
    lease_interval: Duration,
}

/// What the task remembers about its Node while it is up.
struct Alive {
    uid: String,
    /// When the conditions were last written.
    heartbeat: Option<Instant>,
    /// `lastTransitionTime` of Ready=True (reset after being down).
    ready_since: Timestamp,
    up_since: Timestamp,
}

impl NodeAgent {
    async fn run(self) {
        let mut changes = self.control.subscribe();
        let mut alive: Option<Alive> = None;
        let mut gone = false;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            if self.control.is_down(&self.reg.name) {
                // A dead kubelet: nothing is written; Ready restarts from now when it is back.
                if let Some(a) = alive.as_mut() {
                    a.heartbeat = None;
                    a.ready_since = Timestamp::now();
                    a.up_since = a.ready_since;
                }
                if changes.changed().await.is_err() {
                    return;
                }
                continue;
            }
            if gone {
                // The Node was deleted after registration; a kubelet does not register again
                // until it restarts.
                if changes.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let step = match alive.as_mut() {
                None => self.register().await.map(|a| alive = Some(a)),
                Some(a) => self.beat(a).await,
            };
            let delay = match step {
                Ok(()) => {
                    backoff.reset();
                    self.lease_interval
                }
                Err(e) if alive.is_some() && is_not_found(&e) => {
                    tracing::info!(node = %self.reg.name, "node deleted, heartbeats stop");
                    gone = true;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(node = %self.reg.name, error = %e, "node heartbeat failed");
                    backoff.next_delay().min(self.lease_interval)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                changed = changes.changed() => if changed.is_err() { return },
            }
        }
    }

    fn params() -> PatchParams {
        PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        }
    }

    /// Creates the Node if missing and writes its whole status once.
    async fn register(&self) -> Result<Alive, kube::Error> {
        let nodes = Api::<Node>::all(self.client.clone());
        let name = &self.reg.name;
        let existing = match nodes.get_opt(name).await? {
            Some(n) => n,
            None => {
                let node: Node = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name, "labels": self.reg.node_labels()},
                }))
                .map_err(kube::Error::SerdeError)?;
                match nodes
                    .create(
                        &PostParams {
                            field_manager: Some(FIELD_MANAGER.into()),
                            ..Default::default()
                        },
                        &node,
                    )
                    .await
                {
                    Ok(n) => n,
                    Err(e) if is_conflict(&e) => nodes.get(name).await?,
                    Err(e) => return Err(e),
                }
            }
        };
        let has_kernel = existing
            .status
            .as_ref()
            .and_then(|s| s.node_info.as_ref())
            .is_some_and(|i| !i.kernel_version.is_empty());
        let now = Timestamp::now();
        let status = registration_status(&self.reg, !has_kernel, now);
        nodes
            .patch_status(name, &Self::params(), &Patch::Merge(json!({"status": status})))
            .await?;
        let alive = Alive {
            uid: existing.uid().unwrap_or_default(),
            heartbeat: Some(Instant::now()),
            ready_since: now,
            up_since: now,
        };
        self.renew_lease(&alive.uid).await?;
        tracing::debug!(node = %name, "node registered");
        Ok(alive)
    }

    /// Renews the Lease, and the conditions when they are due.
    async fn beat(&self, alive: &mut Alive) -> Result<(), kube::Error> {
        if alive.heartbeat.is_none_or(|t| t.elapsed() >= STATUS_INTERVAL) {
            let now = Timestamp::now();
            let body = json!({"status": {"conditions": conditions(now, alive.ready_since, alive.up_since)}});
            Api::<Node>::all(self.client.clone())
                .patch_status(&self.reg.name, &Self::params(), &Patch::Strategic(body))
                .await?;
            alive.heartbeat = Some(Instant::now());
        }
        self.renew_lease(&alive.uid).await
    }

    async fn renew_lease(&self, node_uid: &str) -> Result<(), kube::Error> {
        let leases = Api::<Lease>::namespaced(self.client.clone(), LEASE_NAMESPACE);
        let name = &self.reg.name;
        let body = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": LEASE_NAMESPACE, "ownerReferences": [{
                "apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid,
            }]},
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                "renewTime": serde_json::to_value(MicroTime(Timestamp::now())).map_err(kube::Error::SerdeError)?,
            },
        });
        match leases.patch(name, &Self::params(), &Patch::Merge(&body)).await {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
        let lease: Lease = serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
        let create = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match leases.create(&create, &lease).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => {
                // No kube-node-lease namespace (a real apiserver makes it; a simulator may not).
                let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": LEASE_NAMESPACE}}))
                    .map_err(kube::Error::SerdeError)?;
                match Api::<Namespace>::all(self.client.clone())
                    .create(&create, &ns)
                    .await
                {
                    Ok(_) => {}
                    Err(e) if is_conflict(&e) => {}
                    Err(e) => return Err(e),
                }
                leases.create(&create, &lease).await.map(|_| ())
            }
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_writes_node_info_only_when_asked() {
        let reg = NodeRegistration::new("n1", "6.1.0-25-cloud-amd64").label("role", "gpu");
        let now = Timestamp::now();
        let full = registration_status(&reg, true, now);
        assert_eq!(full["nodeInfo"]["kernelVersion"], "6.1.0-25-cloud-amd64");
        assert_eq!(full["nodeInfo"]["bootID"], "boot-1");
        assert_eq!(full["nodeInfo"]["machineID"].as_str().map(str::len), Some(32));
        assert_ne!(full["nodeInfo"]["machineID"], full["nodeInfo"]["systemUUID"]);
        assert_eq!(full["capacity"]["memory"], "32Gi");
        assert_eq!(full["addresses"][0]["address"], NODE_IP);
        assert!(registration_status(&reg, false, now).get("nodeInfo").is_none());
        let labels = reg.node_labels();
        assert_eq!(labels["kubernetes.io/hostname"], "n1");
        assert_eq!(labels["role"], "gpu");
    }

    #[test]
    fn ready_keeps_its_transition_time_while_heartbeats_move() {
        let since: Timestamp = "2025-01-01T00:00:00Z"
            .parse()
            .unwrap_or_else(|_| Timestamp::now());
        let now: Timestamp = "2025-01-01T00:05:00.700Z"
            .parse()
            .unwrap_or_else(|_| Timestamp::now());
        let c = conditions(now, since, since);
        let ready = &c[3];
        assert_eq!(ready["type"], "Ready");
        assert_eq!(ready["status"], "True");
        assert_eq!(ready["lastTransitionTime"], "2025-01-01T00:00:00Z");
        assert_eq!(ready["lastHeartbeatTime"], "2025-01-01T00:05:00Z");
        assert!(
            c.as_array()
                .is_some_and(|a| a[..3].iter().all(|x| x["status"] == "False"))
        );
    }

    #[test]
    fn node_control_is_shared_by_clones() {
        let a = NodeControl::new();
        let b = a.clone();
        let mut rx = a.subscribe();
        b.set_down("n1", true);
        assert!(a.is_down("n1"));
        assert!(rx.has_changed().unwrap_or(false));
        rx.mark_unchanged();
        b.set_down("n1", true);
        assert!(!rx.has_changed().unwrap_or(true), "no change, no wake-up");
        a.set_down("n1", false);
        assert!(!b.is_down("n1"));
    }
}
