//! The fleet: a hub and spokes, each a real control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler; the hub with `OwnerReferencesPermissionEnforcement`
//! as on OpenShift), OCM's real registration controller and klusterlet agents, a kubelet
//! stand-in per cluster that really runs the hub's build/sign pods and the spokes' worker pods,
//! a real registry, and the real `kmm-hub` / `kmm-spoke` processes, each running as its
//! ServiceAccount with the RBAC its kustomization renders.
//!
//! What runs for real: the API servers and controllers (Jobs, DaemonSets, garbage collection,
//! scheduling, node lifecycle), OCM (registration, ManifestWork delivery and status feedback),
//! buildah (build Jobs), `kmm-hub sign-image` (sign Jobs), skopeo/umoci pulls and the chrooted
//! `cp` of the worker pod's init container, `kmm-spoke worker` with `modprobe --dry-run` on the
//! pulled module tree. What is a stand-in: the kubelet (no container runtime here) and so the
//! node kernels (a Node's `nodeInfo.kernelVersion`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use base64::Engine;
use k8s_openapi::api::core::v1::Node;
use kmm_agents::{
    AgentHandle, Kubelet, KubeletOptions, KubeletScript, NodeControl, NodeRegistration, Outcome, PodLogSink,
    PodMatcher, ScriptRule,
    kubelet::{
        binaries::{BinaryImage, BinaryOptions, FromImage},
        images::{ImageOptions, MainImages},
    },
};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

use crate::{
    controlplane::{ControlPlane, Options},
    fresh_dir,
    images::{self, ImageBuilder, dockerfile},
    manifests,
    ocm::{self, AgentOptions, OcmAgent, OcmHub},
    process::{Launch, Process},
    registry::Registry,
    run, workspace_bin,
};

/// Namespace of kmm-hub (its Jobs, Secrets and ConfigMaps).
pub const HUB_NAMESPACE: &str = "kmm-hub";
/// The repository of kmm-spoke's image in the manifests and Policies.
pub const SPOKE_IMAGE_REPOSITORY: &str = "quay.io/kmm-fleet/kmm-spoke";
/// Namespace kmm-spoke runs in on the spokes.
pub const OPERATOR_NAMESPACE: &str = "kmm-operator-system";
/// The MCMs' `spokeNamespace`.
pub const MODULE_NAMESPACE: &str = "drivers";
/// ConfigMap (key `dockerfile`) the fleet's builds use.
pub const DOCKERFILE_CONFIGMAP: &str = "fleet-dockerfile";
/// A Secret the builds mount (`build.secrets`); its name has dots, as Secret names may.
pub const BUILD_SECRET: &str = "fleet.build-token.v1";
/// Secrets with the signing key (`key`) and certificate (`cert`).
pub const KEY_SECRET: &str = "fleet-signing-key";
pub const CERT_SECRET: &str = "fleet-signing-cert";
/// Common name of the signing certificate (what `modinfo` shows as the signer).
pub const SIGNER: &str = "kmm-fleet e2e signing key";

/// Output of every pod a kubelet ran, by cluster, in order.
#[derive(Clone, Default)]
pub struct PodLogs(Arc<Mutex<Vec<PodLog>>>);

/// One pod run.
#[derive(Clone, Debug)]
pub struct PodLog {
    pub cluster: String,
    pub namespace: String,
    pub pod: String,
    pub output: String,
}

struct ClusterSink {
    cluster: String,
    logs: PodLogs,
}

impl PodLogSink for ClusterSink {
    fn pod_log(&self, namespace: &str, name: &str, text: &str) {
        if let Ok(mut logs) = self.logs.0.lock() {
            logs.push(PodLog {
                cluster: self.cluster.clone(),
                namespace: namespace.to_owned(),
                pod: name.to_owned(),
                output: text.to_owned(),
            });
        }
    }
}

