//! Monitoring (manifests/monitoring): the rules pass `promtool check rules` and their own unit
//! tests (`promtool test rules`, every alert both firing and quiet), the Prometheus Operator
//! objects hold the same rules, the kustomizations render; and end to end a real Prometheus
//! scraping the fleet's real `kmm-hub` and `kmm-spoke` sees alerts fire on a module that does
//! not load, a build that fails and a kernel without an image, then clear once each is fixed,
//! while every dashboard query answers with series. The tools are Debian's `prometheus` package.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is a failed test

use std::{
    collections::BTreeSet,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use kmm_api::ManagedClusterModule;
use kmm_fleet_tests::{
    Wait, controlplane, demo,
    fleet::{DOCKERFILE_CONFIGMAP, Fleet, MODULE_NAMESPACE, NodeSpec},
    free_port,
    kit::KilledOnDrop,
    repo_root, run,
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::Value;

fn monitoring() -> PathBuf {
    repo_root().join("manifests/monitoring")
}

fn yaml_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const RULE_FILES: [&str; 2] = ["hub.rules.yaml", "spoke.rules.yaml"];

/// Every alert name of a rule file.
fn alerts_of(rules: &Value) -> BTreeSet<String> {
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_rule_files_pass_promtool_check_rules() {
    let dir = monitoring().join("rules");
    let out = run(Command::new("promtool")
        .arg("check")
        .arg("rules")
        .args(RULE_FILES.map(|f| dir.join(f))))
    .unwrap();
    assert_eq!(out.matches("SUCCESS").count(), 2, "{out}");
}

#[test]
fn every_alert_has_unit_tests_firing_and_quiet_and_they_pass() {
    let dir = monitoring().join("rules");
    for file in RULE_FILES {
        let alerts = alerts_of(&yaml_file(&dir.join(file)));
        assert!(alerts.len() >= 4, "{file}: {alerts:?}");
        let test_file = dir.join("tests").join(file.replace(".rules.", ".test."));
        let tests = yaml_file(&test_file);
        let (mut firing, mut quiet) = (BTreeSet::new(), BTreeSet::new());
        for case in tests["tests"].as_array().unwrap() {
            for t in case["alert_rule_test"].as_array().into_iter().flatten() {
                let name = t["alertname"].as_str().unwrap().to_owned();
                let expected = t["exp_alerts"].as_array().map_or(0, Vec::len);
                if expected > 0 { &mut firing } else { &mut quiet }.insert(name);
            }
        }
        assert_eq!(firing, alerts, "{file}: alerts without a firing test");
        assert_eq!(quiet, alerts, "{file}: alerts without a quiet test");
        let out = run(Command::new("promtool")
            .current_dir(test_file.parent().unwrap())
            .args(["test", "rules"])
            .arg(&test_file))
        .unwrap();
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

#[test]
fn the_prometheus_rule_objects_hold_the_plain_rule_files() {
    for (plain, object) in [
        ("rules/hub.rules.yaml", "prometheusrule-hub.yaml"),
        ("rules/spoke.rules.yaml", "spoke/prometheusrule.yaml"),
    ] {
        let object = yaml_file(&monitoring().join(object));
        assert_eq!(object["kind"], "PrometheusRule");
        assert_eq!(object["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(
            object["spec"]["groups"],
            yaml_file(&monitoring().join(plain))["groups"],
            "{plain}"
        );
    }
}

#[test]
fn the_kustomizations_render_monitors_rules_and_every_dashboard() {
    let kubectl = controlplane::kubectl().unwrap();
    let kinds = |dir: PathBuf| -> Vec<Value> {
        let out = run(Command::new(&kubectl).arg("kustomize").arg(dir)).unwrap();
        controlplane::documents(&out).unwrap()
    };
    let hub = kinds(monitoring());
    let names: BTreeSet<String> = hub
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    let dashboards: Vec<PathBuf> = std::fs::read_dir(monitoring().join("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dashboards.len(), 4);
    for d in &hub {
        assert_eq!(d["metadata"]["namespace"], "kmm-hub", "{d}");
    }
    assert!(names.contains("ServiceMonitor/kmm-hub"), "{names:?}");
    assert!(names.contains("PrometheusRule/kmm-hub"), "{names:?}");
    // Each dashboard file lands in a ConfigMap Grafana's sidecar picks up, as valid JSON.
    for path in &dashboards {
        let file = path.file_name().unwrap().to_str().unwrap();
        let cm = hub
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["data"].get(file).is_some())
            .unwrap_or_else(|| panic!("no ConfigMap holds {file}"));
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
        let dash: Value = serde_json::from_str(cm["data"][file].as_str().unwrap()).unwrap();
        assert!(!dashboard_queries(&dash).is_empty(), "{file}");
    }
    let spoke = kinds(monitoring().join("spoke"));
    let kinds: BTreeSet<&str> = spoke.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, BTreeSet::from(["PodMonitor", "PrometheusRule"]));
}

/// Every query of a dashboard's panels.
fn dashboard_queries(dash: &Value) -> Vec<String> {
    dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect()
}

/// A real Prometheus with its own config and storage, killed on drop.
struct Prometheus {
    _child: KilledOnDrop,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    /// Scrapes `targets` (`job`, port on loopback) every second and evaluates the rule files
    /// every second, each alert's `for` cut to 2s (the unit tests check the real durations).
    fn start(dir: &Path, targets: &[(&str, u16)]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut rule_files = Vec::new();
        for file in RULE_FILES {
            let mut rules = yaml_file(&monitoring().join("rules").join(file));
            for group in rules["groups"].as_array_mut().unwrap() {
                for rule in group["rules"].as_array_mut().unwrap() {
                    if rule.get("for").is_some() {
                        rule["for"] = "2s".into();
                    }
                }
            }
            let path = dir.join(file.replace(".yaml", ".json"));
            std::fs::write(&path, serde_json::to_string(&rules).unwrap()).unwrap();
            rule_files.push(path);
        }
        let config = serde_json::json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": rule_files,
            "scrape_configs": targets.iter().map(|(job, port)| serde_json::json!({
                "job_name": job,
                "static_configs": [{"targets": [format!("127.0.0.1:{port}")]}],
            })).collect::<Vec<_>>(),
        });
        let config_path = dir.join("prometheus.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        run(Command::new("promtool")
            .args(["check", "config"])
            .arg(&config_path))
        .unwrap();
        let port = free_port().unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus (Debian package prometheus; `just deps`)");
        Self {
            _child: KilledOnDrop::new(child),
            port,
            log,
        }
    }

    /// `data` of a successful answer of the HTTP API at `path_and_query`.
    async fn api(&self, path_and_query: &str) -> Option<Value> {
        let body = http10_get(self.port, path_and_query).await?;
        let answer: Value = serde_json::from_str(&body).ok()?;
        (answer["status"] == "success").then(|| answer["data"].clone())
    }

    async fn query(&self, promql: &str) -> Option<Vec<Value>> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(promql)))
            .await?;
        data["result"].as_array().cloned()
    }

    /// Firing alerts as `(alertname, labels)`.
    async fn firing(&self) -> Vec<(String, Value)> {
        let Some(data) = self.api("/api/v1/alerts").await else {
            return Vec::new();
        };
        data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing")
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or_default().to_owned(),
                    a["labels"].clone(),
                )
            })
            .collect()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// GET over HTTP/1.0, so the answer is never chunked; the body of a 200.
