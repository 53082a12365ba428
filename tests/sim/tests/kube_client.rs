//! The simulator as kube-rs sees it: every behaviour the product relies on, through `Api<K>`.
// Test helpers outside #[test] functions may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::cluster_with_crds;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use kmm_api::ocm::{ManagedCluster, ManifestWork};
use kmm_sim::Sim;
use kube::{
    Api, Client, Discovery, Resource, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, PropagationPolicy},
    core::Status,
};
use serde_json::json;

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        ..Default::default()
    }
}

fn api_error(e: kube::Error) -> Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other}"),
    }
}

async fn simple() -> (Sim, Client) {
    let sim = Sim::new().unwrap();
    let c = sim.add_cluster("one").await.unwrap();
    let client = c.client();
    (sim, client)
}

#[tokio::test]
async fn discovery_lists_builtin_kinds_and_registered_crds() {
    let (_sim, c) = cluster_with_crds("hub").await;
    let d = Discovery::new(c.client()).run().await.unwrap();
    let kinds: Vec<String> = d
        .groups()
        .flat_map(|g| g.recommended_resources())
        .map(|(ar, _)| ar.kind)
        .collect();
    for k in [
        "Pod",
        "Node",
        "DaemonSet",
        "Job",
        "Lease",
        "ManifestWork",
        "ManagedCluster",
        "ManagedClusterModule",
        "Module",
    ] {
        assert!(
            kinds.iter().any(|x| x == k),
            "{k} missing from discovery: {kinds:?}"
        );
    }
    let (ar, caps) = d
        .resolve_gvk(&kube::api::GroupVersionKind::gvk(
            "work.open-cluster-management.io",
            "v1",
            "ManifestWork",
        ))
        .unwrap();
    assert_eq!(ar.plural, "manifestworks");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    let v = c.client().apiserver_version().await.unwrap();
    assert_eq!((v.major.as_str(), v.minor.as_str()), ("1", "34"));
}

#[tokio::test]
async fn create_get_list_replace_delete_with_resource_versions() {
    let (_sim, client) = simple().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let created = api
        .create(&PostParams::default(), &cm("a", &[("k", "1")]))
        .await
        .unwrap();
    let rv1: u64 = created.resource_version().unwrap().parse().unwrap();
    assert!(created.uid().is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    let dup = api
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap_err();
    assert_eq!(api_error(dup).code, 409);

    let mut edited = api.get("a").await.unwrap();
    edited.data.as_mut().unwrap().insert("k".into(), "2".into());
    let replaced = api.replace("a", &PostParams::default(), &edited).await.unwrap();
    let rv2: u64 = replaced.resource_version().unwrap().parse().unwrap();
    assert!(rv2 > rv1, "every write bumps the resource version");
    // Writing again with the now-stale resourceVersion is refused.
    let stale = api
        .replace("a", &PostParams::default(), &edited)
        .await
        .unwrap_err();
    let e = api_error(stale);
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));

    assert_eq!(api.list(&ListParams::default()).await.unwrap().items.len(), 1);
    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_error(api.get("a").await.unwrap_err()).code, 404);
    let missing_ns: Api<ConfigMap> = Api::namespaced(api.clone().into_client(), "nowhere");
    assert_eq!(
        api_error(
            missing_ns
                .create(&PostParams::default(), &cm("x", &[]))
                .await
                .unwrap_err()
        )
        .code,
        404
    );
}

#[tokio::test]
async fn merge_and_json_patches_apply() {
    let (_sim, client) = simple().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &cm("p", &[("a", "1"), ("b", "2")]))
        .await
        .unwrap();
    let merged = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"a": null, "c": "3"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        merged.data.unwrap(),
        BTreeMap::from([("b".into(), "2".into()), ("c".into(), "3".into())])
    );
    let ops: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/data/b", "value": "20"}])).unwrap();
    let patched = api
        .patch("p", &PatchParams::default(), &Patch::<()>::Json(ops))
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["b"], "20");
    let bad: json_patch::Patch =
        serde_json::from_value(json!([{"op": "remove", "path": "/data/zzz"}])).unwrap();
    assert_eq!(
        api_error(
            api.patch("p", &PatchParams::default(), &Patch::<()>::Json(bad))
                .await
                .unwrap_err()
        )
        .code,
        422
    );
}

