//! `kmm-hub gather`: a support bundle of the hub cluster (see [`kmm_api::gather`] for the
//! redaction and bounds): the MCMs and ManagedClusterPreflights, the MCMs' ManifestWorks with
//! status, the ManagedClusters with their kernel claims, the hub's Jobs, pods and their log tails (build, sign and the hub's own),
//! Events, ConfigMaps and Deployments of its namespace, and versions. Secrets are never listed.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use kmm_api::{
    gather::{self, Bundle, Kind, LogBounds},
    labels::MCM_NAME_LABEL,
};
use kube::Client;

const MCMS: Kind = Kind::new(
    "hub.kmm.sigs.x-k8s.io",
    "v1beta1",
    "ManagedClusterModule",
    "managedclustermodules",
);
const PREFLIGHTS: Kind = Kind::new(
    "hub.kmm.sigs.x-k8s.io",
    "v1beta1",
    "ManagedClusterPreflight",
    "managedclusterpreflights",
);
const MANAGED_CLUSTERS: Kind = Kind::new(
    "cluster.open-cluster-management.io",
    "v1",
    "ManagedCluster",
    "managedclusters",
);
const MANIFEST_WORKS: Kind = Kind::new(
    "work.open-cluster-management.io",
    "v1",
    "ManifestWork",
    "manifestworks",
);

#[derive(Args, Debug)]
pub struct GatherArgs {
    /// Folder to write the bundle into (must not exist or be empty).
    #[arg(long, default_value = "kmm-hub-gather")]
    pub out: PathBuf,
    /// Namespace the hub runs in (its Jobs, pods, ConfigMaps).
    #[arg(long, env = "KMM_HUB_NAMESPACE", default_value = crate::rbac::NAME)]
    pub namespace: String,
    /// Last lines kept of each container log.
    #[arg(long, default_value_t = 500)]
    pub log_lines: i64,
    /// Most bytes kept of each container log.
    #[arg(long, default_value_t = 256 * 1024)]
    pub log_bytes: i64,
}

/// Writes the bundle; returns its folder and how many entries failed.
pub async fn gather(args: &GatherArgs) -> anyhow::Result<(PathBuf, usize)> {
    let client = Client::try_default()
        .await
        .context("connecting to the hub's API server (KUBECONFIG or in-cluster)")?;
    let mut bundle = Bundle::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let ns = args.namespace.as_str();
    versions(&mut bundle, &client).await;
    bundle.objects(&client, "mcms.yaml", MCMS, None, None).await;
    bundle
        .objects(&client, "preflights.yaml", PREFLIGHTS, None, None)
        .await;
    bundle
        .objects(&client, "managedclusters.yaml", MANAGED_CLUSTERS, None, None)
        .await;
    bundle
        .objects(
            &client,
            "manifestworks.yaml",
            MANIFEST_WORKS,
            None,
            Some(MCM_NAME_LABEL),
        )
        .await;
    bundle
        .objects(&client, "hub/jobs.yaml", gather::JOBS, Some(ns), None)
        .await;
    let pods = bundle
        .objects(&client, "hub/pods.yaml", gather::PODS, Some(ns), None)
        .await;
    let bounds = LogBounds {
        lines: args.log_lines,
        bytes: args.log_bytes,
    };
    bundle.pod_logs(&client, "logs", &pods, bounds).await;
    bundle
        .objects(&client, "hub/events.yaml", gather::EVENTS, Some(ns), None)
        .await;
    // Events about the cluster-scoped MCMs are recorded in `default`.
    bundle
        .objects(
            &client,
            "default/events.yaml",
            gather::EVENTS,
            Some("default"),
            None,
        )
        .await;
    bundle
        .objects(&client, "hub/configmaps.yaml", gather::CONFIGMAPS, Some(ns), None)
        .await;
    bundle
        .objects(
            &client,
            "hub/deployments.yaml",
            gather::DEPLOYMENTS,
            Some(ns),
            None,
        )
        .await;
    let failed = bundle.entries().iter().filter(|e| e.error.is_some()).count();
    let dir = bundle.finish().context("writing manifest.yaml")?;
    Ok((dir, failed))
}

async fn versions(bundle: &mut Bundle, client: &Client) {
    let server = match client.apiserver_version().await {
        Ok(v) => format!("{}.{} ({})", v.major, v.minor, v.git_version),
        Err(e) => format!("unknown: {e}"),
    };
    bundle.text(
        "versions.yaml",
        "versions of kmm-hub and the API server",
        &format!("kmm-hub: {}\napiserver: {server}\n", env!("CARGO_PKG_VERSION")),
    );
}
