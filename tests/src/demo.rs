//! `just demo`: a local fleet (hub and three spokes on real control planes with OCM's agents,
//! the real registry, the real kmm-hub and kmm-spoke), an example ManagedClusterModule, and a per-cluster status table.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use k8s_openapi::api::core::v1::Node;
use kmm_api::{
    ManagedClusterModule, labels,
    ocm::{ManagedCluster, ManifestWork},
};
use kube::{Api, ResourceExt, api::ListParams};

use crate::{
    controlplane::Options,
    fleet::{BUILD_SECRET, CERT_SECRET, DOCKERFILE_CONFIGMAP, Fleet, KEY_SECRET, MODULE_NAMESPACE, NodeSpec},
    policy::{self, PolicyHub, PolicyPlane, PolicySpoke},
};

/// The example MCM's name.
pub const MCM: &str = "demo-kmod";

/// Kernels of the demo's spokes: two with prebuilt images, one built and signed on the hub,
/// and one more the user can upgrade a node to (its sources are in the registry).
pub const K_EAST: &str = "6.1.0-18-cloud-amd64";
pub const K_WEST: &str = "5.14.0-70.el9.x86_64";
pub const K_EDGE: &str = "6.1.0-25-cloud-amd64";
pub const K_NEXT: &str = "6.1.0-27-cloud-amd64";

/// The example ManagedClusterModule `name` for a registry at `host` (the fleet tests roll out
/// the same one).
pub fn example_mcm(name: &str, host: &str) -> String {
    format!(
        r#"apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1
kind: ManagedClusterModule
metadata:
  name: {name}
spec:
  spokeNamespace: {MODULE_NAMESPACE}
  # ManagedClusters labelled driver=gpu get the module.
  selector:
    driver: gpu
  moduleSpec:
    # Nodes of those clusters that get it.
    selector:
      node-role.kubernetes.io/worker: ""
    moduleLoader:
      container:
        modprobe:
          moduleName: kmm_fleet
        registryTLS:
          insecure: true
        kernelMappings:
          # Prebuilt images.
          - literal: {K_EAST}
            containerImage: {host}/kmm/fleet-prebuilt:{K_EAST}
          - literal: {K_WEST}
            containerImage: {host}/kmm/fleet-prebuilt:{K_WEST}
          # Built and signed on the hub, once per kernel, for any 6.1.0-2x kernel.
          - regexp: '^6\.1\.0-2[0-9]-cloud-amd64$'
            containerImage: {host}/kmm/fleet-built:${{KERNEL_FULL_VERSION}}
            build:
              dockerfileConfigMap:
                name: {DOCKERFILE_CONFIGMAP}
              # Mounted in the build pod at /run/secrets/<name>; a Secret name may hold dots.
              secrets:
                - name: {BUILD_SECRET}
              baseImageRegistryTLS:
                insecure: true
            sign:
              keySecret:
                name: {KEY_SECRET}
              certSecret:
                name: {CERT_SECRET}
              unsignedImageRegistryTLS:
                insecure: true
              filesToSign:
                - /opt/lib/modules/${{KERNEL_FULL_VERSION}}/extra/kmm_fleet.ko
    devicePlugin:
      container:
        image: {host}/kmm/fleet-plugin:1
"#
    )
}

/// Starts the demo fleet under `dir` and applies the example MCM (also written to
/// `<dir>/mcm.yaml` for the user to edit and re-apply). kmm-spoke is installed on the spokes
/// by the generated Policies (`policies/`), through OCM's policy framework
/// ([`crate::policy`]).
pub async fn start(dir: &Path) -> anyhow::Result<Fleet> {
    start_with(dir, true).await
}