#[tokio::test]
async fn server_side_apply_tracks_managers_conflicts_and_force() {
    let (_sim, client) = simple().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let a = PatchParams::apply("manager-a");
    let first = api
        .patch("s", &a, &Patch::Apply(cm("s", &[("x", "1"), ("y", "1")])))
        .await
        .unwrap();
    assert_eq!(first.managed_fields()[0].manager.as_deref(), Some("manager-a"));
    assert_eq!(first.managed_fields()[0].operation.as_deref(), Some("Apply"));

    // Re-applying the same configuration is a no-op: no new resource version.
    let again = api
        .patch("s", &a, &Patch::Apply(cm("s", &[("x", "1"), ("y", "1")])))
        .await
        .unwrap();
    assert_eq!(again.resource_version(), first.resource_version());

    let b = PatchParams::apply("manager-b");
    let conflict = api
        .patch("s", &b, &Patch::Apply(cm("s", &[("x", "2")])))
        .await
        .unwrap_err();
    let e = api_error(conflict);
    assert_eq!(e.code, 409);
    assert!(
        e.message.contains(r#"conflict with "manager-a""#) && e.message.contains(".data.x"),
        "{}",
        e.message
    );

    let forced = api
        .patch("s", &b.clone().force(), &Patch::Apply(cm("s", &[("x", "2")])))
        .await
        .unwrap();
    assert_eq!(forced.data.as_ref().unwrap()["x"], "2");
    // manager-a drops y from its configuration: y goes, x (now b's) stays.
    let mut bare = cm("s", &[]);
    bare.data = None;
    let dropped = api.patch("s", &a, &Patch::Apply(bare)).await.unwrap();
    assert_eq!(
        dropped.data.clone().unwrap(),
        BTreeMap::from([("x".into(), "2".into())])
    );
    let managers: Vec<_> = dropped
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, ["manager-b"]);
}

