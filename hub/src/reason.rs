//! Every reason the hub writes: Event reasons, condition reasons, `status.problems[].reason` and
//! the `reason` label of the reconcile-error metric. The variant name is the string, so a reason
//! cannot be spelled two ways, and the list is closed (bounded metric labels).

/// Declares [`Reason`] with `as_str` returning each variant's own name.
macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $variant:ident,)*) => {
        /// A reason the hub reports; see the module docs.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Reason {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &[Reason] = &[$(Reason::$variant,)*];

            /// The reason as written to the API: the variant name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => stringify!($variant),)*
                }
            }
        }
    };
}

reasons! {
    // Why a selected cluster has no (new) ManifestWork.
    /// The cluster reports no kernel ClusterClaim.
    NoKernelClaim,
    /// The kernel ClusterClaim does not parse or lists nothing.
    MalformedKernelClaim,
    /// No kernel mapping matches any of the cluster's kernels.
    NoKernelMapping,
    /// `spec.moduleSpec` is wrong (bad regexp, unknown variable, ...).
    InvalidSpec,
    /// An image is missing and nothing on the hub makes it.
    ImageNotFound,
    /// The registry could not be asked or refused (or `imageRepoSecret` is unusable).
    RegistryError,
    /// The ManifestWork could not be rendered.
    RenderError,
    /// A build Job is making the image.
    Building,
    /// A sign Job is making the image.
    Signing,
    /// The build Job failed.
    BuildFailed,
    /// The sign Job failed.
    SignFailed,
    /// A ConfigMap or Secret a build or sign Job needs is missing.
    BuildInputMissing,

    // Trust refusals (docs/security.md): the MCM reaches beyond what it may.
    /// A hub-namespace Secret the MCM names does not grant it (its allowed-modules annotation).
    SecretNotGranted,
    /// `spec.spokeNamespace` matches `--forbidden-spoke-namespaces`.
    NamespaceNotAllowed,
    /// A worker `serviceAccountName` matches `--forbidden-service-accounts`.
    ServiceAccountNotAllowed,
    /// The kernel mapping regexps exceed the per-MCM budget (count or total size).
    RegexpBudgetExceeded,
    /// The spoke's status feedback was out of range or not a count; it counts 0.
    InvalidFeedback,

    // Cluster problems read from the ManifestWork or the ManagedCluster.
    /// The spoke's workers fail to load or unload the module.
    LoadFailed,
    /// Applying failed and the work agent gave no reason.
    ApplyFailed,
    /// The hub cannot hear from the cluster.
    ClusterUnavailable,

    // Condition reasons.
    /// Ready: the selector matches no ManagedCluster.
    NoClusterSelected,
    /// Ready: every cluster applied and every node loaded.
    Loaded,
    /// Ready: something is still missing.
    NotReady,
    /// Progressing: clusters are still applying.
    Rollout,
    /// Progressing: nothing is pending.
    Done,
    /// Degraded: some clusters need attention.
    ClustersNeedAttention,
    /// Degraded: none does.
    AsExpected,

    // Events of user-visible actions.
    /// Normal: ManifestWorks were written.
    ManifestWorksApplied,
    /// Normal: a cluster stopped matching and its ManifestWork was deleted.
    ManifestWorkDeleted,
    /// Normal: the MCM is gone from every cluster.
    Deleted,
    /// Warning: the MCM does not parse; it waits for a change.
    InvalidObject,

    // Reconcile errors (metric label).
    /// An API read or write failed.
    WriteFailed,
    /// An object could not be serialized.
    SerializeFailed,
    /// Adding or removing the finalizer failed.
    FinalizerFailed,
    /// Deleting: ManifestWorks are still on the spokes.
    WaitingForSpokes,

    // Progressive rollout (hub/src/rollout).
    /// A cluster waits for its rollout wave (it has no work at any older revision).
    RolloutPending,
    /// Condition and Warning: more clusters failed than `maxFailures`; nothing moves.
    RolloutHalted,
    /// Normal: a wave of clusters moves to the target revision.
    RolloutWave,
    /// `spec.rolloutStrategy` is malformed.
    InvalidRolloutStrategy,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn reasons_are_distinct_camel_case_words() {
        let names: BTreeSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len());
        for name in names {
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric()), "{name}");
            assert!(name.starts_with(|c: char| c.is_ascii_uppercase()), "{name}");
        }
    }

    #[test]
    fn the_string_is_the_variant_name() {
        assert_eq!(Reason::BuildInputMissing.as_str(), "BuildInputMissing");
        assert_eq!(Reason::ClusterUnavailable.to_string(), "ClusterUnavailable");
    }
}
