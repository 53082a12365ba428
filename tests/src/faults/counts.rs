//! What the proxy injected, counted as it goes.

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

/// What the proxy did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub forwarded: u64,
    pub errors_429: u64,
    pub errors_500: u64,
    pub errors_503: u64,
    /// Injected errors with another code.
    pub errors_other: u64,
    /// Requests that waited for injected latency.
    pub delayed: u64,
    pub watches_cut: u64,
    /// Connections closed at accept and requests dropped while refusing.
    pub refused: u64,
}

impl Counts {
    pub fn errors(&self) -> u64 {
        self.errors_429 + self.errors_500 + self.errors_503 + self.errors_other
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "forwarded {}, errors 429/500/503/other {}/{}/{}/{}, delayed {}, watches cut {}, refused {}",
            self.forwarded,
            self.errors_429,
            self.errors_500,
            self.errors_503,
            self.errors_other,
            self.delayed,
            self.watches_cut,
            self.refused
        )
    }
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) forwarded: AtomicU64,
    errors_429: AtomicU64,
    errors_500: AtomicU64,
    errors_503: AtomicU64,
    errors_other: AtomicU64,
    pub(super) delayed: AtomicU64,
    pub(super) watches_cut: AtomicU64,
    pub(super) refused: AtomicU64,
}

impl Counters {
    pub(super) fn snapshot(&self) -> Counts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            forwarded: get(&self.forwarded),
            errors_429: get(&self.errors_429),
            errors_500: get(&self.errors_500),
            errors_503: get(&self.errors_503),
            errors_other: get(&self.errors_other),
            delayed: get(&self.delayed),
            watches_cut: get(&self.watches_cut),
            refused: get(&self.refused),
        }
    }

    /// One more injected error with status `code`.
    pub(super) fn error(&self, code: u16) {
        match code {
            429 => &self.errors_429,
            500 => &self.errors_500,
            503 => &self.errors_503,
            _ => &self.errors_other,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}
