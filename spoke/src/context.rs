//! What every controller of the spoke shares: the client, the event recorder and its one
//! publishing helper, settings, and the caches.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kmm_api::{Module, nmc::NodeModulesConfig};
use kube::{
    Client,
    core::DeserializeGuard,
    runtime::{
        events::{Event, EventType, Recorder},
        reflector::Store,
    },
};
use tokio::sync::mpsc;

use crate::{
    metrics::Metrics,
    node_controller::desired::{ModuleKey, NodeSettings},
    reason::Reason,
    worker::pod::WorkerPodSettings,
};

/// Field manager of every write kmm-spoke makes.
pub const FIELD_MANAGER: &str = "kmm-spoke";

/// Everything that shapes what the spoke writes.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub node: NodeSettings,
    pub worker: WorkerPodSettings,
    /// Resync period of a healthy object.
    pub resync: Duration,
    /// Reconciles each controller runs at once. Every one in flight holds an API connection,
    /// which the client's pool keeps afterwards: unbounded, the first pass over 1,000 nodes
    /// left about 1,000 idle connections (60 MiB of buffers) behind.
    pub concurrency: u16,
}

/// Shared by the reconciles.
pub struct Ctx {
    /// API client of the spoke cluster.
    pub client: Client,
    /// One recorder for every Event (so the API server can aggregate repeats).
    pub recorder: Recorder,
    /// Read-only settings.
    pub settings: Settings,
    /// Every Module (the Module controller's cache).
    pub modules: Store<DeserializeGuard<Module>>,
    /// Every Node (the node controller's cache), as [`crate::slim::node`] keeps it.
    pub nodes: Store<Node>,
    /// Every NodeModulesConfig (a watch of its own): the Module controller's counts and
    /// finalizer release read it instead of listing.
    pub records: Store<NodeModulesConfig>,
    /// Tells the node controller to look at every node again (a Module changed).
    pub nodes_tx: mpsc::Sender<()>,
    /// Last (generation, deleting) seen per Module, to signal only real changes.
    pub seen_modules: Mutex<HashMap<ModuleKey, (Option<i64>, bool)>>,
    /// Per node, the keys of the once-per-key Events its last pass published or held back
    /// (`NodeEvent::once_per`), so a lasting state is reported once, not on every pass.
    pub reported_once: Mutex<HashMap<String, BTreeSet<String>>>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
}

impl Ctx {
    /// Every Module that parses.
    pub fn modules(&self) -> Vec<Module> {
        self.modules
            .state()
            .iter()
            .filter_map(|g| g.0.as_ref().ok().cloned())
            .collect()
    }
}

impl Ctx {
    /// Publishes one Event about `regarding` (its note cut to what the API server accepts); a
    /// failure is logged, never fatal: the state it reports is in status or the next pass.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: Reason,
        action: &str,
        note: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(kmm_api::event_note::note(note)),
            action: action.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, regarding).await {
            tracing::warn!(%error, %reason, object = ?regarding.name, "publishing an event failed");
        }
    }
}

/// Shared pointer to the context.
pub type SharedCtx = Arc<Ctx>;