/// [`start`]; with `via_policy` false kmm-spoke runs as a process per spoke instead, with
/// `manifests/spoke`'s ServiceAccount and RBAC (no policy framework).
pub async fn start_with(dir: &Path, via_policy: bool) -> anyhow::Result<Fleet> {
    let hub_options = Options::hub();
    // Sign Jobs and worker pods run from the kmm-hub and kmm-spoke images (built when missing).
    let mut fleet = if via_policy {
        Fleet::start_from_images(dir, policy::hub_options(hub_options)).await?
    } else {
        Fleet::start_from_images(dir, hub_options).await?
    };
    fleet.push_prebuilt(K_EAST)?;
    fleet.push_prebuilt(K_WEST)?;
    fleet.push_sources(&[K_EDGE, K_NEXT])?;
    fleet.start_hub()?;
    let policy_hub = match via_policy {
        true => Some(PolicyHub::start(&fleet.hub, &fleet.dir).await?),
        false => None,
    };
    let mut control = NodeSpec::worker("east-cp", K_EAST);
    control.labels = BTreeMap::from([("node-role.kubernetes.io/control-plane".into(), String::new())]);
    let spokes = [
        (
            "east",
            vec![
                NodeSpec::worker("east-1", K_EAST),
                NodeSpec::worker("east-2", K_EAST),
                control,
            ],
        ),
        ("west", vec![NodeSpec::worker("west-1", K_WEST)]),
        ("edge", vec![NodeSpec::worker("edge-1", K_EDGE)]),
    ];
    let mut policy_spokes = Vec::new();
    for (name, nodes) in spokes {
        if via_policy {
            let labels = [
                ("driver", "gpu"),
                (policy::CLUSTER_SET_LABEL, "default"),
                (policy::SPOKE_SELECTOR_LABEL, "true"),
            ];
            fleet.add_policy_spoke(name, &labels, &nodes).await?;
            let cluster = &fleet.spoke(name)?.cluster;
            policy_spokes.push(PolicySpoke::start(&fleet.hub, cluster, name, &fleet.dir.join(name)).await?);
        } else {
            fleet.add_spoke(name, &[("driver", "gpu")], &nodes).await?;
        }
    }
    if let Some(hub) = policy_hub {
        policy::apply_policies(&fleet.hub)?;
        fleet.policy_plane = Some(PolicyPlane {
            spokes: policy_spokes,
            hub,
        });
    }
    let mcm = example_mcm(MCM, &fleet.registry.host);
    std::fs::write(fleet.dir.join("mcm.yaml"), &mcm)?;
    fleet.hub.apply_yaml(&mcm).await?;
    Ok(fleet)
}

/// One line of the status table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterRow {
    pub cluster: String,
    /// The MCM selects the cluster.
    pub selected: bool,
    /// Distinct kernels of the cluster's nodes.
    pub kernels: Vec<String>,
    /// `-` (none), `written`, `applied` or the failing condition's reason.
    pub work: String,
    /// Nodes with the module-ready label / nodes the Module targets.
    pub loaded: usize,
    pub targeted: usize,
    /// What the MCM status says is wrong there.
    pub problem: Option<String>,
}

impl ClusterRow {
    /// Loaded everywhere it should be (or nothing to do for an unselected cluster).
    pub fn done(&self) -> bool {
        if self.selected {
            self.work == "applied" && self.loaded == self.targeted && self.problem.is_none()
        } else {
            self.work == "-" && self.loaded == 0
        }
    }
}

/// The table, fixed-width, one row per cluster.
pub fn render_table(rows: &[ClusterRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<9} {:<45} {:<10} {:<7} PROBLEM",
        "CLUSTER", "SELECTED", "KERNELS", "WORK", "LOADED"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<10} {:<9} {:<45} {:<10} {:<7} {}",
            r.cluster,
            if r.selected { "yes" } else { "no" },
            r.kernels.join(","),
            r.work,
            format!("{}/{}", r.loaded, r.targeted),
            r.problem.as_deref().unwrap_or("-"),
        );
    }
    out
}

