//! The work agent against simulator clusters: what a hub user and a spoke user would observe.
// Test helpers too: a panic there is a failed assertion, as clippy.toml says for tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{WAIT, eventually, fleet};
use k8s_openapi::api::core::v1::ConfigMap;
use kmm_agents::work::WORK_FINALIZER;
use kmm_agents::{WorkAgent, WorkAgentOptions};
use kmm_api::ocm::{ManifestCondition, ManifestWork};
use kmm_sim::Faults;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

fn widget_api(spoke: &Client) -> Api<DynamicObject> {
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("test.kmm.io", "v1", "Widget"), "widgets");
    Api::namespaced_with(spoke.clone(), "kmm", &ar)
}

fn cm(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "kmm"}, "data": data})
}

/// The work as raw JSON: kmm-api's typed ManifestWork lacks some fields (selectivelyOrphans).
fn raw_work(name: &str, manifests: Vec<Value>, extra_spec: Value) -> Value {
    let mut spec = json!({"workload": {"manifests": manifests}});
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        s.extend(extra.clone());
    }
    json!({
        "apiVersion": "work.open-cluster-management.io/v1",
        "kind": "ManifestWork",
        "metadata": {"name": name},
        "spec": spec,
    })
}

async fn create_raw(hub: &Client, ns: &str, w: Value) {
    let ar = ApiResource::erase::<ManifestWork>(&());
    let api = Api::<DynamicObject>::namespaced_with(hub.clone(), ns, &ar);
    api.create(&PostParams::default(), &serde_json::from_value(w).unwrap())
        .await
        .unwrap();
}

fn work(name: &str, manifests: Vec<Value>, extra_spec: Value) -> ManifestWork {
    let mut spec = json!({"workload": {"manifests": manifests}});
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        s.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "work.open-cluster-management.io/v1",
        "kind": "ManifestWork",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn cond<'a>(
    conds: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    t: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conds.iter().find(|c| c.type_ == t)
}

fn work_cond(w: &ManifestWork, t: &str) -> Option<(String, String, Option<i64>)> {
    let c = cond(&w.status.as_ref()?.conditions, t)?;
    Some((c.status.clone(), c.reason.clone(), c.observed_generation))
}

fn manifest(w: &ManifestWork, ordinal: i32) -> Option<ManifestCondition> {
    w.status
        .as_ref()?
        .resource_status
        .as_ref()?
        .manifests
        .iter()
        .find(|m| m.resource_meta.ordinal == ordinal)
        .cloned()
}

/// Waits until the work's `Applied` condition is at the work's current generation with `status`.
async fn applied(works: &Api<ManifestWork>, name: &str, status: &str) -> ManifestWork {
    eventually(
        &format!("work {name} Applied={status} at its generation"),
        WAIT,
        || async {
            let w = works.get(name).await.ok()?;
            let (s, _, g) = work_cond(&w, "Applied")?;
            (s == status && g == w.metadata.generation).then_some(w)
        },
    )
    .await
}

