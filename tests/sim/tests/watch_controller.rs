//! Watches, a kube-runtime Controller end to end, fault injection and scale mode.
// Test helpers outside #[test] functions may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{WAIT, cluster_with_crds};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kmm_api::ocm::ManagedCluster;
use kmm_sim::{Faults, FleetMember, Sim};
use kmm_test_kit::eventually;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
    runtime::{
        Controller,
        controller::Action,
        watcher::{self, Event},
    },
};
use serde_json::json;

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn next_event(
    s: &mut (impl futures::Stream<Item = Result<WatchEvent<ConfigMap>, kube::Error>> + Unpin),
) -> WatchEvent<ConfigMap> {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("watch event in time")
        .expect("stream open")
        .unwrap()
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version_and_follows_selectors() {
    let sim = Sim::new().unwrap();
    let c = sim.add_cluster("w").await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(c.client(), "default");
    let first = api
        .create(&PostParams::default(), &cm("a", &[("app", "x")]))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("b", &[("app", "x")]))
        .await
        .unwrap();

    // From a's version: only b's creation is replayed.
    let mut s = api
        .watch(
            &WatchParams::default().disable_bookmarks(),
            first.resource_version().as_deref().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    match next_event(&mut s).await {
        WatchEvent::Added(o) => assert_eq!(o.name_any(), "b"),
        other => panic!("expected b added, got {other:?}"),
    }

    // A selector watch sees an object leave the selection as DELETED.
    let mut sel = api
        .watch(&WatchParams::default().disable_bookmarks().labels("app=x"), "0")
        .await
        .unwrap()
        .boxed();
    let mut seen = Vec::new();
    for _ in 0..2 {
        if let WatchEvent::Added(o) = next_event(&mut sel).await {
            seen.push(o.name_any());
        }
    }
    seen.sort();
    assert_eq!(seen, ["a", "b"]);
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "y"}}})),
    )
    .await
    .unwrap();
    match next_event(&mut sel).await {
        WatchEvent::Deleted(o) => assert_eq!(o.name_any(), "a"),
        other => panic!("expected a to leave the selection, got {other:?}"),
    }
}

#[tokio::test]
async fn expired_resource_versions_get_410_and_bookmarks_arrive() {
    let sim = Sim::new().unwrap();
    let c = sim.add_cluster("w").await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(c.client(), "default");
    let old = api.create(&PostParams::default(), &cm("a", &[])).await.unwrap();
    api.create(&PostParams::default(), &cm("b", &[])).await.unwrap();
    c.compact();
    let mut s = api
        .watch(
            &WatchParams::default().disable_bookmarks(),
            old.resource_version().as_deref().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    match next_event(&mut s).await {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("expected 410 Gone, got {other:?}"),
    }

    let now = c.resource_version().to_string();
    let mut b = api.watch(&WatchParams::default(), &now).await.unwrap().boxed();
    match next_event(&mut b).await {
        WatchEvent::Bookmark(bm) => assert_eq!(bm.metadata.resource_version, now),
        other => panic!("expected a bookmark, got {other:?}"),
    }
}

#[tokio::test]
async fn watcher_survives_dropped_streams_and_streaming_lists_work() {
    let sim = Sim::new().unwrap();
    let c = sim.add_cluster("w").await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(c.client(), "default");
    api.create(&PostParams::default(), &cm("before", &[]))
        .await
        .unwrap();
    for config in [
        watcher::Config::default(),
        watcher::Config::default().streaming_lists(),
    ] {
        let mut events = watcher::watcher(api.clone(), config).boxed();
        let mut init_done = false;
        let mut names = Vec::new();
        while !init_done {
            match tokio::time::timeout(Duration::from_secs(5), events.try_next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
            {
                Event::InitApply(o) => names.push(o.name_any()),
                Event::InitDone => init_done = true,
                _ => {}
            }
        }
        let mut listed: Vec<String> = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .iter()
            .map(|o| o.name_any())
            .collect();
        names.sort();
        listed.sort();
        assert_eq!(
            names, listed,
            "the initial events are exactly the current objects"
        );
        assert!(names.iter().any(|n| n == "before"));
        c.drop_watches();
        let after = format!("after-{}", c.resource_version());
        api.create(&PostParams::default(), &cm(&after, &[]))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "watcher never saw {after}");
            match tokio::time::timeout(Duration::from_secs(10), events.try_next())
                .await
                .unwrap()
            {
                Ok(Some(Event::Apply(o) | Event::InitApply(o))) if o.name_any() == after => break,
                _ => {}
            }
        }
    }
}

