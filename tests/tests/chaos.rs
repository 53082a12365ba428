//! Convergence under faults: every binary talks to its apiserver through a [`FaultProxy`]
//! (errors with Retry-After, latency, cut watches, refused connections): the real hub to the
//! hub's, each spoke's `kmm-spoke` to its cluster's; and the hub's registry lookups go through
//! one more (its `HTTP_PROXY`). The hub is killed at random moments while a module rolls out to
//! two spokes, one spoke's kernel is upgraded (a build and a sign) and the MCM is deleted.
//! Witnesses independent of the hub: the apiserver's audit log (Jobs and ManifestWorks
//! written), the hub kubelet's pod runs and the registry's access log.
//!
//! The build and sign Jobs reach the registry directly: buildah's push has no retry, and a
//! failed build is kept and reported, not retried (by design), so a 20 % error rate there would
//! fail the rollout rather than test convergence.
//!
//! Short by default (one seed, one kill per phase); `just chaos` sets `KMM_CHAOS_SEEDS`
//! (comma-separated seeds) and `KMM_CHAOS_ROUNDS` (kills per phase). `KMM_CHAOS_ERROR_RATE`
//! overrides the 20 % error rate. A failure prints the seed and the fault rates to replay it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is a failed test

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use k8s_openapi::api::core::v1::Node;
use kmm_api::{ManagedClusterModule, Module, nmc::NodeModulesConfig, ocm::ManifestWork};
use kmm_fleet_tests::{
    controlplane::AuditEvent,
    demo,
    faults::{FaultHandle, FaultProxy, Faults, XorShift, rewrite_kubeconfig},
    fleet::{Fleet, HUB_NAMESPACE, MODULE_NAMESPACE, NodeSpec, set_kernel},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
};
use tokio::time::Instant;

const MCM: &str = "chaos-kmod";
/// Spoke a runs a kernel with a prebuilt image; spoke c one the hub builds and signs, and is
/// then upgraded to another built kernel.
const K_A: &str = demo::K_EAST;
const K_C: &str = demo::K_EDGE;
const K_UPGRADE: &str = demo::K_NEXT;
const SPOKES: [&str; 2] = ["a", "c"];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn seeds() -> Vec<u64> {
    let text = std::env::var("KMM_CHAOS_SEEDS").unwrap_or_else(|_| "1".into());
    text.split(',').filter_map(|s| s.trim().parse().ok()).collect()
}

/// The fleet under weather: the hub's process, the proxies in front of every apiserver and the
/// registry, the random schedule of kills, and what to print when something fails.
struct Chaos {
    fleet: Fleet,
    /// Named proxies: `hub-api`, `registry`, then one `<spoke>-api` per spoke.
    proxies: Vec<(String, FaultProxy)>,
    kubeconfig: PathBuf,
    rng: XorShift,
    seed: u64,
    rounds: u32,
    kills: u32,
    crashes: u32,
}

impl Chaos {
    fn replay(&self) -> String {
        let proxies: Vec<String> = self
            .proxies
            .iter()
            .map(|(name, p)| format!("  {name} (seed {}): {}", p.seed(), p.counts()))
            .collect();
        format!(
            "replay: KMM_CHAOS_SEEDS={} KMM_CHAOS_ROUNDS={} (faults {:?} on every proxy, one refusal spell per proxy and phase; hub killed {} times, exited by itself {} times)\n{}",
            self.seed,
            self.rounds,
            self.proxies.first().map(|(_, p)| p.faults()),
            self.kills,
            self.crashes,
            proxies.join("\n")
        )
    }

    /// `kmm-hub run` as `Fleet::start_hub` starts it, but with a kubeconfig through the proxy.
    fn start_hub(&mut self) {
        self.fleet.start_hub_with(&self.kubeconfig).unwrap();
    }

