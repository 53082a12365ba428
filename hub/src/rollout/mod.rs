//! Progressive rollout of a changed Module across an MCM's clusters: the strategy
//! ([`strategy`]), the revisions rolled between ([`revision`]) and the pure wave planner
//! ([`planner`]) that says which clusters move next, which succeeded or failed, and whether the
//! rollout halts. See docs/rollout.md.

pub mod pick;
pub mod planner;
pub mod reconcile;
pub mod revision;
pub mod round;
pub mod status;
pub mod strategy;
