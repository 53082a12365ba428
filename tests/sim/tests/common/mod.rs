//! Shared setup for the simulator's tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;

use kmm_sim::{Sim, SimCluster};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// OCM's CRDs from the `open-cluster-management.io/api` module, as scripts/controlplane-build
/// copies them into `<target>/controlplane/crds/ocm/all`.
pub fn ocm_crds() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../controlplane/crds/ocm/all")
}

/// A simulator with one cluster carrying our CRDs and OCM's.
pub async fn cluster_with_crds(name: &str) -> (Sim, SimCluster) {
    let sim = Sim::new().unwrap();
    let c = sim.add_cluster(name).await.unwrap();
    assert!(
        c.install_crds_from_path(repo_root().join("manifests/crds"))
            .unwrap()
            >= 3
    );
    assert!(c.install_crds_from_path(ocm_crds()).unwrap() >= 4);
    (sim, c)
}

/// Waits (up to 10 s) until `f` holds.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}