impl PodLogs {
    /// Every run so far.
    pub fn all(&self) -> Vec<PodLog> {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// A node of a spoke: name, kernel, labels.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub kernel: String,
    pub labels: BTreeMap<String, String>,
}

impl NodeSpec {
    /// A worker node (`node-role.kubernetes.io/worker`) running `kernel`.
    pub fn worker(name: &str, kernel: &str) -> Self {
        Self {
            name: name.to_owned(),
            kernel: kernel.to_owned(),
            labels: BTreeMap::from([("node-role.kubernetes.io/worker".to_owned(), String::new())]),
        }
    }
}

/// The kmm-hub and kmm-spoke images of this workspace (`scripts/images`), pushed to the fleet's
/// registry: references pinned by digest.
#[derive(Clone, Debug)]
pub struct ProductImages {
    pub hub: String,
    pub spoke: String,
}

impl ProductImages {
    /// Builds both images (kept in [`images::product_images_cache`] between runs) and pushes
    /// them to `registry` as `kmm-fleet/<name>:e2e`.
    pub fn push(registry: &Registry) -> anyhow::Result<Self> {
        Ok(Self {
            hub: images::push_product_image(registry, "kmm-hub", "e2e")?,
            spoke: images::push_product_image(registry, "kmm-spoke", "e2e")?,
        })
    }

