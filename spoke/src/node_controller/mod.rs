//! The node controller: per node, keep the NodeModulesConfig (the durable record of what should
//! be and what is loaded), run the worker pods that make it true, and keep kmm-spoke's node
//! labels (module ready, device-plugin target, ordered-upgrade versions).
//!
//! Triggers: the Node; its record (same name); pods on it carrying the module-name label
//! (workers and device plugins); every Module change (via the Module controller, which signals
//! a pass over all nodes). Each pass: observe (node, record, pods, Modules from the cache), pure
//! [`desired::desired`], then [`apply`] (record spec by SSA, record status, pod deletions and
//! creations, node labels by SSA), each write only when something differs.

pub mod apply;
pub mod desired;

use std::{sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::core::v1::{Node, Pod},
    jiff::Timestamp,
};
use kmm_api::nmc::NodeModulesConfig;
use kube::{
    Api, ResourceExt,
    api::ListParams,
    runtime::{
        Controller,
        controller::Action,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tokio::sync::mpsc;

use self::desired::NodeObserved;
use crate::{
    context::SharedCtx,
    error::{Error, error_policy, kube_err, record_reconcile},
    worker::pod::MODULE_NAME_LABEL,
};

/// Controller name in metrics and logs.
pub const CONTROLLER: &str = "node";

/// Builds the node controller on the spoke's Node watch ([`crate::node_feed::watch`]: its
/// applied Nodes and their cache). `nodes_rx` receives "look at every node" signals.
pub fn controller(
    client: kube::Client,
    nodes: impl Stream<Item = Result<Node, watcher::Error>> + Send + 'static,
    cache: Store<Node>,
    nodes_rx: mpsc::Receiver<()>,
) -> Controller<Node> {
    let trigger = futures::stream::unfold(
        nodes_rx,
        |mut rx| async move { rx.recv().await.map(|()| ((), rx)) },
    );
    Controller::for_stream(nodes, cache)
        .watches(
            Api::<NodeModulesConfig>::all(client.clone()),
            crate::slim::per_node_watch(),
            |nmc| Some(ObjectRef::<Node>::new(&nmc.name_any())),
        )
        .watches(
            Api::<Pod>::all(client),
            watcher::Config::default().labels(MODULE_NAME_LABEL),
            |pod| {
                pod.spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .map(ObjectRef::<Node>::new)
            },
        )
        .reconcile_all_on(trigger)
}

/// Runs the node controller until `shutdown` resolves.
pub async fn run(
    controller: Controller<Node>,
    ctx: SharedCtx,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let metrics = ctx.metrics.clone();
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| {
            record_reconcile(&metrics, CONTROLLER, &res);
            std::future::ready(())
        })
        .await;
}

/// How long a pass waits for the Module cache's first list before it tries again later.
const MODULE_CACHE_WAIT: Duration = Duration::from_secs(1);

/// One pass over one node.
pub async fn reconcile(node: Arc<Node>, ctx: SharedCtx) -> Result<Action, Error> {
    // Nodes can arrive before the Module cache holds its first list. A pass then would see no
    // Module and unload everything the node has (a restarted kmm-spoke briefly did, recreating
    // worker pods on an upgrade); so it waits for the cache, and comes back if it is not there.
    if tokio::time::timeout(MODULE_CACHE_WAIT, ctx.modules.wait_until_ready())
        .await
        .is_err()
    {
        return Ok(Action::requeue(MODULE_CACHE_WAIT));
    }
    let name = node.name_any();
    let client = &ctx.client;
    let nmc_api = Api::<NodeModulesConfig>::all(client.clone());
    let nmc = nmc_api
        .get_opt(&name)
        .await
        .map_err(kube_err(format!("reading NodeModulesConfig {name}")))?;
    let pods = Api::<Pod>::all(client.clone())
        .list(
            &ListParams::default()
                .labels(MODULE_NAME_LABEL)
                .fields(&format!("spec.nodeName={name}")),
        )
        .await
        .map_err(kube_err(format!("listing pods on {name}")))?
        .items;
    let modules = ctx.modules();
    let want = desired::desired(
        NodeObserved {
            node: &node,
            nmc: nmc.as_ref(),
            modules: &modules,
            pods: &pods,
            now: Timestamp::now(),
        },
        &ctx.settings.node,
    );
    apply::apply(&node, nmc, &want, &ctx).await?;
    Ok(match want.requeue_after {
        Some(d) => Action::requeue(d.max(Duration::from_millis(10))),
        None => Action::requeue(ctx.settings.resync),
    })
}
