//! YAML written for upstream KMM on a real kube-apiserver with our CRDs: what upstream's schema
//! accepts and keeps is accepted and kept here (a reference without `name`, a DRA driver's
//! free-form parameters, a projected pod certificate's user annotations), and a quantity
//! upstream refuses is refused here too.

use kmm_fleet_tests::controlplane::{ControlPlane, Options};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_yaml_is_stored_as_upstream_stores_it() -> anyhow::Result<()> {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cp-upstream-yaml");
    let cp = ControlPlane::start(&dir, "hub", Options::hub()).await?;
    cp.install_crds_from_path(kmm_fleet_tests::repo_root().join("manifests/crds"))
        .await?;
    cp.apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: drivers}\n")
        .await?;

    let stored = cp
        .apply_yaml(
            r#"apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: gpu-dra, namespace: drivers}
spec:
  selector: {role: gpu}
  imageRepoSecret: {}
  dra:
    driverName: gpu.example.com
    container:
      image: registry.example/dra:1
      resources: {limits: {cpu: 500m, memory: 1.5Gi}}
    volumes:
    - name: certs
      projected:
        sources:
        - podCertificate:
            signerName: example.com/signer
            keyType: ED25519
            credentialBundlePath: bundle.pem
            userAnnotations: {team: gpu}
    deviceClasses:
    - name: gpu.example.com
      config:
      - opaque:
          driver: gpu.example.com
          parameters:
            apiVersion: gpu.example.com/v1
            kind: GpuConfig
            sharing: {strategy: TimeSlicing, replicas: 4}
"#,
        )
        .await?;
    let module = serde_json::to_value(&stored[0])?;
    let spec = &module["spec"];
    assert_eq!(
        spec["imageRepoSecret"],
        json!({"name": ""}),
        "the name defaults to \"\" as upstream's does"
    );
    assert_eq!(
        spec["dra"]["deviceClasses"][0]["config"][0]["opaque"]["parameters"],
        json!({"apiVersion": "gpu.example.com/v1", "kind": "GpuConfig", "sharing": {"strategy": "TimeSlicing", "replicas": 4}}),
        "the driver's parameters are kept, not pruned"
    );
    assert_eq!(
        spec["dra"]["volumes"][0]["projected"]["sources"][0]["podCertificate"]["userAnnotations"],
        json!({"team": "gpu"})
    );
    // The stored object reads back as our typed Module, as the spoke reads it.
    let typed: kmm_api::Module = serde_json::from_value(module.clone())?;
    assert_eq!(typed.spec.image_repo_secret.map(|s| s.name), Some(String::new()));

    // Build and sign references without a name, as upstream accepts them.
    cp.apply_yaml(
        r#"apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: signed, namespace: drivers}
spec:
  selector: {role: gpu}
  moduleLoader:
    container:
      modprobe: {moduleName: kmm_ci_a}
      kernelMappings:
      - regexp: '^\Q6.1.0\E-.*$'
        containerImage: registry.example/m:${KERNEL_FULL_VERSION}
        build: {dockerfileConfigMap: {}, secrets: [{}]}
        sign: {keySecret: {}, certSecret: {}, unsignedImage: registry.example/u:1, filesToSign: [/opt/x.ko]}
"#,
    )
    .await?;

    // A quantity upstream's schema refuses is refused here too, by the apiserver.
    let refused = cp
        .apply_yaml(
            "apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: Module\nmetadata: {name: bad, namespace: drivers}\n\
             spec:\n  selector: {role: gpu}\n  devicePlugin:\n    container:\n      image: r/p:1\n      \
             resources: {limits: {memory: lots}}\n",
        )
        .await
        .expect_err("a malformed quantity is refused");
    assert!(format!("{refused:#}").contains("limits"), "{refused:#}");
    Ok(())
}
