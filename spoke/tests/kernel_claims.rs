//! The kernel-versions ClusterClaim writer on a real control plane, as kmm-spoke's
//! ServiceAccount: Nodes registered by the kmm-agents kubelet (or, for the 60-kernel cluster,
//! created by the admin), OCM's ClusterClaim CRD, and the apiserver's audit log counting the
//! writer's writes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod common;

use std::{collections::BTreeMap, sync::atomic::Ordering};

use common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kmm_agents::{Kubelet, KubeletOptions, NodeRegistration};
use kmm_api::{
    claims::decode_kernel_claims,
    ocm::{ClusterClaim, KERNEL_VERSIONS_CLAIM},
};
use kmm_spoke::{
    kernel_claim::{self, ClaimReporting},
    node_feed,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams},
};

async fn claims(client: &Client) -> BTreeMap<String, String> {
    Api::<ClusterClaim>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| (c.name_any(), c.spec.value))
        .collect()
}

async fn first_claim(client: &Client) -> Option<String> {
    claims(client).await.remove(KERNEL_VERSIONS_CLAIM)
}

/// The writer as kmm-spoke runs it, with its ServiceAccount's client, on the shared Node watch
/// (driven here, as the node controller drives it in kmm-spoke).
fn start_writer(cluster: &SpokeCluster) -> (ClaimReporting, tokio::task::JoinHandle<()>) {
    let report = ClaimReporting::default();
    let (feed, nodes) = node_feed::watch(cluster.spoke_client.clone());
    let writer = kernel_claim::run(cluster.spoke_client.clone(), report.clone(), feed);
    let task = tokio::spawn(async move {
        tokio::join!(nodes.for_each(|_| std::future::ready(())), writer);
    });
    (report, task)
}

