//! Every reason the spoke reports, in one closed set: Event reasons on Nodes and Modules,
//! condition reasons in Module status, and the bounded reasons of failed reconciles (metrics,
//! logs). The string is the variant name; tests and users match on it, so a name never changes.

use std::fmt;

/// Declares [`Reason`] from one list, so the string of each reason is its variant name by
/// construction and [`Reason::ALL`] cannot miss one.
macro_rules! reasons {
    ($($(#[$meta:meta])* $name:ident,)*) => {
        /// One reason the spoke reports.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$meta])* $name,)*
        }

        impl Reason {
            /// Every reason.
            pub const ALL: &[Reason] = &[$(Reason::$name,)*];

            /// The reason as written into Events, conditions and metric labels: the variant
            /// name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)*
                }
            }
        }
    };
}

reasons! {
    // Events on a Node, from its worker pods.
    /// A load worker finished; the record holds the load.
    ModuleLoaded,
    /// An unload worker finished.
    ModuleUnloaded,
    /// A finished load worker carries no readable config; the module is loaded again.
    WorkerConfigUnreadable,
    /// A worker failed and is retried (also the `WorkersFailing` condition's reason).
    WorkerFailed,
    /// A worker pod is still there after its deletion's grace period.
    WorkerPodStuck,

    // Events on a Module, and its condition reasons.
    /// The Module does not parse (also a reconcile failure).
    InvalidObject,
    /// Build or sign asked for in managed mode, where they are ignored.
    BuildSignIgnored,
    /// A deleted Module still loaded on nodes (also a reconcile failure).
    StillLoaded,
    /// Reason of the `BuildSignIgnored` condition.
    ManagedMode,
    /// Reason of the `KernelMappingsInvalid` condition.
    InvalidKernelMapping,
    /// Reason of the `WorkerInputInvalid` condition: a module name or path the worker refuses.
    InvalidWorkerInput,

    // Failed reconciles.
    /// An API call failed.
    ApiError,
    /// Something could not be serialized.
    SerializeError,
    /// The finalizer helper failed for a reason of its own.
    FinalizerError,
    /// A watch behind a controller failed.
    WatchError,
    /// Any other controller failure.
    Other,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Reason> for String {
    fn from(reason: Reason) -> String {
        reason.as_str().to_owned()
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_as_its_variant_name() {
        for reason in Reason::ALL {
            assert_eq!(reason.as_str(), format!("{reason:?}"));
            assert_eq!(reason.to_string(), reason.as_str());
        }
        assert_eq!(Reason::StillLoaded, "StillLoaded");
    }
}
