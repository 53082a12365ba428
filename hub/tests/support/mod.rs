//! Test support shared by the hub's integration tests: a real registry per test (the one of
//! `kmm_fleet_tests::registry`), the fleet on real control planes ([`fleet`]) and the signing
//! helpers ([`kmod`]).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod bench;
pub mod fleet;
pub mod kmod;

use std::{path::PathBuf, process::Command};

pub use kmm_fleet_tests::registry::Registry;

/// [`kmm_test_kit::run`]; a failure fails the test.
pub fn run(cmd: &mut Command) -> String {
    kmm_test_kit::run(cmd).unwrap()
}

/// A fresh folder for `name` (and this process) under cargo's target tmp dir, left there
/// afterwards.
pub fn scratch(name: &str) -> PathBuf {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    kmm_fleet_tests::fresh_dir(&base, &format!("kmm-{name}-{}", std::process::id())).unwrap()
}

/// A registry for test `name`, on a free loopback port.
pub fn start_registry(name: &str) -> Registry {
    Registry::start(&scratch(&format!("registry-{name}"))).unwrap()
}

/// A registry on the given port (e.g. one a test kept free to simulate the registry being down).
pub fn start_registry_at(name: &str, port: u16) -> Registry {
    Registry::start_at(&scratch(&format!("registry-{name}")), port).unwrap()
}