#[tokio::test]
async fn generation_moves_on_spec_changes_only_and_status_is_a_subresource() {
    let (_sim, c) = cluster_with_crds("hub").await;
    let api: Api<ManagedCluster> = Api::all(c.client());
    let pp = PatchParams::apply("test");
    let mc = json!({"apiVersion": "cluster.open-cluster-management.io/v1", "kind": "ManagedCluster",
                    "metadata": {"name": "c1", "labels": {"a": "b"}}, "spec": {"hubAcceptsClient": true},
                    "status": {"clusterClaims": [{"name": "x", "value": "ignored on the main resource"}]}});
    let created = api.patch("c1", &pp, &Patch::Apply(&mc)).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(
        created.status.is_none(),
        "status in a main-resource write is ignored"
    );

    let status = json!({"status": {"clusterClaims": [{"name": "kernel-versions.kmm.node.kubernetes.io", "value": "6.1.0"}]}});
    let with_status = api
        .patch_status("c1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(with_status.metadata.generation, Some(1));
    assert_eq!(
        with_status.claim("kernel-versions.kmm.node.kubernetes.io"),
        Some("6.1.0")
    );

    let relabelled = api
        .patch(
            "c1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "c"}}})),
        )
        .await
        .unwrap();
    assert_eq!(relabelled.metadata.generation, Some(1), "metadata is not spec");
    let respec = api
        .patch(
            "c1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"hubAcceptsClient": false}})),
        )
        .await
        .unwrap();
    assert_eq!(respec.metadata.generation, Some(2));
    assert!(respec.status.is_some(), "a spec write keeps the status");

    // A replace carrying a different status leaves the stored status alone.
    let mut r = respec.clone();
    r.status = None;
    let replaced = api.replace("c1", &PostParams::default(), &r).await.unwrap();
    assert_eq!(
        replaced.claim("kernel-versions.kmm.node.kubernetes.io"),
        Some("6.1.0")
    );
}

#[tokio::test]
async fn crd_objects_are_pruned_and_defaulted_per_schema() {
    let (_sim, c) = cluster_with_crds("hub").await;
    let ns: Api<Namespace> = Api::all(c.client());
    ns.create(
        &PostParams::default(),
        &Namespace {
            metadata: ObjectMeta {
                name: Some("c1".into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let works: Api<ManifestWork> = Api::namespaced(c.client(), "c1");
    let w = json!({"apiVersion": "work.open-cluster-management.io/v1", "kind": "ManifestWork",
                   "metadata": {"name": "w"}, "spec": {"notAField": 1, "workload": {"manifests": [
                       {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"keep": "me"}}]}}});
    let out = works
        .patch("w", &PatchParams::apply("t"), &Patch::Apply(&w))
        .await
        .unwrap();
    let raw = serde_json::to_value(&out).unwrap();
    assert!(raw["spec"].get("notAField").is_none(), "unknown field pruned");
    assert_eq!(
        raw["spec"]["workload"]["manifests"][0]["data"]["keep"], "me",
        "embedded objects are kept whole"
    );
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let (_sim, client) = simple().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut f = cm("f", &[]);
    f.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.create(&PostParams::default(), &f).await.unwrap();
    api.delete("f", &DeleteParams::default()).await.unwrap();
    let held = api.get("f").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    let adding = api
        .patch(
            "f",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold", "new"]}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(adding).code, 422, "no new finalizers while deleting");
    api.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_error(api.get("f").await.unwrap_err()).code, 404);
}

#[tokio::test]
async fn owner_references_cascade_in_background_and_foreground_and_orphan() {
    let (_sim, client) = simple().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    for policy in [
        PropagationPolicy::Background,
        PropagationPolicy::Foreground,
        PropagationPolicy::Orphan,
    ] {
        let owner = api
            .create(&PostParams::default(), &cm("owner", &[]))
            .await
            .unwrap();
        let mut child = cm("child", &[]);
        child.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: "owner".into(),
                uid: owner.uid().unwrap(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        ]);
        let mut grandchild = cm("grandchild", &[]);
        let child = api.create(&PostParams::default(), &child).await.unwrap();
        grandchild.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: "child".into(),
                uid: child.uid().unwrap(),
                ..Default::default()
            },
        ]);
        api.create(&PostParams::default(), &grandchild).await.unwrap();
        let dp = DeleteParams {
            propagation_policy: Some(policy.clone()),
            ..Default::default()
        };
        api.delete("owner", &dp).await.unwrap();
        let names: Vec<String> = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|c| c.name_any())
            .collect();
        match policy {
            PropagationPolicy::Orphan => {
                assert_eq!(names, ["child", "grandchild"], "orphaned dependents stay");
                assert!(
                    api.get("child")
                        .await
                        .unwrap()
                        .metadata
                        .owner_references
                        .unwrap_or_default()
                        .is_empty()
                );
                // The grandchild still belongs to the child, so it goes with it.
                api.delete("child", &DeleteParams::default()).await.unwrap();
                assert!(api.list(&ListParams::default()).await.unwrap().items.is_empty());
            }
            _ => assert!(names.is_empty(), "{policy:?} left {names:?}"),
        }
    }
}

