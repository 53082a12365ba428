//! kmm-spoke: the managed-mode Module controller and the node worker (spoke issue).
//!
//! - [`ordered_upgrade`]: the version-label action table for ordered upgrades (pure).

pub mod ordered_upgrade;
