//! ManifestWorks the hub wrote whose watch events may not have reached the cache yet.
//!
//! A reconcile that runs before the watch delivers the hub's own last write (the retry after a
//! failed status write, a watch cut and resumed, a slow apiserver) would read the old work from
//! the cache and write the same spec a second time. The server's answer to each write is kept
//! here until the cache holds that generation (or a few minutes pass), and reconciles read the
//! fresher of the two.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use kmm_api::ocm::ManifestWork;
use kube::ResourceExt;

/// How long an answer stands in for the cache: the watch delivers long before this, and an
/// entry must not hide a later deletion by someone else forever.
const STAND_IN_FOR: Duration = Duration::from_secs(120);

/// Namespace and name of a work.
type Key = (String, String);

/// The server's answers to the hub's recent ManifestWork writes.
#[derive(Default)]
pub struct RecentWrites {
    entries: Mutex<HashMap<Key, (Instant, Arc<ManifestWork>)>>,
}

impl RecentWrites {
    /// Remembers what the server holds after a write, slimmed as the cache keeps it (a cold
    /// start holds one entry per cluster for a while).
    pub fn record(&self, written: &ManifestWork) {
        let key = (written.namespace().unwrap_or_default(), written.name_any());
        let mut slim = written.clone();
        super::slim::work(&mut slim);
        self.lock().insert(key, (Instant::now(), Arc::new(slim)));
    }

    /// Forgets a work the hub deleted.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.lock().remove(&(namespace.to_string(), name.to_string()));
    }

    /// `cached` (one MCM's works by namespace, named `name`) with each work replaced by the
    /// hub's own later write where the cache has not caught up, and works the cache has not seen
    /// yet added. Entries the cache has caught up with, or that are too old, are dropped.
    pub fn overlay(
        &self,
        name: &str,
        mut cached: BTreeMap<String, Arc<ManifestWork>>,
    ) -> BTreeMap<String, Arc<ManifestWork>> {
        let now = Instant::now();
        let mut entries = self.lock();
        entries.retain(|(ns, n), (at, written)| {
            if now.duration_since(*at) > STAND_IN_FOR {
                return false;
            }
            if n != name {
                return true;
            }
            match cached.get(ns) {
                Some(current) if !newer(written, current) => false,
                _ => {
                    cached.insert(ns.clone(), written.clone());
                    true
                }
            }
        });
        cached
    }

    /// [`Self::overlay`] for one work: `cached` (the cache's copy of `namespace/name`), or the
    /// hub's own later write of it. Leaves every other entry alone, so it costs O(1).
    pub fn latest(
        &self,
        namespace: &str,
        name: &str,
        cached: Option<Arc<ManifestWork>>,
    ) -> Option<Arc<ManifestWork>> {
        let key = (namespace.to_owned(), name.to_owned());
        let mut entries = self.lock();
        let Some((at, written)) = entries.get(&key) else {
            return cached;
        };
        let stale = at.elapsed() > STAND_IN_FOR;
        let caught_up = cached.as_ref().is_some_and(|c| !newer(written, c));
        if stale || caught_up {
            entries.remove(&key);
            return cached;
        }
        Some(written.clone())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, (Instant, Arc<ManifestWork>)>> {
        // A panic elsewhere while holding the lock leaves the map usable: every entry is whole.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Is `written` a later state of the work than `cached`? Generations order spec changes; the
/// same generation with a different uid is a recreated work, which the cache knows better.
fn newer(written: &ManifestWork, cached: &ManifestWork) -> bool {
    written.uid() == cached.uid()
        && written.metadata.generation.unwrap_or_default() > cached.metadata.generation.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn work(ns: &str, uid: &str, generation: i64) -> ManifestWork {
        ManifestWork {
            metadata: ObjectMeta {
                name: Some("m".into()),
                namespace: Some(ns.into()),
                uid: Some(uid.into()),
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            spec: Default::default(),
            status: None,
        }
    }

    fn gens(works: &BTreeMap<String, Arc<ManifestWork>>) -> Vec<(String, i64)> {
        works
            .iter()
            .map(|(ns, w)| (ns.clone(), w.metadata.generation.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn a_stale_cache_reads_the_hubs_own_later_write_until_it_catches_up() {
        let recent = RecentWrites::default();
        recent.record(&work("a", "u1", 2));
        recent.record(&work("b", "u2", 1));
        let stale = BTreeMap::from([("a".to_string(), Arc::new(work("a", "u1", 1)))]);
        assert_eq!(
            gens(&recent.overlay("m", stale)),
            [("a".into(), 2), ("b".into(), 1)],
            "a's newer generation and b's create, not yet seen by the cache"
        );
        let caught_up = BTreeMap::from([
            ("a".to_string(), Arc::new(work("a", "u1", 2))),
            ("b".to_string(), Arc::new(work("b", "u2", 1))),
        ]);
        assert_eq!(gens(&recent.overlay("m", caught_up.clone())), gens(&caught_up));
        assert!(
            recent.lock().is_empty(),
            "entries dropped once the cache holds them"
        );
    }

    #[test]
    fn a_recreated_work_and_other_mcms_works_are_left_to_the_cache() {
        let recent = RecentWrites::default();
        recent.record(&work("a", "old-uid", 3));
        let recreated = BTreeMap::from([("a".to_string(), Arc::new(work("a", "new-uid", 1)))]);
        assert_eq!(gens(&recent.overlay("m", recreated)), [("a".into(), 1)]);

        recent.record(&work("b", "u2", 1));
        assert!(recent.overlay("other", BTreeMap::new()).is_empty());
        recent.forget("b", "m");
        assert!(recent.overlay("m", BTreeMap::new()).is_empty());
    }

    #[test]
    fn latest_reads_one_work_like_overlay() {
        let recent = RecentWrites::default();
        recent.record(&work("a", "u1", 2));
        let generation = |w: Option<Arc<ManifestWork>>| w.and_then(|w| w.metadata.generation);
        assert_eq!(
            generation(recent.latest("a", "m", None)),
            Some(2),
            "not in the cache yet"
        );
        assert_eq!(
            generation(recent.latest("a", "m", Some(Arc::new(work("a", "u1", 1))))),
            Some(2)
        );
        assert_eq!(generation(recent.latest("b", "m", None)), None);
        assert_eq!(
            generation(recent.latest("a", "m", Some(Arc::new(work("a", "u1", 2))))),
            Some(2)
        );
        assert!(recent.lock().is_empty(), "dropped once the cache caught up");
    }
}
