//! The clusters whose change triggered an MCM's next reconcile. The trigger mappers (see
//! [`super::triggers`]) record `(MCM, cluster)` here before the controller queues the MCM, and
//! reconcile drains the MCM's set: a claim change on one cluster then re-renders that cluster
//! alone (see [`super::memo::scope`]). An entry recorded while a reconcile runs is seen by the
//! reconcile the controller queues after it.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Mutex, MutexGuard},
};

/// Changed clusters, by MCM name.
#[derive(Default)]
pub struct DirtySet {
    entries: Mutex<HashMap<String, BTreeSet<String>>>,
}

impl DirtySet {
    /// Notes that `cluster` changed in a way `mcm` may care about.
    pub fn mark(&self, mcm: &str, cluster: &str) {
        let mut entries = self.lock();
        match entries.get_mut(mcm) {
            Some(set) => {
                set.insert(cluster.to_owned());
            }
            None => {
                entries.insert(mcm.to_owned(), BTreeSet::from([cluster.to_owned()]));
            }
        }
    }

    /// The clusters marked for `mcm` since the last call, leaving none.
    pub fn take(&self, mcm: &str) -> BTreeSet<String> {
        self.lock().remove(mcm).unwrap_or_default()
    }

    /// Puts clusters back (a reconcile that failed before it handled them).
    pub fn restore(&self, mcm: &str, clusters: BTreeSet<String>) {
        if clusters.is_empty() {
            return;
        }
        self.lock().entry(mcm.to_owned()).or_default().extend(clusters);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, BTreeSet<String>>> {
        // Every entry is whole at any point, so a panic elsewhere leaves the map usable.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_drains_one_mcm_only() {
        let d = DirtySet::default();
        d.mark("a", "c1");
        d.mark("a", "c2");
        d.mark("a", "c1");
        d.mark("b", "c3");
        assert_eq!(d.take("a"), BTreeSet::from(["c1".to_owned(), "c2".to_owned()]));
        assert!(d.take("a").is_empty());
        d.restore("a", BTreeSet::from(["c9".to_owned()]));
        assert_eq!(d.take("a").len(), 1);
        assert_eq!(d.take("b").len(), 1);
    }
}