    /// The kubelet stand-in's rule for main containers of `image` (a pinned reference): they
    /// run chrooted in it, with `host_paths` bound in.
    fn main_images(image: &str, host_paths: Vec<PathBuf>) -> MainImages {
        let repository = image.split_once('@').map_or(image, |(r, _)| r);
        MainImages {
            prefixes: vec![format!("{repository}@")],
            host_paths,
        }
    }
}

/// A spoke for [`Fleet::add_spokes`]: name, ManagedCluster labels, nodes.
pub type SpokeSpec<'a> = (&'a str, &'a [(&'a str, &'a str)], Vec<NodeSpec>);

/// One spoke cluster.
pub struct Spoke {
    /// `kmm-spoke run`, when started (dropped before the control plane).
    pub process: Option<Process>,
    /// OCM's klusterlet agent (registration and work).
    pub agent: OcmAgent,
    /// Takes the spoke's nodes down and up (a node whose kubelet died).
    pub nodes: NodeControl,
    _kubelet: AgentHandle,
    pub cluster: ControlPlane,
    dir: PathBuf,
    /// kmm-spoke's ServiceAccount kubeconfig.
    kubeconfig: PathBuf,
    /// The kmm-spoke image worker pods run from (chrooted), when the fleet runs its images.
    worker_image: Option<String>,
}

/// The whole fleet.
pub struct Fleet {
    /// The policy framework, when the spokes are installed by the Policy (dropped first).
    pub policy_plane: Option<crate::policy::PolicyPlane>,
    /// `kmm-hub run`, when started (dropped before the control planes).
    pub hub_process: Option<Process>,
    pub spokes: BTreeMap<String, Spoke>,
    pub ocm: OcmHub,
    _hub_kubelet: AgentHandle,
    pub hub: ControlPlane,
    pub registry: Registry,
    pub images: ImageBuilder,
    /// Output of every pod the kubelets ran (build, sign and worker pods).
    pub pod_logs: PodLogs,
    /// Logs, pod folders, image caches.
    pub dir: PathBuf,
    hub_starts: usize,
    /// kmm-hub's ServiceAccount kubeconfig.
    hub_kubeconfig: PathBuf,
    /// Environment `kmm-hub run` gets at every start (e.g. `HTTP_PROXY`, which routes its
    /// registry lookups through a fault proxy).
    pub hub_env: Vec<(String, String)>,
    /// The product images, when sign Jobs and worker pods run from them
    /// ([`Self::start_from_images`]).
    pub product_images: Option<ProductImages>,
    /// How the OCM agents of spokes added from now on are started.
    pub agent_options: AgentOptions,
}

impl Fleet {
    /// A hub cluster (CRDs, namespace, signing key and certificate, the build Dockerfile, a
    /// kubelet that runs Jobs for real), a registry holding the base, source and device-plugin
    /// images, and no spoke yet. A `dir` under `/tmp` moves to `/var/tmp` ([`crate::scratch_dir`]).
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, Options::hub()).await
    }

    /// [`Self::start`] with the hub's control plane started with `hub_options` (e.g. extra
    /// apiserver flags); OCM's bootstrap identity is added to them.
    pub async fn start_with(dir: &Path, hub_options: Options) -> anyhow::Result<Self> {
        Self::start_inner(dir, hub_options, false).await
    }

    /// [`Self::start_with`], and the product images built (when their inputs changed) and
    /// pushed to the fleet's registry: the hub's sign Jobs (`--hub-image`) and the spokes'
    /// worker pods (`--worker-image`) name them by digest, and the kubelets run those pods'
    /// main containers chrooted in the pulled image, so `kmm-hub sign-image`, `kmm-spoke worker`
    /// and `modprobe` are the image's files, not this machine's.
    pub async fn start_from_images(dir: &Path, hub_options: Options) -> anyhow::Result<Self> {
        Self::start_inner(dir, hub_options, true).await
    }

    async fn start_inner(dir: &Path, hub_options: Options, from_images: bool) -> anyhow::Result<Self> {
        let dir = &crate::scratch_dir(dir);
        let dir = fresh_dir(
            dir.parent().context("fleet dir has a parent")?,
            &dir.file_name().context("fleet dir has a name")?.to_string_lossy(),
        )?;
        let (hub, hub_kubeconfig) =
            start_hub_cluster(&dir.join("hub"), ocm::hub_options(hub_options)).await?;
        let ocm = OcmHub::start(&hub, &dir).await?;

        let registry = Registry::start(&dir.join("registry"))?;
        let images = ImageBuilder::new(&dir.join("images"))?;
        let host = registry.host.clone();
        images.base_image(&registry, "kmm/fleet-base:1")?;
        images.base_image(&registry, "kmm/fleet-plugin:1")?;
        let product_images = from_images.then(|| ProductImages::push(&registry)).transpose()?;

        let keys = fresh_dir(&dir, "keys")?;
        run(std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-new", "-nodes", "-newkey", "rsa:2048", "-days", "2",
            ])
            .args(["-subj", &format!("/CN={SIGNER}")])
            .arg("-keyout")
            .arg(keys.join("key.pem"))
            .arg("-out")
            .arg(keys.join("cert.pem")))?;
        let b64 = |name: &str| -> anyhow::Result<String> {
            Ok(base64::engine::general_purpose::STANDARD.encode(std::fs::read(keys.join(name))?))
        };
        hub.apply_yaml(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {DOCKERFILE_CONFIGMAP}, namespace: {HUB_NAMESPACE}}}\n\
             data: {{dockerfile: {}}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: {BUILD_SECRET}, namespace: {HUB_NAMESPACE}, annotations: {{hub.kmm.sigs.x-k8s.io/allowed-modules: \"*\"}}}}\n\
             stringData: {{token: not-a-secret}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: {KEY_SECRET}, namespace: {HUB_NAMESPACE}, annotations: {{hub.kmm.sigs.x-k8s.io/allowed-modules: \"*\"}}}}\ndata: {{key: {}}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: {CERT_SECRET}, namespace: {HUB_NAMESPACE}, annotations: {{hub.kmm.sigs.x-k8s.io/allowed-modules: \"*\"}}}}\ndata: {{cert: {}}}\n",
            serde_json::to_string(&dockerfile(&host))?,
            b64("key.pem")?,
            b64("cert.pem")?,
        ))
        .await?;

        let pod_logs = PodLogs::default();
        let bin_dir = workspace_bin("kmm-hub")?
            .parent()
            .context("kmm-hub has a folder")?
            .display()
            .to_string();
        let exec_env = BTreeMap::from([
            (
                "PATH".to_owned(),
                format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default()),
            ),
            (
                "KMM_STORAGE_ROOT".to_owned(),
                fresh_dir(&dir, "buildah-storage")?.display().to_string(),
            ),
        ]);
        let kubelet = Kubelet::spawn(
            hub.client(),
            KubeletOptions {
                nodes: vec![NodeRegistration {
                    name: "hub-node".into(),
                    kernel: "6.1.0-hub".into(),
                    labels: BTreeMap::new(),
                }],
                daemonsets: false,
                jobs: false,
                script: KubeletScript {
                    rules: vec![ScriptRule {
                        matcher: PodMatcher::any(),
                        outcomes: vec![Outcome::Exec],
                    }],
                },
                log_sink: Some(Arc::new(ClusterSink {
                    cluster: "hub".into(),
                    logs: pod_logs.clone(),
                })),
                exec_root: Some(fresh_dir(&dir, "hub-pods")?),
                exec_env,
                exec_timeout: Duration::from_secs(300),
                exec_images: product_images.as_ref().map(|_| image_options(&dir)),
                exec_main_images: product_images
                    .as_ref()
                    .map(|p| ProductImages::main_images(&p.hub, Vec::new())),
                ..Default::default()
            },
        );
        Ok(Self {
            policy_plane: None,
            hub_process: None,
            spokes: BTreeMap::new(),
            ocm,
            _hub_kubelet: kubelet,
            hub,
            registry,
            images,
            pod_logs,
            dir,
            hub_starts: 0,
            hub_kubeconfig,
            hub_env: Vec::new(),
            product_images,
            agent_options: AgentOptions::default(),
        })
    }

    /// Pushes the sources every build copies from: module trees for `kernels`.
    pub fn push_sources(&self, kernels: &[&str]) -> anyhow::Result<String> {
        self.images
            .source_image(&self.registry, "kmm/fleet-src:1", kernels)
    }

    /// Pushes a prebuilt module image for `kernel` as `kmm/fleet-prebuilt:<kernel>`.
    pub fn push_prebuilt(&self, kernel: &str) -> anyhow::Result<String> {
        self.images
            .module_image(&self.registry, &format!("kmm/fleet-prebuilt:{kernel}"), kernel)
    }

    /// Starts (or restarts) `kmm-hub run`.
    pub fn start_hub(&mut self) -> anyhow::Result<()> {
        let kubeconfig = self.hub_kubeconfig.clone();
        self.start_hub_with(&kubeconfig)
    }

    /// kmm-hub's ServiceAccount kubeconfig (to route it elsewhere, e.g. through a fault proxy).
    pub fn hub_kubeconfig(&self) -> &Path {
        &self.hub_kubeconfig
    }

    /// Starts (or restarts) `kmm-hub run` with another kubeconfig than its own.
    pub fn start_hub_with(&mut self, kubeconfig: &Path) -> anyhow::Result<()> {
        self.hub_starts += 1;
        let mut args: Vec<String> = [
            "run",
            "--namespace",
            HUB_NAMESPACE,
            "--identity",
            "kmm-hub-e2e",
            "--leader-election",
            "false",
            "--retry-seconds",
            "1",
            "--cache-ttl-seconds",
            "2",
            "--insecure-registry",
            &self.registry.host,
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(images) = &self.product_images {
            args.extend(["--hub-image".to_owned(), images.hub.clone()]);
        }
        let process = Process::start(Launch {
            binary: "kmm-hub",
            args,
            kubeconfig,
            dir: &self.dir,
            name: "kmm-hub",
            env: self.hub_env.clone(),
        })?;
        self.hub_process = Some(process);
        Ok(())
    }

    /// How many times the hub was started.
    pub fn hub_starts(&self) -> usize {
        self.hub_starts
    }

    /// Adds a spoke: its control plane (KMM's CRDs, namespaces, kmm-spoke's ServiceAccount and
    /// RBAC from manifests/spoke), a kubelet that registers `nodes` and runs worker pods for
    /// real, OCM's klusterlet agent (the ManagedCluster gets `labels`); then starts
    /// `kmm-spoke run` there as its ServiceAccount.
    pub async fn add_spoke(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        nodes: &[NodeSpec],
    ) -> anyhow::Result<()> {
        self.add_spoke_as(name, labels, nodes, false).await
    }

    /// Adds a spoke with nothing of kmm-spoke installed, for the governance Policy to install:
    /// its control plane also admits the configuration policy controller's identity, and its
    /// kubelet runs the pods of the `quay.io/kmm-fleet/kmm-spoke` Deployment as the workspace's
    /// `kmm-spoke` (see `kmm_agents::kubelet::binaries`), with the same worker flags
    /// [`Spoke::start`] passes and the metrics server on a free port (all pods share this
    /// machine's network).
    pub async fn add_policy_spoke(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        nodes: &[NodeSpec],
    ) -> anyhow::Result<()> {
        self.add_spoke_as(name, labels, nodes, true).await
    }

    /// Adds spokes as [`Self::add_spoke`] does, started side by side (their control planes
    /// boot concurrently, which is most of a spoke's start-up time).
    pub async fn add_spokes(&mut self, spokes: &[SpokeSpec<'_>]) -> anyhow::Result<()> {
        let started = futures::future::join_all(
            spokes
                .iter()
                .map(|(name, labels, nodes)| self.new_spoke(name, labels, nodes, false)),
        )
        .await;
        for ((name, _, _), spoke) in spokes.iter().zip(started) {
            self.spokes.insert((*name).to_owned(), spoke?);
        }
        Ok(())
    }

    async fn add_spoke_as(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        nodes: &[NodeSpec],
        via_policy: bool,
    ) -> anyhow::Result<()> {
        let spoke = self.new_spoke(name, labels, nodes, via_policy).await?;
        self.spokes.insert(name.to_owned(), spoke);
        Ok(())
    }

    async fn new_spoke(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        nodes: &[NodeSpec],
        via_policy: bool,
    ) -> anyhow::Result<Spoke> {
        let dir = fresh_dir(&self.dir, name)?;
        let worker_image = self.product_images.as_ref().map(|p| p.spoke.clone());
        let options = ocm::spoke_options(Options::default());
        let (cluster, kubeconfig, binaries) = if via_policy {
            // No KMM CRD either: the Policy `kmm-spoke-crds` installs them.
            let options = crate::policy::spoke_options(options);
            let cluster = ControlPlane::start(&dir.join("cluster"), name, options).await?;
            cluster
                .apply_yaml(&format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {MODULE_NAMESPACE}}}\n"
                ))
                .await?;
            let binaries = policy_binaries(&cluster, &dir, worker_image.as_deref(), &self.dir)?;
            (cluster, PathBuf::new(), Some(binaries))
        } else {
            let cluster = start_managed_cluster_with(&dir.join("cluster"), name, options).await?;
            let kubeconfig =
                install_service_account(&cluster, &crate::repo_root().join("manifests/spoke")).await?;
            (cluster, kubeconfig, None)
        };
        let exec_main_images = match &worker_image {
            Some(image) => Some(ProductImages::main_images(image, worker_host_paths(&dir)?)),
            None => None,
        };
        let node_control = NodeControl::default();
        let kubelet = Kubelet::spawn(
            cluster.client(),
            KubeletOptions {
                nodes: nodes
                    .iter()
                    .map(|n| NodeRegistration {
                        name: n.name.clone(),
                        kernel: n.kernel.clone(),
                        labels: n.labels.clone(),
                    })
                    .collect(),
                node_control: Some(node_control.clone()),
                daemonsets: false,
                jobs: false,
                script: KubeletScript::new()
                    .rule(PodMatcher::any().name_prefix("kmm-worker-"), [Outcome::Exec]),
                log_sink: Some(Arc::new(ClusterSink {
                    cluster: name.to_owned(),
                    logs: self.pod_logs.clone(),
                })),
                exec_root: Some(dir.join("pods")),
                exec_images: Some(image_options(&self.dir)),
                exec_main_images,
                exec_timeout: Duration::from_secs(120),
                binaries,
                ..Default::default()
            },
        );
        for node in nodes {
            cluster.wait_node_ready(&node.name).await?;
        }
        let agent = OcmAgent::start(&self.hub, &cluster, name, labels, &dir, &self.agent_options).await?;
        std::fs::create_dir_all(dir.join("host/lib/modules"))?;
        let mut spoke = Spoke {
            process: None,
            agent,
            nodes: node_control,
            _kubelet: kubelet,
            cluster,
            dir,
            kubeconfig,
            worker_image,
        };
        if !via_policy {
            spoke.start()?;
        }
        Ok(spoke)
    }

    pub fn spoke(&self, name: &str) -> anyhow::Result<&Spoke> {
        self.spokes.get(name).with_context(|| format!("no spoke {name}"))
    }

    pub fn spoke_mut(&mut self, name: &str) -> anyhow::Result<&mut Spoke> {
        self.spokes
            .get_mut(name)
            .with_context(|| format!("no spoke {name}"))
    }

    /// The tails of the hub's and spokes' logs, for a failure message.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out: Vec<String> = self.hub_process.iter().map(|p| p.log_tail(lines)).collect();
        out.extend(
            self.spokes
                .values()
                .filter_map(|s| s.process.as_ref())
                .map(|p| p.log_tail(lines)),
        );
        out.extend(self.spokes.values().map(|s| s.agent.log_tail(lines)));
        out.join("\n")
    }
}

