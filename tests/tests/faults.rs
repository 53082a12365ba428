//! The fault proxy on a real kube-apiserver: a kube client through it sees each fault the proxy
//! injects (errors with Retry-After, latency, cut watches, refused connections), recovers from
//! them, and with faults off the proxy is transparent. The apiserver's audit log witnesses what
//! really reached the apiserver, independently of the proxy's own counters.

use std::time::{Duration, Instant};

use futures::StreamExt;
use http::{Request, header};
use k8s_openapi::api::core::v1::ConfigMap;
use kmm_fleet_tests::{
    controlplane::{AuditEvent, ControlPlane, Options, client_from},
    faults::{FaultProxy, Faults, rewrite_kubeconfig},
};
use kube::{
    Api, Client, Config,
    api::{ListParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;

const USER: &str = "system:serviceaccount:default:prober";

fn dir(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

fn seed() -> u64 {
    std::env::var("KMM_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(14)
}

/// The prober's requests among `events` (health probes and the harness's own are not counted).
fn by_prober(events: &[AuditEvent]) -> Vec<&AuditEvent> {
    events.iter().filter(|e| e.user.username == USER).collect()
}

fn config_map(name: &str) -> anyhow::Result<ConfigMap> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"faults": "probe"}},
    }))?)
}

/// A client for `kubeconfig` without kube's own retry of 429/503, to see raw answers.
async fn raw_client(kubeconfig: &std::path::Path) -> anyhow::Result<Client> {
    let mut config =
        Config::from_custom_kubeconfig(Kubeconfig::read_from(kubeconfig)?, &KubeConfigOptions::default())
            .await?;
    config.default_retry = false;
    Ok(Client::try_from(config)?)
}

