//! `kmm-hub preflight` as CI runs it, against a real CNCF distribution registry: the images it
//! calls ready are the ones skopeo sees, the ones it says need a build are absent, and it never
//! pushes (the registry's access log is the witness).

mod support;

use std::{path::Path, process::Command};

use support::{Registry, run, scratch, start_registry};

const READY: &str = "6.1.0-28-cloud-amd64";
const COMING: &str = "6.1.0-29-cloud-amd64";

/// An MCM selecting `env: prod` whose one mapping builds `<host>/kmm/kmod:<kernel>` when absent.
fn mcm_yaml(host: &str, name: &str, tls: &str) -> String {
    build_mcm_yaml(host, name, tls, "")
}

/// [`mcm_yaml`] with `extra` lines in the mapping (indented to its fields).
fn build_mcm_yaml(host: &str, name: &str, tls: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1
kind: ManagedClusterModule
metadata:
  name: {name}
spec:
  spokeNamespace: drivers
  selector:
    env: prod
  moduleSpec:
    selector: {{}}
    moduleLoader:
      container:
        modprobe:
          moduleName: my_kmod
        kernelMappings:
          - regexp: '^6\.1\.'
            containerImage: {host}/kmm/kmod:${{KERNEL_FULL_VERSION}}
            registryTLS: {{{tls}}}
            build:
              dockerfileConfigMap: {{name: kmod-dockerfile}}
{extra}"#
    )
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn preflight(args: &[&str]) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_kmm-hub"))
        .arg("preflight")
        .args(args)
        .output()
        .expect("kmm-hub runs");
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The row of `kernel` in the table, split on whitespace.
fn row<'a>(stdout: &'a str, kernel: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{kernel} ")))
        .unwrap_or_else(|| panic!("no row for {kernel}:\n{stdout}"))
        .split_whitespace()
        .collect()
}

/// Manifest requests the registry answered for `repo:tag` exactly, from its access log.
fn tag_requests(registry: &Registry, repo_tag: &str) -> usize {
    let (repo, tag) = repo_tag.split_once(':').unwrap_or((repo_tag, ""));
    let log = std::fs::read_to_string(registry.dir.join("registry.log")).unwrap_or_default();
    let uri = format!("uri=/v2/{repo}/manifests/{tag} ");
    log.lines()
        .filter(|l| l.contains("response completed") && l.contains(&uri))
        .count()
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("scratch file written");
    path.to_str().expect("scratch paths are UTF-8").to_owned()
}

#[test]
fn ready_kernels_exit_zero_and_kernels_needing_a_build_exit_one_with_the_reason() {
    let registry = start_registry("preflight");
    let dir = scratch("preflight");
    let digest = registry.push_labelled(&format!("kmm/kmod:{READY}")).unwrap();
    let mcm = write(
        &dir,
        "mcm.yaml",
        &mcm_yaml(&registry.host, "gpu", "insecure: true"),
    );
    let (asked, pushed) = (
        registry.manifest_requests("kmm/kmod"),
        registry.manifest_pushes("kmm/kmod"),
    );

    let ok = preflight(&["--kernel", READY, "-f", &mcm]);
    assert_eq!(ok.code, Some(0), "{}{}", ok.stdout, ok.stderr);
    assert!(
        ok.stdout.starts_with("ManagedClusterModule gpu\n"),
        "{}",
        ok.stdout
    );
    assert_eq!(
        row(&ok.stdout, READY)[..4],
        [
            READY,
            "Ready",
            "Done",
            &format!("{}/kmm/kmod@{digest}", registry.host)
        ]
    );
    assert!(ok.stderr.contains("1 of 1 ready"), "{}", ok.stderr);
    assert!(
        registry.manifest_requests("kmm/kmod") > asked,
        "the registry was asked"
    );

    let both = preflight(&["--kernel", READY, "--kernel", COMING, "-f", &mcm]);
    assert_eq!(both.code, Some(1), "{}{}", both.stdout, both.stderr);
    assert_eq!(row(&both.stdout, READY)[1], "Ready");
    let coming = row(&both.stdout, COMING);
    assert_eq!(coming[..4], [COMING, "NeedsBuild", "Build", "-"]);
    assert!(
        coming[4..].join(" ").contains(&format!(
            "image {}/kmm/kmod:{COMING} does not exist; the hub would build it",
            registry.host
        )),
        "{}",
        both.stdout
    );
    assert!(both.stderr.contains("1 of 2 ready"), "{}", both.stderr);
    assert_eq!(
        registry.digest(&format!("kmm/kmod:{COMING}")),
        None,
        "skopeo agrees it is absent"
    );
    assert_eq!(
        registry.manifest_pushes("kmm/kmod"),
        pushed,
        "preflight builds and pushes nothing"
    );
}

