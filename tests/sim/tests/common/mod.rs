//! Shared setup for the simulator's tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use kmm_sim::{Sim, SimCluster};

/// How long a wait on the simulator may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A simulator with one cluster carrying our CRDs and OCM's.
pub async fn cluster_with_crds(name: &str) -> (Sim, SimCluster) {
    let sim = Sim::new().unwrap();
    let c = sim.add_cluster(name).await.unwrap();
    assert!(c.install_crds_from_path(kmm_test_kit::crds_dir()).unwrap() >= 3);
    assert!(
        c.install_crds_from_path(kmm_test_kit::ocm_crds().unwrap().join("all"))
            .unwrap()
            >= 4
    );
    (sim, c)
}