    /// Polls `goal` for up to `secs`, killing the hub `rounds` times at random moments of the
    /// first 30 s (and restarting it after 0.5 to 3 s), refusing its connections once, and
    /// restarting it when it exits by itself, as a Deployment would.
    async fn drive(&mut self, goal: Goal, secs: u64) {
        let start = Instant::now();
        let mut kills: Vec<Duration> = (0..self.rounds)
            .map(|_| Duration::from_millis(self.rng.between(1_000, 30_000)))
            .collect();
        kills.sort();
        kills.reverse();
        // One spell of refused connections per proxy and phase, 1 to 3 s long.
        let mut refusals: Vec<Option<Duration>> = (0..self.proxies.len())
            .map(|_| Some(Duration::from_millis(self.rng.between(1_000, 30_000))))
            .collect();
        while start.elapsed() < Duration::from_secs(secs) {
            if kills.is_empty() && reached(&self.fleet, goal).await {
                return;
            }
            for (refusal, (_, proxy)) in refusals.iter_mut().zip(&self.proxies) {
                if refusal.is_some_and(|at| start.elapsed() >= at) {
                    *refusal = None;
                    proxy.refuse_for(Duration::from_millis(self.rng.between(1_000, 3_000)));
                }
            }
            if kills.last().is_some_and(|at| start.elapsed() >= *at) {
                kills.pop();
                self.fleet.hub_process.as_mut().unwrap().kill();
                self.kills += 1;
                tokio::time::sleep(Duration::from_millis(self.rng.between(500, 3_000))).await;
                self.start_hub();
            } else if !self.fleet.hub_process.as_mut().unwrap().running() {
                self.crashes += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.start_hub();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        panic!(
            "timed out waiting for {goal:?}\n{}\n{}",
            self.replay(),
            self.fleet.log_tails(40)
        );
    }
}

#[derive(Clone, Copy, Debug)]
enum Goal {
    /// Both spokes loaded and the MCM status complete.
    RolledOut,
    /// Spoke c's node loaded again on the upgraded kernel.
    Upgraded,
    /// The MCM and everything it put anywhere gone.
    Gone,
}

async fn reached(fleet: &Fleet, goal: Goal) -> bool {
    match goal {
        Goal::RolledOut => loaded(fleet).await,
        Goal::Upgraded => {
            let nmc = Api::<NodeModulesConfig>::all(fleet.spoke("c").unwrap().cluster.client())
                .get_opt("c-1")
                .await
                .ok()
                .flatten();
            let on = nmc
                .and_then(|n| n.status)
                .and_then(|s| s.modules.first().and_then(|m| m.config.clone()))
                .map(|c| c.kernel_version);
            on.as_deref() == Some(K_UPGRADE) && loaded(fleet).await
        }
        Goal::Gone => nothing_left(fleet).await.is_empty(),
    }
}

async fn loaded(fleet: &Fleet) -> bool {
    let status = Api::<ManagedClusterModule>::all(fleet.hub.client())
        .get_opt(MCM)
        .await
        .ok()
        .flatten()
        .and_then(|m| m.status);
    status.is_some_and(|s| s.number_applied == 2 && s.nodes_loaded == 2 && s.nodes_desired == 2)
}

/// What the MCM left behind: its ManifestWorks, spoke Modules and node labels.
async fn nothing_left(fleet: &Fleet) -> Vec<String> {
    let mut left = Vec::new();
    if Api::<ManagedClusterModule>::all(fleet.hub.client())
        .get_opt(MCM)
        .await
        .map_or(true, |m| m.is_some())
    {
        left.push("the MCM".to_owned());
    }
    for spoke in SPOKES {
        let works = Api::<ManifestWork>::namespaced(fleet.hub.client(), spoke)
            .list(&ListParams::default())
            .await
            .map(|l| l.items.len())
            .unwrap_or(1);
        if works > 0 {
            left.push(format!("{works} ManifestWork(s) for {spoke}"));
        }
        let client = fleet.spoke(spoke).unwrap().cluster.client();
        if Api::<Module>::namespaced(client.clone(), MODULE_NAMESPACE)
            .get_opt(MCM)
            .await
            .map_or(true, |m| m.is_some())
        {
            left.push(format!("the Module on {spoke}"));
        }
        let nodes = Api::<Node>::all(client)
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let marker = format!("{MODULE_NAMESPACE}.{MCM}");
        for node in nodes {
            if node.labels().keys().any(|k| k.contains(&marker)) {
                left.push(format!("a label on {spoke}/{}", node.name_any()));
            }
        }
    }
    left
}

/// Successful writes by the hub's ServiceAccount to `resource` (not its subresources), per
/// `namespace/name`.
fn hub_writes(audit: &[AuditEvent], resource: &str, verbs: &[&str]) -> BTreeMap<String, usize> {
    let hub = format!("system:serviceaccount:{HUB_NAMESPACE}:");
    let mut out = BTreeMap::new();
    for e in audit {
        let Some(o) = &e.object_ref else { continue };
        if e.user.username.starts_with(&hub)
            && o.resource == resource
            && o.subresource.is_empty()
            && verbs.contains(&e.verb.as_str())
            && (200..300).contains(&e.code())
        {
            *out.entry(format!("{}/{}", o.namespace, o.name)).or_default() += 1;
        }
    }
    out
}

async fn scenario(seed: u64, rounds: u32, error_rate: f64) {
    eprintln!("chaos seed {seed}, {rounds} kill(s) per phase, error rate {error_rate}");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("chaos-{seed}"));
    let mut fleet = Fleet::start(&dir).await.unwrap();
    fleet.push_prebuilt(K_A).unwrap();
    fleet.push_sources(&[K_C, K_UPGRADE]).unwrap();
    for (spoke, kernel) in [("a", K_A), ("c", K_C)] {
        fleet
            .add_spoke(
                spoke,
                &[("driver", "gpu")],
                &[NodeSpec::worker(&format!("{spoke}-1"), kernel)],
            )
            .await
            .unwrap();
    }
    // Each proxy draws from its own seed, derived from the scenario's.
    let mut proxies = Vec::new();
    // The hub's own ServiceAccount token, sent through the proxy.
    let hub_api = FaultProxy::start(fleet.hub.server(), Some(fleet.hub.ca_path()), seed)
        .await
        .unwrap();
    let kubeconfig = rewrite_kubeconfig(
        fleet.hub_kubeconfig(),
        &hub_api.url(),
        &fleet.dir.join("hub-through-proxy.kubeconfig"),
    )
    .unwrap();
    proxies.push(("hub-api".to_owned(), hub_api));
    // The hub's registry client (reqwest) honours HTTP_PROXY; its kube client does not (kube
    // reads a proxy only from the kubeconfig), so only the registry lookups take this route.
    let registry = FaultProxy::start(&format!("http://{}", fleet.registry.host), None, seed + 100)
        .await
        .unwrap();
    fleet.hub_env = vec![
        ("HTTP_PROXY".into(), registry.url()),
        ("http_proxy".into(), registry.url()),
        ("NO_PROXY".into(), String::new()),
        ("no_proxy".into(), String::new()),
    ];
    proxies.push(("registry".to_owned(), registry));
    for (i, name) in SPOKES.into_iter().enumerate() {
        let spoke = fleet.spoke_mut(name).unwrap();
        let proxy = FaultProxy::start(
            spoke.cluster.server(),
            Some(spoke.cluster.ca_path()),
            seed + 1 + i as u64,
        )
        .await
        .unwrap();
        let through = rewrite_kubeconfig(
            spoke.kubeconfig(),
            &proxy.url(),
            &spoke.cluster.dir().join("spoke-through-proxy.kubeconfig"),
        )
        .unwrap();
        spoke.restart_with(through).unwrap();
        proxies.push((format!("{name}-api"), proxy));
    }
    for (_, proxy) in &proxies {
        let weather: FaultHandle = proxy.handle();
        weather.set(Faults::weather(error_rate));
    }
    let mut chaos = Chaos {
        fleet,
        proxies,
        kubeconfig,
        rng: XorShift::new(seed),
        seed,
        rounds,
        kills: 0,
        crashes: 0,
    };
    chaos.start_hub();

    // 1. Rollout (spoke c's kernel is built and signed on the hub).
    let mcm: ManagedClusterModule =
        serde_saphyr::from_str(&demo::example_mcm(MCM, &chaos.fleet.registry.host)).unwrap();
    Api::<ManagedClusterModule>::all(chaos.fleet.hub.client())
        .create(&PostParams::default(), &mcm)
        .await
        .unwrap();
    chaos.drive(Goal::RolledOut, 420).await;

    // 2. Kernel upgrade on c-1: one more build and sign, cluster c's ManifestWork updated.
    set_kernel(
        &chaos.fleet.spoke("c").unwrap().cluster,
        "c-1",
        K_UPGRADE,
        "boot-2",
    )
    .await
    .unwrap();
    chaos.drive(Goal::Upgraded, 420).await;

    // No ManifestWork written more often than its spec changed: every successful spec write
    // (create, update, patch) by the hub moved the generation the apiserver keeps.
    let audit = chaos.fleet.hub.audit_settled().await.unwrap();
    let writes = hub_writes(&audit, "manifestworks", &["create", "update", "patch"]);
    let replay = chaos.replay();
    for spoke in SPOKES {
        let work = Api::<ManifestWork>::namespaced(chaos.fleet.hub.client(), spoke)
            .get(MCM)
            .await
            .unwrap();
        let generation = work.metadata.generation.unwrap_or_default() as usize;
        let written = writes.get(&format!("{spoke}/{MCM}")).copied().unwrap_or_default();
        assert!(
            (1..=generation).contains(&written),
            "{spoke}'s ManifestWork written {written} times for {generation} spec generations\n{replay}"
        );
    }

    // No image built twice: each build and sign Job created once (apiserver), one build pod and
    // one sign pod per built kernel (hub kubelet), one unsigned and one signed push (registry).
    let jobs = hub_writes(&audit, "jobs", &["create"]);
    assert!(
        jobs.values().all(|n| *n == 1),
        "a Job was created twice: {jobs:?}\n{replay}"
    );
    assert_eq!(
        jobs.len(),
        4,
        "build and sign for {K_C} and {K_UPGRADE}: {jobs:?}\n{replay}"
    );
    let hub_runs = chaos
        .fleet
        .pod_logs
        .all()
        .iter()
        .filter(|l| l.cluster == "hub")
        .count();
    assert_eq!(hub_runs, 4, "hub pods run\n{replay}");
    assert_eq!(
        chaos.fleet.registry.manifest_pushes("kmm/fleet-built"),
        4,
        "pushes\n{replay}"
    );
    // Every route really carried traffic under faults (the hub's lookups went through
    // HTTP_PROXY, each spoke through its own proxy): otherwise the weather tested nothing.
    for (name, proxy) in &chaos.proxies {
        let counts = proxy.counts();
        assert!(
            counts.forwarded > 0 && (error_rate == 0.0 || counts.errors() > 0),
            "{name} carried no traffic or no faults: {counts}\n{replay}"
        );
    }

    // 3. Deletion: nothing is left behind.
    Api::<ManagedClusterModule>::all(chaos.fleet.hub.client())
        .delete(MCM, &DeleteParams::default())
        .await
        .unwrap();
    chaos.drive(Goal::Gone, 240).await;
    let left = nothing_left(&chaos.fleet).await;
    assert!(left.is_empty(), "left behind: {left:?}\n{}", chaos.replay());
    // Faults at start-up are waited out, not a reason to exit (a Deployment would crash-loop).
    assert_eq!(chaos.crashes, 0, "the hub exited by itself\n{}", chaos.replay());
    eprintln!(
        "chaos seed {seed} converged: {}; hub's ManifestWork writes {writes:?}, Jobs {jobs:?}",
        chaos.replay()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_converges_under_api_faults_and_hub_kills() {
    let rounds = env_or("KMM_CHAOS_ROUNDS", 1u32);
    let error_rate = env_or("KMM_CHAOS_ERROR_RATE", 0.2f64);
    for seed in seeds() {
        scenario(seed, rounds, error_rate).await;
    }
}