/// A controller that mirrors each `gen=true` ConfigMap into an owned `<name>-child` ConfigMap.
#[tokio::test]
async fn controller_reconciles_on_watch_events_owns_children_by_ssa_and_cascades() {
    let sim = Sim::new().unwrap();
    let c = sim.add_cluster("ctl").await.unwrap();
    let client = c.client();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let reconciles = Arc::new(AtomicUsize::new(0));
    struct Ctx {
        api: Api<ConfigMap>,
        count: Arc<AtomicUsize>,
    }
    async fn reconcile(obj: Arc<ConfigMap>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
        ctx.count.fetch_add(1, Ordering::SeqCst);
        if obj.name_any().ends_with("-child") {
            return Ok(Action::await_change());
        }
        let child = ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("{}-child", obj.name_any())),
                owner_references: Some(vec![obj.controller_owner_ref(&()).unwrap()]),
                ..Default::default()
            },
            data: obj.data.clone(),
            ..Default::default()
        };
        let pp = PatchParams::apply("gen-controller").force();
        ctx.api
            .patch(&child.name_any(), &pp, &Patch::Apply(&child))
            .await?;
        Ok(Action::await_change())
    }
    let ctl = Controller::new(api.clone(), watcher::Config::default().labels("gen=true"))
        .owns(api.clone(), watcher::Config::default())
        .run(
            reconcile,
            |_, _, _| Action::requeue(Duration::from_secs(1)),
            Arc::new(Ctx {
                api: api.clone(),
                count: reconciles.clone(),
            }),
        )
        .for_each(|_| async {});
    let task = tokio::spawn(ctl);

    let mut parent = cm("parent", &[("gen", "true")]);
    parent.data = Some([("k".to_string(), "v1".to_string())].into());
    api.create(&PostParams::default(), &parent).await.unwrap();
    eventually("child created", WAIT, || async {
        api.get_opt("parent-child").await.unwrap().is_some()
    })
    .await;
    let child = api.get("parent-child").await.unwrap();
    assert_eq!(child.data.as_ref().unwrap()["k"], "v1");
    assert_eq!(
        child.managed_fields()[0].manager.as_deref(),
        Some("gen-controller")
    );
    assert_eq!(child.owner_references()[0].name, "parent");

    let before = reconciles.load(Ordering::SeqCst);
    api.patch(
        "parent",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v2"}})),
    )
    .await
    .unwrap();
    eventually("child follows the parent", WAIT, || async {
        api.get("parent-child")
            .await
            .unwrap()
            .data
            .unwrap_or_default()
            .get("k")
            .map(String::as_str)
            == Some("v2")
    })
    .await;
    assert!(
        reconciles.load(Ordering::SeqCst) > before,
        "the edit triggered a reconcile"
    );

    // Deleting the child makes the controller (through .owns) recreate it.
    api.delete("parent-child", &DeleteParams::default())
        .await
        .unwrap();
    eventually("child recreated", WAIT, || async {
        api.get_opt("parent-child").await.unwrap().is_some()
    })
    .await;

    api.delete("parent", &DeleteParams::default()).await.unwrap();
    eventually("child collected with its owner", WAIT, || async {
        api.get_opt("parent-child").await.unwrap().is_none()
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn injected_faults_fail_requests_and_clear() {
    let sim = Sim::new().unwrap();
    let c = sim.add_cluster("f").await.unwrap();
    // kube-rs would retry 429 and 503 answers for a long while; this test wants to see them.
    let mut config = c.config().unwrap();
    config.default_retry = false;
    let api: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
    api.create(&PostParams::default(), &cm("x", &[])).await.unwrap();

    c.set_faults(Faults::errors(1.0, &[503]));
    let e = api.get("x").await.unwrap_err();
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 503), "{e}");
    c.set_faults(Faults::errors(1.0, &[429]));
    let raw = reqwest_get(&format!("{}/api/v1/namespaces/default/configmaps/x", c.url())).await;
    assert_eq!(raw, (429, Some("1".to_string())), "429 comes with Retry-After");

    c.set_faults(Faults {
        reject_writes: Some(403),
        ..Faults::default()
    });
    assert!(api.get("x").await.is_ok(), "reads still work");
    let e = api
        .create(&PostParams::default(), &cm("y", &[]))
        .await
        .unwrap_err();
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 403), "{e}");

    c.set_faults(Faults {
        latency: Duration::from_millis(300),
        ..Faults::default()
    });
    let t = Instant::now();
    api.get("x").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300), "latency was added");

    c.set_faults(Faults::unreachable());
    assert!(api.get("x").await.is_err());
    c.clear_faults();
    assert!(api.get("x").await.is_ok());
    // Requests refused by a fault never reach the API, so they are not counted as served.
    assert_eq!(c.requests().get("get", "configmaps"), 3);
    assert_eq!(c.requests().writes("configmaps"), 1);
}

