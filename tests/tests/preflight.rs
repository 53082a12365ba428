//! ManagedClusterPreflight on the fleet harness: the real kmm-hub and kmm-spoke, two spokes on
//! real control planes with OCM's agents, a real registry, build and sign Jobs run for real.
//! The witness of what was built and written is the hub apiserver's audit log.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is a failed test

use std::{path::PathBuf, time::Duration};

use kmm_api::{
    ManagedClusterModule,
    claims::{NEXT_KERNEL_ANNOTATION, NEXT_KERNEL_VERSIONS_CLAIM},
    ocm::{ManagedCluster, ManifestWork},
    preflight::{ManagedClusterPreflight, NEXT_KERNELS_PREFLIGHT, PreflightModuleStatus},
};
use kmm_fleet_tests::{
    controlplane::AuditEvent,
    demo,
    fleet::{Fleet, HUB_NAMESPACE, NodeSpec, annotate_node, set_kernel},
};
use kube::{Api, api::PostParams};

const MCM: &str = "fleet-kmod";
const K_RUN: &str = demo::K_EAST;
/// Built and signed ahead by the preflight, then booted.
const K_NEXT: &str = demo::K_NEXT;
/// Matches the build mapping, but its sources are not in the registry: the build fails.
const K_BROKEN: &str = "6.1.0-29-cloud-amd64";
/// Announced by a node of a cluster the MCM does not select; buildable, never built.
const K_OTHER: &str = "6.1.0-26-cloud-amd64";

/// Successful creations by the hub's ServiceAccount of `resource` (not subresources).
fn hub_creates(audit: &[AuditEvent], resource: &str) -> usize {
    let hub = format!("system:serviceaccount:{HUB_NAMESPACE}:");
    audit
        .iter()
        .filter(|e| {
            e.object_ref.as_ref().is_some_and(|o| {
                o.resource == resource && o.subresource.is_empty() && e.user.username.starts_with(&hub)
            }) && e.verb == "create"
                && (200..300).contains(&e.code())
        })
        .count()
}

/// Hub writes to ManifestWorks (create, update, patch, delete).
fn work_writes(audit: &[AuditEvent]) -> usize {
    let hub = format!("system:serviceaccount:{HUB_NAMESPACE}:");
    audit
        .iter()
        .filter(|e| {
            e.object_ref
                .as_ref()
                .is_some_and(|o| o.resource == "manifestworks")
                && e.user.username.starts_with(&hub)
                && ["create", "update", "patch", "delete"].contains(&e.verb.as_str())
                && (200..300).contains(&e.code())
        })
        .count()
}

async fn entry(fleet: &Fleet, name: &str, kernel: &str) -> Option<PreflightModuleStatus> {
    let pf = Api::<ManagedClusterPreflight>::all(fleet.hub.client())
        .get_opt(name)
        .await
        .unwrap()?;
    pf.status?
        .modules
        .into_iter()
        .find(|m| m.name == MCM && m.kernel_version == kernel)
}

async fn create_preflight(fleet: &Fleet, name: &str, kernel: &str) {
    let pf: ManagedClusterPreflight = serde_json::from_value(serde_json::json!({
        "apiVersion": "hub.kmm.sigs.x-k8s.io/v1beta1",
        "kind": "ManagedClusterPreflight",
        "metadata": {"name": name},
        "spec": {"kernelVersions": [kernel], "clusterSelector": {"driver": "gpu"}, "pushBuiltImage": true}
    }))
    .unwrap();
    Api::<ManagedClusterPreflight>::all(fleet.hub.client())
        .create(&PostParams::default(), &pf)
        .await
        .unwrap();
}

