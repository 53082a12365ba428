//! Shared set-up for the agent tests: simulator clusters, CRDs and a polling helper.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kmm_sim::{Sim, SimCluster};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

pub use kmm_test_kit::eventually;

/// OCM's CRDs from the `open-cluster-management.io/api` module, all of them.
pub fn ocm_crds() -> PathBuf {
    kmm_test_kit::ocm_crds().unwrap().join("all")
}

/// A namespaced test CRD `widgets.test.kmm.io/v1` with a status subresource and free-form fields.
pub const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.kmm.io
spec:
  group: test.kmm.io
  names: {kind: Widget, listKind: WidgetList, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

pub fn install_widget_crd(cluster: &SimCluster) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("widgets.yaml");
    std::fs::write(&path, WIDGET_CRD).unwrap();
    cluster.install_crds_from_path(&path).unwrap();
}

pub async fn create_namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
}

/// A hub with the OCM CRDs and the namespace `cluster`, and a spoke with the OCM CRDs (for
/// ClusterClaims), the widget CRD and the namespace `kmm`.
pub struct Fleet {
    pub sim: Sim,
    pub hub: SimCluster,
    pub spoke: SimCluster,
    pub cluster: String,
}

pub async fn fleet(cluster: &str) -> Fleet {
    let sim = Sim::new().unwrap();
    let hub = sim.add_cluster("hub").await.unwrap();
    let spoke = sim.add_cluster(cluster).await.unwrap();
    hub.install_crds_from_path(ocm_crds()).unwrap();
    spoke.install_crds_from_path(ocm_crds()).unwrap();
    install_widget_crd(&spoke);
    create_namespace(&hub.client(), cluster).await;
    create_namespace(&spoke.client(), "kmm").await;
    Fleet {
        sim,
        hub,
        spoke,
        cluster: cluster.to_string(),
    }
}

/// How long a wait on the simulator may take.
pub const WAIT: Duration = Duration::from_secs(10);
