//! The ManagedClusterModule controller (hub issue). Steps, as STYLE.md lays them out:
//! observe -> desired (pure) -> apply -> status. So far only the pure parts exist: rendering the
//! ManifestWork (`desired`) and reading its outcome back (`status`).

pub mod desired;
pub mod fleet_status;
pub mod status;
