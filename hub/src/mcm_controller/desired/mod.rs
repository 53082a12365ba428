//! Pure rendering of what the hub wants to exist for one MCM; one file per rendered kind.

pub mod job;
pub mod manifestwork;
pub mod plan;
