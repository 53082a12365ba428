//! A small fleet for controller tests: a simulated hub and spokes with the OCM agents, a real
//! registry, and the real `kmm-hub run` process pointed at the hub.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use kmm_agents::{AgentHandle, RegistrationAgent, RegistrationOptions, WorkAgent, WorkAgentOptions};
use kmm_fleet_tests::process::http_get;
use kmm_sim::{Sim, SimCluster};

use super::{Registry, free_port, start_registry};

pub const HUB_NAMESPACE: &str = "kmm-hub";
pub const SPOKE_NAMESPACE: &str = "drivers";
const CLAIM: &str = "kernel-versions.kmm.node.kubernetes.io";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub struct Spoke {
    pub cluster: SimCluster,
    _agents: Vec<AgentHandle>,
}

pub struct Fleet {
    pub sim: Sim,
    pub hub: SimCluster,
    pub spokes: BTreeMap<String, Spoke>,
    pub registry: Registry,
}

/// One spoke: name, ManagedCluster labels, kernels it reports (`None`: no claim at all).
pub struct SpokeSpec<'a> {
    pub name: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
    pub kernels: Option<&'a [&'a str]>,
}

impl<'a> SpokeSpec<'a> {
    /// A cluster labelled `env=prod` (what the tests' MCMs select) running `kernels`.
    pub fn prod(name: &'a str, kernels: &'a [&'a str]) -> Self {
        Self {
            name,
            labels: &[("env", "prod")],
            kernels: Some(kernels),
        }
    }
}

impl Fleet {
    pub async fn start(name: &str, spokes: &[SpokeSpec<'_>]) -> Self {
        let sim = Sim::new().unwrap();
        let hub = sim.add_cluster("hub").await.unwrap();
        hub.install_crds_from_path(repo_root().join("manifests/crds"))
            .unwrap();
        hub.install_crds_from_path(repo_root().join("../shared/reference/ocm-crds"))
            .unwrap();
        hub.apply_yaml(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {HUB_NAMESPACE}\n"
        ))
        .unwrap();
        let mut fleet = Self {
            sim,
            hub,
            spokes: BTreeMap::new(),
            registry: start_registry(name),
        };
        for s in spokes {
            fleet.add_spoke(s).await;
        }
        fleet
    }

    pub async fn add_spoke(&mut self, s: &SpokeSpec<'_>) {
        let spoke = self.sim.add_cluster(s.name).await.unwrap();
        spoke
            .install_crds_from_path(repo_root().join("manifests/crds"))
            .unwrap();
        spoke
            .install_crds_from_path(repo_root().join("../shared/reference/ocm-crds"))
            .unwrap();
        spoke
            .apply_yaml(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {SPOKE_NAMESPACE}\n"
            ))
            .unwrap();
        if let Some(kernels) = s.kernels {
            set_kernels(&spoke, kernels);
        }
        let labels = s
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let registration = RegistrationAgent::spawn(
            self.hub.client(),
            spoke.client(),
            s.name,
            RegistrationOptions {
                create_cluster_with_labels: Some(labels),
                create_namespace: true,
                ..Default::default()
            },
        );
        let work = WorkAgent::spawn(
            self.hub.client(),
            spoke.client(),
            s.name,
            WorkAgentOptions::default(),
        );
        self.spokes.insert(
            s.name.to_string(),
            Spoke {
                cluster: spoke,
                _agents: vec![registration, work],
            },
        );
    }

    pub fn spoke(&self, name: &str) -> &SimCluster {
        &self.spokes[name].cluster
    }
}

/// Writes the spoke's kernel-versions ClusterClaim, as kmm-spoke would.
pub fn set_kernels(spoke: &SimCluster, kernels: &[&str]) {
    let value = kernels.join("\\n");
    spoke
        .apply_yaml(&format!(
            "apiVersion: cluster.open-cluster-management.io/v1alpha1\nkind: ClusterClaim\nmetadata:\n  name: {CLAIM}\nspec:\n  value: \"{value}\"\n"
        ))
        .unwrap();
}

/// A running `kmm-hub run`, killed on drop.
pub struct HubProcess {
    child: Child,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HubProcess {
    pub fn start(hub: &SimCluster, dir: &std::path::Path, id: &str, extra: &[&str]) -> Self {
        Self::start_with_kubeconfig(hub.kubeconfig_path(), dir, id, extra)
    }

    /// Like [`HubProcess::start`], with another kubeconfig (e.g. `SimCluster::kubeconfig_as`, to
    /// run as the hub's ServiceAccount).
    pub fn start_with_kubeconfig(
        kubeconfig: &std::path::Path,
        dir: &std::path::Path,
        id: &str,
        extra: &[&str],
    ) -> Self {
        let metrics_port = free_port();
        let log = dir.join(format!("kmm-hub-{id}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_kmm-hub"))
            .args(["run", "--namespace", HUB_NAMESPACE, "--identity", id])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--retry-seconds", "1"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("KMM_LOG_FORMAT", "text")
            .env(
                "RUST_LOG",
                std::env::var("KMM_TEST_HUB_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            metrics_port,
            log,
        }
    }

    /// The value of a metric line (exact name and labels), if exported.
    pub async fn metric(&self, line_start: &str) -> Option<f64> {
        let text = http_get(self.metrics_port, "/metrics").await?;
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Sends SIGTERM and waits up to `secs` for the process to exit; its exit code, if it did.
    pub fn terminate(&mut self, secs: u64) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Process id, e.g. to read its peak memory from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn ready(&self) -> bool {
        http_get(self.metrics_port, "/readyz")
            .await
            .is_some_and(|b| b == "ready")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Waits (up to `secs`) until `f` holds; panics with `what` and the hub log otherwise.
pub async fn eventually<F, Fut>(secs: u64, what: &str, hub: Option<&HubProcess>, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = hub.map(HubProcess::log_text).unwrap_or_default();
    let tail: String = log
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    panic!("timed out waiting for: {what}\n--- kmm-hub log (tail) ---\n{tail}");
}
