use std::path::PathBuf;

use kmm_api::{ManagedClusterModuleSpec, Module};
use serde_json::Value;

use super::*;
use crate::fixtures::{lookup_failed, mk_cluster, mk_mcm};

const K1: &str = "6.0.15-300.fc37.x86_64";
const K2: &str = "5.14.0-70.el9.x86_64";

const MCM: &str = r#"
apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1
kind: ManagedClusterModule
metadata:
  name: my-mod
spec:
  spokeNamespace: drivers
  selector: {env: prod}
  moduleSpec:
    moduleLoader:
      container:
        modprobe: {moduleName: my_kmod}
        kernelMappings:
          - literal: 6.0.15-300.fc37.x86_64
            containerImage: reg.example/${MOD_NAMESPACE}/kmod:${KERNEL_FULL_VERSION}
            build:
              dockerfileConfigMap: {name: df}
          - regexp: '^5\.14\..+$'
            containerImage: reg.example/kmod:el9-${KERNEL_XYZ}
    devicePlugin:
      container:
        image: reg.example/plugin:v1
    selector: {gpu: "true"}
"#;

fn pins_for(images: &[ImageRef]) -> BTreeMap<String, Pin> {
    images
        .iter()
        .map(|i| {
            let repo = i.image.rsplit_once(':').map_or(i.image.as_str(), |(r, _)| r);
            (
                i.image.clone(),
                Pin::Pinned(format!("{repo}@sha256:{:064x}", i.image.len())),
            )
        })
        .collect()
}

/// Every key anywhere in a JSON document.
fn keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                out.push(k.clone());
                keys(c, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| keys(c, out)),
        _ => {}
    }
}

#[test]
fn selectors_pick_by_labels_and_empty_picks_all() {
    let mcm = mk_mcm(MCM);
    assert!(selects(
        &mcm,
        &mk_cluster("a", &[("env", "prod"), ("x", "y")], None)
    ));
    assert!(!selects(&mcm, &mk_cluster("b", &[("env", "dev")], None)));
    assert!(!selects(&mcm, &mk_cluster("c", &[], None)));
    let mut all = mcm.clone();
    all.spec.selector.clear();
    assert!(selects(&all, &mk_cluster("c", &[], None)));
}

#[test]
fn kernels_come_from_the_claim_and_a_missing_or_bad_claim_is_reported() {
    let ok = cluster_kernels(&mk_cluster("a", &[], Some(&format!("{K2}\n{K1}+\n{K1}")))).unwrap();
    assert_eq!(ok, [K2, K1]);
    assert_eq!(
        cluster_kernels(&mk_cluster("a", &[], None)).unwrap_err().reason,
        Reason::NoKernelClaim
    );
    let bad = cluster_kernels(&mk_cluster("a", &[], Some("not a kernel"))).unwrap_err();
    assert_eq!(bad.reason, Reason::MalformedKernelClaim);
}

#[test]
fn images_are_the_mapped_ones_with_mod_namespace_as_spoke_namespace_plus_plugins() {
    let mcm = mk_mcm(MCM);
    let images: Vec<String> = images_for(&mcm, &[K1.into(), K2.into(), "4.18.0".into()])
        .unwrap()
        .into_iter()
        .map(|i| i.image)
        .collect();
    assert_eq!(
        images,
        [
            "reg.example/drivers/kmod:6.0.15-300.fc37.x86_64",
            "reg.example/kmod:el9-5.14.0",
            "reg.example/plugin:v1"
        ]
    );
}

#[test]
fn a_broken_regexp_is_an_invalid_spec() {
    let mcm = mk_mcm(&MCM.replace(r"'^5\.14\..+$'", "'(['"));
    assert_eq!(
        images_for(&mcm, &[K2.into()]).unwrap_err().reason,
        Reason::InvalidSpec
    );
}

/// Issue 13: an MCM over the regexp budget is refused with its own reason, not a generic one.
#[test]
fn too_many_regexps_are_refused_as_over_the_budget() {
    let extra: String = (0..101)
        .map(|i| {
            format!("\n          - regexp: '^9\\.{i}\\..+$'\n            containerImage: reg.example/x:y")
        })
        .collect();
    let mcm = mk_mcm(&MCM.replace("kernelMappings:", &format!("kernelMappings:{extra}")));
    assert_eq!(
        images_for(&mcm, &[K2.into()]).unwrap_err().reason,
        Reason::RegexpBudgetExceeded
    );
}

#[test]
fn render_pins_every_image_and_ships_literal_mappings_only() {
    let mcm = mk_mcm(MCM);
    let kernels = vec![K2.to_string(), K1.to_string()];
    let pins = pins_for(&images_for(&mcm, &kernels).unwrap());
    let work = render(&mcm, "cluster-1", &kernels, &pins).unwrap();
    assert_eq!(work.metadata.name.as_deref(), Some("my-mod"));
    assert_eq!(work.metadata.namespace.as_deref(), Some("cluster-1"));
    assert_eq!(work.annotations()[KERNELS_ANNOTATION], format!("{K2},{K1}"));
    let module = &work.spec.workload.manifests[0];
    assert_eq!(module["metadata"]["namespace"], "drivers");
    let mappings = module["spec"]["moduleLoader"]["container"]["kernelMappings"]
        .as_array()
        .unwrap();
    let literals: Vec<&str> = mappings.iter().map(|m| m["literal"].as_str().unwrap()).collect();
    assert_eq!(literals, [K2, K1]);
    for m in mappings {
        assert!(m["containerImage"].as_str().unwrap().contains("@sha256:"), "{m}");
        assert!(m.get("regexp").is_none());
    }
    assert!(
        module["spec"]["devicePlugin"]["container"]["image"]
            .as_str()
            .unwrap()
            .contains("@sha256:")
    );
    let mut all = Vec::new();
    keys(module, &mut all);
    assert!(!all.iter().any(|k| k == "build" || k == "sign"), "{all:?}");
}

