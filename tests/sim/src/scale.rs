//! Scale mode: thousands of ManagedClusters written straight into a hub's store, and the
//! simulator's own request throughput, so a benchmark can tell the hub's cost from ours.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{SimCluster, SimError};

/// One managed cluster to create in scale mode.
#[derive(Clone, Debug, Default)]
pub struct FleetMember {
    pub name: String,
    pub labels: Vec<(String, String)>,
    /// ClusterClaims as the registration agent would have copied them (`name`, `value`).
    pub claims: Vec<(String, String)>,
}

/// What a scale-mode setup or a benchmark run cost the simulator.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleReport {
    pub objects: usize,
    pub elapsed: Duration,
}

/// Requests the simulator served and how fast.
#[derive(Clone, Debug, PartialEq)]
pub struct Throughput {
    pub requests: u64,
    pub elapsed: Duration,
}

impl Throughput {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl SimCluster {
    /// Creates a ManagedCluster (with joined/available conditions and the given claims) and its
    /// namespace for every member, bypassing HTTP. The ManagedCluster CRD must be installed.
    pub fn add_managed_clusters(&self, members: &[FleetMember]) -> Result<ScaleReport, SimError> {
        let started = Instant::now();
        let store = self.store();
        let missing = |what: &str| SimError::Manifest {
            path: "<scale>".into(),
            message: format!("{what} is not installed"),
        };
        let mc = self
            .resource_type("cluster.open-cluster-management.io/v1", "ManagedCluster")
            .ok_or_else(|| missing("the ManagedCluster CRD"))?;
        let ns = self
            .resource_type("v1", "Namespace")
            .ok_or_else(|| missing("Namespace"))?;
        let bad = |e: crate::status::ApiError| SimError::Manifest {
            path: "<scale>".into(),
            message: e.message,
        };
        for m in members {
            let labels: serde_json::Map<String, Value> =
                m.labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            let claims: Vec<Value> = m
                .claims
                .iter()
                .map(|(n, v)| json!({"name": n, "value": v}))
                .collect();
            let now = crate::time::now();
            store
                .insert_direct(
                    &mc,
                    json!({"apiVersion": "cluster.open-cluster-management.io/v1", "kind": "ManagedCluster",
                        "metadata": {"name": m.name, "labels": labels},
                        "spec": {"hubAcceptsClient": true, "leaseDurationSeconds": 60},
                        "status": {"clusterClaims": claims, "conditions": [
                            {"type": "ManagedClusterJoined", "status": "True", "reason": "ManagedClusterJoined",
                             "message": "joined", "lastTransitionTime": now},
                            {"type": "ManagedClusterConditionAvailable", "status": "True",
                             "reason": "ManagedClusterAvailable", "message": "available", "lastTransitionTime": now}]}}),
                )
                .map_err(bad)?;
            store
                .insert_direct(
                    &ns,
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": m.name},
                                          "status": {"phase": "Active"}}),
                )
                .map_err(bad)?;
        }
        Ok(ScaleReport {
            objects: members.len() * 2,
            elapsed: started.elapsed(),
        })
    }

    /// Requests served since the cluster started (or since [`SimCluster::reset_requests`]).
    pub fn throughput(&self) -> Throughput {
        Throughput {
            requests: self.requests().total(),
            elapsed: self.uptime(),
        }
    }
}