impl Spoke {
    /// Cuts the cluster off from the hub as a network partition would: its OCM agent stops, so
    /// no work reaches it, no feedback or claims leave it, and its lease runs out (the hub turns
    /// it Unknown).
    pub fn disconnect(&mut self) {
        self.agent.stop();
    }

    /// The spoke's folder (logs, pod folders, host paths).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// kmm-spoke's ServiceAccount kubeconfig (to route it elsewhere, e.g. through a fault proxy).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Stops `kmm-spoke run` and starts it again with `kubeconfig`, which later starts keep.
    pub fn restart_with(&mut self, kubeconfig: PathBuf) -> anyhow::Result<()> {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
        self.kubeconfig = kubeconfig;
        self.start()
    }

    /// Ends [`Self::disconnect`].
    pub fn reconnect(&mut self) -> anyhow::Result<()> {
        self.agent.restart()
    }

    /// Starts (or restarts) `kmm-spoke run --managed` with workers that run here: modprobe in
    /// dry-run mode against the module tree the init container copied, host paths under the
    /// spoke's folder.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let mut args: Vec<String> = ["run", "--managed"].map(str::to_owned).to_vec();
        args.extend(worker_flags(&self.dir, self.worker_image.as_deref())?);
        self.process = Some(Process::start(Launch {
            binary: "kmm-spoke",
            args,
            kubeconfig: &self.kubeconfig,
            dir: &self.dir,
            name: "kmm-spoke",
            env: vec![("POD_NAME".into(), "kmm-spoke-e2e".into())],
        })?);
        Ok(())
    }
}

