//! Starts the ManagedClusterPreflight controller next to the MCM controller (same leader, same
//! cluster and Job stores, its own MCM watch). A preflight is looked at again when it changes, when
//! any MCM or cluster changes, and on its own schedule (see [`super::controller::reconcile`]).
//! The same changes wake [`super::generated::run`], which keeps the next-kernel preflight.

use std::sync::Arc;

use futures::StreamExt;
use kmm_api::{ManagedClusterModule, ocm::ManagedCluster, preflight::ManagedClusterPreflight};
use kube::{
    Api, Client,
    core::DeserializeGuard,
    runtime::{Controller, WatchStreamExt, controller, reflector, reflector::ObjectRef, watcher},
};
use tracing::warn;

use super::controller::{self as pf, Context};
use crate::mcm_controller;

/// Runs until the process ends; starts once its MCM store (a watch of its own) and the
/// cluster store are filled, so a first pass does not report an empty fleet.
pub async fn run(client: Client, hub: Arc<mcm_controller::Context>, concurrency: u16) {
    let (mcms, writer) = reflector::store();
    let feed = reflector::reflector(
        writer,
        watcher::watcher(
            Api::<DeserializeGuard<ManagedClusterModule>>::all(client.clone()),
            watcher::Config::default().any_semantic(),
        ),
    )
    .default_backoff()
    .touched_objects()
    .for_each(|_| futures::future::ready(()));
    tokio::spawn(feed);
    let ctx = Context { hub, mcms };
    // The generated next-kernel preflight follows the same MCM and cluster changes.
    let changed = Arc::new(tokio::sync::Notify::new());
    changed.notify_one();
    if ctx.mcms.wait_until_ready().await.is_err() || ctx.hub.clusters.wait_until_ready().await.is_err() {
        warn!("the MCM or cluster store never filled; preflights are not answered");
        return;
    }
    let api: Api<ManagedClusterPreflight> = Api::all(client.clone());
    let controller = Controller::new(api, watcher::Config::default().any_semantic());
    // Any MCM or cluster change may change any preflight's answer: look at every preflight
    // (debounced; a preflight is small next to the fleet).
    tokio::spawn(super::generated::run(
        ctx.hub.clone(),
        ctx.mcms.clone(),
        changed.clone(),
    ));
    let (s1, s2) = (controller.store(), controller.store());
    let (n1, n2) = (changed.clone(), changed);
    let all = |store: &kube::runtime::reflector::Store<ManagedClusterPreflight>| {
        store
            .state()
            .iter()
            .map(|p| ObjectRef::from_obj(p.as_ref()))
            .collect::<Vec<_>>()
    };
    controller
        .watches(
            Api::<DeserializeGuard<ManagedClusterModule>>::all(client.clone()),
            watcher::Config::default().any_semantic(),
            move |_| {
                n1.notify_one();
                all(&s1)
            },
        )
        .watches(
            Api::<ManagedCluster>::all(client),
            watcher::Config::default(),
            move |_| {
                n2.notify_one();
                all(&s2)
            },
        )
        .with_config(
            controller::Config::default()
                .concurrency(concurrency)
                .debounce(std::time::Duration::from_secs(1)),
        )
        .run(pf::reconcile, pf::error_policy, Arc::new(ctx))
        .for_each(|_| futures::future::ready(()))
        .await;
}
