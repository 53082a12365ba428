//! Issue 13, finding 8, on a real control plane: a failed build Job's output is published as an
//! Event about the Job in the hub's namespace (readable by whoever may read the Job), while the
//! Event about the cluster-scoped MCM, which the API server keeps in `default`, stays short and
//! carries none of it. The audit log witnesses where each Event was written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::events::v1::Event;
use kmm_agents::{Kubelet, KubeletOptions, KubeletScript, NodeRegistration, Outcome, PodMatcher, ScriptRule};
use kmm_api::ManagedClusterModule;
use kmm_hub::mcm_controller::desired::job::JOB_TYPE_LABEL;
use kube::{Api, api::ListParams};
use support::fleet::{ClusterSpec, Fleet, HUB_NAMESPACE, HUB_USER, SPOKE_NAMESPACE, serial};

const K1: &str = "6.1.0-28-cloud-amd64";
const OUTPUT: &str = "make: *** [Makefile:3: all] Error 2 token=not-for-default";

fn mcm_yaml(registry: &str) -> String {
    format!(
        "apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1\nkind: ManagedClusterModule\nmetadata: {{name: gpu}}\n\
         spec:\n  spokeNamespace: {SPOKE_NAMESPACE}\n  selector: {{env: prod}}\n  moduleSpec:\n    selector: {{}}\n\
         \x20   moduleLoader:\n      container:\n        modprobe: {{moduleName: gpu_kmod}}\n        kernelMappings:\n\
         \x20         - regexp: '^.+$'\n            containerImage: {registry}/kmm/gpu-kmod:${{KERNEL_FULL_VERSION}}\n\
         \x20           registryTLS: {{insecure: true}}\n            build:\n              dockerfileConfigMap: {{name: gpu-dockerfile}}\n"
    )
}

async fn events_in(fleet: &Fleet, namespace: &str) -> Vec<Event> {
    Api::<Event>::namespaced(fleet.hub.client(), namespace)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_builds_output_goes_to_an_event_about_the_job_not_to_default() {
    let _serial = serial().await;
    let fleet = Fleet::start("job-events").await;
    fleet.add_cluster(&ClusterSpec::prod("a", &[K1])).await;
    fleet
        .hub
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: gpu-dockerfile, namespace: {HUB_NAMESPACE}}}\n\
             data: {{dockerfile: \"FROM scratch\\n\"}}\n"
        ))
        .await
        .unwrap();
    let fail = ScriptRule {
        matcher: PodMatcher {
            labels: BTreeMap::from([(JOB_TYPE_LABEL.to_string(), "build".to_string())]),
            ..Default::default()
        },
        outcomes: vec![Outcome::failed(2, OUTPUT)],
    };
    let _kubelet = Kubelet::spawn(
        fleet.hub.client(),
        KubeletOptions {
            nodes: vec![NodeRegistration::new("hub-node", "6.1.0-hub")],
            daemonsets: false,
            jobs: false,
            script: KubeletScript { rules: vec![fail] },
            ..Default::default()
        },
    );
    let hub = fleet.start_hub("hub-0", &["--leader-election", "false"]);
    let mcm: ManagedClusterModule = serde_saphyr::from_str(&mcm_yaml(&fleet.registry.host)).unwrap();
    fleet.create_mcm(&mcm).await;

    hub.wait(
        "an Event about the failed Job carries its output",
        Duration::from_secs(120),
    )
    .eventually(|| async {
        events_in(&fleet, HUB_NAMESPACE).await.iter().any(|e| {
            e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Job")
                && e.reason.as_deref() == Some("BuildFailed")
                && e.note.as_deref().is_some_and(|n| n.contains(OUTPUT))
        })
    })
    .await;
    hub.wait("the MCM's Event in default", Duration::from_secs(60))
        .eventually(|| async {
            events_in(&fleet, "default").await.iter().any(|e| {
                e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("ManagedClusterModule")
                    && e.reason.as_deref() == Some("BuildFailed")
            })
        })
        .await;
    let defaults = events_in(&fleet, "default").await;
    for e in &defaults {
        assert!(
            !e.note.as_deref().unwrap_or_default().contains("not-for-default"),
            "build output in default: {e:?}"
        );
    }
    // A few reconciles later the hub's Event about the Job is still the one (announced once, no
    // repeats; the Job controller's own Events about it are not counted).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let job_events: Vec<Event> = events_in(&fleet, HUB_NAMESPACE)
        .await
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Job")
                && e.reporting_controller.as_deref() == Some("kmm-hub")
        })
        .collect();
    assert_eq!(job_events.len(), 1, "{job_events:#?}");
    assert!(
        job_events[0].series.is_none(),
        "not repeated: {:?}",
        job_events[0].series
    );

    // The audit log: the hub wrote the output's Event in its namespace, and nothing it wrote
    // to default was refused.
    let audit = fleet.audit().await;
    let hub_events = |ns: &str| {
        audit
            .iter()
            .filter(|e| e.user.username == HUB_USER && e.resource() == "events")
            .filter(|e| e.object_ref.as_ref().is_some_and(|o| o.namespace == ns))
            .map(|e| e.code())
            .collect::<Vec<_>>()
    };
    let in_hub = hub_events(HUB_NAMESPACE);
    assert!(in_hub.contains(&201), "{in_hub:?}");
    assert!(in_hub.iter().all(|c| (200..300).contains(c)), "{in_hub:?}");
    let in_default = hub_events("default");
    assert!(
        in_default.iter().all(|c| (200..300).contains(c)),
        "{in_default:?}"
    );
}
