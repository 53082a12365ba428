//! Which (MCM, kernel) pairs the clusters' next-kernel claims ask the hub to preflight (pure).
//!
//! A spoke is trusted less than the hub, so what it claims is bounded at every step: each line
//! must follow the kernel grammar, a cluster gives at most
//! [`MAX_NEXT_KERNELS_PER_CLUSTER`](kmm_api::claims::MAX_NEXT_KERNELS_PER_CLUSTER) kernels, the
//! fleet at most [`MAX_PREFLIGHT_KERNELS`] (those claimed by most clusters), and a kernel is only
//! checked for the MCMs that select a cluster claiming it. A cluster no MCM selects asks nothing.
//! Every refusal and cut becomes a sentence in the generated preflight's `status.claimIssues`.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use kmm_api::{
    ManagedClusterModule,
    claims::{NEXT_KERNEL_VERSIONS_CLAIM, decode_next_kernels},
    ocm::ManagedCluster,
    preflight::{MAX_CLAIM_ISSUES, MAX_PREFLIGHT_KERNELS},
};
use kube::ResourceExt;

use crate::mcm_controller::desired::plan::selects;

/// Longest sentence kept in `status.claimIssues`.
const MAX_ISSUE_LEN: usize = 256;

/// What the claims ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NextKernelPlan {
    /// Every kernel some pair asks for, sorted; at most [`MAX_PREFLIGHT_KERNELS`].
    pub kernels: Vec<String>,
    /// Per MCM name: the kernels claimed by the clusters it selects, sorted.
    pub pairs: BTreeMap<String, Vec<String>>,
    /// What was refused or cut, one sentence each; at most [`MAX_CLAIM_ISSUES`].
    pub issues: Vec<String>,
}

/// The pairs `clusters`' next-kernel claims ask for over `mcms`; see the module docs.
pub fn plan(mcms: &[Arc<ManagedClusterModule>], clusters: &[Arc<ManagedCluster>]) -> NextKernelPlan {
    let mcms: Vec<&Arc<ManagedClusterModule>> = mcms
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .collect();
    let mut issues = Vec::new();
    // Per claiming cluster that some MCM selects: its kernels and the MCMs selecting it.
    let mut asking: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for cluster in clusters
        .iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
    {
        let Some(value) = cluster.claim(NEXT_KERNEL_VERSIONS_CLAIM) else {
            continue;
        };
        let selecting: Vec<String> = mcms
            .iter()
            .filter(|m| selects(m, cluster))
            .map(|m| m.name_any())
            .collect();
        if selecting.is_empty() {
            continue;
        }
        let decoded = decode_next_kernels(Some(value));
        let name = cluster.name_any();
        issues.extend(
            decoded
                .refused
                .iter()
                .map(|e| format!("cluster {}: {e}", crate::render::printable(&name))),
        );
        if !decoded.kernels.is_empty() {
            asking.push((decoded.kernels, selecting));
        }
    }
    let kept = fleet_cap(&asking, &mut issues);
    let mut pairs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (kernels, selecting) in &asking {
        for kernel in kernels.iter().filter(|k| kept.contains(*k)) {
            for mcm in selecting {
                pairs.entry(mcm.clone()).or_default().insert(kernel.clone());
            }
        }
    }
    let kernels: BTreeSet<String> = pairs.values().flatten().cloned().collect();
    NextKernelPlan {
        kernels: kernels.into_iter().collect(),
        pairs: pairs
            .into_iter()
            .map(|(mcm, ks)| (mcm, ks.into_iter().collect()))
            .collect(),
        issues: bounded(issues),
    }
}

