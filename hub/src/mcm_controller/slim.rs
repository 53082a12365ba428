//! What the hub's caches keep of each object: only the fields a reconcile reads. A fleet of
//! 10,000 clusters holds 10,000 ManagedClusters and 10,000 ManifestWorks; whole, with their
//! managedFields, CA bundles and the Module each work carries, they are most of the hub's memory.
//!
//! A ManifestWork's spec is replaced by its digest (an annotation on the cached copy only, never
//! written to the API server), so "already up to date" compares digests and needs no GET. The
//! digest is taken of what the server holds, so an edit to a work by someone else is still seen.

use kmm_api::{
    claims::{MAX_KERNEL_CLAIMS, NEXT_KERNEL_VERSIONS_CLAIM, continuation_claim_name},
    ocm::{KERNEL_VERSIONS_CLAIM, ManagedCluster, ManagedClusterStatus, ManifestWork, ManifestWorkSpec},
};
use kube::ResourceExt;
use sha2_010::{Digest, Sha256};

/// Annotation holding the digest of a cached work's spec (set by [`work`], on the cache's copy).
pub const CACHED_SPEC_DIGEST: &str = "kmm.sigs.x-k8s.io/cached-spec-digest";

/// The ManagedCluster condition the hub reads (reachability).
const AVAILABLE: &str = "ManagedClusterConditionAvailable";

/// SHA-256 of a work spec's JSON (struct fields in declaration order, object keys sorted), hex.
pub fn spec_digest(spec: &ManifestWorkSpec) -> String {
    // Serializing plain data into a Vec cannot fail; an empty digest would never match.
    let json = serde_json::to_vec(spec).unwrap_or_default();
    format!("{:x}", Sha256::digest(&json))
}

/// The digest of `work`'s spec: the cached annotation of a slimmed work, computed otherwise.
pub fn work_spec_digest(work: &ManifestWork) -> String {
    match work.annotations().get(CACHED_SPEC_DIGEST) {
        Some(digest) if work.spec == ManifestWorkSpec::default() => digest.clone(),
        _ => spec_digest(&work.spec),
    }
}

/// A ManifestWork as the cache keeps it: metadata without managedFields, the spec replaced by
/// its digest, the status (what the spoke reports) whole.
pub fn work(work: &mut ManifestWork) {
    if work.spec != ManifestWorkSpec::default() {
        let digest = spec_digest(&work.spec);
        work.annotations_mut()
            .insert(CACHED_SPEC_DIGEST.to_owned(), digest);
        work.spec = ManifestWorkSpec::default();
    }
    work.metadata.managed_fields = None;
}

/// Is `name` one of the kernel claims the hub decodes (the first and its continuations, and the
/// next-kernel claim the preflight reads)?
fn kernel_claim(name: &str) -> bool {
    name == KERNEL_VERSIONS_CLAIM
        || name == NEXT_KERNEL_VERSIONS_CLAIM
        || (2..=MAX_KERNEL_CLAIMS).any(|i| name == continuation_claim_name(i))
}