/// A hub's control plane in `dir`, started with `options`, with KMM's and OCM's hub CRDs and
/// the Namespace, ServiceAccount and RBAC of `manifests/hub`; with kmm-hub's ServiceAccount
/// kubeconfig.
pub async fn start_hub_cluster(dir: &Path, options: Options) -> anyhow::Result<(ControlPlane, PathBuf)> {
    let hub = ControlPlane::start(dir, "hub", options).await?;
    hub.install_crds_from_path(kmm_test_kit::crds_dir()).await?;
    hub.install_crds_from_path(kmm_test_kit::ocm_crds()?.join("hub"))
        .await?;
    let kubeconfig = install_service_account(&hub, &crate::repo_root().join("manifests/hub")).await?;
    Ok((hub, kubeconfig))
}

/// The flags `kmm-spoke run` gets here besides its own (`dir` is the spoke's folder): workers
/// of `image` run by the kubelet stand-in chrooted in it (the image's `kmm-spoke`), else of a
/// placeholder image as this workspace's binary; modprobe in dry-run mode against the module
/// tree the init container copied, host paths under the spoke's folder, short backoffs.
fn worker_flags(dir: &Path, image: Option<&str>) -> anyhow::Result<Vec<String>> {
    let (image, spoke_bin) = match image {
        Some(image) => (image.to_owned(), "/usr/local/bin/kmm-spoke".to_owned()),
        None => (
            "kmm-spoke:e2e".to_owned(),
            crate::outside_tmp(&workspace_bin("kmm-spoke")?, &dir.join("bin"))?
                .display()
                .to_string(),
        ),
    };
    let dir = dir.display().to_string();
    let mut args: Vec<String> = [
        "--worker-image",
        &image,
        "--worker-binary",
        &spoke_bin,
        "--worker-backoff-ms",
        "500",
        "--worker-backoff-max-ms",
        "4000",
    ]
    .map(str::to_owned)
    .to_vec();
    for worker_arg in [
        "--dry-run".to_owned(),
        "--shared-root=/tmp".to_owned(),
        format!("--host-root={dir}/host"),
        format!("--modprobe-conf-dir={dir}/modprobe.d"),
        // The kubelet stand-in gives each pod its own file for this path.
        "--termination-log=/dev/termination-log".to_owned(),
    ] {
        args.push(format!("--worker-arg={worker_arg}"));
    }
    Ok(args)
}