fn get(path: &str) -> anyhow::Result<Request<kube::client::Body>> {
    Ok(Request::get(path).body(kube::client::Body::empty())?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kube_client_through_the_fault_proxy_sees_each_fault_and_recovers() -> anyhow::Result<()> {
    let seed = seed();
    eprintln!("fault proxy seed {seed} (replay with KMM_FAULTS_SEED={seed})");
    let cp = ControlPlane::start(&dir("faults"), "hub", Options::default()).await?;
    cp.apply_yaml(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: prober}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}\n\
         subjects: [{kind: ServiceAccount, name: prober, namespace: default}]\n",
    )
    .await?;
    let direct = cp.service_account_kubeconfig("default", "prober").await?;
    let proxy = FaultProxy::start(cp.server(), Some(cp.ca_path()), seed).await?;
    let proxied = rewrite_kubeconfig(&direct, &proxy.url(), &cp.dir().join("prober-proxied.kubeconfig"))?;
    // kube-rs sends the bearer token over plain http: the proxy needs no certificate of its own.
    let client = client_from(&proxied).await?;
    let raw = raw_client(&proxied).await?;
    let cms = Api::<ConfigMap>::namespaced(client.clone(), "default");

    // Faults off: every request is forwarded once, as the prober (the token went through).
    let mark = cp.audit_settled().await?.len();
    let before = proxy.counts();
    for i in 0..5 {
        cms.create(&PostParams::default(), &config_map(&format!("cm-{i}"))?)
            .await?;
        cms.get(&format!("cm-{i}")).await?;
    }
    assert_eq!(
        cms.list(&ListParams::default().labels("faults=probe"))
            .await?
            .items
            .len(),
        5
    );
    let counts = proxy.counts();
    assert_eq!(counts.forwarded - before.forwarded, 11, "{counts}");
    assert_eq!(counts.errors() + counts.delayed + counts.refused, 0, "{counts}");
    let audit = cp.audit_settled().await?;
    let seen = by_prober(&audit[mark..]);
    assert_eq!(seen.len(), 11, "the apiserver saw every request once: {seen:?}");
    assert!(seen.iter().all(|e| (200..300).contains(&e.code())), "{seen:?}");
    assert_eq!(seen.iter().filter(|e| e.verb == "create").count(), 5);

    // Injected errors are answered by the proxy, never forwarded; 429 and 503 carry Retry-After.
    let mark = audit.len();
    for code in [429u16, 500, 503] {
        proxy.set(Faults {
            error_rate: 1.0,
            error_codes: vec![code],
            retry_after: Duration::from_secs(3),
            ..Faults::default()
        });
        let response = raw
            .send(get("/api/v1/namespaces/default/configmaps/cm-0")?)
            .await?;
        assert_eq!(response.status().as_u16(), code);
        let retry = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap_or("").to_owned());
        assert_eq!(
            retry.as_deref(),
            (code != 500).then_some("3"),
            "Retry-After of {code}"
        );
        let err = Api::<ConfigMap>::namespaced(raw.clone(), "default")
            .get("cm-0")
            .await;
        assert!(
            matches!(&err, Err(kube::Error::Api(s)) if s.code == code),
            "{code}: {err:?}"
        );
    }
    let counts = proxy.counts();
    assert_eq!(
        (counts.errors_429, counts.errors_500, counts.errors_503),
        (2, 2, 2),
        "{counts}"
    );
    let audit = cp.audit_settled().await?;
    assert_eq!(
        by_prober(&audit[mark..]).len(),
        0,
        "an injected error reached the apiserver"
    );

    // kube's own retry waits out Retry-After and succeeds once throttling ends.
    proxy.set(Faults {
        error_rate: 1.0,
        error_codes: vec![429],
        retry_after: Duration::from_secs(1),
        ..Faults::default()
    });
    let started = Instant::now();
    let pending = tokio::spawn({
        let cms = cms.clone();
        async move { cms.get("cm-1").await }
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    proxy.clear();
    pending.await??;
    assert!(started.elapsed() >= Duration::from_millis(2500));
    let throttled = proxy.counts().errors_429 - counts.errors_429;
    assert!(
        (2..=4).contains(&throttled),
        "one 429 per Retry-After second, saw {throttled}"
    );

    // Latency: every forwarded request waits at least half the configured latency.
    proxy.set(Faults {
        latency: Duration::from_millis(400),
        ..Faults::default()
    });
    let before = proxy.counts();
    let started = Instant::now();
    for _ in 0..4 {
        cms.get("cm-2").await?;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(proxy.counts().delayed - before.delayed, 4);

    // Cut watches: a watcher keeps coming back and still sees a change made after the cuts.
    proxy.set(Faults {
        watch_cut: Some((Duration::from_secs(1), Duration::from_secs(2))),
        ..Faults::default()
    });
    let mark = cp.audit_settled().await?.len();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let watching = tokio::spawn(
        watcher(cms.clone(), watcher::Config::default().labels("faults=probe"))
            .default_backoff()
            .applied_objects()
            .for_each(move |cm| {
                if let Ok(cm) = cm {
                    let _ = seen_tx.send(cm.metadata.name.unwrap_or_default());
                }
                futures::future::ready(())
            }),
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(proxy.counts().watches_cut >= 2, "{}", proxy.counts());
    Api::<ConfigMap>::namespaced(cp.client(), "default")
        .create(&PostParams::default(), &config_map("late")?)
        .await?;
    let late = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(name) = seen_rx.recv().await {
            if name == "late" {
                return true;
            }
        }
        false
    })
    .await;
    watching.abort();
    assert_eq!(
        late,
        Ok(true),
        "the watcher missed a change after its watches were cut"
    );
    let audit = cp.audit_settled().await?;
    let watches = by_prober(&audit[mark..])
        .into_iter()
        .filter(|e| e.verb == "watch")
        .count();
    assert!(
        watches >= 3,
        "the watcher re-watched after each cut: {watches} watches"
    );

    // Refused connections: requests fail while refusing and succeed afterwards.
    proxy.clear();
    proxy.refuse_for(Duration::from_secs(2));
    let refused = raw.send(get("/api/v1/namespaces/default/configmaps/cm-3")?).await;
    assert!(
        refused.is_err(),
        "a request went through a refusing proxy: {refused:?}"
    );
    assert!(proxy.counts().refused >= 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let response = raw
        .send(get("/api/v1/namespaces/default/configmaps/cm-3")?)
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    eprintln!("fault proxy counts: {}", proxy.counts());
    Ok(())
}
