//! Trust boundaries on the real hub: an MCM naming a hub-namespace Secret that does not grant it
//! is blocked with the Secret and the annotation named, and runs once the Secret grants it; a
//! cluster reporting a kernel outside the grammar gets that kernel refused on it while its other
//! kernel still gets its module.

// Test helpers outside #[test] functions may unwrap: a panic there is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use kmm_api::{ManagedClusterModule, ocm::ManifestWork};
use kube::{Api, api::PostParams};
use support::fleet::{ClusterSpec, Fleet, HUB_NAMESPACE, SPOKE_NAMESPACE, serial};

const K1: &str = "6.1.0-28-cloud-amd64";
const BAD: &str = "6.1.0-28-cloud-amd64/../../x";

fn mcm_yaml(registry: &str) -> String {
    format!(
        "apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1\nkind: ManagedClusterModule\nmetadata: {{name: gpu}}\n\
         spec:\n  spokeNamespace: {SPOKE_NAMESPACE}\n  selector: {{env: prod}}\n  moduleSpec:\n    selector: {{}}\n\
         \x20   imageRepoSecret: {{name: team-b-pull}}\n\
         \x20   moduleLoader:\n      container:\n        modprobe: {{moduleName: gpu_kmod}}\n        kernelMappings:\n\
         \x20         - regexp: '^.+$'\n            containerImage: {registry}/kmm/gpu-kmod:${{KERNEL_FULL_VERSION}}\n\
         \x20           registryTLS: {{insecure: true}}\n"
    )
}

fn secret_yaml(annotation: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: team-b-pull, namespace: {HUB_NAMESPACE}{annotation}}}\n\
         type: kubernetes.io/dockerconfigjson\ndata: {{.dockerconfigjson: eyJhdXRocyI6e319}}\n"
    )
}

async fn status(fleet: &Fleet) -> Option<kmm_api::ManagedClusterModuleStatus> {
    Api::<ManagedClusterModule>::all(fleet.hub.client())
        .get("gpu")
        .await
        .unwrap()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_need_a_grant_and_a_bad_kernel_is_refused_alone() {
    let _serial = serial().await;
    let fleet = Fleet::start("trust-secrets").await;
    fleet.add_cluster(&ClusterSpec::prod("a", &[K1, BAD])).await;
    fleet
        .registry
        .push_labelled(&format!("kmm/gpu-kmod:{K1}"))
        .unwrap();
    fleet.hub.apply_yaml(&secret_yaml("")).await.unwrap();
    let hub = fleet.start_hub("hub-0", &["--leader-election", "false"]);
    let mcm: ManagedClusterModule = serde_saphyr::from_str(&mcm_yaml(&fleet.registry.host)).unwrap();
    Api::<ManagedClusterModule>::all(fleet.hub.client())
        .create(&PostParams::default(), &mcm)
        .await
        .unwrap();

    hub.wait("the ungranted Secret blocks the MCM", Duration::from_secs(120))
        .eventually(|| async {
            status(&fleet).await.is_some_and(|s| {
                s.problems.iter().any(|p| {
                    p.state == "Blocked"
                        && p.message.contains("kmm-hub/team-b-pull")
                        && p.message.contains("hub.kmm.sigs.x-k8s.io/allowed-modules")
                })
            })
        })
        .await;
    let works = Api::<ManifestWork>::namespaced(fleet.hub.client(), "a");
    assert!(
        works.get_opt("gpu").await.unwrap().is_none(),
        "no work while blocked"
    );

    fleet
        .hub
        .apply_yaml(&secret_yaml(
            ", annotations: {hub.kmm.sigs.x-k8s.io/allowed-modules: 'other,gpu'}",
        ))
        .await
        .unwrap();
    hub.wait(
        "granted: the good kernel ships, the bad one is named",
        Duration::from_secs(120),
    )
    .eventually(|| async {
        let shipped = works.get_opt("gpu").await.unwrap().is_some();
        shipped
            && status(&fleet).await.is_some_and(|s| {
                s.problems.iter().any(|p| {
                    p.cluster == "a" && p.reason == "MalformedKernelClaim" && p.message.contains('/')
                }) && s.kernels.iter().all(|k| k.kernel == K1)
            })
    })
    .await;
}