/// Status code and Retry-After of a plain GET, without kube-rs retry logic in between.
async fn reqwest_get(url: &str) -> (u16, Option<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let code = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    let retry = buf.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("retry-after: ")
            .map(|v| v.trim().to_string())
    });
    (code, retry)
}

#[tokio::test]
async fn scale_mode_serves_thousands_of_managed_clusters() {
    let (_sim, hub) = cluster_with_crds("hub").await;
    let members: Vec<FleetMember> = (0..3000)
        .map(|i| FleetMember {
            name: format!("cluster-{i:05}"),
            labels: vec![("env".into(), if i % 2 == 0 { "prod" } else { "dev" }.into())],
            claims: vec![(
                "kernel-versions.kmm.node.kubernetes.io".into(),
                format!("6.1.0-{}-cloud-amd64", i % 3),
            )],
        })
        .collect();
    let report = hub.add_managed_clusters(&members).unwrap();
    assert_eq!(report.objects, 6000);
    hub.reset_requests();
    let api: Api<ManagedCluster> = Api::all(hub.client());
    let prod = api.list(&ListParams::default().labels("env=prod")).await.unwrap();
    assert_eq!(prod.items.len(), 1500);
    assert_eq!(
        prod.items[0].claim("kernel-versions.kmm.node.kubernetes.io"),
        Some("6.1.0-0-cloud-amd64")
    );
    // A reflector pages through all of them.
    let (reader, writer) = kube::runtime::reflector::store();
    let stream = kube::runtime::reflector(
        writer,
        watcher::watcher(api, watcher::Config::default().page_size(500)),
    );
    let task = tokio::spawn(stream.for_each(|_| async {}));
    reader.wait_until_ready().await.unwrap();
    assert_eq!(reader.len(), 3000);
    task.abort();
    let t = hub.throughput();
    assert!(t.requests >= 7, "1 list + 6 pages + a watch were served: {t:?}");
    assert!(t.per_second() > 0.0);
}

/// Not a test: prints how long 1,000 ManifestWork applies take (`cargo test --release ... -- --ignored`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement"]
async fn probe_apply_rate() {
    let (_sim, hub) = cluster_with_crds("hub").await;
    let members: Vec<FleetMember> = (0..1000)
        .map(|i| FleetMember {
            name: format!("c{i}"),
            ..Default::default()
        })
        .collect();
    hub.add_managed_clusters(&members).unwrap();
    let client = hub.client();
    let work = |ns: &str| {
        json!({"apiVersion": "work.open-cluster-management.io/v1", "kind": "ManifestWork",
        "metadata": {"name": "w", "namespace": ns}, "spec": {"workload": {"manifests": [
            {"apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module", "metadata": {"name": "m", "namespace": "d"},
             "spec": {"selector": {}, "moduleLoader": {"container": {"modprobe": {"moduleName": "x"},
               "kernelMappings": [{"literal": "6.1.0", "containerImage": "r/x@sha256:0000"}]}}}}]}}})
    };
    let t = Instant::now();
    for i in 0..200 {
        let ns = format!("c{i}");
        let api: Api<kmm_api::ocm::ManifestWork> = Api::namespaced(client.clone(), &ns);
        api.patch("w", &PatchParams::apply("x").force(), &Patch::Apply(work(&ns)))
            .await
            .unwrap();
    }
    println!("PROBE 200 sequential applies: {:?}", t.elapsed());
    let t = Instant::now();
    futures::stream::iter(200..1000)
        .map(|i| {
            let client = client.clone();
            let body = work(&format!("c{i}"));
            async move {
                let api: Api<kmm_api::ocm::ManifestWork> = Api::namespaced(client, &format!("c{i}"));
                api.patch("w", &PatchParams::apply("x").force(), &Patch::Apply(body))
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    println!("PROBE 800 applies, 16 at a time: {:?}", t.elapsed());
}
