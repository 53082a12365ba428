//! Trigger mappers of the MCM controller: which MCMs a ManagedCluster or ManifestWork event
//! concerns. Each also records the cluster in [`DirtySet`], so the reconcile it causes can look
//! at that cluster alone. Both cost O(MCMs) per event, never O(clusters).

use kmm_api::{
    ManagedClusterModule,
    labels::MCM_NAME_LABEL,
    ocm::{ManagedCluster, ManifestWork},
};
use kube::{
    ResourceExt,
    core::DeserializeGuard,
    runtime::reflector::{ObjectRef, Store},
};

use super::{desired::plan, dirty::DirtySet};

type McmRef = ObjectRef<DeserializeGuard<ManagedClusterModule>>;

/// MCMs to reconcile when a cluster changes: those selecting it now, and those with a work in its
/// namespace (it may just have stopped matching).
pub fn mcms_for_cluster(
    mcms: &Store<DeserializeGuard<ManagedClusterModule>>,
    works: &Store<ManifestWork>,
    dirty: &DirtySet,
    cluster: &ManagedCluster,
) -> Vec<McmRef> {
    let name = cluster.name_any();
    let mut out = Vec::new();
    for m in mcms.state() {
        let mcm_name = m.name_any();
        let selects = m.0.as_ref().is_ok_and(|m| plan::selects(m, cluster));
        // The hub's work for an MCM is named like it, in the cluster's namespace.
        let has_work = || {
            works
                .get(&ObjectRef::new(&mcm_name).within(&name))
                .is_some_and(|w| w.labels().get(MCM_NAME_LABEL) == Some(&mcm_name))
        };
        if selects || has_work() {
            dirty.mark(&mcm_name, &name);
            out.push(ObjectRef::new(&mcm_name));
        }
    }
    out
}

/// The MCM named by a work's label, with the work's cluster marked.
pub fn mcm_for_work(dirty: &DirtySet, work: &ManifestWork) -> Option<McmRef> {
    let mcm = work.labels().get(MCM_NAME_LABEL)?;
    if let Some(ns) = work.namespace() {
        dirty.mark(mcm, &ns);
    }
    Some(ObjectRef::new(mcm))
}
