//! Prometheus metrics of the hub, served on `/metrics`. Labels are bounded: error reasons, MCM
//! names and fixed state words, never cluster names (a fleet has thousands).

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::Instant,
};

use kmm_api::ManagedClusterModuleStatus;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{reason::Reason, registry::DigestResolver};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FleetLabels {
    pub mcm: String,
    pub state: String,
}

/// Every metric the hub exports.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_seconds: Histogram,
    pub work_writes: Counter,
    pub work_deletes: Counter,
    pub status_writes: Counter,
    pub jobs_started: Counter,
    pub clusters: Family<FleetLabels, Gauge>,
    registry_asks: Gauge<u64, AtomicU64>,
    registry_lookups: Gauge<u64, AtomicU64>,
    resolver: Arc<DigestResolver>,
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

impl Metrics {
    pub fn new(resolver: Arc<DigestResolver>) -> Self {
        let mut root = Registry::default();
        let reg = root.sub_registry_with_prefix("kmm_hub");
        let m = Self {
            registry: Registry::default(),
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            reconcile_seconds: Histogram::new([0.005, 0.02, 0.1, 0.5, 2.0, 10.0, 60.0]),
            work_writes: Counter::default(),
            work_deletes: Counter::default(),
            status_writes: Counter::default(),
            jobs_started: Counter::default(),
            clusters: Family::default(),
            registry_asks: Gauge::default(),
            registry_lookups: Gauge::default(),
            resolver,
        };
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
            "registry_requests",
            "Digest lookups asked for (cache hits included)",
            m.registry_asks.clone(),
        );
        reg.register(
            "registry_lookups",
            "Digest lookups that reached a registry",
            m.registry_lookups.clone(),
        );
        Self { registry: root, ..m }
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

    /// Per-MCM cluster counts from its status.
    pub fn observe_fleet(&self, mcm: &str, s: &ManagedClusterModuleStatus) {
        for (state, n) in [
            ("desired", s.number_desired),
            ("applied", s.number_applied),
            ("degraded", s.number_degraded),
            ("blocked", s.number_blocked),
        ] {
            self.clusters
                .get_or_create(&FleetLabels {
                    mcm: mcm.to_string(),
                    state: state.to_string(),
                })
                .set(i64::from(n));
        }
    }

    /// Drops a deleted MCM's series.
    pub fn forget(&self, mcm: &str) {
        for state in ["desired", "applied", "degraded", "blocked"] {
            self.clusters.remove(&FleetLabels {
                mcm: mcm.to_string(),
                state: state.to_string(),
            });
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        self.registry_asks.set(self.resolver.requests());
        self.registry_lookups.set(self.resolver.lookups());
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn exposes_counters_and_per_mcm_gauges_without_cluster_names() {
        let m = Metrics::new(Arc::new(DigestResolver::new(Duration::from_secs(1))));
        drop(m.reconcile_timer());
        m.reconcile_failed(Reason::WriteFailed);
        m.observe_fleet(
            "gpu",
            &ManagedClusterModuleStatus {
                number_desired: 7,
                number_blocked: 2,
                ..Default::default()
            },
        );
        let text = m.encode();
        assert!(text.contains("kmm_hub_reconciles_total 1"), "{text}");
        assert!(
            text.contains(r#"kmm_hub_reconcile_errors_total{reason="WriteFailed"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kmm_hub_clusters{mcm="gpu",state="desired"} 7"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kmm_hub_clusters{mcm="gpu",state="blocked"} 2"#),
            "{text}"
        );
        assert!(text.contains("kmm_hub_registry_lookups 0"), "{text}");
        m.forget("gpu");
        assert!(!m.encode().contains(r#"mcm="gpu""#));
    }
}
