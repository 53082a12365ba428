# kmm-fleet developer commands. `just` lists them.

set shell := ["bash", "-euo", "pipefail", "-c"]

default:
    @just --list

# Install what the tests need (Debian packages) when missing, and build the test control plane
# (kube-apiserver, etcd, controller-manager, scheduler, kubectl, OCM's agents) from its Go modules.
deps:
    scripts/test-deps
    scripts/controlplane-build
    scripts/policyplane-build

# A hub and three spokes on real control planes (kube-apiserver, etcd, controller-manager,
# scheduler, OCM's agents), a real registry, the real kmm-hub and kmm-spoke and an example
# ManagedClusterModule; a status table until converged, then running until Ctrl-C.
# A local fleet in one command (`just demo --help` for options).
demo *args: deps
    cargo build --bins
    target/debug/kmm-demo {{args}}

# Run every test, then clippy and rustfmt, as CI does.
test: deps
    if command -v cargo-nextest >/dev/null; then cargo nextest run --workspace --no-fail-fast; else cargo test --workspace --no-fail-fast; fi
    cargo clippy --workspace --all-targets --locked -- -D warnings
    cargo fmt --all --check

# Benchmarks (results go to docs/benchmarks.md by hand): the release binaries, what ships, run
# under harnesses built in the quick dev profile (KMM_BIN_DIR; a fat-LTO link per harness would
# cost more than the runs), except bench_fleet, whose harness hosts the simulated API server and
# so is built for release too. Hub cold start over 1,000, 10,000 and 50,000 simulated clusters; the
# same plus a rolling kernel upgrade and a quiet minute on the real kube-apiserver (1,000, 10,000
# and 50,000 clusters: the last alone is about 25 minutes); kmod signing
# rate vs sign-file; the spoke at 1,000 Nodes; the worker's load.
bench: deps
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --locked --release --bins
    export KMM_BIN_DIR="${CARGO_TARGET_DIR:-$PWD/target}/release"
    cargo test --release -p kmm-hub --test bench_fleet -- --ignored --nocapture --test-threads 1
    cargo test -p kmm-hub --test bench_controlplane -- --ignored --nocapture --test-threads 1
    cargo test -p kmm-hub --test sign_bench -- --ignored --nocapture
    cargo test -p kmm-spoke --test bench_spoke -- --ignored --nocapture
    cargo test -p kmm-spoke --test bench_worker -- --ignored --nocapture

# Every binary's API traffic and the hub's registry lookups behind fault proxies, the hub killed
# at random moments, seeds 1 to 5 (`KMM_CHAOS_SEEDS=7` replays one): the chaos scenario, long
# (docs/fleet-tests.md).
chaos: deps
    cargo build --bins
    KMM_CHAOS_SEEDS="${KMM_CHAOS_SEEDS:-1,2,3,4,5}" KMM_CHAOS_ROUNDS="${KMM_CHAOS_ROUNDS:-3}" \
        cargo test -p kmm-fleet-tests --test chaos -- --nocapture

# Regenerate from the code: the CRDs in manifests/crds (Rust types), the hub's and the spoke's RBAC
# (the API calls in hub/src/rbac.rs, spoke/src/rbac.rs), and the spoke-install Policy in policies/
# (from manifests/spoke and the CRDs).
gen:
    cargo run --quiet -p kmm-hub -- crds --dir manifests/crds
    cargo run --quiet -p kmm-spoke -- crds --dir manifests/crds
    cargo run --quiet -p kmm-hub -- rbac > manifests/hub/rbac.yaml.tmp && mv manifests/hub/rbac.yaml.tmp manifests/hub/rbac.yaml
    cargo run --quiet -p kmm-spoke -- rbac > manifests/spoke/rbac.yaml.tmp && mv manifests/spoke/rbac.yaml.tmp manifests/spoke/rbac.yaml
    cargo run --quiet -p kmm-spoke -- policy --manifests manifests --out policies

# Built from scratch with buildah, reproducibly, as OCI layouts at target/images/<name> (docs/images.md):
# the kmm-hub and kmm-spoke container images.
images:
    scripts/test-deps
    scripts/images

# Install files go to target/release-manifests/VERSION (docs/install.md):
# push both images to REGISTRY as VERSION, install files with every image pinned by digest.
release VERSION REGISTRY:
    scripts/test-deps
    scripts/release {{VERSION}} {{REGISTRY}}

# Lint Module / ManagedClusterModule YAML: just lint path/to/file.yaml ...
lint +files:
    cargo run --quiet -p kmm-hub -- lint -f {{files}}

# Format the code.
fmt:
    cargo fmt --all

# Coverage-guided fuzzing (libFuzzer, stable toolchain) of the claim parser and kernel grammar,
# kernel mapping, lint's YAML, sign-image's layer reader and the module signature trailer:
# each target for KMM_FUZZ_SECONDS (60) s; `just fuzz layers` runs one. `just test` replays the
# kept corpus (fuzz/corpus) as a normal test.
fuzz *targets:
    fuzz/run {{targets}}