async fn http10_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8(buf).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.split(' ')
        .nth(1)
        .is_some_and(|code| code == "200")
        .then(|| body.to_owned())
}

/// Percent-encoding of a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The classic text format of an OpenMetrics exposition, which `promtool check metrics` (2.42)
/// reads: OpenMetrics names a counter family without `_total` and its samples with it; the
/// classic format names both with it. `# EOF` goes.
fn classic_text(openmetrics: &str) -> String {
    let counters: BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    openmetrics
        .lines()
        .filter(|l| *l != "# EOF")
        .map(|l| {
            for kind in ["# HELP ", "# TYPE "] {
                if let Some(rest) = l.strip_prefix(kind) {
                    let (family, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                    if counters.contains(family) {
                        return format!("{kind}{family}_total {tail}");
                    }
                }
            }
            l.to_owned()
        })
        .map(|l| l + "\n")
        .collect()
}

/// `promtool check metrics` on a real scrape: names, units, `_total` and help texts.
fn check_metrics(name: &str, openmetrics: &str) {
    let text = classic_text(openmetrics);
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "{name}: {said}\n{text}"
    );
}

const LOAD_MCM: &str = "fleet-kmod";
const READINESS_MCM: &str = "no-image";
const BUILD_MCM: &str = "fails-to-build";

