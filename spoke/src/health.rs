//! `/healthz`, `/readyz` and `/metrics` on one address. `/readyz` answers 200 only once every
//! cache the spoke decides from has synced (Nodes, Modules and NodeModulesConfigs of the
//! controllers, Nodes and ClusterClaims of the claim writer), and 503 naming what is missing
//! before that.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, routing::get};

use crate::metrics::Metrics;

/// What `/readyz` and `/metrics` read.
#[derive(Clone, Default)]
pub struct Health {
    /// The node controller's Node cache has listed.
    pub nodes_synced: Arc<AtomicBool>,
    /// The Module controller's Module cache has listed.
    pub modules_synced: Arc<AtomicBool>,
    /// The NodeModulesConfig cache (the Module controller's counts) has listed.
    pub records_synced: Arc<AtomicBool>,
    /// The claim writer's watches have listed and are not failing.
    pub claims_synced: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
}

impl Health {
    /// The caches not synced yet (empty when ready).
    pub fn missing(&self) -> Vec<&'static str> {
        [
            ("nodes", &self.nodes_synced),
            ("modules", &self.modules_synced),
            ("node records", &self.records_synced),
            ("kernel claim watches", &self.claims_synced),
        ]
        .into_iter()
        .filter(|(_, flag)| !flag.load(Ordering::Relaxed))
        .map(|(name, _)| name)
        .collect()
    }

    pub fn is_ready(&self) -> bool {
        let ready = self.missing().is_empty();
        self.metrics.ready.set(i64::from(ready));
        ready
    }
}

/// The router of the health and metrics server.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(h): State<Health>| async move {
                if h.is_ready() {
                    (StatusCode::OK, "ready".to_owned())
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not synced: {}", h.missing().join(", ")),
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(h): State<Health>| async move {
                h.is_ready();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    h.metrics.encode(),
                )
            }),
        )
        .with_state(health)
}