/// Reads every cluster's row from the hub and the spokes.
pub async fn rows(fleet: &Fleet) -> anyhow::Result<Vec<ClusterRow>> {
    let mcm = Api::<ManagedClusterModule>::all(fleet.hub.client())
        .get_opt(MCM)
        .await?;
    let clusters = Api::<ManagedCluster>::all(fleet.hub.client())
        .list(&ListParams::default())
        .await?
        .items;
    let ready = labels::module_ready(MODULE_NAMESPACE, MCM);
    let mut out = Vec::new();
    for (name, spoke) in &fleet.spokes {
        let cluster = clusters.iter().find(|c| &c.name_any() == name);
        let selected = match (&mcm, cluster) {
            (Some(m), Some(c)) => m.spec.selector.iter().all(|(k, v)| c.labels().get(k) == Some(v)),
            _ => false,
        };
        let work = Api::<ManifestWork>::namespaced(fleet.hub.client(), name)
            .get_opt(MCM)
            .await?;
        let work = match work {
            None => "-".to_owned(),
            Some(w) => {
                let conditions = w.status.map(|s| s.conditions).unwrap_or_default();
                let applied = conditions
                    .iter()
                    .find(|c| c.type_ == "Applied")
                    .map(|c| (c.status == "True", c.reason.clone()));
                match applied {
                    Some((true, _)) => "applied".to_owned(),
                    Some((false, reason)) => reason,
                    None => "written".to_owned(),
                }
            }
        };
        let nodes = Api::<Node>::all(spoke.cluster.client())
            .list(&ListParams::default())
            .await?
            .items;
        let mut kernels: Vec<String> = nodes
            .iter()
            .filter_map(|n| Some(n.status.as_ref()?.node_info.as_ref()?.kernel_version.clone()))
            .collect();
        kernels.sort();
        kernels.dedup();
        let node_selector = mcm
            .as_ref()
            .map(|m| m.spec.module_spec.selector.clone())
            .unwrap_or_default();
        let targeted = if selected {
            nodes
                .iter()
                .filter(|n| node_selector.iter().all(|(k, v)| n.labels().get(k) == Some(v)))
                .count()
        } else {
            0
        };
        let loaded = nodes.iter().filter(|n| n.labels().contains_key(&ready)).count();
        let problem = mcm
            .as_ref()
            .and_then(|m| m.status.as_ref())
            .and_then(|s| s.problems.iter().find(|p| &p.cluster == name))
            .map(|p| format!("{}: {}", p.reason, p.message));
        out.push(ClusterRow {
            cluster: name.clone(),
            selected,
            kernels,
            work,
            loaded,
            targeted,
            problem,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(selected: bool, work: &str, loaded: usize, targeted: usize) -> ClusterRow {
        ClusterRow {
            cluster: "east".into(),
            selected,
            kernels: vec![K_EAST.into()],
            work: work.into(),
            loaded,
            targeted,
            problem: None,
        }
    }

    #[test]
    fn a_selected_cluster_is_done_when_applied_and_loaded_everywhere() {
        assert!(row(true, "applied", 2, 2).done());
        assert!(!row(true, "applied", 1, 2).done());
        assert!(!row(true, "written", 2, 2).done());
        let mut blocked = row(true, "applied", 2, 2);
        blocked.problem = Some("NotLoaded: 1 node".into());
        assert!(!blocked.done());
    }

    #[test]
    fn an_unselected_cluster_is_done_when_nothing_is_left_there() {
        assert!(row(false, "-", 0, 0).done());
        assert!(!row(false, "applied", 0, 0).done());
        assert!(!row(false, "-", 1, 0).done());
    }

    #[test]
    fn the_table_has_a_header_and_one_aligned_line_per_cluster() {
        let text = render_table(&[row(true, "applied", 2, 2), row(false, "-", 0, 0)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("CLUSTER"));
        assert!(lines[1].contains("yes") && lines[1].contains("applied") && lines[1].contains("2/2"));
        assert!(lines[2].contains("no") && lines[2].contains("0/0"));
        let column = lines[0].find("WORK").unwrap();
        assert_eq!(&lines[1][column..column + 7], "applied");
    }
}
