//! What the last full reconcile of an MCM saw and decided, kept so that a change on one cluster
//! costs the work of one cluster: its view for the status, its standing for the rollout planner,
//! the round's assignments and the pins. [`scope`] (pure) decides when that is enough and when
//! the whole fleet must be looked at again.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use super::{
    desired::plan::Pin,
    fleet_status::{ClusterView, Tally},
};
use crate::rollout::{planner, round::Round};

/// One MCM's last full reconcile, as far as an incremental one needs it.
pub struct Memo {
    /// The MCM it was made for: another uid or generation needs a full reconcile.
    pub uid: Option<String>,
    pub generation: Option<i64>,
    /// When the full reconcile ran: the periodic resync is a full one.
    pub full_at: Instant,
    /// The round decided then; every cluster is rendered from its target revision.
    pub round: Round,
    /// Every image the clusters' kernels need, pinned (new kernels' images are added).
    pub pins: BTreeMap<String, Pin>,
    /// Kernels some cluster runs or ran since; a cluster reporting any other has its images
    /// looked up and its tag spelling checked against these first (see `incremental`).
    pub accepted: BTreeSet<String>,
    /// Each selected cluster as the status sees it, sorted by name.
    pub views: Vec<ClusterView>,
    /// The status's counts over `views`, kept in step with them.
    pub tally: Tally,
    /// Each selected cluster as the planner sees it, in the order of `views`.
    pub planned: Vec<planner::Cluster>,
    /// Position of each cluster in `views` and `planned`.
    pub index: HashMap<String, usize>,
}

/// How much of the fleet one reconcile looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every selected cluster: observe, build, rollout, render, apply.
    Full(FullReason),
    /// Only these clusters (maybe none: then the status is recomputed from the memo).
    Clusters(BTreeSet<String>),
}

/// What [`scope`] knows of a memo.
#[derive(Debug, Clone, Copy)]
pub struct MemoAge<'a> {
    pub uid: Option<&'a str>,
    pub generation: Option<i64>,
    pub age: Duration,
}

/// Why a reconcile looks at the whole fleet: the `reason` label of
/// `kmm_hub_full_reconciles_total` and of the hub's log line. A full reconcile costs O(clusters),
/// so during a rolling upgrade any but `resync` and the first one is worth a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullReason {
    /// No memo: the first reconcile, a re-listed cache, or a last full one that could not keep
    /// one (something blocks the fleet, a wave was starting).
    NoMemo,
    /// The MCM itself changed (uid or generation).
    McmChanged,
    /// The periodic resync is due.
    Resync,
    /// A cluster became selected or stopped being selected.
    ClusterJoinedOrLeft,
    /// A changed cluster's work is not (rendered) at the target revision.
    NotAtTarget,
    /// A new kernel's image tag is spelled like another kernel's.
    KernelSpellingClash,
    /// A new kernel maps to no image, or an image that does not pin (to build, sign or refuse).
    KernelNotPinned,
    /// A rollout wave is ready to start.
    WaveStarts,
}

impl FullReason {
    pub const ALL: [Self; 8] = [
        Self::NoMemo,
        Self::McmChanged,
        Self::Resync,
        Self::ClusterJoinedOrLeft,
        Self::NotAtTarget,
        Self::KernelSpellingClash,
        Self::KernelNotPinned,
        Self::WaveStarts,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NoMemo => "no_memo",
            Self::McmChanged => "mcm_changed",
            Self::Resync => "resync",
            Self::ClusterJoinedOrLeft => "cluster_joined_or_left",
            Self::NotAtTarget => "not_at_target",
            Self::KernelSpellingClash => "kernel_spelling_clash",
            Self::KernelNotPinned => "kernel_not_pinned",
            Self::WaveStarts => "wave_starts",
        }
    }
}