fn managers(obj: &impl kube::Resource) -> Vec<(String, String)> {
    obj.meta()
        .managed_fields
        .iter()
        .flatten()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_with_server_side_apply_and_reports_feedback() {
    let f = fleet("spoke1").await;
    let works = Api::<ManifestWork>::namespaced(f.hub.client(), "spoke1");
    let _agent = WorkAgent::spawn(
        f.hub.client(),
        f.spoke.client(),
        "spoke1",
        WorkAgentOptions::default(),
    );

    let widget = json!({"apiVersion": "test.kmm.io/v1", "kind": "Widget",
        "metadata": {"name": "wid", "namespace": "kmm"}, "spec": {"size": 3}});
    let w = work(
        "w1",
        vec![widget.clone(), cm("plain", json!({"a": "1"}))],
        json!({"manifestConfigs": [{
            "resourceIdentifier": {"group": "test.kmm.io", "resource": "widgets", "name": "wid", "namespace": "kmm"},
            "updateStrategy": {"type": "ServerSideApply", "serverSideApply": {"fieldManager": "work-agent-kmm", "force": true}},
            "feedbackRules": [{"type": "JSONPaths", "jsonPaths": [
                {"name": "available", "path": ".status.availableNumber"},
                {"name": "ready", "path": ".status.conditions[?(@.type==\"Ready\")].status"},
                {"name": "absent", "path": ".status.notThere"}
            ]}]
        }]}),
    );
    works.create(&PostParams::default(), &w).await.unwrap();
    let got = applied(&works, "w1", "True").await;
    assert!(got.finalizers().iter().any(|f| f == WORK_FINALIZER));
    let (_, reason, _) = work_cond(&got, "Applied").unwrap();
    assert_eq!(reason, "AppliedManifestWorkComplete");

    let widgets = widget_api(&f.spoke.client());
    let live = widgets.get("wid").await.unwrap();
    assert_eq!(live.data["spec"]["size"], 3);
    assert!(
        managers(&live).contains(&("work-agent-kmm".to_string(), "Apply".to_string())),
        "{:?}",
        managers(&live)
    );
    let plain = Api::<ConfigMap>::namespaced(f.spoke.client(), "kmm")
        .get("plain")
        .await
        .unwrap();
    assert!(
        managers(&plain).iter().any(|(m, _)| m == "work-agent"),
        "{:?}",
        managers(&plain)
    );

    let m0 = manifest(&got, 0).unwrap();
    let meta = &m0.resource_meta;
    assert_eq!(
        (
            meta.group.as_deref(),
            meta.version.as_deref(),
            meta.kind.as_deref(),
            meta.resource.as_deref()
        ),
        (Some("test.kmm.io"), Some("v1"), Some("Widget"), Some("widgets"))
    );
    assert_eq!(
        (meta.name.as_deref(), meta.namespace.as_deref()),
        (Some("wid"), Some("kmm"))
    );
    assert_eq!(
        manifest(&got, 1).unwrap().resource_meta.resource.as_deref(),
        Some("configmaps")
    );

    // The spoke operator reports status; the hub sees it as feedback.
    widgets
        .patch_status(
            "wid",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"availableNumber": 2, "conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .unwrap();
    let values = eventually("feedback values on the hub", WAIT, || async {
        let w = works.get("w1").await.ok()?;
        let values = manifest(&w, 0)?.status_feedback?.values;
        (values.len() == 2).then_some((w, values))
    })
    .await;
    let (w, values) = values;
    assert_eq!(values[0].name, "available");
    assert_eq!(
        (
            values[0].field_value.type_.as_str(),
            values[0].field_value.integer
        ),
        ("Integer", Some(2))
    );
    assert_eq!(values[1].name, "ready");
    assert_eq!(
        (
            values[1].field_value.type_.as_str(),
            values[1].field_value.string.as_deref()
        ),
        ("String", Some("True"))
    );
    let synced = manifest(&w, 0).unwrap();
    let synced = cond(&synced.conditions, "StatusFeedbackSynced").unwrap();
    assert_eq!(synced.status, "True");

    // A spec change is applied and acknowledged at the new generation.
    let mut widget2 = widget;
    widget2["spec"]["size"] = json!(5);
    let patch = json!({"spec": {"workload": {"manifests": [widget2, cm("plain", json!({"a": "1"}))]}}});
    works
        .patch("w1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let w = applied(&works, "w1", "True").await;
    assert!(w.metadata.generation.unwrap() >= 2);
    assert_eq!(widgets.get("wid").await.unwrap().data["spec"]["size"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_not_rewritten_when_nothing_changes() {
    let f = fleet("spoke1").await;
    let works = Api::<ManifestWork>::namespaced(f.hub.client(), "spoke1");
    let opts = WorkAgentOptions {
        status_sync_interval: Duration::from_millis(50),
        ..Default::default()
    };
    let _agent = WorkAgent::spawn(f.hub.client(), f.spoke.client(), "spoke1", opts);
    works
        .create(
            &PostParams::default(),
            &work("quiet", vec![cm("q", json!({}))], json!({})),
        )
        .await
        .unwrap();
    applied(&works, "quiet", "True").await;
    eventually("Available on the work", WAIT, || async {
        let w = works.get("quiet").await.ok()?;
        (work_cond(&w, "Available")?.0 == "True").then_some(())
    })
    .await;
    let before = works.get("quiet").await.unwrap().resource_version();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = works.get("quiet").await.unwrap().resource_version();
    assert_eq!(before, after, "the agent kept writing an unchanged work");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_manifest_deletes_it_on_the_spoke() {
    let f = fleet("spoke1").await;
    let works = Api::<ManifestWork>::namespaced(f.hub.client(), "spoke1");
    let cms = Api::<ConfigMap>::namespaced(f.spoke.client(), "kmm");
    let _agent = WorkAgent::spawn(
        f.hub.client(),
        f.spoke.client(),
        "spoke1",
        WorkAgentOptions::default(),
    );
    let w = work(
        "two",
        vec![cm("keep", json!({"k": "v"})), cm("drop", json!({"k": "v"}))],
        json!({}),
    );
    works.create(&PostParams::default(), &w).await.unwrap();
    applied(&works, "two", "True").await;
    assert!(cms.get_opt("drop").await.unwrap().is_some());

    let patch = json!({"spec": {"workload": {"manifests": [cm("keep", json!({"k": "v"}))]}}});
    works
        .patch("two", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually("configmap drop deleted on the spoke", WAIT, || async {
        cms.get_opt("drop").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(cms.get_opt("keep").await.unwrap().is_some());
    let w = applied(&works, "two", "True").await;
    assert_eq!(w.status.unwrap().resource_status.unwrap().manifests.len(), 1);

    // Turning the remaining manifest ReadOnly keeps the object, and so does deleting the work then.
    let patch = json!({"spec": {"manifestConfigs": [{
        "resourceIdentifier": {"resource": "configmaps", "name": "keep", "namespace": "kmm"},
        "updateStrategy": {"type": "ReadOnly"}}]}});
    works
        .patch("two", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    applied(&works, "two", "True").await;
    works.delete("two", &DeleteParams::default()).await.unwrap();
    eventually("work two gone", WAIT, || async {
        works.get_opt("two").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(
        cms.get_opt("keep").await.unwrap().is_some(),
        "a manifest switched to ReadOnly was deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_work_waits_until_spoke_finalizers_are_released() {
    let f = fleet("spoke1").await;
    let works = Api::<ManifestWork>::namespaced(f.hub.client(), "spoke1");
    let cms = Api::<ConfigMap>::namespaced(f.spoke.client(), "kmm");
    let _agent = WorkAgent::spawn(
        f.hub.client(),
        f.spoke.client(),
        "spoke1",
        WorkAgentOptions::default(),
    );
    works
        .create(
            &PostParams::default(),
            &work("del", vec![cm("held", json!({}))], json!({})),
        )
        .await
        .unwrap();
    applied(&works, "del", "True").await;
    // A spoke controller holds the object (think: module unload still running).
    let hold = json!({"metadata": {"finalizers": ["test.kmm.io/unload"]}});
    cms.patch("held", &PatchParams::default(), &Patch::Merge(&hold))
        .await
        .unwrap();

    works.delete("del", &DeleteParams::default()).await.unwrap();
    eventually("spoke object terminating and work Deleting", WAIT, || async {
        let obj = cms.get_opt("held").await.ok()??;
        let w = works.get_opt("del").await.ok()??;
        let deleting = work_cond(&w, "Deleting")?.0 == "True";
        (obj.metadata.deletion_timestamp.is_some() && deleting).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let w = works.get("del").await.unwrap();
    assert!(
        w.finalizers().iter().any(|f| f == WORK_FINALIZER),
        "finalizer released too early"
    );

    let release = json!({"metadata": {"finalizers": null}});
    cms.patch("held", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();
    eventually("work gone after the spoke object", WAIT, || async {
        works.get_opt("del").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(cms.get_opt("held").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_and_selectively_orphan_leave_objects_behind() {
    let f = fleet("spoke1").await;
    let works = Api::<ManifestWork>::namespaced(f.hub.client(), "spoke1");
    let cms = Api::<ConfigMap>::namespaced(f.spoke.client(), "kmm");
    let _agent = WorkAgent::spawn(
        f.hub.client(),
        f.spoke.client(),
        "spoke1",
        WorkAgentOptions::default(),
    );
    let orphan = work(
        "orphan",
        vec![cm("o1", json!({}))],
        json!({"deleteOption": {"propagationPolicy": "Orphan"}}),
    );
    let selective = raw_work(
        "selective",
        vec![cm("s-keep", json!({})), cm("s-drop", json!({}))],
        json!({"deleteOption": {"propagationPolicy": "SelectivelyOrphan", "selectivelyOrphans": {"orphaningRules": [
            {"group": "", "resource": "configmaps", "name": "s-keep", "namespace": "kmm"}]}}}),
    );
    works.create(&PostParams::default(), &orphan).await.unwrap();
    create_raw(&f.hub.client(), "spoke1", selective).await;
    applied(&works, "orphan", "True").await;
    applied(&works, "selective", "True").await;
    works.delete("orphan", &DeleteParams::default()).await.unwrap();
    works.delete("selective", &DeleteParams::default()).await.unwrap();
    eventually("both works gone", WAIT, || async {
        let a = works.get_opt("orphan").await.unwrap();
        let b = works.get_opt("selective").await.unwrap();
        (a.is_none() && b.is_none()).then_some(())
    })
    .await;
    assert!(cms.get_opt("o1").await.unwrap().is_some());
    assert!(cms.get_opt("s-keep").await.unwrap().is_some());
    assert!(cms.get_opt("s-drop").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssa_conflict_fails_the_manifest_until_force_is_set() {
    let f = fleet("spoke1").await;
    let works = Api::<ManifestWork>::namespaced(f.hub.client(), "spoke1");
    let cms = Api::<ConfigMap>::namespaced(f.spoke.client(), "kmm");
    // Someone on the spoke owns data.key.
    let theirs = cm("contested", json!({"key": "spoke"}));
    cms.patch(
        "contested",
        &PatchParams::apply("someone-else"),
        &Patch::Apply(&theirs),
    )
    .await
    .unwrap();
    let opts = WorkAgentOptions {
        retry_interval: Duration::from_millis(200),
        ..Default::default()
    };
    let _agent = WorkAgent::spawn(f.hub.client(), f.spoke.client(), "spoke1", opts);

    let config = |force: bool| {
        json!({"manifestConfigs": [{
            "resourceIdentifier": {"group": "", "resource": "configmaps", "name": "contested", "namespace": "kmm"},
            "updateStrategy": {"type": "ServerSideApply", "serverSideApply": {"force": force}}}]})
    };
    let w = work("ssa", vec![cm("contested", json!({"key": "hub"}))], config(false));
    works.create(&PostParams::default(), &w).await.unwrap();
    let w = applied(&works, "ssa", "False").await;
    assert_eq!(work_cond(&w, "Applied").unwrap().1, "AppliedManifestWorkFailed");
    let m = manifest(&w, 0).unwrap();
    let a = cond(&m.conditions, "Applied").unwrap();
    assert_eq!(
        (a.status.as_str(), a.reason.as_str()),
        ("False", "AppliedManifestFailed")
    );
    assert!(a.message.to_lowercase().contains("conflict"), "{}", a.message);
    assert_eq!(cms.get("contested").await.unwrap().data.unwrap()["key"], "spoke");

    let patch = json!({"spec": config(true)});
    works
        .patch("ssa", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    applied(&works, "ssa", "True").await;
    let live = cms.get("contested").await.unwrap();
    assert_eq!(live.data.as_ref().unwrap()["key"], "hub");
    assert!(
        managers(&live)
            .iter()
            .any(|(m, op)| m == "work-agent" && op == "Apply")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_strategy_reverts_drift_but_keeps_spoke_labels_and_create_only_never_writes_again() {
    let f = fleet("spoke1").await;
    let works = Api::<ManifestWork>::namespaced(f.hub.client(), "spoke1");
    let cms = Api::<ConfigMap>::namespaced(f.spoke.client(), "kmm");
    let opts = WorkAgentOptions {
        resync_interval: Duration::from_millis(300),
        ..Default::default()
    };
    let _agent = WorkAgent::spawn(f.hub.client(), f.spoke.client(), "spoke1", opts);
    let w = work(
        "drift",
        vec![
            cm("updated", json!({"k": "hub"})),
            cm("once", json!({"k": "hub"})),
        ],
        json!({"manifestConfigs": [{
            "resourceIdentifier": {"resource": "configmaps", "name": "once", "namespace": "kmm"},
            "updateStrategy": {"type": "CreateOnly"}}]}),
    );
    works.create(&PostParams::default(), &w).await.unwrap();
    applied(&works, "drift", "True").await;
    let edit = json!({"metadata": {"labels": {"spoke": "label"}}, "data": {"k": "spoke"}});
    cms.patch("updated", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    cms.patch("once", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    eventually("drift on the Update object reverted", WAIT, || async {
        let live = cms.get("updated").await.ok()?;
        (live.data.as_ref()?.get("k")? == "hub").then_some(())
    })
    .await;
    let live = cms.get("updated").await.unwrap();
    assert_eq!(live.labels().get("spoke").map(String::as_str), Some("label"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(cms.get("once").await.unwrap().data.unwrap()["k"], "spoke");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_errors_and_well_known_status() {
    let f = fleet("spoke1").await;
    let works = Api::<ManifestWork>::namespaced(f.hub.client(), "spoke1");
    let _agent = WorkAgent::spawn(
        f.hub.client(),
        f.spoke.client(),
        "spoke1",
        WorkAgentOptions::default(),
    );
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "kmm"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
    let w = work(
        "fb",
        vec![cm("map", json!({"a": "b"})), deploy],
        json!({"manifestConfigs": [
            {"resourceIdentifier": {"resource": "configmaps", "name": "map", "namespace": "kmm"},
             "feedbackRules": [{"type": "JSONPaths", "jsonPaths": [{"name": "data", "path": ".data"}]}]},
            {"resourceIdentifier": {"group": "apps", "resource": "deployments", "name": "*", "namespace": "kmm"},
             "feedbackRules": [{"type": "WellKnownStatus"}]}
        ]}),
    );
    works.create(&PostParams::default(), &w).await.unwrap();
    applied(&works, "fb", "True").await;
    let deployments = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(f.spoke.client(), "kmm");
    let st = json!({"status": {"replicas": 2, "readyReplicas": 1, "availableReplicas": 1}});
    deployments
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&st))
        .await
        .unwrap();
    let w = eventually("WellKnownStatus feedback of the Deployment", WAIT, || async {
        let w = works.get("fb").await.ok()?;
        let v = manifest(&w, 1)?.status_feedback?.values;
        v.iter()
            .any(|x| x.name == "ReadyReplicas" && x.field_value.integer == Some(1))
            .then_some(w)
    })
    .await;
    let m0 = manifest(&w, 0).unwrap();
    let synced = cond(&m0.conditions, "StatusFeedbackSynced").unwrap();
    assert_eq!(
        (synced.status.as_str(), synced.reason.as_str()),
        ("False", "StatusFeedbackSyncFailed")
    );
    assert!(m0.status_feedback.unwrap_or_default().values.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_spoke_fails_the_work_and_recovers() {
    let f = fleet("spoke1").await;
    let works = Api::<ManifestWork>::namespaced(f.hub.client(), "spoke1");
    let opts = WorkAgentOptions {
        retry_interval: Duration::from_millis(200),
        ..Default::default()
    };
    let agent = WorkAgent::spawn(f.hub.client(), f.spoke.client(), "spoke1", opts);
    // Every spoke request fails with 500. (`Faults::unreachable()` answers 503, which kube's
    // default client retry policy retries for minutes, so nothing would be observable in time.)
    f.spoke.set_faults(Faults::errors(1.0, &[500]));
    works
        .create(
            &PostParams::default(),
            &work("down", vec![cm("c", json!({}))], json!({})),
        )
        .await
        .unwrap();
    applied(&works, "down", "False").await;
    assert!(agent.is_running());
    f.spoke.clear_faults();
    applied(&works, "down", "True").await;
    assert!(
        Api::<ConfigMap>::namespaced(f.spoke.client(), "kmm")
            .get_opt("c")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoke_answering_only_503_does_not_stop_the_agent() {
    let f = fleet("spoke1").await;
    let works = Api::<ManifestWork>::namespaced(f.hub.client(), "spoke1");
    // Without kube's default retry layer a 503 reaches the agent at once, as a refused
    // connection to a dead cluster would.
    let mut config = kube::Config::new(f.spoke.url().parse().unwrap());
    config.default_retry = false;
    let spoke = Client::try_from(config).unwrap();
    let opts = WorkAgentOptions {
        retry_interval: Duration::from_millis(200),
        ..Default::default()
    };
    let agent = WorkAgent::spawn(f.hub.client(), spoke, "spoke1", opts);
    f.spoke.set_faults(Faults::unreachable());
    works
        .create(
            &PostParams::default(),
            &work("dead", vec![cm("c", json!({}))], json!({})),
        )
        .await
        .unwrap();
    let w = applied(&works, "dead", "False").await;
    let m = manifest(&w, 0).unwrap();
    assert_eq!(
        cond(&m.conditions, "Applied").unwrap().reason,
        "AppliedManifestFailed"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(agent.is_running());
    f.spoke.clear_faults();
    applied(&works, "dead", "True").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_applied_before_what_lives_in_them_and_read_only_objects_are_never_touched() {
    let f = fleet("spoke1").await;
    let works = Api::<ManifestWork>::namespaced(f.hub.client(), "spoke1");
    let spoke_cms = Api::<ConfigMap>::namespaced(f.spoke.client(), "kmm");
    spoke_cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(cm("watched", json!({"x": "1"}))).unwrap(),
        )
        .await
        .unwrap();
    let opts = WorkAgentOptions {
        retry_interval: Duration::from_secs(5),
        ..Default::default()
    };
    let _agent = WorkAgent::spawn(f.hub.client(), f.spoke.client(), "spoke1", opts);
    let in_fresh =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "fresh"}});
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fresh"}});
    let w = work(
        "ordered",
        vec![in_fresh, ns, cm("watched", json!({"x": "hub"}))],
        json!({"manifestConfigs": [{
            "resourceIdentifier": {"resource": "configmaps", "name": "watched", "namespace": "kmm"},
            "updateStrategy": {"type": "ReadOnly"},
            "feedbackRules": [{"type": "JSONPaths", "jsonPaths": [{"name": "x", "path": ".data.x"}]}]}]}),
    );
    works.create(&PostParams::default(), &w).await.unwrap();
    // The first status the agent writes is already a success: no failed first attempt.
    let first = eventually("first status", WAIT, || async {
        let w = works.get("ordered").await.ok()?;
        work_cond(&w, "Applied").map(|_| w)
    })
    .await;
    assert_eq!(work_cond(&first, "Applied").unwrap().0, "True");
    assert_eq!(
        manifest(&first, 0).unwrap().resource_meta.namespace.as_deref(),
        Some("fresh")
    );
    assert_eq!(
        manifest(&first, 1).unwrap().resource_meta.namespace.as_deref(),
        Some("")
    );
    // The read-only object keeps the spoke's data and its feedback comes back.
    let w = eventually("read-only feedback", WAIT, || async {
        let w = works.get("ordered").await.ok()?;
        let v = manifest(&w, 2)?.status_feedback?.values;
        (v.len() == 1).then_some(w)
    })
    .await;
    let v = manifest(&w, 2).unwrap().status_feedback.unwrap().values;
    assert_eq!(v[0].field_value.string.as_deref(), Some("1"));
    assert_eq!(spoke_cms.get("watched").await.unwrap().data.unwrap()["x"], "1");

    works.delete("ordered", &DeleteParams::default()).await.unwrap();
    eventually("work gone", WAIT, || async {
        works.get_opt("ordered").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(
        spoke_cms.get_opt("watched").await.unwrap().is_some(),
        "a ReadOnly object was deleted"
    );
    let fresh = Api::<ConfigMap>::namespaced(f.spoke.client(), "fresh");
    assert!(fresh.get_opt("c").await.map(|o| o.is_none()).unwrap_or(true));
}