#[test]
fn missing_and_unreachable_images_block_with_distinct_reasons() {
    let mcm = mk_mcm(MCM);
    let kernels = vec![K1.to_string()];
    let mut pins = pins_for(&images_for(&mcm, &kernels).unwrap());
    let kmod = "reg.example/drivers/kmod:6.0.15-300.fc37.x86_64".to_string();
    pins.insert(kmod.clone(), Pin::Missing);
    let b = render(&mcm, "c", &kernels, &pins).unwrap_err();
    assert_eq!(b.reason, Reason::ImageNotFound);
    assert!(b.message.contains(&kmod));
    pins.insert(kmod, lookup_failed("connection refused"));
    let b = render(&mcm, "c", &kernels, &pins).unwrap_err();
    assert_eq!(
        (b.reason, b.message.contains("connection refused")),
        (Reason::RegistryError, true)
    );
    let none = render(&mcm, "c", &["4.18.0-1".to_string()], &pins).unwrap_err();
    assert_eq!(none.reason, Reason::NoKernelMapping);
}

#[test]
fn rendering_one_cluster_never_leaks_into_the_next() {
    let mcm = mk_mcm(MCM);
    let all = vec![K1.to_string(), K2.to_string()];
    let pins = pins_for(&images_for(&mcm, &all).unwrap());
    let a = render(&mcm, "a", &[K1.to_string()], &pins).unwrap();
    let b = render(&mcm, "b", &[K2.to_string()], &pins).unwrap();
    let lits = |w: &ManifestWork| -> Vec<String> {
        w.spec.workload.manifests[0]["spec"]["moduleLoader"]["container"]["kernelMappings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["literal"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(lits(&a), [K1]);
    assert_eq!(lits(&b), [K2]);
    assert_eq!(
        render(&mcm, "a", &[K1.to_string()], &pins).unwrap(),
        a,
        "rendering is deterministic"
    );
}

/// Every seed example, as an MCM, renders to a ManifestWork without build, sign or tag-only images.
#[test]
fn every_seed_fixture_renders_without_build_sign_or_tags() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/seeds/valid");
    let mut rendered = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: Value = serde_saphyr::from_str(&text).unwrap();
        let mcm: ManagedClusterModule = match doc["kind"].as_str() {
            Some("ManagedClusterModule") => serde_json::from_value(doc).unwrap(),
            Some("Module") => {
                let module: Module = serde_json::from_value(doc).unwrap();
                ManagedClusterModule::new(
                    &module.name_any(),
                    ManagedClusterModuleSpec {
                        module_spec: module.spec,
                        spoke_namespace: "drivers".into(),
                        selector: Default::default(),
                        rollout_strategy: None,
                    },
                )
            }
            _ => continue,
        };
        let kernels = vec![K1.to_string()];
        let pins = pins_for(&images_for(&mcm, &kernels).unwrap());
        let work = render(&mcm, "c", &kernels, &pins).unwrap_or_else(|b| panic!("{}: {b:?}", path.display()));
        let module = &work.spec.workload.manifests[0];
        let mut all = Vec::new();
        keys(module, &mut all);
        assert!(
            !all.iter().any(|k| k == "build" || k == "sign"),
            "{}: {all:?}",
            path.display()
        );
        let text = module.to_string();
        for image in text
            .split('"')
            .filter(|s| s.contains('/') && (s.contains(':') || s.contains('@')))
        {
            assert!(
                image.contains("@sha256:"),
                "{}: tag-only image {image}",
                path.display()
            );
        }
        rendered += 1;
    }
    assert_eq!(rendered, 8, "all eight seed fixtures render");
}

fn selected(name: &str, kernels: &[&str]) -> SelectedCluster {
    SelectedCluster {
        name: name.into(),
        kernels: Ok(kernels.iter().map(|k| k.to_string()).collect()),
        refused: Vec::new(),
        unreachable: None,
    }
}

#[test]
fn a_bad_kernel_is_refused_on_its_cluster_and_the_others_still_count() {
    let claim = format!("{K1}\n5.14.0-70.el9.x86/64\n5.14.0-$(id)");
    let (kernels, refused) = checked_cluster_kernels(&mk_cluster("a", &[], Some(&claim)));
    assert_eq!(kernels.unwrap(), [K1]);
    assert_eq!(refused.len(), 2, "{refused:?}");
}

#[test]
fn a_kernel_spelled_like_another_clusters_tag_is_refused_on_the_offender() {
    let mut clusters = vec![
        selected("attacker", &["5.14.0-70.el9.x86+64", "6.1.0-1"]),
        selected("victim", &["5.14.0-70.el9.x86_64"]),
        selected("only-forged", &["5.14.0-70.el9.x86+64"]),
    ];
    refuse_tag_collisions(&mut clusters);
    assert_eq!(clusters[0].kernels.as_ref().unwrap(), &["6.1.0-1"]);
    assert!(
        clusters[0].refused[0].contains("cluster victim"),
        "{:?}",
        clusters[0].refused
    );
    assert_eq!(clusters[1].kernels.as_ref().unwrap(), &["5.14.0-70.el9.x86_64"]);
    assert!(clusters[1].refused.is_empty());
    assert_eq!(
        clusters[2].kernels.as_ref().unwrap_err().reason,
        Reason::MalformedKernelClaim
    );
}