async fn until(fleet: &Fleet, secs: u64, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for: {what}\n{}",
            fleet.log_tails(40)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The image a cluster's ManifestWork maps `kernel` to.
async fn mapped(fleet: &Fleet, cluster: &str, kernel: &str) -> Option<String> {
    let work = Api::<ManifestWork>::namespaced(fleet.hub.client(), cluster)
        .get_opt(MCM)
        .await
        .unwrap()?;
    let module = serde_json::to_value(&work.spec.workload.manifests[0]).unwrap();
    module["spec"]["moduleLoader"]["container"]["kernelMappings"]
        .as_array()?
        .iter()
        .find(|m| m["literal"] == kernel)
        .and_then(|m| m["containerImage"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_preflight_builds_ahead_and_the_upgrade_starts_no_job() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("preflight");
    let mut fleet = Fleet::start(&dir).await.unwrap();
    fleet.push_prebuilt(K_RUN).unwrap();
    fleet.push_sources(&[K_NEXT]).unwrap();
    for spoke in ["a", "b"] {
        fleet
            .add_spoke(
                spoke,
                &[("driver", "gpu")],
                &[NodeSpec::worker(&format!("{spoke}-1"), K_RUN)],
            )
            .await
            .unwrap();
    }
    fleet.start_hub().unwrap();
    let mcm: ManagedClusterModule =
        serde_saphyr::from_str(&demo::example_mcm(MCM, &fleet.registry.host)).unwrap();
    Api::<ManagedClusterModule>::all(fleet.hub.client())
        .create(&PostParams::default(), &mcm)
        .await
        .unwrap();
    until(&fleet, 180, "both clusters run the prebuilt image", async || {
        mapped(&fleet, "a", K_RUN).await.is_some() && mapped(&fleet, "b", K_RUN).await.is_some()
    })
    .await;
    let audit = fleet.hub.audit_settled().await.unwrap();
    let (jobs_before, works_before) = (hub_creates(&audit, "jobs"), work_writes(&audit));
    assert_eq!(jobs_before, 0, "the prebuilt kernel needs no Job");

    // 1. A preflight for K_NEXT over both clusters: built and signed once, no work touched.
    create_preflight(&fleet, "next", K_NEXT).await;
    until(&fleet, 420, "the preflight reports K_NEXT ready", async || {
        entry(&fleet, "next", K_NEXT)
            .await
            .is_some_and(|e| e.verification_status == "Success")
    })
    .await;
    let done = entry(&fleet, "next", K_NEXT).await.unwrap();
    let built = fleet
        .registry
        .digest(&format!("kmm/fleet-built:{K_NEXT}"))
        .unwrap();
    assert_eq!(done.verification_stage, "Done");
    assert!(done.digest.ends_with(&built), "{done:?} vs {built}");
    let audit = fleet.hub.audit_settled().await.unwrap();
    assert_eq!(hub_creates(&audit, "jobs"), 2, "one build and one sign");
    assert_eq!(
        work_writes(&audit),
        works_before,
        "a preflight writes no ManifestWork"
    );

    // 2. One node per cluster reboots into K_NEXT: the works map the pinned image, no new Job.
    let started = std::time::Instant::now();
    for spoke in ["a", "b"] {
        set_kernel(
            &fleet.spoke(spoke).unwrap().cluster,
            &format!("{spoke}-1"),
            K_NEXT,
            "boot-2",
        )
        .await
        .unwrap();
    }
    let want = format!("{}/kmm/fleet-built@{built}", fleet.registry.host);
    until(
        &fleet,
        180,
        "both works map K_NEXT to the built image",
        async || {
            mapped(&fleet, "a", K_NEXT).await.as_deref() == Some(want.as_str())
                && mapped(&fleet, "b", K_NEXT).await.as_deref() == Some(want.as_str())
        },
    )
    .await;
    eprintln!("claim change to both works written: {:?}", started.elapsed());
    let audit = fleet.hub.audit_settled().await.unwrap();
    assert_eq!(
        hub_creates(&audit, "jobs"),
        2,
        "the rollout found the image: no new Job"
    );
    until(
        &fleet,
        60,
        "the MCM says K_NEXT was ready before its first node",
        async || {
            let mcm = Api::<ManagedClusterModule>::all(fleet.hub.client())
                .get(MCM)
                .await
                .unwrap();
            mcm.status.is_some_and(|s| {
                s.kernel_readiness
                    .iter()
                    .any(|r| r.kernel == K_NEXT && r.ready_before_first_node)
            })
        },
    )
    .await;

    // 3. A preflight whose build fails: Failure at Build with the build's output, no work write.
    let works_before = work_writes(&audit);
    create_preflight(&fleet, "broken", K_BROKEN).await;
    until(&fleet, 300, "the broken preflight fails at Build", async || {
        entry(&fleet, "broken", K_BROKEN)
            .await
            .is_some_and(|e| e.verification_status == "Failure")
    })
    .await;
    let failed = entry(&fleet, "broken", K_BROKEN).await.unwrap();
    assert_eq!(failed.verification_stage, "Build", "{failed:?}");
    assert!(failed.status_reason.contains("failed:"), "{failed:?}");
    let output = failed
        .status_reason
        .split_once("failed: ")
        .map(|(_, o)| o)
        .unwrap_or_default();
    assert!(
        !output.is_empty() && !output.starts_with("the Job failed"),
        "the build's own output is reported: {failed:?}"
    );
    let audit = fleet.hub.audit_settled().await.unwrap();
    assert_eq!(
        work_writes(&audit),
        works_before,
        "a failed preflight writes no ManifestWork"
    );
    assert_eq!(hub_creates(&audit, "jobs"), 3, "one failed build");
}

/// The generated next-kernel preflight, if the hub keeps one.
async fn next_kernels_preflight(fleet: &Fleet) -> Option<ManagedClusterPreflight> {
    Api::<ManagedClusterPreflight>::all(fleet.hub.client())
        .get_opt(NEXT_KERNELS_PREFLIGHT)
        .await
        .unwrap()
}

/// The next-kernel claim of `cluster` as the hub's API server holds it.
async fn next_claim(fleet: &Fleet, cluster: &str) -> Option<String> {
    Api::<ManagedCluster>::all(fleet.hub.client())
        .get(cluster)
        .await
        .unwrap()
        .claim(NEXT_KERNEL_VERSIONS_CLAIM)
        .map(str::to_owned)
}

/// Issue 16, step 4: a node announces its next kernel with an annotation; kmm-spoke publishes it
/// in the next-kernel claim, and the hub builds and signs it ahead for the MCM selecting that
/// cluster (and for no one else), writes no ManifestWork, and when the node boots the kernel the
/// rollout pins the image with no new Job.
#[tokio::test(flavor = "multi_thread")]
async fn an_announced_next_kernel_is_built_ahead_for_the_mcms_selecting_its_cluster() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("preflight-next");
    let mut fleet = Fleet::start(&dir).await.unwrap();
    fleet.push_prebuilt(K_RUN).unwrap();
    fleet.push_sources(&[K_NEXT, K_OTHER]).unwrap();
    fleet
        .add_spoke("a", &[("driver", "gpu")], &[NodeSpec::worker("a-1", K_RUN)])
        .await
        .unwrap();
    // Not selected by the MCM: its announcement must start nothing.
    fleet
        .add_spoke("b", &[("driver", "none")], &[NodeSpec::worker("b-1", K_RUN)])
        .await
        .unwrap();
    fleet.start_hub().unwrap();
    let mcm: ManagedClusterModule =
        serde_saphyr::from_str(&demo::example_mcm(MCM, &fleet.registry.host)).unwrap();
    Api::<ManagedClusterModule>::all(fleet.hub.client())
        .create(&PostParams::default(), &mcm)
        .await
        .unwrap();
    until(&fleet, 180, "cluster a runs the prebuilt image", async || {
        mapped(&fleet, "a", K_RUN).await.is_some()
    })
    .await;
    let audit = fleet.hub.audit_settled().await.unwrap();
    let works_before = work_writes(&audit);
    assert_eq!(hub_creates(&audit, "jobs"), 0, "the prebuilt kernel needs no Job");
    assert!(next_claim(&fleet, "a").await.is_none(), "no annotation, no claim");
    assert!(next_kernels_preflight(&fleet).await.is_none());

    // 1. Both nodes announce a next kernel; both claims reach the hub.
    let spoke = |name: &str| &fleet.spoke(name).unwrap().cluster;
    annotate_node(spoke("a"), "a-1", NEXT_KERNEL_ANNOTATION, Some(K_NEXT))
        .await
        .unwrap();
    annotate_node(spoke("b"), "b-1", NEXT_KERNEL_ANNOTATION, Some(K_OTHER))
        .await
        .unwrap();
    until(&fleet, 120, "both next-kernel claims reach the hub", async || {
        next_claim(&fleet, "a").await.as_deref() == Some(K_NEXT)
            && next_claim(&fleet, "b").await.as_deref() == Some(K_OTHER)
    })
    .await;

    // 2. The hub's next-kernel preflight builds and signs K_NEXT once, for the MCM selecting a.
    until(
        &fleet,
        420,
        "the next-kernel preflight reports K_NEXT ready",
        async || {
            next_kernels_preflight(&fleet)
                .await
                .and_then(|pf| pf.status)
                .is_some_and(|s| {
                    s.modules.iter().any(|m| {
                        m.name == MCM && m.kernel_version == K_NEXT && m.verification_status == "Success"
                    })
                })
        },
    )
    .await;
    let pf = next_kernels_preflight(&fleet).await.unwrap();
    assert_eq!(pf.spec.kernel_versions, [K_NEXT], "b's kernel is asked by no MCM");
    assert!(pf.spec.push_built_image);
    let status = pf.status.unwrap();
    assert_eq!(status.modules.len(), 1, "{:?}", status.modules);
    let built = fleet
        .registry
        .digest(&format!("kmm/fleet-built:{K_NEXT}"))
        .unwrap();
    assert!(
        status.modules[0].digest.ends_with(&built),
        "{:?}",
        status.modules[0]
    );
    assert!(
        fleet
            .registry
            .digest(&format!("kmm/fleet-built:{K_OTHER}"))
            .is_none(),
        "nothing built for the unselected cluster's kernel"
    );
    let audit = fleet.hub.audit_settled().await.unwrap();
    assert_eq!(
        hub_creates(&audit, "jobs"),
        2,
        "one build and one sign, for K_NEXT only"
    );
    assert_eq!(
        work_writes(&audit),
        works_before,
        "an announced kernel writes no ManifestWork"
    );

    // 3. The node reboots into K_NEXT: its work pins the built image, no new Job, and the MCM
    // says the image was there before the first node.
    set_kernel(spoke("a"), "a-1", K_NEXT, "boot-2").await.unwrap();
    let want = format!("{}/kmm/fleet-built@{built}", fleet.registry.host);
    until(
        &fleet,
        180,
        "a's work maps K_NEXT to the built image",
        async || mapped(&fleet, "a", K_NEXT).await.as_deref() == Some(want.as_str()),
    )
    .await;
    until(
        &fleet,
        60,
        "the MCM says K_NEXT was ready before its first node",
        async || {
            let mcm = Api::<ManagedClusterModule>::all(fleet.hub.client())
                .get(MCM)
                .await
                .unwrap();
            mcm.status.is_some_and(|s| {
                s.kernel_readiness
                    .iter()
                    .any(|r| r.kernel == K_NEXT && r.ready_before_first_node)
            })
        },
    )
    .await;

    // 4. The annotation of a-1 is spent (it names the running kernel) and b's is removed: both
    // claims go, and with them the generated preflight.
    annotate_node(spoke("b"), "b-1", NEXT_KERNEL_ANNOTATION, None)
        .await
        .unwrap();
    until(
        &fleet,
        120,
        "the claims and the generated preflight are gone",
        async || {
            next_claim(&fleet, "a").await.is_none()
                && next_claim(&fleet, "b").await.is_none()
                && next_kernels_preflight(&fleet).await.is_none()
        },
    )
    .await;
    let audit = fleet.hub.audit_settled().await.unwrap();
    assert_eq!(
        hub_creates(&audit, "jobs"),
        2,
        "the rollout found the image: no new Job"
    );
}