/// An MCM that builds its own image for the fleet's kernel with the fleet's Dockerfile (its
/// sources image is not pushed yet, so the build fails), and no sign step.
fn building_mcm(host: &str, trigger: u32) -> String {
    format!(
        r#"apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1
kind: ManagedClusterModule
metadata:
  name: {BUILD_MCM}
spec:
  spokeNamespace: {MODULE_NAMESPACE}
  selector:
    driver: gpu
  moduleSpec:
    imageRebuildTriggerGeneration: {trigger}
    selector:
      node-role.kubernetes.io/worker: ""
    moduleLoader:
      container:
        modprobe:
          moduleName: kmm_fleet
        registryTLS:
          insecure: true
        kernelMappings:
          - literal: {kernel}
            containerImage: {host}/kmm/monitoring-built:${{KERNEL_FULL_VERSION}}
            build:
              dockerfileConfigMap:
                name: {DOCKERFILE_CONFIGMAP}
              baseImageRegistryTLS:
                insecure: true
"#,
        kernel = demo::K_EAST,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_and_clear_and_every_dashboard_query_answers_on_a_real_prometheus() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("monitoring-e2e");
    let mut fleet = Fleet::start(&dir).await.unwrap();
    fleet.push_prebuilt(demo::K_EAST).unwrap();
    fleet
        .add_spoke(
            "a",
            &[("driver", "gpu")],
            &[NodeSpec::worker("a-1", demo::K_EAST)],
        )
        .await
        .unwrap();
    fleet.start_hub().unwrap();
    let hub = fleet.hub_process.as_ref().unwrap();
    let spoke = fleet.spoke("a").unwrap().process.as_ref().unwrap();
    hub.wait_ready().await;
    spoke.wait_ready().await;
    for (name, process) in [("kmm-hub", hub), ("kmm-spoke", spoke)] {
        check_metrics(name, &process.http_get("/metrics").await.unwrap());
    }
    let prometheus = Prometheus::start(
        &fleet.dir.join("prometheus"),
        &[("kmm-hub", hub.port), ("kmm-spoke", spoke.port)],
    );
    let context = || format!("prometheus:\n{}\n{}", prometheus.log_tail(), fleet.log_tails(30));

    // Three failures: a module the image does not hold (the workers fail to load it), an MCM
    // whose kernel mappings match no kernel of the fleet (no image for the nodes' kernel), and a
    // build that fails (its sources image is missing).
    let mcms = Api::<ManagedClusterModule>::all(fleet.hub.client());
    let good = demo::example_mcm(LOAD_MCM, &fleet.registry.host);
    let broken = good.replace("moduleName: kmm_fleet", "moduleName: kmm_absent");
    let unmapped = demo::example_mcm(READINESS_MCM, &fleet.registry.host)
        .replace("- literal: ", "- literal: 0.0.0-")
        .replace("regexp: '^6", "regexp: '^0");
    let building = building_mcm(&fleet.registry.host, 1);
    for yaml in [&broken, &unmapped, &building] {
        let mcm: ManagedClusterModule = serde_saphyr::from_str(yaml).unwrap();
        mcms.create(&PostParams::default(), &mcm).await.unwrap();
    }

    let expected = [
        ("KmmClustersDegraded", LOAD_MCM, "LoadFailed"),
        ("KmmClustersBlocked", READINESS_MCM, "NoKernelMapping"),
        ("KmmKernelWithoutImage", READINESS_MCM, ""),
        ("KmmRolloutStalled", READINESS_MCM, ""),
        ("KmmBuildOrSignFailed", BUILD_MCM, "BuildFailed"),
    ];
    Wait::new(
        "the alerts of both failures and the spoke's worker failures fire",
        Duration::from_secs(240),
    )
    .context(context)
    .eventually(|| async {
        let firing = prometheus.firing().await;
        let has = |alert: &str, mcm: &str, reason: &str| {
            firing.iter().any(|(name, labels)| {
                name == alert && labels["mcm"] == mcm && (reason.is_empty() || labels["reason"] == reason)
            })
        };
        expected.iter().all(|(a, m, r)| has(a, m, r))
            && firing
                .iter()
                .any(|(name, l)| name == "KmmSpokeWorkerFailures" && l["action"] == "load")
    })
    .await;
    let firing = prometheus.firing().await;
    for quiet in ["KmmHubDown", "KmmSpokeDown", "KmmHubNoLeader", "KmmHubTwoLeaders"] {
        assert!(
            firing.iter().all(|(name, _)| name != quiet),
            "{quiet} fires: {firing:?}"
        );
    }

    // Now every panel of every dashboard has something to show.
    for entry in std::fs::read_dir(monitoring().join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for promql in dashboard_queries(&dash) {
            let series = prometheus.query(&promql).await;
            assert!(
                series.as_ref().is_some_and(|s| !s.is_empty()),
                "{}: `{promql}` answered {series:?}",
                path.display()
            );
        }
    }

    // Fixed: the right module name, the unmapped MCM removed, and the build's sources pushed
    // with a new rebuild trigger (a failed Job is only retried for a new generation). The
    // alerts clear.
    let fixed: ManagedClusterModule = serde_saphyr::from_str(&good).unwrap();
    mcms.patch(
        LOAD_MCM,
        &PatchParams::apply("e2e").force(),
        &Patch::Apply(serde_json::to_value(&fixed).unwrap()),
    )
    .await
    .unwrap();
    mcms.delete(READINESS_MCM, &DeleteParams::default())
        .await
        .unwrap();
    fleet.push_sources(&[demo::K_EAST]).unwrap();
    let rebuild: ManagedClusterModule =
        serde_saphyr::from_str(&building_mcm(&fleet.registry.host, 2)).unwrap();
    mcms.patch(
        BUILD_MCM,
        &PatchParams::apply("e2e").force(),
        &Patch::Apply(serde_json::to_value(&rebuild).unwrap()),
    )
    .await
    .unwrap();
    Wait::new(
        "the failures' alerts clear and Prometheus sees both modules loaded",
        Duration::from_secs(240),
    )
    .context(context)
    .eventually(|| async {
        let firing = prometheus.firing().await;
        let mut loaded = true;
        for mcm in [LOAD_MCM, BUILD_MCM] {
            let promql = format!(r#"sum(kmm_hub_nodes{{mcm="{mcm}",state="loaded"}}) == 1"#);
            loaded &= prometheus.query(&promql).await.is_some_and(|s| s.len() == 1);
        }
        loaded
            && prometheus.api("/api/v1/alerts").await.is_some()
            && expected
                .iter()
                .all(|(a, _, _)| firing.iter().all(|(name, _)| name != a))
    })
    .await;
}
