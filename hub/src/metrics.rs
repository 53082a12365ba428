//! Prometheus metrics of the hub, served on `/metrics`. Labels are bounded: error reasons (the
//! closed [`Reason`] list), MCM names, fixed state words and cache names, never cluster names (a
//! fleet has thousands). Per MCM at most 4 `clusters`, 2 `nodes`, 2 kernel series and
//! `3 x (reasons + 1)` `cluster_problems` series exist, and only while the MCM does.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use kmm_api::ManagedClusterModuleStatus;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{leader::Leadership, mcm_controller::memo::FullReason, reason::Reason, registry::DigestResolver};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FleetLabels {
    pub mcm: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct McmLabels {
    pub mcm: String,
}

/// A kind of cluster problem: `state` is `Blocked`, `Degraded` or `Unreachable`, `reason` one
/// of [`Reason`] or `Other` (a spoke may send any word; it is not copied into a label).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProblemLabels {
    pub mcm: String,
    pub state: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub cache: &'static str,
}

/// Reads the current size of one of the hub's caches.
type CacheLen = Box<dyn Fn() -> usize + Send + Sync>;

/// Every metric the hub exports.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_seconds: Histogram,
    full_reconciles: Family<ErrorLabels, Counter>,
    cluster_batches: Counter,
    cluster_batch_clusters: Counter,
    pub work_writes: Counter,
    pub work_deletes: Counter,
    pub status_writes: Counter,
    pub jobs_started: Counter,
    pub clusters: Family<FleetLabels, Gauge>,
    nodes: Family<FleetLabels, Gauge>,
    kernels: Family<McmLabels, Gauge>,
    kernels_without_image: Family<McmLabels, Gauge>,
    problems: Family<ProblemLabels, Gauge>,
    /// The problem series last set per MCM, so the ones that went away are removed.
    problem_series: Mutex<HashMap<String, Vec<ProblemLabels>>>,
    registry_asks: Counter<u64, AtomicU64>,
    registry_lookups: Counter<u64, AtomicU64>,
    leader: Gauge,
    cache_objects: Family<CacheLabels, Gauge>,
    resident_memory: Gauge,
    resolver: Arc<DigestResolver>,
    leadership: Arc<Leadership>,
    caches: Vec<(&'static str, CacheLen)>,
    /// Clusters per MCM by rollout state, and the wave number (`state="wave"`).
    rollout: Family<FleetLabels, Gauge>,
}

/// Observes a reconcile's duration when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    started: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_seconds
            .observe(self.started.elapsed().as_secs_f64());
    }
}

const FLEET_STATES: [&str; 4] = ["desired", "applied", "degraded", "blocked"];
const NODE_STATES: [&str; 2] = ["desired", "loaded"];

