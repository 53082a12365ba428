//! `kmm-spoke gather`: a support bundle of one managed cluster (see [`kmm_api::gather`] for the
//! redaction and bounds): Modules, NodeModulesConfigs, the kernel ClusterClaims, nodes (labels,
//! kernels), and in the operator's and every Module's namespace the pods (worker, device plugin,
//! kmm-spoke itself) with their log tails, DaemonSets and Events; kmm-spoke's configuration and
//! versions. Secrets are never listed.

use std::{collections::BTreeSet, path::PathBuf};

use anyhow::Context as _;
use clap::Args;
use kmm_api::gather::{self, Bundle, Kind, LogBounds};
use kube::Client;

const MODULES: Kind = Kind::new("kmm.sigs.x-k8s.io", "v1beta1", "Module", "modules");
const NMCS: Kind = Kind::new(
    "kmm.sigs.x-k8s.io",
    "v1beta1",
    "NodeModulesConfig",
    "nodemodulesconfigs",
);
const CLAIMS: Kind = Kind::new(
    "cluster.open-cluster-management.io",
    "v1alpha1",
    "ClusterClaim",
    "clusterclaims",
);

#[derive(Args, Debug)]
pub struct GatherArgs {
    /// Folder to write the bundle into (must not exist or be empty).
    #[arg(long, default_value = "kmm-spoke-gather")]
    pub out: PathBuf,
    /// Namespace kmm-spoke runs in.
    #[arg(long, env = "OPERATOR_NAMESPACE", default_value = crate::rbac::NAMESPACE)]
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
        .context("connecting to the cluster's API server (KUBECONFIG or in-cluster)")?;
    let mut bundle = Bundle::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let server = match client.apiserver_version().await {
        Ok(v) => format!("{}.{} ({})", v.major, v.minor, v.git_version),
        Err(e) => format!("unknown: {e}"),
    };
    bundle.text(
        "versions.yaml",
        "versions of kmm-spoke and the API server",
        &format!("kmm-spoke: {}\napiserver: {server}\n", env!("CARGO_PKG_VERSION")),
    );
    let modules = bundle.objects(&client, "modules.yaml", MODULES, None, None).await;
    bundle
        .objects(&client, "nodemodulesconfigs.yaml", NMCS, None, None)
        .await;
    bundle
        .objects(&client, "clusterclaims.yaml", CLAIMS, None, None)
        .await;
    bundle
        .objects(&client, "nodes.yaml", gather::NODES, None, None)
        .await;
    let bounds = LogBounds {
        lines: args.log_lines,
        bytes: args.log_bytes,
    };
    for ns in namespaces(
        &args.namespace,
        modules.iter().filter_map(|m| m.metadata.namespace.as_deref()),
    ) {
        let pods = bundle
            .objects(&client, &format!("{ns}/pods.yaml"), gather::PODS, Some(&ns), None)
            .await;
        bundle.pod_logs(&client, "logs", &pods, bounds).await;
        bundle
            .objects(
                &client,
                &format!("{ns}/daemonsets.yaml"),
                gather::DAEMONSETS,
                Some(&ns),
                None,
            )
            .await;
        bundle
            .objects(
                &client,
                &format!("{ns}/events.yaml"),
                gather::EVENTS,
                Some(&ns),
                None,
            )
            .await;
    }
    let ns = Some(args.namespace.as_str());
    bundle
        .objects(&client, "config/configmaps.yaml", gather::CONFIGMAPS, ns, None)
        .await;
    bundle
        .objects(&client, "config/deployments.yaml", gather::DEPLOYMENTS, ns, None)
        .await;
    let failed = bundle.entries().iter().filter(|e| e.error.is_some()).count();
    let dir = bundle.finish().context("writing manifest.yaml")?;
    Ok((dir, failed))
}

/// The operator's namespace and every namespace holding a Module, each once.
fn namespaces<'a>(operator: &'a str, modules: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    std::iter::once(operator)
        .chain(modules)
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_and_module_namespaces_are_gathered_once_each() {
        let got = namespaces("kmm-operator-system", ["drivers", "gpu", "drivers"].into_iter());
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            ["drivers", "gpu", "kmm-operator-system"]
        );
    }
}
