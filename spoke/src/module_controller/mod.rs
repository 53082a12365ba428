//! The managed-mode Module controller (spoke issue). So far its pure decisions exist: which nodes
//! get an entry in their NodeModulesConfig, and which service account the worker pods use.

pub mod desired;
