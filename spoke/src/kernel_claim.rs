//! The kernel-versions ClusterClaim(s) a spoke publishes (managed mode), computed from its Nodes.
//!
//! Every node counts, control plane included, as upstream does: the hub decides what to build
//! from this list, and a kernel missing from it would never get an image. Nodes that do not report
//! a kernel yet are skipped rather than written as empty lines. A kernel that breaks the shared
//! grammar (`kmm_api::kernel::grammar`) is left out and logged with its node: the hub would refuse
//! the line anyway, and a newline in it would publish a second, invented kernel.
//!
//! The same writer publishes the optional next-kernel claim ([`next_kernel`]): the kernels the
//! nodes will boot, announced by an OS updater, for the hub to build ahead.

use std::{
    borrow::Borrow,
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use futures::StreamExt;
use k8s_openapi::{api::core::v1::Node, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kmm_api::{
    claims::{
        ClaimError, MAX_KERNEL_CLAIMS, NEXT_KERNEL_VERSIONS_CLAIM, continuation_claim_name,
        encode_kernel_claims,
    },
    kernel::grammar::check_kernel,
    ocm::{ClusterClaim, ClusterClaimSpec, KERNEL_VERSIONS_CLAIM},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{
        WatchStreamExt, reflector,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;

use crate::{
    context::FIELD_MANAGER,
    error::{Error, is_status, kube_err},
    metrics::Metrics,
    node_feed::{NodeFeed, NodeSignal},
};

#[path = "next_kernel.rs"]
pub mod next_kernel;

/// A node's kernel the spoke does not publish, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RefusedKernel {
    pub node: String,
    pub kernel: String,
    pub reason: String,
}

/// The kernels the nodes report (trimmed, empty ones skipped), split into those that follow the
/// kernel grammar and those refused.
pub fn node_kernels<N: Borrow<Node>>(nodes: &[N]) -> (Vec<&str>, Vec<RefusedKernel>) {
    let mut valid = Vec::new();
    let mut refused = Vec::new();
    for node in nodes.iter().map(Borrow::borrow) {
        let Some(info) = node.status.as_ref().and_then(|s| s.node_info.as_ref()) else {
            continue;
        };
        let kernel = info.kernel_version.trim();
        if kernel.is_empty() {
            continue;
        }
        match check_kernel(kernel) {
            Ok(()) => valid.push(kernel),
            Err(e) => refused.push(RefusedKernel {
                node: node.name_any(),
                kernel: kernel.escape_debug().to_string(),
                reason: e.to_string(),
            }),
        }
    }
    refused.sort();
    (valid, refused)
}

/// The claims to apply for these nodes (their kernels that follow the grammar), and the
/// next-kernel claim when a node announces one.
pub fn desired_claims<N: Borrow<Node>>(nodes: &[N]) -> Result<Vec<ClusterClaim>, ClaimError> {
    let (kernels, _) = node_kernels(nodes);
    Ok(encode_kernel_claims(kernels)?
        .into_iter()
        .chain(next_kernel::claim(nodes))
        .map(|(name, value)| ClusterClaim {
            metadata: ObjectMeta {
                name: Some(name),
                ..Default::default()
            },
            spec: ClusterClaimSpec { value },
        })
        .collect())
}

/// Every name a kernel-versions claim may have (first, then continuations), and the next-kernel
/// claim: the only ClusterClaims the spoke changes or deletes (its ClusterRole is narrowed to them).
pub fn kernel_claim_names() -> Vec<String> {
    std::iter::once(KERNEL_VERSIONS_CLAIM.to_owned())
        .chain((2..=MAX_KERNEL_CLAIMS + 1).map(continuation_claim_name))
        .chain(std::iter::once(NEXT_KERNEL_VERSIONS_CLAIM.to_owned()))
        .collect()
}

/// Whether `name` is one of the kernel-versions claims (first or continuation).
pub fn is_kernel_claim(name: &str) -> bool {
    kernel_claim_names().iter().any(|n| n == name)
}

/// The writes that bring `existing` claims to `desired`: `(name, value)` to apply, names to delete.
pub fn claim_changes(
    desired: &[ClusterClaim],
    existing: &BTreeMap<String, String>,
) -> (Vec<(String, String)>, Vec<String>) {
    let want: BTreeMap<String, String> = desired
        .iter()
        .map(|c| (c.name_any(), c.spec.value.clone()))
        .collect();
    let apply = want
        .iter()
        .filter(|(name, value)| existing.get(*name) != Some(*value))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let delete = existing
        .keys()
        .filter(|name| is_kernel_claim(name) && !want.contains_key(*name))
        .cloned()
        .collect();
    (apply, delete)
}

/// What the writer reports to the rest of the spoke.
#[derive(Clone, Default)]
pub struct ClaimReporting {
    /// Metrics (writes, failures, watch errors, kernel count).
    pub metrics: Arc<Metrics>,
    /// Set once both watches (Nodes and ClusterClaims) have listed; cleared while one fails.
    pub synced: Arc<AtomicBool>,
}

/// A wake-up from the shared Node watch, or a claim watch event.
enum Input {
    Nodes(NodeSignal),
    Claims(Result<Box<watcher::Event<ClusterClaim>>, watcher::Error>),
}

/// A write sent but not yet seen back through the claim watch: until it is, the cache still
/// holds the old value, and the writer must not send it again.
#[derive(Debug, Clone, PartialEq)]
enum Pending {
    /// Applied; the answer had this resourceVersion.
    Applied {
        value: String,
        rv: Option<String>,
    },
    Deleted,
}

/// Keeps the kernel-versions claims in step with the Nodes until the watches end. Reacts to Node
/// and claim changes; writes only claims whose value differs, deletes continuation claims no
/// longer needed. Watch and write failures are logged (once per distinct error, and when they
/// clear), counted in the metrics, and keep `synced` false while a watch fails. The Nodes come
/// from the spoke's shared watch (`feed`), which someone else drives.
pub async fn run(client: Client, report: ClaimReporting, feed: NodeFeed) {
    let claims_api = Api::<ClusterClaim>::all(client.clone());
    let nodes = feed.nodes;
    let (claims, claims_writer) = reflector::store();
    // The claim reflector is polled only through `events`: nothing in this loop may wait on
    // its store (that would stop the very stream that fills it).
    let mut signals = feed.signals;
    signals.mark_changed(); // the first wake-up reads what the watch did before this started
    let node_events = futures::stream::unfold(signals, |mut rx| async move {
        rx.changed().await.ok()?;
        let signal = rx.borrow_and_update().clone();
        Some((Input::Nodes(signal), rx))
    });
    let mut node_errors_seen = 0;
    let claim_events = reflector(
        claims_writer,
        watcher(claims_api.clone(), watcher::Config::default()),
    )
    .default_backoff()
    .map(|r| Input::Claims(r.map(Box::new)));
    let mut events = std::pin::pin!(futures::stream::select(node_events, claim_events));
    let (mut nodes_synced, mut claims_synced) = (false, false);
    let mut node_error: Option<String> = None;
    let mut claim_error: Option<String> = None;
    let mut write_error: Option<String> = None;
    let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
    let mut refused_logged: Vec<RefusedKernel> = Vec::new();
    let mut next_logged = next_kernel::NextKernels::default();
    while let Some(input) = events.next().await {
        match input {
            Input::Nodes(signal) => {
                for _ in node_errors_seen..signal.errors {
                    report.metrics.watch_failed("nodes");
                }
                node_errors_seen = signal.errors;
                match &signal.error {
                    Some(error) => failed("nodes", error, &mut node_error),
                    None => recovered("nodes", &mut node_error),
                }
                nodes_synced |= signal.listed;
            }
            Input::Claims(Ok(event)) => {
                recovered("clusterclaims", &mut claim_error);
                match *event {
                    watcher::Event::InitDone => {
                        claims_synced = true;
                        // A fresh list is the truth.
                        pending.clear();
                    }
                    watcher::Event::Apply(c) | watcher::Event::InitApply(c) => {
                        let name = c.name_any();
                        if let Some(Pending::Applied { rv, .. }) = pending.get(&name)
                            && (rv.is_none() || *rv == c.resource_version())
                        {
                            pending.remove(&name);
                        }
                    }
                    watcher::Event::Delete(c) => {
                        pending.remove(&c.name_any());
                    }
                    watcher::Event::Init => {}
                }
            }
            Input::Claims(Err(error)) => {
                report.metrics.watch_failed("clusterclaims");
                failed("clusterclaims", &error.to_string(), &mut claim_error);
            }
        }
        let synced = nodes_synced && claims_synced && node_error.is_none() && claim_error.is_none();
        report.synced.store(synced, Ordering::Relaxed);
        if !(nodes_synced && claims_synced) {
            continue;
        }
        // The cached nodes themselves (`Arc`s): a pass reads them, nothing clones 1,000 nodes.
        let node_list = nodes.state();
        let mut existing: BTreeMap<String, String> = claims
            .state()
            .iter()
            .map(|c| (c.name_any(), c.spec.value.clone()))
            .collect();
        for (name, p) in &pending {
            match p {
                Pending::Applied { value, .. } => existing.insert(name.clone(), value.clone()),
                Pending::Deleted => existing.remove(name),
            };
        }
        log_refused(&node_list, &mut refused_logged);
        log_next_left_out(&node_list, &mut next_logged);
        let result = match desired_claims(&node_list) {
            Ok(desired) => {
                report
                    .metrics
                    .kernels
                    .set(i64::try_from(distinct_kernels(&node_list)).unwrap_or(i64::MAX));
                sync(
                    &claims_api,
                    &claims,
                    &desired,
                    &existing,
                    &mut pending,
                    &report.metrics,
                )
                .await
            }
            Err(ClaimError::NoKernels) => Ok(()),
            Err(e) => Err(Error::Serialize {
                what: "the kernel-versions claims",
                reason: e.to_string(),
            }),
        };
        match result {
            Ok(()) => recovered("writes", &mut write_error),
            Err(error) => {
                report.metrics.claim_write_errors.inc();
                failed("writes", &error.to_string(), &mut write_error);
            }
        }
    }
}

fn distinct_kernels<N: Borrow<Node>>(nodes: &[N]) -> usize {
    node_kernels(nodes)
        .0
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

/// Warns about each refused kernel once, when the set of refused kernels changes.
fn log_refused<N: Borrow<Node>>(nodes: &[N], logged: &mut Vec<RefusedKernel>) {
    let (_, refused) = node_kernels(nodes);
    if refused == *logged {
        return;
    }
    for r in refused.iter().filter(|r| !logged.contains(r)) {
        tracing::warn!(
            node = %r.node,
            kernel = %r.kernel,
            reason = %r.reason,
            "kernel-versions claim writer: the node's kernel version is not published (it breaks the kernel grammar)"
        );
    }
    *logged = refused;
}

/// Warns once about next kernels left out of the claim (bad annotation values, kernels past the
/// bound), when that set changes.
fn log_next_left_out<N: Borrow<Node>>(nodes: &[N], logged: &mut next_kernel::NextKernels) {
    let mut next = next_kernel::next_kernels(nodes);
    next.kernels.clear();
    if next == *logged {
        return;
    }
    for r in next.refused.iter().filter(|r| !logged.refused.contains(r)) {
        tracing::warn!(
            node = %r.node,
            value = %r.kernel,
            reason = %r.reason,
            annotation = kmm_api::claims::NEXT_KERNEL_ANNOTATION,
            "next-kernel claim: the node's announced kernel is not published (it breaks the kernel grammar)"
        );
    }
    if !next.dropped.is_empty() && next.dropped != logged.dropped {
        tracing::warn!(
            dropped = ?next.dropped,
            max = kmm_api::claims::MAX_NEXT_KERNELS_PER_CLUSTER,
            "next-kernel claim: more distinct next kernels than a cluster may publish; those most nodes announce are published"
        );
    }
    *logged = next;
}

/// Logs a failure the first time it is seen (and whenever its text changes).
fn failed(what: &str, text: &str, last: &mut Option<String>) {
    if last.as_deref() != Some(text) {
        tracing::warn!(what, error = %text, "kernel-versions claim writer: failing");
    }
    *last = Some(text.to_owned());
}

/// Logs that a failure has cleared.
fn recovered(what: &str, last: &mut Option<String>) {
    if last.take().is_some() {
        tracing::info!(what, "kernel-versions claim writer: recovered");
    }
}

async fn sync(
    api: &Api<ClusterClaim>,
    cache: &Store<ClusterClaim>,
    desired: &[ClusterClaim],
    existing: &BTreeMap<String, String>,
    pending: &mut BTreeMap<String, Pending>,
    metrics: &Metrics,
) -> Result<(), Error> {
    let (mut apply, delete) = claim_changes(desired, existing);
    // Continuations before the first claim: a reader never sees "+N" without its claims.
    apply.sort_by_key(|(name, _)| name == KERNEL_VERSIONS_CLAIM);
    for (name, value) in &apply {
        let body = json!({
            "apiVersion": "cluster.open-cluster-management.io/v1alpha1",
            "kind": "ClusterClaim",
            "metadata": { "name": name },
            "spec": { "value": value },
        });
        metrics.claim_writes.inc();
        let applied = api
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
            .map_err(kube_err(format!("applying ClusterClaim {name}")))?;
        tracing::info!(claim = %name, "kernel-versions claim written");
        let cached_rv = cache
            .get(&ObjectRef::new(name))
            .and_then(|c| c.resource_version());
        if cached_rv.is_some() && cached_rv == applied.resource_version() {
            // The server had it already (our cache was behind): no watch event will follow.
            continue;
        }
        pending.insert(
            name.clone(),
            Pending::Applied {
                value: value.clone(),
                rv: applied.resource_version(),
            },
        );
    }
    for name in delete {
        metrics.claim_writes.inc();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(kube_err(format!("deleting ClusterClaim {name}"))(e)),
        }
        pending.insert(name, Pending::Deleted);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kmm_api::{claims::decode_kernel_claims, ocm::KERNEL_VERSIONS_CLAIM};

    use super::*;
    use crate::fixtures::mk_bare_node;

    #[test]
    fn publishes_each_kernel_once_and_skips_nodes_without_one() {
        let nodes = [
            mk_bare_node(Some("6.1.0-18-cloud-amd64")),
            mk_bare_node(Some("5.14.0-70.el9.x86_64")),
            mk_bare_node(Some("6.1.0-18-cloud-amd64")),
            mk_bare_node(None),
        ];
        let claims = desired_claims(&nodes).unwrap();
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].metadata.name.as_deref(), Some(KERNEL_VERSIONS_CLAIM));
        assert_eq!(claims[0].spec.value, "5.14.0-70.el9.x86_64\n6.1.0-18-cloud-amd64");
    }

    #[test]
    fn what_the_spoke_publishes_the_hub_reads_back() {
        let nodes: Vec<Node> = (0..kmm_api::claims::MAX_KERNELS_PER_CLUSTER)
            .map(|i| mk_bare_node(Some(&format!("5.14.0-{i}.el9_{i}.x86_64"))))
            .collect();
        let claims = desired_claims(&nodes).unwrap();
        assert!(claims.len() > 1);
        let read = decode_kernel_claims(|name| {
            claims
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(name))
                .map(|c| c.spec.value.as_str())
        })
        .unwrap();
        assert_eq!(read.len(), kmm_api::claims::MAX_KERNELS_PER_CLUSTER);
    }

    /// Issue 13: a node's invalid `uname -r` is left out and named, never published (a newline
    /// in it used to publish an invented second kernel).
    #[test]
    fn kernels_breaking_the_grammar_are_named_and_left_out() {
        let mut nodes = vec![
            mk_bare_node(Some("6.1.0-18-cloud-amd64")),
            mk_bare_node(Some("6.1.0;id")),
            mk_bare_node(Some("5.14.0\n9.9.9-invented")),
            mk_bare_node(Some(&format!("6.{}", "1".repeat(70)))),
        ];
        for (i, node) in nodes.iter_mut().enumerate() {
            node.metadata.name = Some(format!("node-{i}"));
        }
        let claims = desired_claims(&nodes).unwrap();
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].spec.value, "6.1.0-18-cloud-amd64");
        let (_, refused) = node_kernels(&nodes);
        let named: Vec<(&str, &str)> = refused
            .iter()
            .map(|r| (r.node.as_str(), r.kernel.as_str()))
            .collect();
        assert_eq!(named[0], ("node-1", "6.1.0;id"));
        assert_eq!(named[1], ("node-2", "5.14.0\\n9.9.9-invented"));
        assert_eq!(named[2].0, "node-3");
        assert!(refused[2].reason.contains("64"), "{}", refused[2].reason);
        assert_eq!(distinct_kernels(&nodes), 1);
    }

    #[test]
    fn a_cluster_without_kernels_publishes_nothing() {
        assert_eq!(
            desired_claims(&[mk_bare_node(None)]).unwrap_err(),
            ClaimError::NoKernels
        );
    }

    /// Issue 16: the next-kernel claim comes and goes with the annotation; the kernel-versions
    /// claim is untouched either way.
    #[test]
    fn the_next_kernel_claim_follows_the_annotation() {
        use kmm_api::claims::{NEXT_KERNEL_ANNOTATION, NEXT_KERNEL_VERSIONS_CLAIM};
        let mut node = mk_bare_node(Some("6.1.0-18-cloud-amd64"));
        let plain = desired_claims(std::slice::from_ref(&node)).unwrap();
        node.annotations_mut()
            .insert(NEXT_KERNEL_ANNOTATION.into(), "6.1.0-29-cloud-amd64".into());
        let announced = desired_claims(std::slice::from_ref(&node)).unwrap();
        assert_eq!(announced.len(), 2);
        assert_eq!(announced[0], plain[0]);
        assert_eq!(announced[1].name_any(), NEXT_KERNEL_VERSIONS_CLAIM);
        assert_eq!(announced[1].spec.value, "6.1.0-29-cloud-amd64");
        assert!(
            is_kernel_claim(NEXT_KERNEL_VERSIONS_CLAIM),
            "the spoke may write it"
        );

        let existing: BTreeMap<String, String> = announced
            .iter()
            .map(|c| (c.name_any(), c.spec.value.clone()))
            .collect();
        let (apply, delete) = claim_changes(&plain, &existing);
        assert!(apply.is_empty());
        assert_eq!(delete, [NEXT_KERNEL_VERSIONS_CLAIM]);
    }
}
