//! The kmm-hub and kmm-spoke images `scripts/images` builds (from the binaries cargo built for
//! these tests): two builds give the same digests, each image holds what its commands need (run
//! chrooted in the unpacked image, so nothing comes from this machine), and `scripts/release`
//! pushes them to a real registry and pins every image the install files name by digest.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use kmm_fleet_tests::images::{build_product_images, layout_digest, unpack_layout};
use kmm_fleet_tests::registry::Registry;
use kmm_fleet_tests::{fresh_dir, repo_root, run};
use serde_json::Value;

const IMAGES: [&str; 2] = ["kmm-hub", "kmm-spoke"];

fn dir(name: &str) -> PathBuf {
    fresh_dir(Path::new(env!("CARGO_TARGET_TMPDIR")), name).unwrap()
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The layout's `latest` manifest and image config.
fn manifest_and_config(layout: &Path) -> (Value, Value) {
    let blob = |digest: &str| {
        json(
            &layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
    };
    let manifest = blob(&layout_digest(layout).unwrap());
    let config = blob(manifest["config"]["digest"].as_str().unwrap());
    (manifest, config)
}

/// `chroot rootfs argv...`: stdout and stderr, or the failure.
fn in_image(rootfs: &Path, argv: &[&str]) -> String {
    let out = Command::new("chroot")
        .arg(rootfs)
        .args(argv)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{argv:?} in the image failed: {text}");
    text
}

/// `(name, version)` of every package in Cargo.lock.
fn locked_crates() -> BTreeSet<(String, String)> {
    let lock = std::fs::read_to_string(repo_root().join("Cargo.lock")).unwrap();
    let mut out = BTreeSet::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_owned());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            out.insert((n, v.trim_matches('"').to_owned()));
        }
    }
    out
}

