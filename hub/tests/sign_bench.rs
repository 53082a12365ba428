//! Signing rate of kmm-hub's signer against Debian's `scripts/sign-file`, on copies of the
//! compiled test module. A measurement, not a timed assertion: it prints modules per second
//! and only asserts that both produced the same bytes. `just bench` runs the release kmm-hub
//! (`KMM_BIN_DIR`, see kmm_test_kit::bin_dir); the in-process library figure is this harness's
//! own build, so it counts only when the harness is optimized too:
//!
//! ```sh
//! cargo build --release --bins
//! KMM_BIN_DIR=target/release cargo test -p kmm-hub --test sign_bench -- --ignored --nocapture
//! ```
#![allow(clippy::unwrap_used)]

mod support;

use std::{path::PathBuf, process::Command, time::Instant};

use kmm_hub::sign::{HashAlgorithm, Signer, module::sign_file};
use support::{
    kmod::{make_rsa_key, sign_file_tool, temp_dir, unsigned_module},
    run,
};

const MODULES: usize = 200;

fn copies(dir: &std::path::Path, name: &str) -> Vec<PathBuf> {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    (0..MODULES)
        .map(|i| {
            let path = dir.join(format!("m{i}.ko"));
            std::fs::write(&path, unsigned_module()).unwrap();
            path
        })
        .collect()
}

/// The profile this harness (and so the in-process library) was built with.
fn harness_profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// Prints the rate of one way of signing, readable and as one `BENCH` line; `profile` is the
/// build of whatever signed (the kmm-hub binary, the harness, or sign-file's `-`).
fn rate(label: &str, way: &str, key: &str, profile: &str, start: Instant) -> f64 {
    let secs = start.elapsed().as_secs_f64();
    let per_second = MODULES as f64 / secs;
    println!("{label:<58} {MODULES} modules in {secs:7.3} s = {per_second:8.1} modules/s");
    println!("BENCH name=sign_rate value={per_second:.1} unit=modules/s way={way} {key} profile={profile}");
    per_second
}

#[test]
#[ignore = "a measurement; run with --release --ignored --nocapture"]
fn signing_rate_against_sign_file() {
    let tmp = temp_dir("bench");
    let dir = tmp.path();
    let hub = kmm_test_kit::workspace_bin("kmm-hub").unwrap();
    let hub_profile = kmm_test_kit::bin_profile();
    println!(
        "module: {} bytes; kmm-hub: {} ({hub_profile}); harness and library: {}",
        unsigned_module().len(),
        hub.display(),
        harness_profile()
    );
    for bits in [2048, 4096] {
        let key = make_rsa_key(dir, &format!("rsa{bits}"), bits, "kmm-fleet bench");
        for hash in ["sha256", "sha512"] {
            println!("RSA-{bits}, {hash}:");
            let id = format!("key=rsa{bits} hash={hash}");
            let theirs = copies(dir, "sign-file");
            let start = Instant::now();
            for path in &theirs {
                run(Command::new(sign_file_tool())
                    .arg(hash)
                    .arg(&key.pkcs8_pem)
                    .arg(&key.cert_der)
                    .arg(path));
            }
            rate(
                "  sign-file, one process per module",
                "sign-file-per-module",
                &id,
                "-",
                start,
            );

            let per_process = copies(dir, "kmm-hub-per-process");
            let start = Instant::now();
            for path in &per_process {
                run(Command::new(&hub)
                    .args(["sign-kmod", "--hash", hash, "--key"])
                    .arg(&key.pkcs8_pem)
                    .arg("--cert")
                    .arg(&key.cert_der)
                    .arg(path));
            }
            rate(
                "  kmm-hub sign-kmod, one process per module",
                "kmm-hub-per-module",
                &id,
                &hub_profile,
                start,
            );

            let one_process = copies(dir, "kmm-hub-one-process");
            let start = Instant::now();
            run(Command::new(&hub)
                .args(["sign-kmod", "--hash", hash, "--key"])
                .arg(&key.pkcs8_pem)
                .arg("--cert")
                .arg(&key.cert_der)
                .args(&one_process));
            rate(
                "  kmm-hub sign-kmod, all modules in one process (threads)",
                "kmm-hub-one-process",
                &id,
                &hub_profile,
                start,
            );

            let library = copies(dir, "library");
            let hash_algorithm: HashAlgorithm = hash.parse().unwrap();
            let start = Instant::now();
            let signer = Signer::from_files(&key.pkcs8_pem, &key.cert_der).unwrap();
            for path in &library {
                sign_file(&signer, path, hash_algorithm, false).unwrap();
            }
            rate(
                "  kmm_hub::sign library, one thread",
                "library-one-thread",
                &id,
                harness_profile(),
                start,
            );

            let expected = std::fs::read(&theirs[0]).unwrap();
            for path in per_process.iter().chain(&one_process).chain(&library) {
                assert!(
                    std::fs::read(path).unwrap() == expected,
                    "{} differs",
                    path.display()
                );
            }
        }
    }
}