/// Full when there is no memo, the MCM changed (uid or generation) or the resync is due;
/// otherwise only the clusters that changed. Anything an incremental reconcile finds it cannot
/// decide alone (a new kernel with nothing pinned to it, a new or removed cluster) makes it fall
/// back to a full one.
pub fn scope(
    memo: Option<MemoAge<'_>>,
    uid: Option<&str>,
    generation: Option<i64>,
    resync: Duration,
    dirty: BTreeSet<String>,
) -> Scope {
    match memo {
        None => Scope::Full(FullReason::NoMemo),
        Some(m) if m.uid != uid || m.generation != generation => Scope::Full(FullReason::McmChanged),
        Some(m) if m.age >= resync => Scope::Full(FullReason::Resync),
        Some(_) => Scope::Clusters(dirty),
    }
}

/// Memos by MCM name, with an epoch: [`Memos::clear`] (a re-listed store, a lost leadership)
/// also refuses every memo a reconcile running meanwhile would put back.
#[derive(Default)]
pub struct Memos {
    entries: Mutex<(u64, HashMap<String, Memo>)>,
}

impl Memos {
    /// The epoch a reconcile starts in; pass it to [`Memos::put`].
    pub fn epoch(&self) -> u64 {
        self.lock().0
    }

    /// Takes the memo of `mcm` out (a reconcile owns it while it runs; one runs per MCM).
    pub fn take(&self, mcm: &str) -> Option<Memo> {
        self.lock().1.remove(mcm)
    }

    /// Keeps `memo`, unless the memos were cleared since `epoch`.
    pub fn put(&self, mcm: &str, memo: Memo, epoch: u64) {
        let mut entries = self.lock();
        if entries.0 == epoch {
            entries.1.insert(mcm.to_owned(), memo);
        }
    }

    /// Drops every memo: what they remember may have changed unseen.
    pub fn clear(&self) {
        let mut entries = self.lock();
        entries.0 += 1;
        entries.1.clear();
    }

    fn lock(&self) -> MutexGuard<'_, (u64, HashMap<String, Memo>)> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirty(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn memo() -> Memo {
        Memo {
            uid: None,
            generation: None,
            full_at: Instant::now(),
            round: Round::default(),
            pins: BTreeMap::new(),
            accepted: BTreeSet::new(),
            views: Vec::new(),
            tally: Tally::default(),
            planned: Vec::new(),
            index: HashMap::new(),
        }
    }

    #[test]
    fn a_memo_made_before_a_clear_is_not_kept() {
        let memos = Memos::default();
        let before = memos.epoch();
        memos.put("m", memo(), before);
        assert!(memos.take("m").is_some());
        // A reconcile took its memo, the store re-listed meanwhile: what it puts back is stale.
        memos.clear();
        memos.put("m", memo(), before);
        assert!(memos.take("m").is_none());
        memos.put("m", memo(), memos.epoch());
        assert!(memos.take("m").is_some());
    }

    #[test]
    fn only_a_fresh_memo_of_the_same_generation_allows_an_incremental_reconcile() {
        let resync = Duration::from_secs(600);
        let fresh = MemoAge {
            uid: Some("u"),
            generation: Some(3),
            age: Duration::from_secs(5),
        };
        assert_eq!(
            scope(Some(fresh), Some("u"), Some(3), resync, dirty(&["c1"])),
            Scope::Clusters(dirty(&["c1"]))
        );
        // Nothing changed on a cluster (a status write, a requeue): the memo answers.
        assert_eq!(
            scope(Some(fresh), Some("u"), Some(3), resync, dirty(&[])),
            Scope::Clusters(dirty(&[]))
        );
        assert_eq!(
            scope(None, Some("u"), Some(3), resync, dirty(&["c1"])),
            Scope::Full(FullReason::NoMemo)
        );
        assert_eq!(
            scope(Some(fresh), Some("u"), Some(4), resync, dirty(&["c1"])),
            Scope::Full(FullReason::McmChanged)
        );
        assert_eq!(
            scope(Some(fresh), Some("v"), Some(3), resync, dirty(&["c1"])),
            Scope::Full(FullReason::McmChanged)
        );
        let old = MemoAge { age: resync, ..fresh };
        assert_eq!(
            scope(Some(old), Some("u"), Some(3), resync, dirty(&["c1"])),
            Scope::Full(FullReason::Resync)
        );
    }
}
