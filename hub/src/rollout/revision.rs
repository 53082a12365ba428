//! Revisions: what rolls is the MCM's Module as the user wrote it (`spec.moduleSpec` and
//! `spec.spokeNamespace`), named by a content hash. The hash is taken before per-kernel
//! rendering and digest pinning, so a cluster reporting a new kernel, or a digest moving under a
//! tag, is not a new revision: the cluster is re-rendered at once from the revision it is on.
//!
//! Each revision in use is kept as a ControllerRevision in the hub namespace (named
//! `<mcm>-<hash>`, labelled with the MCM's name), so a restarted hub renders every cluster from
//! its own revision. Each ManifestWork names its revision, and when it moved to it, in
//! annotations: the only place the hub reads a cluster's revision from (never the manifests).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::apps::v1::ControllerRevision,
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, runtime::RawExtension},
};
use kmm_api::{ManagedClusterModule, ModuleSpec, labels::MCM_NAME_LABEL, ocm::ManifestWork};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
};
use serde::{Deserialize, Serialize};
use sha2_010::{Digest, Sha256};

/// Annotation on each ManifestWork: the revision its Module was rendered from.
pub const REVISION_ANNOTATION: &str = "hub.kmm.sigs.x-k8s.io/revision";
/// Annotation on each ManifestWork: when the cluster moved to that revision (RFC 3339).
pub const MOVED_AT_ANNOTATION: &str = "hub.kmm.sigs.x-k8s.io/revision-since";

/// What a revision holds: enough to render any cluster of the MCM from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Content {
    pub module_spec: ModuleSpec,
    pub spoke_namespace: String,
}

impl Content {
    pub fn of(mcm: &ManagedClusterModule) -> Self {
        Self {
            module_spec: mcm.spec.module_spec.clone(),
            spoke_namespace: mcm.spec.spoke_namespace.clone(),
        }
    }

    /// The revision name: 10 hex digits of the SHA-256 of the content's JSON (serde_json writes
    /// struct fields in declaration order and maps sorted, so equal contents hash equally).
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&json);
        digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
    }

    /// `mcm` as it was at this revision (everything but the Module from today's MCM).
    pub fn apply_to(&self, mcm: &ManagedClusterModule) -> ManagedClusterModule {
        let mut out = mcm.clone();
        out.spec.module_spec = self.module_spec.clone();
        out.spec.spoke_namespace = self.spoke_namespace.clone();
        out
    }
}

/// The revision a ManifestWork was rendered from, if it says.
pub fn of_work(work: &ManifestWork) -> Option<&str> {
    work.annotations().get(REVISION_ANNOTATION).map(String::as_str)
}

/// The ControllerRevision holding `content` for `mcm`, numbered `number`.
pub fn controller_revision(
    mcm: &ManagedClusterModule,
    namespace: &str,
    content: &Content,
    number: i64,
) -> Result<ControllerRevision, serde_json::Error> {
    let name = mcm.name_any();
    Ok(ControllerRevision {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{}", content.hash())),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(MCM_NAME_LABEL.to_owned(), name)])),
            ..Default::default()
        },
        data: Some(RawExtension(serde_json::to_value(content)?)),
        revision: number,
    })
}

/// The content a ControllerRevision holds, keyed by its hash (recomputed: a hand-edited object
/// cannot pass for another revision).
pub fn read(cr: &ControllerRevision) -> Option<(String, Content)> {
    let content: Content = serde_json::from_value(cr.data.as_ref()?.0.clone()).ok()?;
    Some((content.hash(), content))
}

/// Makes the stored revisions of `mcm` match what is in use: creates the target's, deletes those
/// no cluster is on. Returns every revision in use that could be read, by hash.
pub async fn sync(
    client: &Client,
    namespace: &str,
    mcm: &ManagedClusterModule,
    target: &Content,
    in_use: &BTreeSet<String>,
) -> Result<BTreeMap<String, Content>, kube::Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), namespace);
    let lp = ListParams::default().labels(&format!("{MCM_NAME_LABEL}={}", mcm.name_any()));
    let stored = api.list(&lp).await?.items;
    let target_hash = target.hash();
    let mut out = BTreeMap::new();
    let mut highest = 0;
    for cr in &stored {
        highest = highest.max(cr.revision);
        match read(cr) {
            Some((hash, content)) if hash == target_hash || in_use.contains(&hash) => {
                out.insert(hash, content);
            }
            _ => match api.delete(&cr.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            },
        }
    }
    if let std::collections::btree_map::Entry::Vacant(slot) = out.entry(target_hash) {
        let cr = controller_revision(mcm, namespace, target, highest + 1).map_err(kube::Error::SerdeError)?;
        match api.create(&PostParams::default(), &cr).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
        slot.insert(target.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn mcm(image: &str) -> ManagedClusterModule {
        fixtures::mcm_with_image(image)
    }

    #[test]
    fn the_hash_follows_the_module_and_nothing_else() {
        let a = Content::of(&mcm("r/k:1"));
        assert_eq!(a.hash(), Content::of(&mcm("r/k:1")).hash());
        assert_ne!(a.hash(), Content::of(&mcm("r/k:2")).hash());
        assert_eq!(a.hash().len(), 10);
        let mut other_selector = mcm("r/k:1");
        other_selector.spec.selector.insert("env".into(), "prod".into());
        assert_eq!(
            a.hash(),
            Content::of(&other_selector).hash(),
            "which clusters is not what rolls"
        );
    }

    #[test]
    fn a_controller_revision_round_trips_and_renders_the_old_module() {
        let old = Content::of(&mcm("r/k:1"));
        let cr = controller_revision(&mcm("r/k:1"), "hub", &old, 3).unwrap();
        assert_eq!(
            cr.metadata.name.as_deref(),
            Some(format!("m-{}", old.hash()).as_str())
        );
        assert_eq!(cr.revision, 3);
        let (hash, content) = read(&cr).unwrap();
        assert_eq!((hash, &content), (old.hash(), &old));
        let back = content.apply_to(&mcm("r/k:2"));
        assert_eq!(back.spec.module_spec, mcm("r/k:1").spec.module_spec);
    }
}