#[tokio::test]
async fn foreground_deletion_waits_for_a_dependent_finalizer() {
    let (_sim, client) = simple().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let owner = api
        .create(&PostParams::default(), &cm("owner", &[]))
        .await
        .unwrap();
    let mut child = cm("child", &[]);
    child.metadata.finalizers = Some(vec!["example.com/unload".into()]);
    child.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "owner".into(),
            uid: owner.uid().unwrap(),
            ..Default::default()
        },
    ]);
    api.create(&PostParams::default(), &child).await.unwrap();
    api.delete("owner", &DeleteParams::foreground()).await.unwrap();
    let waiting = api.get("owner").await.unwrap();
    assert!(waiting.finalizers().iter().any(|f| f == "foregroundDeletion"));
    assert!(
        api.get("child")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    api.patch(
        "child",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(api.list(&ListParams::default()).await.unwrap().items.is_empty());
}

#[tokio::test]
async fn deleting_a_namespace_deletes_its_content() {
    let (_sim, client) = simple().await;
    let ns: Api<Namespace> = Api::all(client.clone());
    ns.create(
        &PostParams::default(),
        &Namespace {
            metadata: ObjectMeta {
                name: Some("gone".into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, "gone");
    api.create(&PostParams::default(), &cm("x", &[])).await.unwrap();
    ns.delete("gone", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_error(ns.get("gone").await.unwrap_err()).code, 404);
    assert_eq!(api_error(api.get("x").await.unwrap_err()).code, 404);
}

#[tokio::test]
async fn label_and_field_selectors_filter_lists() {
    let (_sim, client) = simple().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (name, node, tier) in [("p1", "n1", "gpu"), ("p2", "n2", "gpu"), ("p3", "n1", "nic")] {
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": name, "labels": {"tier": tier}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}}))
        .unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    let names = |l: kube::core::ObjectList<Pod>| l.items.iter().map(|p| p.name_any()).collect::<Vec<_>>();
    assert_eq!(
        names(
            pods.list(&ListParams::default().labels("tier=gpu"))
                .await
                .unwrap()
        ),
        ["p1", "p2"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().labels("tier in (nic),tier!=gpu"))
                .await
                .unwrap()
        ),
        ["p3"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().fields("spec.nodeName=n1"))
                .await
                .unwrap()
        ),
        ["p1", "p3"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().fields("metadata.name=p2"))
                .await
                .unwrap()
        ),
        ["p2"]
    );
    let e = pods
        .list(&ListParams::default().fields("spec.image=x"))
        .await
        .unwrap_err();
    assert_eq!(api_error(e).code, 400);
    assert_eq!(
        pods.get("p1").await.unwrap().status.unwrap().phase.as_deref(),
        Some("Pending")
    );
    // Paging: a small limit still returns everything across pages.
    let all: Api<Pod> = Api::all(client);
    let page = all.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let rest = all
        .list(
            &ListParams::default()
                .limit(2)
                .continue_token(page.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(names(rest), ["p3"]);
}

#[tokio::test]
async fn cluster_scoped_kinds_have_no_namespace() {
    let (_sim, client) = simple().await;
    let nodes: Api<Node> = Api::all(client);
    let n: Node = serde_json::from_value(json!({"metadata": {"name": "node-1", "namespace": "ignored"},
        "status": {"nodeInfo": {"kernelVersion": "6.1.0-28-cloud-amd64", "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
          "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "", "operatingSystem": "linux", "osImage": "", "systemUUID": ""}}})).unwrap();
    let created = nodes.create(&PostParams::default(), &n).await.unwrap();
    assert_eq!(created.metadata.namespace, None);
    assert_eq!(
        created.status.unwrap().node_info.unwrap().kernel_version,
        "6.1.0-28-cloud-amd64"
    );
}

#[tokio::test]
async fn events_recorded_by_kube_rs_are_listed_as_v1_events_for_kubectl_describe() {
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let (_sim, client) = simple().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let target = cms
        .create(&PostParams::default(), &cm("target", &[]))
        .await
        .unwrap();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "test-ctl".into(),
            instance: None,
        },
    );
    let ev = Event {
        type_: EventType::Warning,
        reason: "Broken".into(),
        note: Some("it broke".into()),
        action: "Check".into(),
        secondary: None,
    };
    recorder.publish(&ev, &target.object_ref(&())).await.unwrap();
    let core: Api<CoreEvent> = Api::namespaced(client, "default");
    let found = core
        .list(&ListParams::default().fields("involvedObject.name=target,involvedObject.kind=ConfigMap"))
        .await
        .unwrap()
        .items;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].reason.as_deref(), Some("Broken"));
    assert_eq!(found[0].message.as_deref(), Some("it broke"));
    assert_eq!(found[0].type_.as_deref(), Some("Warning"));
}

#[tokio::test]
async fn a_dependent_created_after_its_owner_is_gone_is_collected() {
    let (_sim, client) = simple().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let owner = api
        .create(&PostParams::default(), &cm("owner", &[]))
        .await
        .unwrap();
    api.delete("owner", &DeleteParams::default()).await.unwrap();
    let mut late = cm("late-child", &[]);
    late.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "owner".into(),
            uid: owner.uid().unwrap(),
            ..Default::default()
        },
    ]);
    api.create(&PostParams::default(), &late).await.unwrap();
    assert!(
        api.get_opt("late-child").await.unwrap().is_none(),
        "an orphan with a dangling owner is collected"
    );
    let mut free = cm("no-owner", &[]);
    free.metadata.owner_references = Some(vec![]);
    api.create(&PostParams::default(), &free).await.unwrap();
    assert!(api.get_opt("no-owner").await.unwrap().is_some());
}
