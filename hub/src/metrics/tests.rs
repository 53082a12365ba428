//! Unit tests of the hub's metrics (split out to keep metrics.rs on one idea).

use std::time::Duration;

use kmm_api::KernelSummary;

use super::*;

fn metrics() -> Metrics {
    Metrics::new(
        Arc::new(DigestResolver::new(Duration::from_secs(1))),
        Arc::new(Leadership::always()),
    )
}

#[test]
fn exposes_counters_and_per_mcm_gauges_without_cluster_names() {
    let m = metrics().with_cache("manifestworks", || 3);
    drop(m.reconcile_timer());
    m.reconcile_failed(Reason::WriteFailed);
    m.observe_fleet(
        "gpu",
        &ManagedClusterModuleStatus {
            number_desired: 7,
            number_blocked: 2,
            nodes_desired: 9,
            nodes_loaded: 4,
            kernels: vec![
                KernelSummary {
                    kernel: "6.1".into(),
                    image: "r/m@sha256:aa".into(),
                    clusters: 5,
                },
                KernelSummary {
                    kernel: "6.2".into(),
                    image: String::new(),
                    clusters: 2,
                },
            ],
            kernels_omitted: 1,
            ..Default::default()
        },
    );
    let text = m.encode();
    for line in [
        "kmm_hub_reconciles_total 1",
        r#"kmm_hub_reconcile_errors_total{reason="WriteFailed"} 1"#,
        r#"kmm_hub_clusters{mcm="gpu",state="desired"} 7"#,
        r#"kmm_hub_clusters{mcm="gpu",state="blocked"} 2"#,
        r#"kmm_hub_nodes{mcm="gpu",state="loaded"} 4"#,
        r#"kmm_hub_kernels{mcm="gpu"} 3"#,
        r#"kmm_hub_kernels_without_image{mcm="gpu"} 1"#,
        "kmm_hub_registry_lookups_total 0",
        "kmm_hub_leader 1",
        r#"kmm_hub_cache_objects{cache="manifestworks"} 3"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
    }
    assert!(text.contains("process_resident_memory_bytes "), "{text}");
    m.forget("gpu");
    assert!(!m.encode().contains(r#"mcm="gpu""#));
}

#[test]
fn problem_series_follow_the_clusters_and_fold_unknown_reasons() {
    let m = metrics();
    m.observe_problems(
        "gpu",
        [
            ("Blocked", "BuildFailed".to_owned()),
            ("Blocked", "BuildFailed".to_owned()),
            ("Degraded", "something a spoke made up".to_owned()),
        ],
    );
    let text = m.encode();
    assert!(
        text.contains(r#"kmm_hub_cluster_problems{mcm="gpu",state="Blocked",reason="BuildFailed"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"kmm_hub_cluster_problems{mcm="gpu",state="Degraded",reason="Other"} 1"#),
        "{text}"
    );
    m.observe_problems("gpu", [("Degraded", "LoadFailed".to_owned())]);
    let text = m.encode();
    assert!(!text.contains("BuildFailed"), "{text}");
    assert!(
        text.contains(r#"kmm_hub_cluster_problems{mcm="gpu",state="Degraded",reason="LoadFailed"} 1"#),
        "{text}"
    );
    m.forget("gpu");
    assert!(!m.encode().contains("kmm_hub_cluster_problems{"));
}

#[test]
fn resident_memory_comes_from_vmrss() {
    assert_eq!(
        resident_bytes("Name:\tkmm-hub\nVmRSS:\t   2048 kB\nThreads:\t4\n"),
        Some(2048 * 1024)
    );
    assert_eq!(resident_bytes("Name:\tkmm-hub\n"), None);
}
