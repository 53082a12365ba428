//! `just demo`'s canary rollout: once the fleet has converged, the demo MCM gets a new image for
//! the prebuilt kernels and a Progressive strategy with `east` as its canary (labelled
//! `kmm-canary=true`); the waves are printed as they happen, one table per change, with the
//! revision each cluster's ManifestWork carries.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use kmm_api::{
    ManagedClusterModule,
    mcm::RolloutStatus,
    ocm::{ManagedCluster, ManifestWork},
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use crate::{
    demo::{self, K_EAST, K_WEST, MCM},
    fleet::Fleet,
};

/// The cluster that goes first.
pub const CANARY: &str = "east";
/// Its label, which the strategy's canary selector picks.
pub const CANARY_LABEL: &str = "kmm-canary";
/// Where the new image lives (tag: the kernel).
pub const NEW_REPOSITORY: &str = "kmm/fleet-prebuilt-v2";
/// The annotation naming the revision a ManifestWork was rendered from.
const REVISION_ANNOTATION: &str = "hub.kmm.sigs.x-k8s.io/revision";
/// Printed once every cluster is on the new revision (tests wait for it).
pub const DONE: &str = "Canary rollout done";

/// The strategy block the demo adds under `spec:`.
const STRATEGY: &str = "  rolloutStrategy:
    type: Progressive
    progressive:
      maxConcurrency: 1
      minSuccessTime: 5s
      canary:
        clusterSelector:
          kmm-canary: \"true\"
";

/// The demo MCM with the new images for the prebuilt kernels and the Progressive strategy.
pub fn canary_mcm(host: &str) -> String {
    let mut yaml = demo::example_mcm(MCM, host);
    for kernel in [K_EAST, K_WEST] {
        yaml = yaml.replace(
            &format!("{host}/kmm/fleet-prebuilt:{kernel}"),
            &format!("{host}/{NEW_REPOSITORY}:{kernel}"),
        );
    }
    yaml.replacen("spec:\n", &format!("spec:\n{STRATEGY}"), 1)
}

/// One line per cluster: canary or not, the revision its work carries, the work's state and
/// the nodes loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionRow {
    pub cluster: String,
    pub canary: bool,
    pub revision: String,
    pub work: String,
    pub loaded: String,
}

/// The rollout summary line and the per-cluster table.
pub fn render(rollout: Option<&RolloutStatus>, rows: &[RevisionRow]) -> String {
    let mut out = String::new();
    match rollout {
        Some(r) => {
            let _ = writeln!(
                out,
                "rollout to {}: {}, wave {}; updated {}, in progress {}, failed {}, pending {}",
                r.target_revision, r.phase, r.wave, r.updated, r.in_progress, r.failed, r.pending
            );
        }
        None => out.push_str("rollout: no status yet\n"),
    }
    let _ = writeln!(
        out,
        "{:<10} {:<7} {:<11} {:<10} LOADED",
        "CLUSTER", "CANARY", "REVISION", "WORK"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<10} {:<7} {:<11} {:<10} {}",
            r.cluster,
            if r.canary { "yes" } else { "no" },
            r.revision,
            r.work,
            r.loaded
        );
    }
    out
}

async fn rows(fleet: &Fleet) -> anyhow::Result<Vec<RevisionRow>> {
    let base = demo::rows(fleet).await?;
    let clusters = Api::<ManagedCluster>::all(fleet.hub.client());
    let mut out = Vec::new();
    for row in base {
        let canary = clusters
            .get_opt(&row.cluster)
            .await?
            .is_some_and(|c| c.labels().get(CANARY_LABEL).map(String::as_str) == Some("true"));
        let revision = Api::<ManifestWork>::namespaced(fleet.hub.client(), &row.cluster)
            .get_opt(MCM)
            .await?
            .and_then(|w| w.annotations().get(REVISION_ANNOTATION).cloned())
            .unwrap_or_else(|| "-".into());
        out.push(RevisionRow {
            cluster: row.cluster,
            canary,
            revision,
            work: row.work,
            loaded: format!("{}/{}", row.loaded, row.targeted),
        });
    }
    Ok(out)
}

