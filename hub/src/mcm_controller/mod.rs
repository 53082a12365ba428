//! The ManagedClusterModule controller (hub issue). Steps, as STYLE.md lays them out:
//! observe -> desired (pure) -> apply -> status. Only the pure `desired` step exists so far.

pub mod desired;
