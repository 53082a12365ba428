//! Worker benchmark (`just bench`, never part of `just test`): `kmm-spoke worker load` from
//! process start to its exit right after modprobe returns, for a module tree of about 5 MiB of
//! real `.ko` files (compiled here against the Debian headers: `kmm_big`, padded by a 5 MiB
//! read-only table, needs `kmm_b`), depmod'ed; and beside it the same modprobe command line run
//! alone, so the worker's own share is the difference.
//!
//! modprobe runs with `--dry-run`, as in the worker's kmod tests: the modules are built for the
//! headers' kernel, not the running one, and the machine's kernel is not ours to load into. So
//! modprobe resolves the tree (the modules.*.bin indexes, the softdeps, `/sys/module/*/initstate`)
//! and prints the insmods without opening the `.ko` files (strace shows no open of them): the
//! tree's size does not enter these figures; a real load, which reads each file for
//! `finit_module`, can only be timed in a VM (tests/vm), not done here. Each figure is one `BENCH name=... value=...
//! unit=... tree_bytes=... profile=...` line. `KMM_SPOKE_BIN` picks the binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is a failed benchmark

use std::{
    fs,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use kmm_test_kit::kmod;

/// A module that needs `kmm_b` and carries a 5 MiB table (in .rodata, so in the file).
const MOD_BIG: &str = r#"#include <linux/module.h>
MODULE_LICENSE("GPL");
extern int kmm_b_value(void);
static const char table[5 * 1024 * 1024 - 200 * 1024] __used = { [0] = 1, [sizeof(table) - 1] = 1 };
static int __init big_init(void) { return kmm_b_value() - 42 + table[0] - 1; }
static void __exit big_exit(void) {}
module_init(big_init);
module_exit(big_exit);
"#;
const MOD_B: &str = r#"#include <linux/module.h>
MODULE_LICENSE("GPL");
int kmm_b_value(void) { return 42; }
EXPORT_SYMBOL(kmm_b_value);
static int __init b_init(void) { return 0; }
static void __exit b_exit(void) {}
module_init(b_init);
module_exit(b_exit);
"#;

/// Timed runs of each command (after one untimed run that warms the page cache).
const RUNS: usize = 20;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn tree_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                tree_bytes(&e.path())
            } else if e.path().extension().is_some_and(|x| x == "ko") {
                meta.len()
            } else {
                0
            }
        })
        .sum()
}

/// Milliseconds from spawning `cmd` to its exit (which must be a success), and its stdout.
fn timed(cmd: &mut Command) -> (f64, String) {
    let start = Instant::now();
    let out = cmd.output().unwrap();
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (ms, String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
#[ignore = "a benchmark (just bench); run with --ignored --nocapture"]
fn worker_load_of_a_5_mib_module_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let kernel = kmod::headers_kernel().unwrap();
    let built = tmp.path().join("build");
    kmod::build(&built, &[("kmm_big", MOD_BIG), ("kmm_b", MOD_B)]).unwrap();
    let shared = tmp.path().join("shared");
    let kos = ["kmm_big.ko", "kmm_b.ko"].map(|m| (built.join(m), m));
    kmod::tree(&shared.join("opt"), &kernel, "extra", &kos).unwrap();
    let bytes = tree_bytes(&shared);
    let host = tmp.path().join("host");
    fs::create_dir_all(host.join("lib/modules").join(&kernel)).unwrap();
    let config = tmp.path().join("config.yaml");
    fs::write(
        &config,
        format!(
            "kernelVersion: {kernel}\ncontainerImage: registry.example/kmm/big@sha256:{}\n\
             modprobe:\n  moduleName: kmm_big\n  dirName: /opt\n  parameters: []\n",
            "0".repeat(64)
        ),
    )
    .unwrap();
    let bin = std::env::var("KMM_SPOKE_BIN").unwrap_or_else(|_| {
        kmm_test_kit::workspace_bin("kmm-spoke")
            .unwrap()
            .display()
            .to_string()
    });
    let worker = || {
        let mut cmd = Command::new(&bin);
        cmd.args(["worker", "load", "--dry-run", "--config"])
            .arg(&config)
            .arg("--shared-root")
            .arg(&shared)
            .arg("--host-root")
            .arg(&host)
            .arg("--modprobe-conf-dir")
            .arg(tmp.path().join("modprobe.d"))
            .arg("--termination-log")
            .arg(tmp.path().join("termination-log"))
            .env("RUST_LOG", "warn");
        cmd
    };
    let (_, out) = timed(&mut worker());
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("running "))
        .expect("the worker names its modprobe command");
    let argv: Vec<&str> = line.split_whitespace().collect();
    let modprobe = || {
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..]);
        cmd
    };
    let (_, alone) = timed(&mut modprobe());
    assert!(
        alone.contains("kmm_b.ko") && alone.contains("kmm_big.ko"),
        "modprobe resolves the dependency and the module: {alone}"
    );

    let (mut worker_ms, mut modprobe_ms) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        worker_ms.push(timed(&mut worker()).0);
        modprobe_ms.push(timed(&mut modprobe()).0);
        std::thread::sleep(Duration::from_millis(20));
    }
    worker_ms.sort_by(f64::total_cmp);
    modprobe_ms.sort_by(f64::total_cmp);
    let profile = if bin.contains("/release/") {
        "release"
    } else {
        "debug"
    };
    let bench = |name: &str, value: f64| {
        println!(
            "BENCH name={name} value={value:.2} unit=ms tree_bytes={bytes} runs={RUNS} profile={profile}"
        );
    };
    println!("worker: {bin}\nmodprobe: {line}");
    bench("worker_load_p50", percentile(&worker_ms, 0.5));
    bench("worker_load_min", worker_ms[0]);
    bench("worker_load_max", percentile(&worker_ms, 1.0));
    bench("modprobe_alone_p50", percentile(&modprobe_ms, 0.5));
    bench("modprobe_alone_min", modprobe_ms[0]);
    bench(
        "worker_own_share_p50",
        percentile(&worker_ms, 0.5) - percentile(&modprobe_ms, 0.5),
    );
}