async fn delete_node(client: &Client, name: &str) {
    Api::<Node>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_follow_nodes_joining_leaving_and_upgrading_and_are_written_only_on_change() {
    let _serial = one_at_a_time().await;
    let cluster = spoke_cluster(
        "claims-follow-nodes",
        Setup::with_nodes([
            NodeRegistration::new("a", K_DEBIAN),
            NodeRegistration::new("b", K_RHEL),
            NodeRegistration::new("c", K_DEBIAN),
        ]),
    )
    .await;
    let client = cluster.client();
    let (report, writer) = start_writer(&cluster);
    let writes = || cluster.spoke_writes("clusterclaims");

    let both = format!("{K_RHEL}\n{K_DEBIAN}");
    eventually("claim for 3 nodes on 2 kernels", WAIT, || async {
        first_claim(&client).await.as_deref() == Some(both.as_str())
    })
    .await;
    assert_eq!(writes().await, 1);
    assert!(report.synced.load(Ordering::Relaxed));

    // A node joins on a known kernel: nothing to write. The next change (a new kernel) is
    // handled after it, so once that shows, the first one has been handled too. The Nodes'
    // heartbeats (conditions every 10 s) and the node-lifecycle controller's writes change no
    // kernel and cause no write either.
    const K_NEW: &str = "6.12.0-1-amd64";
    let _joined = Kubelet::spawn(
        client.clone(),
        KubeletOptions {
            nodes: vec![NodeRegistration::new("d", K_DEBIAN)],
            daemonsets: false,
            jobs: false,
            ..Default::default()
        },
    );
    cluster.cp.wait_node_ready("d").await.unwrap();
    let _joined_later = Kubelet::spawn(
        client.clone(),
        KubeletOptions {
            nodes: vec![NodeRegistration::new("e", K_NEW)],
            daemonsets: false,
            jobs: false,
            ..Default::default()
        },
    );
    let three = format!("{K_RHEL}\n{K_DEBIAN}\n{K_NEW}");
    eventually("new kernel claimed", WAIT, || async {
        first_claim(&client).await.as_deref() == Some(three.as_str())
    })
    .await;
    assert_eq!(writes().await, 2, "the node on a known kernel caused no write");

    // b upgrades from RHEL to the new kernel: RHEL leaves the list.
    set_kernel(&client, "b", K_NEW).await;
    let two = format!("{K_DEBIAN}\n{K_NEW}");
    eventually("upgrade claimed", WAIT, || async {
        first_claim(&client).await.as_deref() == Some(two.as_str())
    })
    .await;
    assert_eq!(writes().await, 3);

    // Nodes leave: a (Debian stays on c and d) changes nothing; then b and e take the new
    // kernel with them.
    delete_node(&client, "a").await;
    delete_node(&client, "b").await;
    delete_node(&client, "e").await;
    eventually("departures claimed", WAIT, || async {
        first_claim(&client).await.as_deref() == Some(K_DEBIAN)
    })
    .await;
    assert_eq!(
        writes().await,
        4,
        "one write for the kernel that left, none for the others"
    );

    // Someone else overwrites the claim: the writer puts it back.
    cluster
        .apply_yaml(&format!(
            "apiVersion: cluster.open-cluster-management.io/v1alpha1\nkind: ClusterClaim\n\
             metadata: {{name: {KERNEL_VERSIONS_CLAIM}}}\nspec: {{value: bogus}}\n"
        ))
        .await;
    eventually("drift repaired", WAIT, || async {
        first_claim(&client).await.as_deref() == Some(K_DEBIAN)
    })
    .await;
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_kernels_are_split_across_continuation_claims_the_hub_joins_back() {
    let _serial = one_at_a_time().await;
    // Nodes without kubelets (60 heartbeating nodes would load the machine for nothing): the
    // writer reads only their kernels.
    let cluster = spoke_cluster("sixty-kernels", Setup::default()).await;
    let client = cluster.client();
    let kernels: Vec<String> = (0..60)
        .map(|i| format!("5.14.0-{}.{i}.1.el9_{i}.x86_64", 100 + i))
        .collect();
    for (i, k) in kernels.iter().enumerate() {
        mk_node(&client, &format!("n{i:02}"), k, &[]).await;
    }
    let (_report, writer) = start_writer(&cluster);

    let mut want = kernels.clone();
    want.sort();
    let joined = || async {
        let all = claims(&client).await;
        decode_kernel_claims(|name| all.get(name).map(String::as_str)).ok()
    };
    eventually("60 kernels claimed", WAIT, || async {
        joined().await.as_ref() == Some(&want)
    })
    .await;
    let all = claims(&client).await;
    assert!(
        all.len() >= 2,
        "split across continuation claims: {:?}",
        all.keys()
    );
    assert!(
        all.values().all(|v| v.len() <= 1024),
        "every value fits OCM's 1024 characters"
    );
    let writes = cluster.spoke_writes("clusterclaims").await;
    assert_eq!(writes, all.len(), "one write per claim");

    // Down to 10 kernels: one claim again, continuations deleted.
    for i in 10..60 {
        delete_node(&client, &format!("n{i:02}")).await;
    }
    let mut ten = kernels[..10].to_vec();
    ten.sort();
    eventually("continuations removed", WAIT, || async {
        claims(&client).await.len() == 1 && joined().await.as_ref() == Some(&ten)
    })
    .await;
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_claim_crd_the_writer_reports_the_failure_and_recovers_once_installed() {
    let _serial = one_at_a_time().await;
    let cluster = spoke_cluster(
        "claims-without-crd",
        Setup {
            claim_crd: false,
            ..Default::default()
        },
    )
    .await;
    let client = cluster.client();
    mk_node(&client, "a", K_DEBIAN, &[]).await;
    let (report, writer) = start_writer(&cluster);

    let failures = || {
        report
            .metrics
            .encode()
            .lines()
            .find(|l| l.starts_with(r#"kmm_spoke_watch_errors_total{watch="clusterclaims"}"#))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    eventually("the failing claim watch is counted", WAIT, || async {
        failures() > 0
    })
    .await;
    assert!(
        !report.synced.load(Ordering::Relaxed),
        "not synced while the watch fails"
    );

    install_claim_crd(&cluster.cp).await;
    eventually("claim written once the CRD exists", WAIT, || async {
        first_claim(&client).await.as_deref() == Some(K_DEBIAN)
    })
    .await;
    assert!(report.synced.load(Ordering::Relaxed));
    writer.abort();
}
