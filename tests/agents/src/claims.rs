//! How the registration agent turns a spoke's ClusterClaims into
//! `ManagedCluster.status.clusterClaims`.

use kmm_api::ocm::{ClusterClaim, ManagedClusterClaim};

/// Claims with this label stay on the spoke.
pub const SPOKE_ONLY_LABEL: &str = "open-cluster-management.io/spoke-only";

/// Claim names OCM reserves; they never count toward the custom-claim cap.
pub const RESERVED_CLAIMS: [&str; 5] = [
    "id.k8s.io",
    "kubeversion.open-cluster-management.io",
    "platform.open-cluster-management.io",
    "product.open-cluster-management.io",
    "clusterset.k8s.io",
];

/// The claims to report and the custom claims that did not fit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimList {
    /// Reserved claims by name, then the kept custom claims by name.
    pub claims: Vec<ManagedClusterClaim>,
    /// Names of custom claims dropped by the cap, sorted.
    pub truncated: Vec<String>,
}

/// Whether `name` is reserved, by name or by one of the configured suffixes.
pub fn is_reserved(name: &str, reserved_suffixes: &[String]) -> bool {
    RESERVED_CLAIMS.contains(&name)
        || reserved_suffixes
            .iter()
            .any(|s| !s.is_empty() && name.ends_with(s.as_str()))
}

/// Builds the hub's claim list from the spoke's claims.
pub fn cluster_claims(spoke: &[ClusterClaim], max_custom: usize, reserved_suffixes: &[String]) -> ClaimList {
    let mut reserved = Vec::new();
    let mut custom = Vec::new();
    for c in spoke {
        let labels = c.metadata.labels.as_ref();
        if labels.is_some_and(|l| l.contains_key(SPOKE_ONLY_LABEL)) {
            continue;
        }
        let Some(name) = c.metadata.name.clone() else {
            continue;
        };
        let claim = ManagedClusterClaim {
            name,
            value: c.spec.value.clone(),
        };
        if is_reserved(&claim.name, reserved_suffixes) {
            reserved.push(claim);
        } else {
            custom.push(claim);
        }
    }
    reserved.sort_by(|a, b| a.name.cmp(&b.name));
    custom.sort_by(|a, b| a.name.cmp(&b.name));
    let truncated = if custom.len() > max_custom {
        custom.split_off(max_custom).into_iter().map(|c| c.name).collect()
    } else {
        Vec::new()
    };
    reserved.extend(custom);
    ClaimList {
        claims: reserved,
        truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kmm_api::ocm::ClusterClaimSpec;
    use std::collections::BTreeMap;

    fn claim(name: &str, value: &str) -> ClusterClaim {
        ClusterClaim::new(name, ClusterClaimSpec { value: value.into() })
    }

    fn names(l: &ClaimList) -> Vec<&str> {
        l.claims.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn reserved_first_then_custom_each_sorted_and_spoke_only_skipped() {
        let mut hidden = claim("aaa-hidden", "x");
        hidden.metadata.labels = Some(BTreeMap::from([(SPOKE_ONLY_LABEL.to_string(), String::new())]));
        let spoke = vec![
            claim("zeta", "1"),
            claim("platform.open-cluster-management.io", "AWS"),
            hidden,
            claim("alpha", "2"),
            claim("id.k8s.io", "abc"),
        ];
        let l = cluster_claims(&spoke, 20, &[]);
        assert_eq!(
            names(&l),
            [
                "id.k8s.io",
                "platform.open-cluster-management.io",
                "alpha",
                "zeta"
            ]
        );
        assert_eq!(l.claims[2].value, "2");
        assert!(l.truncated.is_empty());
    }

    #[test]
    fn custom_claims_past_the_cap_are_dropped_alphabetically() {
        let mut spoke: Vec<_> = (0..5).rev().map(|i| claim(&format!("c{i}"), "v")).collect();
        spoke.push(claim("id.k8s.io", "abc"));
        let l = cluster_claims(&spoke, 3, &[]);
        assert_eq!(names(&l), ["id.k8s.io", "c0", "c1", "c2"]);
        assert_eq!(l.truncated, ["c3", "c4"]);
    }

    #[test]
    fn reserved_suffixes_escape_the_cap() {
        let spoke = vec![
            claim("a", "v"),
            claim("b", "v"),
            claim("kernel-versions.kmm.node.kubernetes.io", "5.14"),
        ];
        let l = cluster_claims(&spoke, 1, &["kmm.node.kubernetes.io".to_string()]);
        assert_eq!(names(&l), ["kernel-versions.kmm.node.kubernetes.io", "a"]);
        assert_eq!(l.truncated, ["b"]);
        let l = cluster_claims(&spoke, 1, &[]);
        assert_eq!(names(&l), ["a"]);
    }
}
