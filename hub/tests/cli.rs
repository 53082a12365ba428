//! The `kmm-hub` binary as a user runs it: exit codes, stdin, output lines.

use std::{
    io::Write,
    process::{Command, Stdio},
};

const VALID: &str = "apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: my-kmod, namespace: my-namespace}
spec:
  selector: {}
  moduleLoader:
    container:
      modprobe: {moduleName: my_kmod}
      kernelMappings:
        - regexp: '^.+$'
          containerImage: 'reg.example/my-kmod:${KERNEL_FULL_VERSION}'
";

fn lint_stdin(input: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kmm-hub"))
        .args(["lint", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kmm-hub starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("kmm-hub ends");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn valid_input_exits_zero_and_prints_no_problem() {
    let (code, stdout, stderr) = lint_stdin(VALID);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(stderr.trim(), "1 document(s) checked, 0 problem(s)");
}

#[test]
fn each_problem_is_one_line_and_the_exit_code_is_one() {
    let broken = VALID.replace("moduleName: my_kmod", "moduleNam: my_kmod");
    let (code, stdout, _) = lint_stdin(&broken);
    assert_eq!(code, 1);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "-: document 1 (Module my-namespace/my-kmod): spec.moduleLoader.container.modprobe.moduleNam: \
             unknown field \"moduleNam\"; did you mean moduleName?"
        ]
    );
}

#[test]
fn unreadable_files_fail() {
    let out = Command::new(env!("CARGO_BIN_EXE_kmm-hub"))
        .args(["lint", "-f", "/nonexistent/module.yaml"])
        .output()
        .expect("kmm-hub runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("/nonexistent/module.yaml: cannot read"));
}

#[test]
fn crds_prints_the_hub_crd() {
    let out = Command::new(env!("CARGO_BIN_EXE_kmm-hub"))
        .arg("crds")
        .output()
        .expect("kmm-hub runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("name: managedclustermodules.hub.kmm.sigs.x-k8s.io"));
    assert!(
        !text.contains("kind: Module\n"),
        "the Module CRD belongs to the spoke"
    );
}

const MCM: &str = "apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1
kind: ManagedClusterModule
metadata: {name: gpu}
spec:
  spokeNamespace: drivers
  selector: {env: prod}
  moduleSpec:
    selector: {}
    moduleLoader:
      container:
        modprobe: {moduleName: gpu_kmod}
        kernelMappings:
          - regexp: '^.+$'
            containerImage: 'reg.example/gpu-kmod:${KERNEL_FULL_VERSION}'
";

const CLUSTERS: &str = "apiVersion: v1
kind: List
items:
  - apiVersion: cluster.open-cluster-management.io/v1
    kind: ManagedCluster
    metadata: {name: east, labels: {env: prod}}
    spec: {hubAcceptsClient: true}
    status:
      clusterClaims:
        - {name: kernel-versions.kmm.node.kubernetes.io, value: \"6.1.0-28-cloud-amd64\"}
  - apiVersion: cluster.open-cluster-management.io/v1
    kind: ManagedCluster
    metadata: {name: west, labels: {env: prod}}
    spec: {hubAcceptsClient: true}
  - apiVersion: cluster.open-cluster-management.io/v1
    kind: ManagedCluster
    metadata: {name: lab, labels: {env: dev}}
    spec: {hubAcceptsClient: true}
";

#[test]
fn render_prints_works_for_selected_clusters_and_fails_on_blocked_ones() {
    let dir = std::env::temp_dir().join(format!("kmm-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (mcm, clusters) = (dir.join("mcm.yaml"), dir.join("clusters.yaml"));
    std::fs::write(&mcm, MCM).expect("write");
    std::fs::write(&clusters, CLUSTERS).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_kmm-hub"))
        .args(["render", "--no-resolve", "-f"])
        .arg(&mcm)
        .arg("--clusters")
        .arg(&clusters)
        .output()
        .expect("kmm-hub runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "west has no kernel claim: {stderr}");
    assert!(stderr.contains("cluster west: NoKernelClaim"), "{stderr}");
    assert!(stderr.contains("2 clusters selected of 3"), "{stderr}");
    assert_eq!(stdout.matches("kind: ManifestWork").count(), 1, "{stdout}");
    assert!(
        stdout.contains("namespace: east") && stdout.contains("literal: 6.1.0-28-cloud-amd64"),
        "{stdout}"
    );
    assert!(!stdout.contains("regexp"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