#[test]
fn build_and_sign_needs_a_sign_once_the_unsigned_image_exists() {
    let registry = start_registry("preflight-sign");
    let dir = scratch("preflight-sign");
    let sign = "            sign:\n              keySecret: {name: key}\n              certSecret: {name: cert}\n\
                \x20             filesToSign: ['/opt/lib/modules/${KERNEL_FULL_VERSION}/my_kmod.ko']\n";
    let mcm = write(
        &dir,
        "mcm.yaml",
        &build_mcm_yaml(&registry.host, "gpu", "insecure: true", sign),
    );
    let unsigned = format!("kmm/kmod:{COMING}-drivers_gpu_kmm_unsigned");

    let before = preflight(&["--kernel", COMING, "-f", &mcm]);
    assert_eq!(before.code, Some(1), "{}{}", before.stdout, before.stderr);
    let row_before = row(&before.stdout, COMING);
    assert_eq!(row_before[1..3], ["NeedsBuild", "Build"]);
    assert!(
        row_before
            .join(" ")
            .contains(&format!("would build {}/{unsigned}, then sign it", registry.host)),
        "{}",
        before.stdout
    );

    registry.push_labelled(&unsigned).unwrap();
    let signed = format!("kmm/kmod:{COMING}");
    let asked = |repo_tag: &str| tag_requests(&registry, repo_tag);
    let (signed_before, unsigned_before) = (asked(&signed), asked(&unsigned));
    let after = preflight(&["--kernel", COMING, "-f", &mcm]);
    assert_eq!(after.code, Some(1), "{}{}", after.stdout, after.stderr);
    let row_after = row(&after.stdout, COMING);
    assert_eq!(row_after[1..3], ["NeedsSign", "Sign"], "{}", after.stdout);
    assert!(
        row_after
            .join(" ")
            .contains(&format!("would sign it from {}/{unsigned}", registry.host)),
        "{}",
        after.stdout
    );
    assert!(asked(&signed) > signed_before, "the signed image was looked up");
    assert!(asked(&unsigned) > unsigned_before, "then the unsigned one");
}

#[test]
fn clusters_limit_the_mcms_checked_and_bad_input_exits_two() {
    let registry = start_registry("preflight-input");
    let dir = scratch("preflight-input");
    let mcm = write(
        &dir,
        "mcm.yaml",
        &mcm_yaml(&registry.host, "gpu", "insecure: true"),
    );
    let dev = write(
        &dir,
        "clusters.yaml",
        "apiVersion: cluster.open-cluster-management.io/v1\nkind: ManagedCluster\n\
         metadata: {name: d1, labels: {env: dev}}\nspec: {}\n",
    );
    let skipped = preflight(&["--kernel", COMING, "--clusters", &dev, "-f", &mcm]);
    assert!(
        skipped
            .stderr
            .contains("ManagedClusterModule gpu selects none of the 1 clusters; skipped"),
        "{}",
        skipped.stderr
    );
    assert!(!skipped.stdout.contains("NeedsBuild"), "{}", skipped.stdout);
    let prod = write(
        &dir,
        "prod.yaml",
        &std::fs::read_to_string(&dev).unwrap().replace("dev", "prod"),
    );
    let checked = preflight(&["--kernel", COMING, "--clusters", &prod, "-f", &mcm]);
    assert_eq!(checked.code, Some(1));
    assert_eq!(row(&checked.stdout, COMING)[1], "NeedsBuild");

    for (args, says) in [
        (
            vec!["--kernel", "6.1", "-f", &mcm],
            "--kernel: kernel version \"6.1\" must have at least three",
        ),
        (vec!["--kernel", "6.1.0;rm", "-f", &mcm], "--kernel \"6.1.0;rm\""),
        (
            vec!["--kernel", READY, "-f", "/nonexistent/mcm.yaml"],
            "reading /nonexistent/mcm.yaml",
        ),
        (
            vec!["--kernel", READY, "-f", &dev],
            "holds no ManagedClusterModule",
        ),
        (
            vec!["--kernel", READY, "--pull-secret", &dev, "-f", &mcm],
            "--pull-secret",
        ),
    ] {
        let out = preflight(&args);
        assert_eq!(out.code, Some(2), "{args:?}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.starts_with("error: ") && out.stderr.contains(says),
            "{args:?}: {}",
            out.stderr
        );
        assert_eq!(out.stdout, "", "{args:?}");
    }
}

#[test]
fn the_pull_secret_opens_a_registry_that_refuses_anonymous_lookups() {
    let plain = start_registry("preflight-plain");
    let dir = scratch("preflight-secure");
    let secure = Registry::start_secure(&dir.join("registry"), "robot", "s3cret").unwrap();
    plain.push_labelled(&format!("kmm/kmod:{READY}")).unwrap();
    run(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--dest-creds",
        "robot:s3cret",
        &format!("docker://{}/kmm/kmod:{READY}", plain.host),
        &format!("docker://{}/kmm/kmod:{READY}", secure.host),
    ]));
    let mcm = write(
        &dir,
        "mcm.yaml",
        &mcm_yaml(&secure.host, "gpu", "insecureSkipTLSVerify: true"),
    );

    let anonymous = preflight(&["--kernel", READY, "-f", &mcm]);
    assert_eq!(
        anonymous.code,
        Some(1),
        "{}{}",
        anonymous.stdout,
        anonymous.stderr
    );
    assert_eq!(
        row(&anonymous.stdout, READY)[1],
        "RegistryError",
        "{}",
        anonymous.stdout
    );

    let config = format!(
        r#"{{"auths": {{"{}": {{"username": "robot", "password": "s3cret"}}}}}}"#,
        secure.host
    );
    let secret = write(
        &dir,
        "secret.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: pull, namespace: kmm-hub}}\n\
             type: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{config}'\n"
        ),
    );
    let with_secret = preflight(&["--kernel", READY, "--pull-secret", &secret, "-f", &mcm]);
    assert_eq!(
        with_secret.code,
        Some(0),
        "{}{}",
        with_secret.stdout,
        with_secret.stderr
    );
    let digest = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--creds",
        "robot:s3cret",
        "--format",
        "{{.Digest}}",
        &format!("docker://{}/kmm/kmod:{READY}", secure.host),
    ]));
    assert_eq!(
        row(&with_secret.stdout, READY)[3],
        format!("{}/kmm/kmod@{}", secure.host, digest.trim())
    );
}