/// `runAsUser` of the Deployment in `manifests/<side>/deployment.yaml`.
fn manifest_uid(side: &str) -> u64 {
    let text =
        std::fs::read_to_string(repo_root().join(format!("manifests/{side}/deployment.yaml"))).unwrap();
    let doc: Value = serde_saphyr::from_str(&text).unwrap();
    doc["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
        .as_u64()
        .unwrap()
}

#[test]
fn two_builds_give_the_same_digests_and_the_images_hold_what_their_commands_need() {
    let (a, b) = (dir("images-a"), dir("images-b"));
    build_product_images(&a, &IMAGES).unwrap();
    // A second build, later, from other folders: file times and paths differ on this machine.
    build_product_images(&b, &IMAGES).unwrap();
    for name in IMAGES {
        assert_eq!(
            layout_digest(&a.join(name)).unwrap(),
            layout_digest(&b.join(name)).unwrap(),
            "{name}: two builds of one commit differ"
        );
    }

    let head = run(Command::new("git")
        .arg("-C")
        .arg(repo_root())
        .args(["rev-parse", "HEAD"]))
    .unwrap()
    .trim()
    .to_owned();
    let crates = locked_crates();
    for (name, side) in [("kmm-hub", "hub"), ("kmm-spoke", "spoke")] {
        let layout = a.join(name);
        let (manifest, config) = manifest_and_config(&layout);
        let annotations = &manifest["annotations"];
        assert_eq!(annotations["org.opencontainers.image.revision"], head.as_str());
        assert_eq!(annotations["org.opencontainers.image.licenses"], "Apache-2.0");
        assert_eq!(annotations["org.opencontainers.image.title"], name);
        for key in ["source", "version", "created"] {
            let value = annotations[format!("org.opencontainers.image.{key}")].as_str();
            assert!(
                value.is_some_and(|v| !v.is_empty()),
                "{name}: no {key} annotation"
            );
        }
        // The non-root UID the manifests run it as, and the binary where their command is.
        let uid = manifest_uid(side);
        assert_eq!(config["config"]["User"], format!("{uid}:{uid}").as_str());
        assert_eq!(
            config["config"]["Entrypoint"][0],
            format!("/usr/local/bin/{name}").as_str()
        );
        // The same time on every layer's files: the commit's.
        assert_eq!(config["created"], annotations["org.opencontainers.image.created"]);

        let rootfs = unpack_layout(&layout, &dir(&format!("unpacked-{name}"))).unwrap();
        let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
        assert!(passwd.contains(&format!(":{uid}:{uid}:")), "{passwd}");
        // The binary runs in the image alone: its loader and libraries are there.
        let help = in_image(&rootfs, &[&format!("/usr/local/bin/{name}"), "--help"]);
        assert!(help.contains("Usage"), "{help}");

        // The SBOM lists the binary's crates at their Cargo.lock versions, and the Debian
        // packages whose files are inside, at the versions installed here.
        let sbom = json(&rootfs.join("usr/share/doc/kmm-fleet/sbom.spdx.json"));
        assert_eq!(sbom["spdxVersion"], "SPDX-2.3");
        let packages = sbom["packages"].as_array().unwrap();
        let purls: Vec<&str> = packages
            .iter()
            .map(|p| p["externalRefs"][0]["referenceLocator"].as_str().unwrap())
            .collect();
        let in_sbom: BTreeSet<(String, String)> = purls
            .iter()
            .filter_map(|p| p.strip_prefix("pkg:cargo/")?.split_once('@'))
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        assert!(in_sbom.iter().any(|(n, _)| n == name), "{name} not in its SBOM");
        assert!(
            in_sbom.iter().any(|(n, _)| n == "kube"),
            "kube not in {name}'s SBOM"
        );
        assert!(
            !in_sbom.iter().any(|(n, _)| n == "kmm-agents"),
            "test crates in {name}'s SBOM"
        );
        let stray: Vec<_> = in_sbom.difference(&crates).collect();
        assert!(
            stray.is_empty(),
            "{name}'s SBOM has crates Cargo.lock has not: {stray:?}"
        );
        let libc = run(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "libc6"])).unwrap();
        assert!(purls.contains(&format!("pkg:deb/debian/libc6@{libc}?arch=amd64").as_str()));
        for p in packages {
            assert!(p["licenseDeclared"].is_string(), "{p}");
        }
    }

    // The worker's modprobe and modinfo are the image's (kmod), as its pod runs them.
    let spoke = dir("unpacked-kmm-spoke").join("rootfs");
    let spoke = if spoke.exists() {
        spoke
    } else {
        unpack_layout(&a.join("kmm-spoke"), &dir("unpacked-kmm-spoke")).unwrap()
    };
    assert!(in_image(&spoke, &["modprobe", "--version"]).starts_with("kmod version"));
    assert!(in_image(&spoke, &["/sbin/modinfo", "--version"]).starts_with("kmod version"));
    let kmod = run(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "kmod"])).unwrap();
    let sbom = std::fs::read_to_string(spoke.join("usr/share/doc/kmm-fleet/sbom.spdx.json")).unwrap();
    assert!(sbom.contains(&format!("pkg:deb/debian/kmod@{kmod}?arch=amd64")));
    // The hub reaches registries over TLS: the CA bundle is in its image.
    let hub = unpack_layout(&a.join("kmm-hub"), &dir("unpacked-kmm-hub-ca")).unwrap();
    assert!(
        hub.join("etc/ssl/certs/ca-certificates.crt")
            .metadata()
            .unwrap()
            .len()
            > 1000
    );
}

/// Every image reference of a rendered object: container images, `RELATED_IMAGE_*` env values
/// and ConfigMap settings named `*_IMAGE`, wherever they are nested (the Policy wraps objects).
fn image_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("image", Value::String(s)) => out.push(s.clone()),
                    (k, Value::String(s)) if k.ends_with("_IMAGE") => out.push(s.clone()),
                    _ => image_refs(v, out),
                }
            }
            if map
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.starts_with("RELATED_IMAGE_"))
                && let Some(Value::String(s)) = map.get("value")
            {
                out.push(s.clone());
            }
        }
        Value::Array(items) => items.iter().for_each(|v| image_refs(v, out)),
        _ => {}
    }
}

