//! Logging of the kmm-hub and kmm-spoke processes: structured JSON lines by default
//! (`KMM_LOG_FORMAT=text` for humans, on stderr), filtered with `RUST_LOG` (default `info`).
//! The hub's reconcile spans carry the MCM, its per-cluster lines the cluster.

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber once; later calls (tests, a second init) keep the first.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let text = std::env::var("KMM_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("text"));
    let result = if text {
        fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .try_init()
    } else {
        fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .try_init()
    };
    drop(result);
}