impl Metrics {
    pub fn new(resolver: Arc<DigestResolver>, leadership: Arc<Leadership>) -> Self {
        let mut root = Registry::default();
        let m = Self {
            registry: Registry::default(),
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            reconcile_seconds: Histogram::new([0.005, 0.02, 0.1, 0.5, 2.0, 10.0, 60.0]),
            full_reconciles: Family::default(),
            cluster_batches: Counter::default(),
            cluster_batch_clusters: Counter::default(),
            work_writes: Counter::default(),
            work_deletes: Counter::default(),
            status_writes: Counter::default(),
            jobs_started: Counter::default(),
            clusters: Family::default(),
            nodes: Family::default(),
            kernels: Family::default(),
            kernels_without_image: Family::default(),
            problems: Family::default(),
            problem_series: Mutex::default(),
            registry_asks: Counter::default(),
            registry_lookups: Counter::default(),
            leader: Gauge::default(),
            cache_objects: Family::default(),
            resident_memory: Gauge::default(),
            resolver,
            leadership,
            caches: Vec::new(),
            rollout: Family::default(),
        };
        root.register(
            "process_resident_memory_bytes",
            "Resident memory of the hub process",
            m.resident_memory.clone(),
        );
        let reg = root.sub_registry_with_prefix("kmm_hub");
        reg.register(
            "reconciles",
            "ManagedClusterModule reconciles",
            m.reconciles.clone(),
        );
        reg.register(
            "reconcile_errors",
            "Failed reconciles by reason",
            m.reconcile_errors.clone(),
        );
        reg.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            m.reconcile_seconds.clone(),
        );
        reg.register(
            "full_reconciles",
            "Reconciles of a whole MCM's fleet, by why the per-cluster one could not do",
            m.full_reconciles.clone(),
        );
        reg.register(
            "cluster_batches",
            "Reconciles of only the clusters that changed",
            m.cluster_batches.clone(),
        );
        reg.register(
            "cluster_batch_clusters",
            "Changed clusters handled by those reconciles",
            m.cluster_batch_clusters.clone(),
        );
        reg.register(
            "manifestwork_writes",
            "ManifestWork server-side applies sent",
            m.work_writes.clone(),
        );
        reg.register(
            "manifestwork_deletes",
            "ManifestWork deletions sent",
            m.work_deletes.clone(),
        );
        reg.register("status_writes", "MCM status writes sent", m.status_writes.clone());
        reg.register(
            "jobs_started",
            "Build and sign Jobs created",
            m.jobs_started.clone(),
        );
        reg.register(
            "clusters",
            "Selected clusters per MCM by state (desired, applied, degraded, blocked)",
            m.clusters.clone(),
        );
        reg.register(
            "nodes",
            "Nodes over all clusters per MCM where the module should be (desired) or is loaded",
            m.nodes.clone(),
        );
        reg.register(
            "kernels",
            "Distinct kernel versions among the MCM's selected clusters",
            m.kernels.clone(),
        );
        reg.register(
            "kernels_without_image",
            "Kernels reported by the MCM's clusters that no image is resolved for",
            m.kernels_without_image.clone(),
        );
        reg.register(
            "cluster_problems",
            "Clusters per MCM that are blocked, degraded or unreachable, by reason",
            m.problems.clone(),
        );
        reg.register(
            "registry_requests",
            "Digest lookups asked for (cache hits included)",
            m.registry_asks.clone(),
        );
        reg.register(
            "registry_lookups",
            "Digest lookups that reached a registry",
            m.registry_lookups.clone(),
        );
        reg.register(
            "leader",
            "1 while this replica holds the leader Lease (or runs without election)",
            m.leader.clone(),
        );
        reg.register(
            "cache_objects",
            "Objects held by each of the hub's watch caches",
            m.cache_objects.clone(),
        );
        reg.register(
            "rollout_clusters",
            "Selected clusters per MCM by rollout state (updated, in_progress, failed, pending), the current wave (wave) and 1 while halted (halted)",
            m.rollout.clone(),
        );
        // The reasons `mcm_controller::Error::reason` returns start at 0, so rates and alerts
        // see a series from the first scrape on.
        for reason in [
            Reason::WriteFailed,
            Reason::SerializeFailed,
            Reason::FinalizerFailed,
            Reason::WaitingForSpokes,
            Reason::InvalidObject,
        ] {
            drop(m.reconcile_errors.get_or_create(&ErrorLabels {
                reason: reason.to_string(),
            }));
        }
        for reason in FullReason::ALL {
            drop(m.full_reconciles.get_or_create(&ErrorLabels {
                reason: reason.as_str().to_owned(),
            }));
        }
        Self { registry: root, ..m }
    }

    /// Counts a reconcile of the whole fleet of an MCM, by why it was needed.
    pub fn full_reconcile(&self, reason: FullReason) {
        self.full_reconciles
            .get_or_create(&ErrorLabels {
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }

    /// Counts a reconcile of only the `clusters` that changed.
    pub fn cluster_batch(&self, clusters: usize) {
        self.cluster_batches.inc();
        self.cluster_batch_clusters.inc_by(clusters as u64);
    }

    /// Reports `len()` of a watch cache as `kmm_hub_cache_objects{cache=name}` at each scrape.
    #[must_use]
    pub fn with_cache(mut self, name: &'static str, len: impl Fn() -> usize + Send + Sync + 'static) -> Self {
        self.caches.push((name, Box::new(len)));
        self
    }

    /// Starts timing a reconcile (and counts it).
    pub fn reconcile_timer(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            metrics: self,
            started: Instant::now(),
        }
    }

    /// Counts a failed reconcile under its bounded reason.
    pub fn reconcile_failed(&self, reason: Reason) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Per-MCM cluster, node and kernel counts from its status.
    pub fn observe_fleet(&self, mcm: &str, s: &ManagedClusterModuleStatus) {
        let counts = [
            s.number_desired,
            s.number_applied,
            s.number_degraded,
            s.number_blocked,
        ];
        for (state, n) in FLEET_STATES.into_iter().zip(counts) {
            self.clusters.get_or_create(&fleet(mcm, state)).set(i64::from(n));
        }
        for (state, n) in NODE_STATES.into_iter().zip([s.nodes_desired, s.nodes_loaded]) {
            self.nodes.get_or_create(&fleet(mcm, state)).set(n);
        }
        let listed = i64::try_from(s.kernels.len()).unwrap_or(i64::MAX);
        let mcm_labels = McmLabels { mcm: mcm.to_owned() };
        self.kernels
            .get_or_create(&mcm_labels)
            .set(listed.saturating_add(i64::from(s.kernels_omitted)));
        let missing = s.kernels.iter().filter(|k| k.image.is_empty()).count();
        self.kernels_without_image
            .get_or_create(&mcm_labels)
            .set(i64::try_from(missing).unwrap_or(i64::MAX));
    }

    /// Per-MCM counts of clusters needing attention, from every cluster's `(state, reason)`
    /// (not only the 20 the status lists).
    pub fn observe_problems<'a>(&self, mcm: &str, problems: impl IntoIterator<Item = (&'a str, String)>) {
        let counts = problem_counts(mcm, problems);
        let mut last = self
            .problem_series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for gone in last
            .remove(mcm)
            .unwrap_or_default()
            .iter()
            .filter(|l| !counts.contains_key(*l))
        {
            self.problems.remove(gone);
        }
        for (labels, n) in &counts {
            self.problems.get_or_create(labels).set(*n);
        }
        if !counts.is_empty() {
            last.insert(mcm.to_owned(), counts.into_keys().collect());
        }
    }

    /// Drops a deleted MCM's series.
    pub fn forget(&self, mcm: &str) {
        for state in FLEET_STATES {
            self.clusters.remove(&fleet(mcm, state));
        }
        for state in NODE_STATES {
            self.nodes.remove(&fleet(mcm, state));
        }
        let mcm_labels = McmLabels { mcm: mcm.to_owned() };
        self.kernels.remove(&mcm_labels);
        self.kernels_without_image.remove(&mcm_labels);
        self.observe_problems(mcm, []);
        self.observe_rollout(mcm, None);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        // The resolver's totals only grow; fetch_max keeps concurrent scrapes from double counting.
        self.registry_asks
            .inner()
            .fetch_max(self.resolver.requests(), Ordering::Relaxed);
        self.registry_lookups
            .inner()
            .fetch_max(self.resolver.lookups(), Ordering::Relaxed);
        self.leader.set(i64::from(self.leadership.is_leader()));
        for (name, len) in &self.caches {
            self.cache_objects
                .get_or_create(&CacheLabels { cache: name })
                .set(i64::try_from(len()).unwrap_or(i64::MAX));
        }
        if let Some(bytes) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .as_deref()
            .and_then(resident_bytes)
        {
            self.resident_memory.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The series of `kmm_hub_rollout_clusters`.
const ROLLOUT_STATES: [&str; 6] = ["updated", "in_progress", "failed", "pending", "wave", "halted"];

impl Metrics {
    /// Per-MCM rollout progress from `status.rollout`; `None` drops the series.
    pub fn observe_rollout(&self, mcm: &str, rollout: Option<&kmm_api::mcm::RolloutStatus>) {
        let Some(r) = rollout else {
            for state in ROLLOUT_STATES {
                self.rollout.remove(&fleet(mcm, state));
            }
            return;
        };
        let halted = i32::from(r.phase == "Halted");
        let values = [r.updated, r.in_progress, r.failed, r.pending, r.wave, halted];
        for (state, n) in ROLLOUT_STATES.into_iter().zip(values) {
            self.rollout.get_or_create(&fleet(mcm, state)).set(i64::from(n));
        }
    }
}

fn fleet(mcm: &str, state: &str) -> FleetLabels {
    FleetLabels {
        mcm: mcm.to_owned(),
        state: state.to_owned(),
    }
}

/// Counts `(state, reason)` pairs, with reasons outside [`Reason`] folded into `Other`.
fn problem_counts<'a>(
    mcm: &str,
    problems: impl IntoIterator<Item = (&'a str, String)>,
) -> HashMap<ProblemLabels, i64> {
    let mut counts = HashMap::new();
    for (state, reason) in problems {
        let reason = Reason::ALL
            .iter()
            .find(|r| r.as_str() == reason)
            .map_or("Other", |r| r.as_str());
        *counts
            .entry(ProblemLabels {
                mcm: mcm.to_owned(),
                state: state.to_owned(),
                reason: reason.to_owned(),
            })
            .or_insert(0) += 1;
    }
    counts
}

/// `VmRSS` of a `/proc/<pid>/status` text, in bytes.
fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests;