/// A ManagedCluster as the cache keeps it: name, labels, deletion mark, the kernel claims and
/// the Available condition. The spec (CA bundles, taints), capacity, version, other claims and
/// conditions, annotations and managedFields are dropped: no reconcile reads them.
pub fn cluster(cluster: &mut ManagedCluster) {
    cluster.metadata.managed_fields = None;
    cluster.metadata.annotations = None;
    cluster.spec = Default::default();
    if let Some(status) = cluster.status.take() {
        cluster.status = Some(ManagedClusterStatus {
            conditions: status
                .conditions
                .into_iter()
                .filter(|c| c.type_ == AVAILABLE)
                .collect(),
            cluster_claims: status
                .cluster_claims
                .into_iter()
                .filter(|c| kernel_claim(&c.name))
                .collect(),
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ManagedFieldsEntry, Time};
    use kmm_api::ocm::{ClientConfig, ManagedClusterClaim, ManagedClusterVersion};

    fn condition(type_: &str) -> Condition {
        serde_json::from_value(serde_json::json!({
            "type": type_, "status": "True", "reason": "R", "message": "",
            "lastTransitionTime": "2026-11-26T00:00:00Z"
        }))
        .unwrap()
    }

    fn claim(name: &str) -> ManagedClusterClaim {
        ManagedClusterClaim {
            name: name.into(),
            value: "v".into(),
        }
    }

    #[test]
    fn a_cluster_keeps_labels_kernel_claims_and_availability_only() {
        let mut c = ManagedCluster::new("c1", Default::default());
        c.labels_mut().insert("env".into(), "prod".into());
        c.annotations_mut().insert("big".into(), "x".repeat(1000));
        c.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        c.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        c.spec.managed_cluster_client_configs = vec![ClientConfig {
            url: "https://c1".into(),
            ca_bundle: Some("PEM".repeat(500)),
        }];
        c.status = Some(ManagedClusterStatus {
            conditions: vec![condition(AVAILABLE), condition("ManagedClusterJoined")],
            cluster_claims: vec![
                claim(KERNEL_VERSIONS_CLAIM),
                claim(&continuation_claim_name(2)),
                claim("id.k8s.io"),
                claim(NEXT_KERNEL_VERSIONS_CLAIM),
                claim("kernel-versions-x.kmm.node.kubernetes.io"),
            ],
            version: Some(ManagedClusterVersion {
                kubernetes: Some("v1.31".into()),
            }),
            ..Default::default()
        });
        let before = c.clone();
        cluster(&mut c);

        assert_eq!(c.labels(), before.labels());
        assert_eq!(c.metadata.deletion_timestamp, before.metadata.deletion_timestamp);
        assert_eq!(c.claim(KERNEL_VERSIONS_CLAIM), Some("v"));
        assert!(c.metadata.managed_fields.is_none() && c.metadata.annotations.is_none());
        assert_eq!(c.spec, Default::default());
        let status = c.status.unwrap();
        let claims: Vec<&str> = status.cluster_claims.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            claims,
            [
                KERNEL_VERSIONS_CLAIM,
                continuation_claim_name(2).as_str(),
                NEXT_KERNEL_VERSIONS_CLAIM
            ]
        );
        let conditions: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(conditions, [AVAILABLE]);
        assert!(status.version.is_none());
    }

    fn work_with(module_name: &str) -> ManifestWork {
        let mut w = ManifestWork::new("m", Default::default());
        w.metadata.namespace = Some("c1".into());
        w.annotations_mut().insert("rollout".into(), "3".into());
        w.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        w.spec.workload.manifests =
            vec![serde_json::json!({"kind": "Module", "metadata": {"name": module_name}})];
        w
    }

    #[test]
    fn a_work_keeps_its_annotations_and_status_and_trades_its_spec_for_a_digest() {
        let mut w = work_with("a");
        w.status = Some(Default::default());
        let full = w.clone();
        work(&mut w);

        assert_eq!(w.spec, ManifestWorkSpec::default());
        assert!(w.metadata.managed_fields.is_none());
        assert_eq!(w.annotations().get("rollout").map(String::as_str), Some("3"));
        assert_eq!(w.status, full.status);
        assert_eq!(work_spec_digest(&w), spec_digest(&full.spec));
        assert_eq!(work_spec_digest(&full), spec_digest(&full.spec));
        assert_ne!(work_spec_digest(&w), spec_digest(&work_with("b").spec));

        let again = w.clone();
        work(&mut w);
        assert_eq!(w, again, "slimming a slimmed work changes nothing");
    }

    #[test]
    fn a_digest_annotation_on_a_whole_work_is_not_trusted() {
        let mut w = work_with("a");
        w.annotations_mut()
            .insert(CACHED_SPEC_DIGEST.into(), "forged".into());
        assert_eq!(work_spec_digest(&w), spec_digest(&w.spec));
        work(&mut w);
        assert_ne!(w.annotations()[CACHED_SPEC_DIGEST], "forged");
    }
}
