//! Support bundles on the fleet: `kmm-hub gather` and `kmm-spoke gather` against real control
//! planes while a module fails to load. The bundles hold the failure, list what they collected,
//! and not one secret value of the test's Secrets appears anywhere in them, not even where the
//! test planted one in an MCM annotation.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is a failed test

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kmm_api::{ManagedClusterModule, preflight::ManagedClusterPreflight};
use kmm_fleet_tests::{
    Wait, demo,
    fleet::{BUILD_SECRET, Fleet, HUB_NAMESPACE, NodeSpec},
    run, workspace_bin,
};
use kube::{
    Api,
    api::{ListParams, PostParams},
};

const MCM: &str = "fleet-kmod";
const PREFLIGHT: &str = "next-kernel";

/// Every file of a bundle with its contents.
fn files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            out.push((path, text));
        }
    }
    out
}

fn gather(binary: &str, kubeconfig: &Path, out: &Path, extra: &[&str]) -> String {
    run(Command::new(workspace_bin(binary).unwrap())
        .arg("gather")
        .arg("--out")
        .arg(out)
        .args(extra)
        .env("KUBECONFIG", kubeconfig))
    .unwrap()
}

/// Pieces of a secret value long enough to be unmistakable: the whole value, its base64 form,
/// and each line of 16 bytes or more (a PEM body's lines).
fn needles(value: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(value).into_owned();
    let mut out = vec![base64::engine::general_purpose::STANDARD.encode(value)];
    out.extend(
        text.lines()
            .map(str::trim)
            .filter(|l| l.len() >= 16 && !l.starts_with("-----"))
            .map(str::to_owned),
    );
    out.push(text.trim().to_owned());
    out.retain(|n| n.len() >= 8);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_hold_the_failure_and_no_secret_byte() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gather-e2e");
    let mut fleet = Fleet::start(&dir).await.unwrap();
    fleet.push_prebuilt(demo::K_EAST).unwrap();
    fleet
        .add_spoke(
            "a",
            &[("driver", "gpu")],
            &[NodeSpec::worker("a-1", demo::K_EAST)],
        )
        .await
        .unwrap();
    fleet.start_hub().unwrap();

    // The build Secret's token, also pasted into an annotation as a careless user might.
    let secrets = Api::<Secret>::namespaced(fleet.hub.client(), HUB_NAMESPACE);
    let token = secrets.get(BUILD_SECRET).await.unwrap().data.unwrap()["token"]
        .0
        .clone();
    let token = String::from_utf8(token).unwrap();
    let yaml = demo::example_mcm(MCM, &fleet.registry.host)
        .replace("moduleName: kmm_fleet", "moduleName: kmm_absent")
        .replace(
            &format!("name: {MCM}\n"),
            &format!("name: {MCM}\n  annotations:\n    note: \"pull with Authorization: Bearer {token}-{token}, token={token}\"\n"),
        );
    let mcm: ManagedClusterModule = serde_saphyr::from_str(&yaml).unwrap();
    assert!(mcm.metadata.annotations.as_ref().unwrap()["note"].contains(&token));
    Api::<ManagedClusterModule>::all(fleet.hub.client())
        .create(&PostParams::default(), &mcm)
        .await
        .unwrap();
    Wait::new(
        "cluster a degraded: kmm_absent not found",
        Duration::from_secs(180),
    )
    .context(|| fleet.log_tails(30))
    .eventually(|| async {
        Api::<ManagedClusterModule>::all(fleet.hub.client())
            .get(MCM)
            .await
            .ok()
            .and_then(|m| m.status)
            .is_some_and(|s| {
                s.problems
                    .iter()
                    .any(|p| p.message.contains("kmm_absent not found"))
            })
    })
    .await;

    // A preflight of the fleet's kernel, answered by the hub before the bundle is taken.
    fleet
        .hub
        .apply_yaml(&format!(
            "apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1\nkind: ManagedClusterPreflight\nmetadata:\n  name: {PREFLIGHT}\nspec:\n  kernelVersions: [{}]\n",
            demo::K_EAST
        ))
        .await
        .unwrap();
    Wait::new("the preflight answered", Duration::from_secs(120))
        .context(|| fleet.log_tails(30))
        .eventually(|| async {
            Api::<ManagedClusterPreflight>::all(fleet.hub.client())
                .get(PREFLIGHT)
                .await
                .ok()
                .and_then(|p| p.status)
                .is_some_and(|s| s.modules.iter().any(|m| m.verification_status == "Success"))
        })
        .await;

    let hub_bundle = fleet.dir.join("bundle-hub");
    let said = gather(
        "kmm-hub",
        fleet.hub.kubeconfig_path(),
        &hub_bundle,
        &["--namespace", HUB_NAMESPACE],
    );
    assert!(said.contains("wrote"), "{said}");
    let spoke_bundle = fleet.dir.join("bundle-spoke");
    let spoke = fleet.spoke("a").unwrap();
    gather("kmm-spoke", spoke.cluster.kubeconfig_path(), &spoke_bundle, &[]);

    let hub_files = files(&hub_bundle);
    let spoke_files = files(&spoke_bundle);
    let text_of = |files: &[(PathBuf, String)], name: &str| -> String {
        files
            .iter()
            .find(|(p, _)| p.ends_with(name))
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| {
                panic!(
                    "no {name} in {:?}",
                    files.iter().map(|(p, _)| p).collect::<Vec<_>>()
                )
            })
    };

    // The failure, from both sides.
    let mcms = text_of(&hub_files, "mcms.yaml");
    assert!(
        mcms.contains("LoadFailed") && mcms.contains("kmm_absent not found"),
        "{mcms}"
    );
    assert!(text_of(&hub_files, "manifestworks.yaml").contains("kmm_absent"));
    assert!(text_of(&hub_files, "managedclusters.yaml").contains("kernel"));
    let preflights = text_of(&hub_files, "preflights.yaml");
    assert!(
        preflights.contains(PREFLIGHT) && preflights.contains("verificationStatus: Success"),
        "{preflights}"
    );
    assert!(text_of(&spoke_files, "modules.yaml").contains("kmm_absent"));
    assert!(text_of(&spoke_files, "nodes.yaml").contains(demo::K_EAST));
    // The manifests list what was collected, failures included, and the versions are there.
    for (files, binary) in [(&hub_files, "kmm-hub"), (&spoke_files, "kmm-spoke")] {
        let manifest = text_of(files, "manifest.yaml");
        assert!(manifest.contains("path: versions.yaml"), "{manifest}");
        assert!(text_of(files, "versions.yaml").contains(&format!("{binary}: ")));
    }
    let manifest = text_of(&hub_files, "manifest.yaml");
    for path in [
        "mcms.yaml",
        "manifestworks.yaml",
        "hub/jobs.yaml",
        "hub/events.yaml",
        "default/events.yaml",
    ] {
        assert!(
            manifest.contains(&format!("path: {path}")),
            "{path} missing in {manifest}"
        );
    }
    // The planted token is masked, its context kept.
    assert!(
        mcms.contains("note: ") && mcms.contains("<redacted>") && !mcms.contains(&token),
        "{mcms}"
    );

    // No secret value of any Secret of either cluster, in any file of either bundle.
    let mut all_secrets = secrets.list(&ListParams::default()).await.unwrap().items;
    all_secrets.extend(
        Api::<Secret>::all(spoke.cluster.client())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items,
    );
    let mut checked = 0;
    for secret in &all_secrets {
        for (key, value) in secret.data.iter().flatten() {
            for needle in needles(&value.0) {
                checked += 1;
                for (path, text) in hub_files.iter().chain(&spoke_files) {
                    assert!(
                        !text.contains(&needle),
                        "{}: holds a piece of Secret {:?} key {key}",
                        path.display(),
                        secret.metadata.name
                    );
                }
            }
        }
    }
    assert!(checked >= 3, "the test's Secrets were read ({checked} needles)");
}
