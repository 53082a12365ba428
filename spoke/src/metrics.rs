//! Prometheus metrics of the spoke, served on `/metrics`. Labels are bounded: controller names,
//! error reasons, worker actions and watch names, never node or Module names (a spoke may have
//! thousands of nodes).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    pub watch: &'static str,
}

/// Every metric the spoke exports (prefix `kmm_spoke_`).
pub struct Metrics {
    registry: Registry,
    /// Reconciles run, per controller (`node`, `module`).
    pub reconciles: Family<ControllerLabels, Counter>,
    /// Failed reconciles, per controller and error reason.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// Worker pods created, per action (`load`, `unload`).
    pub worker_pods: Family<ActionLabels, Counter>,
    /// Worker pods that failed, per action.
    pub worker_failures: Family<ActionLabels, Counter>,
    /// ClusterClaim writes (applies and deletes) sent.
    pub claim_writes: Counter,
    /// Failed ClusterClaim writes.
    pub claim_write_errors: Counter,
    /// Watch errors of the claim writer, per watch (`nodes`, `clusterclaims`).
    pub watch_errors: Family<WatchLabels, Counter>,
    /// Distinct kernel versions of the cluster's nodes (what the claims list).
    pub kernels: Gauge,
    /// 1 once every cache has synced.
    pub ready: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        let reg = root.sub_registry_with_prefix("kmm_spoke");
        let m = Self {
            registry: Registry::default(),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            worker_pods: Family::default(),
            worker_failures: Family::default(),
            claim_writes: Counter::default(),
            claim_write_errors: Counter::default(),
            watch_errors: Family::default(),
            kernels: Gauge::default(),
            ready: Gauge::default(),
        };
        reg.register(
            "reconciles",
            "Reconciles run per controller",
            m.reconciles.clone(),
        );
        reg.register(
            "reconcile_errors",
            "Failed reconciles per controller and reason",
            m.reconcile_errors.clone(),
        );
        reg.register(
            "worker_pods",
            "Worker pods created per action",
            m.worker_pods.clone(),
        );
        reg.register(
            "worker_failures",
            "Worker pods that failed per action",
            m.worker_failures.clone(),
        );
        reg.register(
            "claim_writes",
            "kernel-versions ClusterClaim applies and deletes sent",
            m.claim_writes.clone(),
        );
        reg.register(
            "claim_write_errors",
            "Failed kernel-versions ClusterClaim writes",
            m.claim_write_errors.clone(),
        );
        reg.register(
            "watch_errors",
            "Watch errors of the kernel claim writer per watch",
            m.watch_errors.clone(),
        );
        reg.register(
            "kernel_versions",
            "Distinct kernel versions among the cluster's nodes",
            m.kernels.clone(),
        );
        reg.register("ready", "1 once every cache has synced", m.ready.clone());
        // Every known label value starts at 0, so rates and alerts see a series from the first
        // scrape on instead of none until the first event.
        for controller in ["node", "module"] {
            drop(m.reconciles.get_or_create(&ControllerLabels { controller }));
        }
        for action in ["load", "unload"] {
            drop(m.worker_pods.get_or_create(&ActionLabels { action }));
            drop(m.worker_failures.get_or_create(&ActionLabels { action }));
        }
        for watch in ["nodes", "clusterclaims"] {
            drop(m.watch_errors.get_or_create(&WatchLabels { watch }));
        }
        Self { registry: root, ..m }
    }

    pub fn reconciled(&self, controller: &'static str) {
        self.reconciles
            .get_or_create(&ControllerLabels { controller })
            .inc();
    }

    pub fn reconcile_failed(&self, controller: &'static str, reason: &'static str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { controller, reason })
            .inc();
    }

    pub fn watch_failed(&self, watch: &'static str) {
        self.watch_errors.get_or_create(&WatchLabels { watch }).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_bounded_series_with_the_spoke_prefix() {
        let m = Metrics::new();
        m.reconciled("node");
        m.reconcile_failed("module", "ApiError");
        m.worker_pods
            .get_or_create(&ActionLabels { action: "load" })
            .inc();
        m.watch_failed("clusterclaims");
        let text = m.encode();
        assert!(
            text.contains(r#"kmm_spoke_reconciles_total{controller="node"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kmm_spoke_reconcile_errors_total{controller="module",reason="ApiError"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kmm_spoke_worker_pods_total{action="load"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kmm_spoke_watch_errors_total{watch="clusterclaims"} 1"#),
            "{text}"
        );
        assert!(text.contains("kmm_spoke_ready 0"), "{text}");
        assert!(
            text.contains(r#"kmm_spoke_worker_failures_total{action="unload"} 0"#),
            "{text}"
        );
    }
}
