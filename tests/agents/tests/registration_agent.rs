//! The registration agent against simulator clusters.
// Test helpers too: a panic there is a failed assertion, as clippy.toml says for tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{WAIT, eventually, fleet};
use k8s_openapi::api::core::v1::Event;
use kmm_agents::registration::TRUNCATED_EVENT_REASON;
use kmm_agents::{RegistrationAgent, RegistrationOptions};
use kmm_api::ocm::{ClusterClaim, ClusterClaimSpec, ManagedCluster};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn claim(name: &str, value: &str, spoke_only: bool) -> ClusterClaim {
    let mut c = ClusterClaim::new(name, ClusterClaimSpec { value: value.into() });
    if spoke_only {
        c.metadata.labels = Some(BTreeMap::from([(
            "open-cluster-management.io/spoke-only".to_string(),
            String::new(),
        )]));
    }
    c
}

fn claims_of(mc: &ManagedCluster) -> Vec<(String, String)> {
    mc.status
        .iter()
        .flat_map(|s| s.cluster_claims.iter())
        .map(|c| (c.name.clone(), c.value.clone()))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_reach_the_hub_sorted_filtered_and_capped() {
    let f = fleet("spoke1").await;
    let claims = Api::<ClusterClaim>::all(f.spoke.client());
    for c in [
        claim("zz-custom", "z", false),
        claim("kernel-versions.kmm.node.kubernetes.io", "5.14.0", false),
        claim("id.k8s.io", "cluster-id", false),
        claim("b-custom", "b", false),
        claim("a-custom", "a", false),
        claim("aa-secret", "hidden", true),
    ] {
        claims.create(&PostParams::default(), &c).await.unwrap();
    }
    let opts = RegistrationOptions {
        max_custom_cluster_claims: 2,
        create_cluster_with_labels: Some(BTreeMap::from([("env".to_string(), "test".to_string())])),
        create_namespace: true,
        resync_interval: Duration::from_millis(200),
        ..Default::default()
    };
    let _agent = RegistrationAgent::spawn(f.hub.client(), f.spoke.client(), "spoke1", opts);
    let clusters = Api::<ManagedCluster>::all(f.hub.client());
    let mc = eventually("ManagedCluster with claims", WAIT, || async {
        let mc = clusters.get_opt("spoke1").await.ok()??;
        (!claims_of(&mc).is_empty()).then_some(mc)
    })
    .await;
    assert_eq!(mc.labels().get("env").map(String::as_str), Some("test"));
    assert!(mc.spec.hub_accepts_client);
    // Reserved first; custom ones sorted and cut at two (kernel-versions and zz-custom dropped).
    assert_eq!(
        claims_of(&mc),
        pairs(&[("id.k8s.io", "cluster-id"), ("a-custom", "a"), ("b-custom", "b")])
    );
    let conds = &mc.status.as_ref().unwrap().conditions;
    for t in ["ManagedClusterJoined", "ManagedClusterConditionAvailable"] {
        assert!(
            conds.iter().any(|c| c.type_ == t && c.status == "True"),
            "{t} missing: {conds:?}"
        );
    }
    let events = eventually("truncation event", WAIT, || async {
        let list = Api::<Event>::namespaced(f.hub.client(), "spoke1")
            .list(&Default::default())
            .await
            .ok()?;
        let e: Vec<Event> = list
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(TRUNCATED_EVENT_REASON))
            .collect();
        (!e.is_empty()).then_some(e)
    })
    .await;
    let msg = events[0].message.clone().unwrap_or_default();
    assert!(
        msg.contains("zz-custom") && msg.contains("kernel-versions"),
        "{msg}"
    );

    // A changed value and a removed claim show up; the next custom claim moves into the cap.
    claims
        .patch(
            "a-custom",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"value": "a2"}})),
        )
        .await
        .unwrap();
    claims.delete("b-custom", &DeleteParams::default()).await.unwrap();
    let want = pairs(&[
        ("id.k8s.io", "cluster-id"),
        ("a-custom", "a2"),
        ("kernel-versions.kmm.node.kubernetes.io", "5.14.0"),
    ]);
    eventually("updated claims on the hub", WAIT, || async {
        let mc = clusters.get("spoke1").await.ok()?;
        (claims_of(&mc) == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_suffix_keeps_our_claim_and_nothing_is_patched_when_unchanged() {
    let f = fleet("spoke1").await;
    let claims = Api::<ClusterClaim>::all(f.spoke.client());
    for c in [
        claim("a", "1", false),
        claim("kernel-versions.kmm.node.kubernetes.io", "6.1", false),
    ] {
        claims.create(&PostParams::default(), &c).await.unwrap();
    }
    // The ManagedCluster exists already (the hub admin accepted it); the agent only fills status.
    let clusters = Api::<ManagedCluster>::all(f.hub.client());
    let mc: ManagedCluster = serde_json::from_value(json!({
        "apiVersion": "cluster.open-cluster-management.io/v1", "kind": "ManagedCluster",
        "metadata": {"name": "spoke1"}, "spec": {"hubAcceptsClient": true}}))
    .unwrap();
    clusters.create(&PostParams::default(), &mc).await.unwrap();
    let opts = RegistrationOptions {
        max_custom_cluster_claims: 1,
        reserved_claim_suffixes: vec!["kmm.node.kubernetes.io".into()],
        resync_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let _agent = RegistrationAgent::spawn(f.hub.client(), f.spoke.client(), "spoke1", opts);
    let want = pairs(&[("kernel-versions.kmm.node.kubernetes.io", "6.1"), ("a", "1")]);
    eventually("claims with the reserved suffix first", WAIT, || async {
        let mc = clusters.get("spoke1").await.ok()?;
        (claims_of(&mc) == want).then_some(())
    })
    .await;
    let before = clusters.get("spoke1").await.unwrap().resource_version();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        clusters.get("spoke1").await.unwrap().resource_version(),
        before,
        "unchanged status was rewritten"
    );
}