/// The kernels the fleet may ask for: at most [`MAX_PREFLIGHT_KERNELS`], those claimed by most
/// clusters first (the real upgrade outnumbers one cluster's odd values), then by name.
fn fleet_cap(asking: &[(Vec<String>, Vec<String>)], issues: &mut Vec<String>) -> BTreeSet<String> {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for kernel in asking.iter().flat_map(|(ks, _)| ks) {
        *count.entry(kernel).or_default() += 1;
    }
    let mut ranked: Vec<(&str, usize)> = count.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    if ranked.len() > MAX_PREFLIGHT_KERNELS {
        let left: Vec<&str> = ranked[MAX_PREFLIGHT_KERNELS..].iter().map(|(k, _)| *k).collect();
        issues.push(format!(
            "{} distinct next kernels are claimed; the {MAX_PREFLIGHT_KERNELS} claimed by most clusters are checked, not: {}",
            ranked.len(),
            left.join(", ")
        ));
    }
    ranked
        .into_iter()
        .take(MAX_PREFLIGHT_KERNELS)
        .map(|(k, _)| k.to_owned())
        .collect()
}

/// At most [`MAX_CLAIM_ISSUES`] sentences of at most [`MAX_ISSUE_LEN`] bytes, the last one
/// counting those left out.
fn bounded(mut issues: Vec<String>) -> Vec<String> {
    if issues.len() > MAX_CLAIM_ISSUES {
        let more = issues.len() - (MAX_CLAIM_ISSUES - 1);
        issues.truncate(MAX_CLAIM_ISSUES - 1);
        issues.push(format!("and {more} more"));
    }
    issues
        .into_iter()
        .map(|i| kmm_api::text::head(&i, MAX_ISSUE_LEN).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use kmm_api::{
        claims::MAX_NEXT_KERNELS_PER_CLUSTER,
        ocm::{KERNEL_VERSIONS_CLAIM, ManagedClusterClaim},
    };

    use super::*;
    use crate::fixtures::{mk_cluster, mk_mcm};

    const RUN: &str = "6.1.0-18-cloud-amd64";
    const NEXT: &str = "6.1.0-29-cloud-amd64";

    fn mcm(name: &str, selector: &str) -> Arc<ManagedClusterModule> {
        Arc::new(mk_mcm(&format!(
            "metadata: {{name: {name}}}\nspec:\n  spokeNamespace: ns\n  selector: {selector}\n  moduleSpec:\n    selector: {{}}\n    moduleLoader:\n      container:\n        modprobe: {{moduleName: m}}\n        kernelMappings: [{{regexp: '^.+$', containerImage: 'r/k:${{KERNEL_FULL_VERSION}}'}}]\n"
        )))
    }

    fn cluster(name: &str, env: &str, next: Option<&str>) -> Arc<ManagedCluster> {
        let mut c = mk_cluster(name, &[("env", env)], Some(RUN));
        if let (Some(next), Some(status)) = (next, c.status.as_mut()) {
            status.cluster_claims.push(ManagedClusterClaim {
                name: NEXT_KERNEL_VERSIONS_CLAIM.into(),
                value: next.into(),
            });
        }
        Arc::new(c)
    }

    #[test]
    fn no_claim_asks_for_nothing() {
        let got = plan(&[mcm("all", "{}")], &[cluster("a", "prod", None)]);
        assert_eq!(got, NextKernelPlan::default());
    }

    #[test]
    fn a_claim_asks_only_the_mcms_selecting_its_cluster() {
        let mcms = [
            mcm("prod-only", "{env: prod}"),
            mcm("lab-only", "{env: lab}"),
            mcm("all", "{}"),
        ];
        let clusters = [
            cluster("a", "prod", Some(NEXT)),
            cluster("b", "lab", None),
            cluster("c", "edge", Some("6.1.0-30-cloud-amd64")),
        ];
        let got = plan(&mcms, &clusters);
        assert_eq!(got.kernels, [NEXT, "6.1.0-30-cloud-amd64"]);
        assert_eq!(
            got.pairs,
            BTreeMap::from([
                (
                    "all".to_string(),
                    vec![NEXT.to_string(), "6.1.0-30-cloud-amd64".to_string()]
                ),
                ("prod-only".to_string(), vec![NEXT.to_string()]),
            ])
        );
        assert!(got.issues.is_empty(), "{:?}", got.issues);
    }

    #[test]
    fn a_cluster_no_mcm_selects_asks_nothing_even_with_bad_lines() {
        let got = plan(
            &[mcm("prod-only", "{env: prod}")],
            &[cluster("x", "lab", Some("6.1.0;id\n9.9.9-x"))],
        );
        assert_eq!(got, NextKernelPlan::default());
    }

    #[test]
    fn bad_lines_are_refused_and_reported_with_their_cluster() {
        let got = plan(
            &[mcm("all", "{}")],
            &[cluster("a", "prod", Some(&format!("{NEXT}\n6.1.0-$(id)")))],
        );
        assert_eq!(got.kernels, [NEXT]);
        assert_eq!(got.issues.len(), 1);
        assert!(
            got.issues[0].starts_with("cluster a: claim next-kernel-versions"),
            "{:?}",
            got.issues
        );
    }

    /// A spoke claiming a thousand next kernels gets the per-cluster bound, and a handful of
    /// such spokes the fleet bound: the hub never checks (so never builds) more.
    #[test]
    fn a_thousand_claimed_kernels_are_cut_to_the_bounds_and_reported() {
        let flood = |c: usize| {
            (0..1000)
                .map(|i| format!("9.{c}.{i}-flood"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let mut clusters: Vec<Arc<ManagedCluster>> = (0..5)
            .map(|c| cluster(&format!("flood-{c}"), "prod", Some(&flood(c))))
            .collect();
        // Fewer kernels, but claimed by many clusters: never pushed out by the flood.
        clusters.extend((0..6).map(|i| cluster(&format!("real-{i}"), "prod", Some(NEXT))));
        let got = plan(&[mcm("all", "{}")], &clusters);
        assert_eq!(got.kernels.len(), MAX_PREFLIGHT_KERNELS);
        assert!(got.kernels.contains(&NEXT.to_string()));
        assert_eq!(got.pairs["all"].len(), MAX_PREFLIGHT_KERNELS);
        let cut_per_cluster =
            format!("1000 distinct next kernels: the hub takes at most {MAX_NEXT_KERNELS_PER_CLUSTER}");
        assert_eq!(
            got.issues.iter().filter(|i| i.contains(&cut_per_cluster)).count(),
            5,
            "{:?}",
            got.issues
        );
        assert!(
            got.issues.iter().any(|i| i.starts_with(&format!(
                "{} distinct next kernels are claimed; the {MAX_PREFLIGHT_KERNELS} claimed by most",
                5 * MAX_NEXT_KERNELS_PER_CLUSTER + 1
            ))),
            "{:?}",
            got.issues
        );
        assert!(got.issues.iter().all(|i| i.len() <= MAX_ISSUE_LEN));
    }

    #[test]
    fn issues_are_bounded() {
        let clusters: Vec<Arc<ManagedCluster>> = (0..40)
            .map(|i| cluster(&format!("c{i}"), "prod", Some("bad kernel")))
            .collect();
        let got = plan(&[mcm("all", "{}")], &clusters);
        assert_eq!(got.issues.len(), MAX_CLAIM_ISSUES);
        assert_eq!(
            got.issues.last().unwrap(),
            &format!("and {} more", 40 - (MAX_CLAIM_ISSUES - 1))
        );
        assert!(got.pairs.is_empty());
    }

    #[test]
    fn the_kernel_claim_itself_is_never_read_as_next() {
        let mut c = mk_cluster("a", &[], Some(NEXT));
        c.status.as_mut().unwrap().cluster_claims[0].name = KERNEL_VERSIONS_CLAIM.into();
        assert_eq!(
            plan(&[mcm("all", "{}")], &[Arc::new(c)]),
            NextKernelPlan::default()
        );
    }
}