fn yaml_docs(dir: &Path, out: &mut Vec<(PathBuf, Value)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_docs(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_saphyr::from_multiple::<Value>(&text).unwrap() {
                out.push((path.clone(), doc));
            }
        }
    }
}

#[test]
fn a_release_pushes_both_images_and_pins_every_image_reference_by_digest() {
    let work = dir("release");
    let registry = Registry::start(&work.join("registry")).unwrap();
    // The build Jobs' image, named by tag: the release resolves it in its registry.
    let stand_in = work.join("buildah-rootfs");
    std::fs::create_dir_all(stand_in.join("etc")).unwrap();
    std::fs::write(stand_in.join("etc/buildah-stand-in"), "x").unwrap();
    let buildah_digest = registry.push_dir("buildah/stable:v1.39", &stand_in).unwrap();

    let images_out = work.join("images");
    let out = work.join("release-manifests");
    let bin_dir = kmm_fleet_tests::workspace_bin("kmm-spoke").unwrap();
    let report = run(Command::new(repo_root().join("scripts/release"))
        .args(["0.2.0-test", &format!("{}/kmm-fleet", registry.host)])
        .env("KMM_IMAGE_PROFILE", "debug")
        .env("KMM_IMAGE_NO_BUILD", "1")
        .env("KMM_IMAGE_BIN_DIR", bin_dir.parent().unwrap())
        .env("KMM_IMAGE_OUT", &images_out)
        .env("KMM_RELEASE_OUT", &out)
        .env("KMM_RELEASE_TLS_VERIFY", "false")
        .env(
            "KMM_BUILDAH_IMAGE",
            format!("{}/buildah/stable:v1.39", registry.host),
        ))
    .unwrap();

    // Pushed once each (the registry's access log), and what the registry stores is the layout.
    let mut pinned = BTreeSet::new();
    for name in IMAGES {
        let repo = format!("kmm-fleet/{name}");
        assert_eq!(registry.manifest_pushes(&repo), 1, "{name} pushes");
        let digest = registry.digest(&format!("{repo}:0.2.0-test")).unwrap();
        assert_eq!(digest, layout_digest(&images_out.join(name)).unwrap());
        let (manifest, _) = manifest_and_config(&images_out.join(name));
        assert_eq!(
            manifest["annotations"]["org.opencontainers.image.version"],
            "0.2.0-test"
        );
        pinned.insert(format!("{}/{repo}@{digest}", registry.host));
    }
    pinned.insert(format!("{}/buildah/stable@{buildah_digest}", registry.host));
    assert!(
        report.contains(&format!("{}/buildah/stable@{buildah_digest}", registry.host)),
        "{report}"
    );

    let mut docs = Vec::new();
    yaml_docs(&out, &mut docs);
    let mut refs = Vec::new();
    for (path, doc) in &docs {
        let mut found = Vec::new();
        image_refs(doc, &mut found);
        for r in found {
            assert!(r.contains("@sha256:"), "{}: {r} is not pinned", path.display());
            refs.push(r);
        }
    }
    // Each pinned image is named (the Deployments, RELATED_IMAGE_WORKER, KMM_HUB_IMAGE,
    // KMM_HUB_BUILDAH_IMAGE, the Policy's copy of the spoke), and nothing else is.
    let named: BTreeSet<String> = refs.iter().cloned().collect();
    assert_eq!(named, pinned);
    assert!(refs.len() >= 7, "{refs:#?}");
    // The repository's own manifests keep their placeholders.
    let hub_config = std::fs::read_to_string(repo_root().join("manifests/hub/config.yaml")).unwrap();
    assert!(!hub_config.contains("@sha256:"));
}