/// The folders of a spoke's folder `dir` a worker pod run from its image gets bound in (the
/// stand-in host root and modprobe's configuration folder of [`worker_flags`]).
fn worker_host_paths(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let paths = vec![dir.join("host"), dir.join("modprobe.d")];
    for p in &paths {
        std::fs::create_dir_all(p)?;
    }
    Ok(paths)
}

/// How the fleet's kubelets pull images: from the loopback registry, cached in `dir`.
fn image_options(dir: &Path) -> ImageOptions {
    ImageOptions {
        cache: dir.join("image-cache"),
        insecure: true,
    }
}

/// The image of the Deployment the Policy installs (any tag) mapped to the workspace's
/// `kmm-spoke`, with [`worker_flags`] and a free metrics port; when the fleet runs its images
/// (`spoke_image`), the pod runs chrooted in that image (pulled into `fleet_dir`'s cache), and
/// its workers too.
fn policy_binaries(
    cluster: &ControlPlane,
    dir: &Path,
    spoke_image: Option<&str>,
    fleet_dir: &Path,
) -> anyhow::Result<BinaryOptions> {
    Ok(BinaryOptions {
        images: vec![BinaryImage {
            repository: SPOKE_IMAGE_REPOSITORY.to_owned(),
            binary: workspace_bin("kmm-spoke")?,
            extra_args: worker_flags(dir, spoke_image)?,
            env: BTreeMap::from([("KMM_SPOKE_METRICS_ADDR".to_owned(), "127.0.0.1:0".to_owned())]),
            from_image: spoke_image.map(|image| FromImage {
                image: image.to_owned(),
                pull: image_options(fleet_dir),
            }),
        }],
        server: cluster.server().to_owned(),
        ca: cluster.ca_path().to_owned(),
        root: dir.join("binary-pods"),
    })
}

