//! kubectl of the control planes' release against a real kube-apiserver holding KMM's CRDs:
//! what a user types works on our objects (server-side apply, the printer columns of `get`,
//! `-o yaml`, `describe`, `explain`, `get -w`, delete), and the install kustomizations render.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is a failed test

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use kmm_fleet_tests::controlplane::{self, ControlPlane, Options};

fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(controlplane::kubectl().unwrap())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(kubeconfig: &Path, args: &[&str]) -> String {
    let (success, out, err) = kubectl(kubeconfig, args);
    assert!(success, "kubectl {args:?} failed: {err}\n{out}");
    out
}

const MCM: &str = r#"apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1
kind: ManagedClusterModule
metadata:
  name: gpu-driver
spec:
  spokeNamespace: drivers
  selector:
    driver: gpu
  moduleSpec:
    selector:
      node-role.kubernetes.io/worker: ""
    moduleLoader:
      container:
        modprobe:
          moduleName: gpu
        kernelMappings:
          - regexp: '^.+$'
            containerImage: registry.example/gpu:${KERNEL_FULL_VERSION}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_works_on_kmm_objects_against_a_real_apiserver() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kubectl-real");
    let cp = ControlPlane::start(&dir, "hub", Options::hub()).await.unwrap();
    cp.install_crds_from_path(kmm_fleet_tests::repo_root().join("manifests/crds"))
        .await
        .unwrap();
    let kc = cp.kubeconfig_path().to_path_buf();
    let file = cp.dir().join("mcm.yaml");
    std::fs::write(&file, MCM).unwrap();

    // A watch started before the object exists sees it arrive.
    let mut watch = Command::new(controlplane::kubectl().unwrap())
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["get", "mcm", "-w", "--no-headers", "-o", "name"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(watch.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;

    let applied = ok(&kc, &["apply", "--server-side", "-f", file.to_str().unwrap()]);
    assert!(applied.contains("serverside-applied"), "{applied}");
    let seen = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the watch saw the MCM");
    assert_eq!(seen, "managedclustermodule.hub.kmm.sigs.x-k8s.io/gpu-driver");
    let _ = watch.kill();
    let _ = watch.wait();

    // The short name and printer columns of the CRD.
    let table = ok(&kc, &["get", "mcm"]);
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("NAME"), "{table}");
    assert!(table.contains("gpu-driver"), "{table}");

    let yaml = ok(&kc, &["get", "mcm", "gpu-driver", "-o", "yaml"]);
    assert!(yaml.contains("spokeNamespace: drivers"), "{yaml}");
    assert!(
        yaml.contains("containerImage: registry.example/gpu:${KERNEL_FULL_VERSION}"),
        "{yaml}"
    );

    let described = ok(&kc, &["describe", "mcm", "gpu-driver"]);
    assert!(described.contains("Spoke Namespace:  drivers"), "{described}");

    // The schema is published: explain answers from it.
    let explained = ok(&kc, &["explain", "managedclustermodules.spec.spokeNamespace"]);
    assert!(explained.contains("spokeNamespace"), "{explained}");

    // The CRD refuses what the schema forbids, with the apiserver's message.
    let bad = file.with_file_name("bad.yaml");
    std::fs::write(
        &bad,
        MCM.replace(
            "containerImage: registry.example/gpu:${KERNEL_FULL_VERSION}",
            "containerImage: registry.example/gpu",
        ),
    )
    .unwrap();
    let (success, _, err) = kubectl(&kc, &["apply", "--server-side", "-f", bad.to_str().unwrap()]);
    assert!(!success);
    assert!(err.contains("containerImage must carry a tag"), "{err}");

    ok(&kc, &["delete", "mcm", "gpu-driver", "--wait=true"]);
    let (_, out, err) = kubectl(&kc, &["get", "mcm", "gpu-driver"]);
    assert!(err.contains("NotFound"), "{out}{err}");

    // The install kustomizations render with this kubectl (`labels:` needs kustomize v4+).
    for dir in ["manifests/hub", "manifests/spoke", "policies"] {
        let path = kmm_fleet_tests::repo_root().join(dir);
        let rendered = ok(&kc, &["kustomize", path.to_str().unwrap()]);
        assert!(rendered.contains("kind:"), "{dir}: {rendered}");
    }
}