/// Runs the canary rollout on the converged demo fleet and prints it; returns the clusters in
/// the order they moved to the new revision.
pub async fn run(fleet: &Fleet, timeout: Duration) -> anyhow::Result<Vec<String>> {
    let host = fleet.registry.host.clone();
    for kernel in [K_EAST, K_WEST] {
        fleet
            .images
            .module_image(&fleet.registry, &format!("{NEW_REPOSITORY}:{kernel}"), kernel)?;
    }
    Api::<ManagedCluster>::all(fleet.hub.client())
        .patch(
            CANARY,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {CANARY_LABEL: "true"}}})),
        )
        .await?;
    let mcms = Api::<ManagedClusterModule>::all(fleet.hub.client());
    let before = mcms
        .get_opt(MCM)
        .await?
        .and_then(|m| m.status)
        .and_then(|s| s.rollout)
        .map(|r| r.target_revision);
    let yaml = canary_mcm(&host);
    std::fs::write(fleet.dir.join("mcm.yaml"), &yaml)?;
    fleet.hub.apply_yaml(&yaml).await?;
    println!(
        "Canary rollout: new images ({host}/{NEW_REPOSITORY}) with rolloutStrategy Progressive, \
         canary {CANARY} ({CANARY_LABEL}=true), maxConcurrency 1 ({}).\n",
        fleet.dir.join("mcm.yaml").display()
    );
    let started = std::time::Instant::now();
    let mut last = String::new();
    let mut target: Option<String> = None;
    let mut order: Vec<String> = Vec::new();
    let mut moved: BTreeMap<String, bool> = BTreeMap::new();
    loop {
        let rollout = mcms
            .get_opt(MCM)
            .await?
            .and_then(|m| m.status)
            .and_then(|s| s.rollout);
        // The status names the new target once the hub has read the edit.
        if target.is_none() {
            target = rollout
                .as_ref()
                .map(|r| r.target_revision.clone())
                .filter(|t| Some(t) != before.as_ref());
        }
        let rows = rows(fleet).await?;
        if let Some(t) = &target {
            for r in &rows {
                if r.revision == *t && !moved.get(&r.cluster).copied().unwrap_or_default() {
                    moved.insert(r.cluster.clone(), true);
                    order.push(r.cluster.clone());
                }
            }
        }
        let table = render(rollout.as_ref(), &rows);
        if table != last {
            println!("[canary {:>5.1}s]\n{table}", started.elapsed().as_secs_f64());
            last = table;
        }
        let finished = target.is_some()
            && rollout.as_ref().is_some_and(|r| {
                r.phase == "Succeeded" && usize::try_from(r.updated).ok() == Some(rows.len())
            });
        if finished {
            println!(
                "{DONE} in {:.1}s: moved in this order: {}.\n",
                started.elapsed().as_secs_f64(),
                order.join(", ")
            );
            return Ok(order);
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "the canary rollout did not finish in {timeout:?}; logs:\n{}",
            fleet.log_tails(30)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canary_mcm_changes_only_the_prebuilt_images_and_adds_the_strategy() {
        let yaml = canary_mcm("reg.example:5000");
        let mcm: ManagedClusterModule = serde_saphyr::from_str(&yaml).expect("parses");
        let strategy = mcm.spec.rollout_strategy.expect("a strategy");
        assert_eq!(
            strategy
                .progressive
                .and_then(|p| p.canary)
                .map(|c| c.cluster_selector),
            Some(BTreeMap::from([(CANARY_LABEL.to_owned(), "true".to_owned())]))
        );
        assert!(yaml.contains(&format!("reg.example:5000/{NEW_REPOSITORY}:{K_EAST}")));
        assert!(!yaml.contains("kmm/fleet-prebuilt:"), "{yaml}");
        assert!(yaml.contains("kmm/fleet-built:"), "the built mapping stays");
    }

    #[test]
    fn the_table_shows_the_rollout_and_each_clusters_revision() {
        let rollout = RolloutStatus {
            target_revision: "3f9a0c21d4".into(),
            phase: "Progressing".into(),
            wave: 1,
            in_progress: 1,
            pending: 2,
            ..Default::default()
        };
        let row = |c: &str, canary, rev: &str| RevisionRow {
            cluster: c.into(),
            canary,
            revision: rev.into(),
            work: "applied".into(),
            loaded: "1/1".into(),
        };
        let text = render(
            Some(&rollout),
            &[row("east", true, "3f9a0c21d4"), row("west", false, "a81b77e0c2")],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("Progressing, wave 1") && lines[0].contains("pending 2"),
            "{text}"
        );
        assert!(lines[2].starts_with("east") && lines[2].contains("yes") && lines[2].contains("3f9a0c21d4"));
        assert!(lines[3].contains("a81b77e0c2"));
    }
}
