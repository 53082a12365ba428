//! `just demo`'s preflight step, after the first convergence: node `edge-1` announces its next
//! kernel ([`demo::K_NEXT`], which needs a build and a sign) with the annotation an OS updater
//! sets; the hub's generated preflight builds and signs it ahead, shown until `Success`; then the
//! node reboots into it, and the cluster's ManifestWork maps the kernel to the pinned image with
//! no build wait (the Jobs the hub created, from its apiserver's audit log, before and after).

use std::time::{Duration, Instant};

use kmm_api::{
    ManagedClusterModule,
    claims::NEXT_KERNEL_ANNOTATION,
    ocm::ManifestWork,
    preflight::{ManagedClusterPreflight, NEXT_KERNELS_PREFLIGHT, PreflightModuleStatus},
};
use kube::Api;

use crate::{
    demo,
    fleet::{Fleet, HUB_NAMESPACE, annotate_node, set_kernel},
};

/// The spoke and node the step upgrades.
pub const CLUSTER: &str = "edge";
pub const NODE: &str = "edge-1";

/// What the step saw (the demo test checks it through the printed lines).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Jobs the hub created before the reboot, and by the time the work mapped the kernel.
    pub jobs_before_reboot: usize,
    pub jobs_after_reboot: usize,
    /// The image the work pins for the kernel.
    pub image: String,
    /// The MCM's `kernelReadiness` for the kernel.
    pub ready_before_first_node: bool,
}

/// Runs the step, printing as it goes; fails after `timeout` at any wait.
pub async fn run(fleet: &Fleet, timeout: Duration) -> anyhow::Result<Outcome> {
    let kernel = demo::K_NEXT;
    let spoke = &fleet.spoke(CLUSTER)?.cluster;
    println!(
        "Preflight: node {NODE} of {CLUSTER} announces its next kernel {kernel}\n  kubectl annotate node {NODE} {NEXT_KERNEL_ANNOTATION}={kernel}"
    );
    annotate_node(spoke, NODE, NEXT_KERNEL_ANNOTATION, Some(kernel)).await?;
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let entry = entry(fleet, kernel).await?;
        let line = entry.as_ref().map_or_else(
            || format!("waiting for ManagedClusterPreflight {NEXT_KERNELS_PREFLIGHT}"),
            |e| {
                format!(
                    "{NEXT_KERNELS_PREFLIGHT}: {} {} {}/{} {}",
                    e.name, e.kernel_version, e.verification_status, e.verification_stage, e.status_reason
                )
            },
        );
        if line != last {
            println!("[{:>5.1}s] {line}", started.elapsed().as_secs_f64());
            last = line;
        }
        match entry.as_ref().map(|e| e.verification_status.as_str()) {
            Some("Success") => break,
            Some("Failure") => anyhow::bail!("the preflight failed: {last}"),
            _ => {}
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "no preflight Success after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let jobs_before_reboot = jobs(fleet).await?;
    println!(
        "Built and signed ahead ({jobs_before_reboot} Jobs created by the hub so far). Rebooting {NODE} into {kernel}..."
    );
    set_kernel(spoke, NODE, kernel, "boot-preflight").await?;
    let rebooted = Instant::now();
    let image = loop {
        if let Some(image) = mapped(fleet, kernel).await? {
            break image;
        }
        anyhow::ensure!(
            rebooted.elapsed() < timeout,
            "{CLUSTER}'s work does not map {kernel} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let jobs_after_reboot = jobs(fleet).await?;
    let wait = match jobs_after_reboot.saturating_sub(jobs_before_reboot) {
        0 => "no build wait, no new Job".to_owned(),
        n => format!("{n} new Jobs were created"),
    };
    println!(
        "[{:>5.1}s] {CLUSTER}'s ManifestWork maps {kernel} to {image}: {wait}",
        rebooted.elapsed().as_secs_f64()
    );
    let ready_before_first_node = loop {
        let mcm = Api::<ManagedClusterModule>::all(fleet.hub.client())
            .get(demo::MCM)
            .await?;
        let found = mcm
            .status
            .iter()
            .flat_map(|s| &s.kernel_readiness)
            .find(|r| r.kernel == kernel)
            .map(|r| r.ready_before_first_node);
        if let Some(ready) = found {
            break ready;
        }
        anyhow::ensure!(rebooted.elapsed() < timeout, "no kernelReadiness for {kernel}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "kernelReadiness of {}: {kernel} readyBeforeFirstNode={ready_before_first_node}\n",
        demo::MCM
    );
    Ok(Outcome {
        jobs_before_reboot,
        jobs_after_reboot,
        image,
        ready_before_first_node,
    })
}

/// The demo MCM's entry for `kernel` in the generated preflight.
async fn entry(fleet: &Fleet, kernel: &str) -> anyhow::Result<Option<PreflightModuleStatus>> {
    let pf = Api::<ManagedClusterPreflight>::all(fleet.hub.client())
        .get_opt(NEXT_KERNELS_PREFLIGHT)
        .await?;
    Ok(pf.and_then(|p| p.status).and_then(|s| {
        s.modules
            .into_iter()
            .find(|m| m.name == demo::MCM && m.kernel_version == kernel)
    }))
}

/// Jobs the hub has created so far, from the hub apiserver's audit log (succeeded Jobs are
/// collected at once, so listing them would count nothing).
async fn jobs(fleet: &Fleet) -> anyhow::Result<usize> {
    let hub = format!("system:serviceaccount:{HUB_NAMESPACE}:");
    Ok(fleet
        .hub
        .audit_settled()
        .await?
        .iter()
        .filter(|e| {
            e.verb == "create"
                && (200..300).contains(&e.code())
                && e.user.username.starts_with(&hub)
                && e.object_ref
                    .as_ref()
                    .is_some_and(|o| o.resource == "jobs" && o.subresource.is_empty())
        })
        .count())
}

/// The image the edge cluster's work maps `kernel` to.
async fn mapped(fleet: &Fleet, kernel: &str) -> anyhow::Result<Option<String>> {
    let Some(work) = Api::<ManifestWork>::namespaced(fleet.hub.client(), CLUSTER)
        .get_opt(demo::MCM)
        .await?
    else {
        return Ok(None);
    };
    Ok(work.spec.workload.manifests.first().and_then(|m| {
        let module = serde_json::to_value(m).ok()?;
        module["spec"]["moduleLoader"]["container"]["kernelMappings"]
            .as_array()?
            .iter()
            .find(|k| k["literal"] == kernel)
            .and_then(|k| k["containerImage"].as_str().map(str::to_owned))
    }))
}
