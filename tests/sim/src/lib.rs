//! kmm-sim: an in-memory Kubernetes API server for kmm-fleet's tests. Never shipped.
//!
//! No kube-apiserver can be installed on the machines these tests run on, yet the hub and the
//! spoke must be tested the way they run: real kube-rs clients, watches, server-side apply and
//! several clusters. Each [`SimCluster`] is one virtual cluster served over HTTP/JSON on its own
//! loopback port, with its own kubeconfig file, so `kmm-hub`, `kmm-spoke` and `kubectl` can all
//! point at it. Product code never knows it is talking to this.
//!
//! ```text
//!  kube-rs / kubectl ──HTTP──▶ server (routing, faults) ──▶ store (objects, rv, watch log)
//!                                                         ├─ ssa       (field managers)
//!                                                         ├─ patch     (merge / JSON / strategic)
//!                                                         ├─ schema    (CRD pruning, defaults, list types)
//!                                                         └─ gc        (finalizers, owner references)
//! ```
//!
//! What is and is not simulated is listed in the crate's README.md.

pub mod audit;
mod cluster;
mod discovery;
mod events;
pub mod faults;
mod fields;
mod gc;
mod patch;
mod registry;
mod scale;
mod schema;
mod selector;
mod server;
mod ssa;
mod status;
mod store;
mod table;
mod time;

use std::{collections::BTreeMap, path::Path, sync::Mutex};

pub use audit::{AuditRecord, Grant, RbacCheck};
pub use cluster::SimCluster;
pub use cluster::parse_documents;
pub use faults::Faults;
pub use scale::{FleetMember, ScaleReport, Throughput};
pub use store::RequestCounts;

/// A set of virtual clusters and the directory holding their kubeconfig files.
pub struct Sim {
    dir: tempfile::TempDir,
    clusters: Mutex<BTreeMap<String, SimCluster>>,
}

/// What can go wrong while setting up the simulator (never while serving requests).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("{path}: {message}")]
    Manifest { path: String, message: String },
    #[error("kube client: {0}")]
    Client(String),
    #[error("cluster {0:?} exists already")]
    Exists(String),
}

impl Sim {
    /// An empty simulator; clusters are added with [`Sim::add_cluster`].
    pub fn new() -> Result<Self, SimError> {
        Ok(Self {
            dir: tempfile::tempdir()?,
            clusters: Mutex::new(BTreeMap::new()),
        })
    }

    /// Starts a new virtual cluster on a free loopback port and writes its kubeconfig.
    pub async fn add_cluster(&self, name: &str) -> Result<SimCluster, SimError> {
        if self.lock().contains_key(name) {
            return Err(SimError::Exists(name.to_string()));
        }
        let cluster = SimCluster::start(name, self.dir.path()).await?;
        self.lock().insert(name.to_string(), cluster.clone());
        Ok(cluster)
    }

    /// The cluster with this name, if it was added.
    pub fn cluster(&self, name: &str) -> Option<SimCluster> {
        self.lock().get(name).cloned()
    }

    /// Every cluster, by name.
    pub fn clusters(&self) -> Vec<SimCluster> {
        self.lock().values().cloned().collect()
    }

    /// Directory holding the kubeconfig files (removed when the simulator is dropped).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SimCluster>> {
        // A poisoned lock only means a test thread panicked; the map itself is still sound.
        self.clusters.lock().unwrap_or_else(|e| e.into_inner())
    }
}