/// A managed cluster's control plane `name` in `dir`, ready for OCM's agent, with KMM's CRDs
/// and the MCMs' `spokeNamespace`.
pub async fn start_managed_cluster(dir: &Path, name: &str) -> anyhow::Result<ControlPlane> {
    start_managed_cluster_with(dir, name, ocm::spoke_options(Options::default())).await
}

/// [`start_managed_cluster`] with the control plane's `options`.
pub async fn start_managed_cluster_with(
    dir: &Path,
    name: &str,
    options: Options,
) -> anyhow::Result<ControlPlane> {
    let cluster = ControlPlane::start(dir, name, options).await?;
    cluster.install_crds_from_path(kmm_test_kit::crds_dir()).await?;
    cluster
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {MODULE_NAMESPACE}}}\n"
        ))
        .await?;
    Ok(cluster)
}

/// Applies the Namespace, ServiceAccounts and RBAC of the kustomization in `dir` (what an
/// install creates besides the Deployment) and returns a kubeconfig for the ServiceAccount the
/// Deployment runs as, with a token from the TokenRequest API: the binary then has exactly the
/// rights the manifests give it, and the apiserver decides.
pub async fn install_service_account(cluster: &ControlPlane, dir: &Path) -> anyhow::Result<PathBuf> {
    let docs = manifests::kustomize(dir)?;
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if matches!(
            kind,
            "Namespace" | "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
        ) {
            cluster.apply_value(doc).await?;
        }
    }
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .with_context(|| format!("no Deployment in {}", dir.display()))?;
    let namespace = deployment["metadata"]["namespace"]
        .as_str()
        .context("the Deployment has a namespace")?;
    let sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .context("the Deployment names its ServiceAccount")?;
    cluster.wait_for_default_service_account(namespace).await?;
    cluster.service_account_kubeconfig(namespace, sa).await
}

/// Sets a node's kernel and boot id (a kernel upgrade is a reboot into a new kernel).
pub async fn set_kernel(
    cluster: &ControlPlane,
    node: &str,
    kernel: &str,
    boot_id: &str,
) -> anyhow::Result<()> {
    Api::<Node>::all(cluster.client())
        .patch_status(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"nodeInfo": {"kernelVersion": kernel, "bootID": boot_id}}})),
        )
        .await?;
    Ok(())
}

/// Sets (`Some`) or removes (`None`) a node annotation, as an OS updater announcing the next
/// kernel would.
pub async fn annotate_node(
    cluster: &ControlPlane,
    node: &str,
    key: &str,
    value: Option<&str>,
) -> anyhow::Result<()> {
    Api::<Node>::all(cluster.client())
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
        )
        .await?;
    Ok(())
}
