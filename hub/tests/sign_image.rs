//! `kmm-hub sign-image` end to end against a real CNCF registry: an image built with umoci
//! holding a compiled `.ko` is pushed with skopeo, signed by the command, and the pushed image
//! is read back with skopeo and umoci; its modules are checked with modinfo and against
//! Debian's sign-file.
#![allow(clippy::unwrap_used)]

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use support::kmod::{TestKey, make_rsa_key, modinfo, output, sign_with_sign_file, temp_dir, unsigned_module};
use support::{Registry, run, start_registry};

const KVER: &str = "6.1.0-56-cloud-amd64";

fn module_path() -> String {
    format!("opt/lib/modules/{KVER}/kmm_sign_test.ko")
}

/// Builds an OCI layout with one layer per `layers` entry (each changes the unpacked rootfs
/// before umoci repacks it) and pushes it as `repo_tag`.
fn push_layers(registry: &Registry, dir: &Path, repo_tag: &str, layers: &[&dyn Fn(&Path)]) {
    let layout = dir.join("layout").display().to_string();
    let image = format!("{layout}:v");
    let bundle = dir.join("bundle");
    run(Command::new("umoci").args(["init", "--layout", &layout]));
    run(Command::new("umoci").args(["new", "--image", &image]));
    for change in layers {
        let _ = std::fs::remove_dir_all(&bundle);
        run(Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle));
        change(&bundle.join("rootfs"));
        run(Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle));
    }
    run(Command::new("skopeo").args([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{image}"),
        &format!("docker://{}/{repo_tag}", registry.host),
    ]));
}

/// Two layers: the module and a text file, then a second module and a file that a whiteout
/// deletes again; pushed as `repo_tag`.
fn push_module_image(registry: &Registry, dir: &Path, repo_tag: &str) {
    let modules = |rootfs: &Path| rootfs.join(format!("opt/lib/modules/{KVER}"));
    push_layers(
        registry,
        dir,
        repo_tag,
        &[
            &|rootfs| {
                let modules = modules(rootfs);
                std::fs::create_dir_all(&modules).unwrap();
                std::fs::write(modules.join("kmm_sign_test.ko"), unsigned_module()).unwrap();
                std::fs::write(modules.join("modules.dep"), "kmm_sign_test.ko:\n").unwrap();
                std::fs::write(modules.join("removed.ko"), unsigned_module()).unwrap();
            },
            &|rootfs| {
                let modules = modules(rootfs);
                std::fs::create_dir_all(modules.join("extra")).unwrap();
                std::fs::write(modules.join("extra/second.ko"), unsigned_module()).unwrap();
                std::fs::remove_file(modules.join("removed.ko")).unwrap();
            },
        ],
    );
}

fn sign_image(
    registry: &Registry,
    key: &TestKey,
    from: &str,
    to: &str,
    globs: &[&str],
    extra: &[&str],
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kmm-hub"));
    cmd.arg("sign-image")
        .args(["--unsigned-image", &format!("{}/{from}", registry.host)])
        .args(["--image", &format!("{}/{to}", registry.host)])
        .arg("--key")
        .arg(&key.pkcs8_pem)
        .arg("--cert")
        .arg(&key.cert_der)
        .args(["--unsigned-image-insecure", "--insecure"]);
    for glob in globs {
        cmd.args(["--file-to-sign", glob]);
    }
    output(cmd.args(extra))
}

/// Copies the image to a local OCI layout and unpacks it with umoci: the filesystem a node
/// would see. Returns the rootfs and the skopeo manifest of the copy.
fn unpack_pushed(registry: &Registry, dir: &Path, repo_tag: &str) -> (PathBuf, serde_json::Value) {
    let layout = dir.join("pulled").display().to_string();
    run(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/{repo_tag}", registry.host),
        &format!("oci:{layout}:v"),
    ]));
    let bundle = dir.join("pulled-bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &format!("{layout}:v")])
        .arg(&bundle));
    let inspect = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{}/{repo_tag}", registry.host),
    ]));
    (bundle.join("rootfs"), serde_json::from_str(&inspect).unwrap())
}

/// The paths in the last layer of the pushed image (a gzip tar).
fn last_layer_paths(registry: &Registry, dir: &Path, repo_tag: &str) -> Vec<String> {
    let out = dir.join("blobs");
    run(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/{repo_tag}", registry.host),
        &format!("dir:{}", out.display()),
    ]));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let last = manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let blob = out.join(last.trim_start_matches("sha256:"));
    let listing = run(Command::new("tar").arg("-tzf").arg(&blob));
    let mut paths: Vec<String> = listing.lines().map(str::to_owned).collect();
    paths.sort();
    paths
}

#[test]
fn sign_image_signs_the_modules_of_an_image_in_a_new_layer_and_pushes_it() {
    let registry = start_registry("sign-image");
    let tmp = temp_dir("image");
    let dir = tmp.path();
    push_module_image(&registry, dir, "kmod:unsigned");
    let key = make_rsa_key(dir, "key", 2048, "kmm-fleet image signer");
    let oracle = dir.join("oracle.ko");
    std::fs::write(&oracle, unsigned_module()).unwrap();
    sign_with_sign_file("sha256", &key.pkcs8_pem, &key.cert_der, &oracle);
    let oracle = std::fs::read(oracle).unwrap();

    let globs = [
        &format!("/opt/lib/modules/{KVER}/*.ko") as &str,
        &format!("/opt/lib/modules/{KVER}/extra/*.ko"),
        "/opt/lib/modules/*/nothing-*.ko",
    ];
    let out = sign_image(&registry, &key, "kmod:unsigned", "kmod:signed", &globs, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        stderr.contains("warning: no file matches /opt/lib/modules/*/nothing-*.ko"),
        "{stderr}"
    );

    // The printed digest is the one the registry serves, as skopeo computes it.
    let inspect = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}/kmod:signed", registry.host),
    ]));
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["Digest"].as_str().unwrap(), printed);
    let unsigned: serde_json::Value = serde_json::from_str(&run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}/kmod:unsigned", registry.host),
    ])))
    .unwrap();
    let layers = |v: &serde_json::Value| v["Layers"].as_array().unwrap().clone();
    assert_eq!(
        layers(&inspect).len(),
        layers(&unsigned).len() + 1,
        "one new layer"
    );
    assert_eq!(
        layers(&inspect)[..layers(&unsigned).len()],
        layers(&unsigned)[..],
        "the old layers are reused"
    );

    // The new layer holds exactly the signed modules (not the deleted one, not other files).
    let paths = last_layer_paths(&registry, dir, "kmod:signed");
    assert_eq!(
        paths,
        vec![format!("opt/lib/modules/{KVER}/extra/second.ko"), module_path(),]
    );

    // The filesystem the image unpacks to has the signed modules, byte-identical to sign-file.
    let (rootfs, _) = unpack_pushed(&registry, dir, "kmod:signed");
    for module in [module_path(), format!("opt/lib/modules/{KVER}/extra/second.ko")] {
        let path = rootfs.join(&module);
        assert!(
            std::fs::read(&path).unwrap() == oracle,
            "{module} differs from sign-file's"
        );
        assert_eq!(modinfo(&path, "signer"), key.common_name);
        assert_eq!(modinfo(&path, "sig_key").trim_start_matches("00:"), key.serial);
        assert_eq!(modinfo(&path, "sig_hashalgo"), "sha256");
    }
    assert_eq!(
        std::fs::read_to_string(rootfs.join(format!("opt/lib/modules/{KVER}/modules.dep"))).unwrap(),
        "kmm_sign_test.ko:\n"
    );
    assert!(!rootfs.join(format!("opt/lib/modules/{KVER}/removed.ko")).exists());

    // The same inputs push the same image again (nothing depends on the clock), here with
    // the settings from a config file.
    let config = dir.join("sign.yaml");
    std::fs::write(
        &config,
        format!(
            "unsignedImage: {host}/kmod:unsigned\nimage: {host}/kmod:signed-again\nfilesToSign:\n{files}key: {key}\ncert: {cert}\nunsignedImageRegistryTLS: {{insecure: true}}\nregistryTLS: {{insecure: true}}\n",
            host = registry.host,
            files = globs.iter().map(|g| format!("  - \"{g}\"\n")).collect::<String>(),
            key = key.pkcs8_pem.display(),
            cert = key.cert_der.display(),
        ),
    )
    .unwrap();
    let again = output(
        Command::new(env!("CARGO_BIN_EXE_kmm-hub"))
            .arg("sign-image")
            .arg("--config")
            .arg(&config),
    );
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), printed);
}

#[test]
fn sign_image_refuses_signed_modules_and_images_with_nothing_to_sign() {
    let registry = start_registry("sign-image-errors");
    let tmp = temp_dir("image-errors");
    let dir = tmp.path();
    push_module_image(&registry, dir, "kmod:unsigned");
    let key = make_rsa_key(dir, "key", 2048, "kmm-fleet first");
    let other = make_rsa_key(dir, "other", 2048, "kmm-fleet second");
    let glob = format!("/opt/lib/modules/{KVER}/*.ko");

    let out = sign_image(
        &registry,
        &key,
        "kmod:unsigned",
        "kmod:none",
        &["/lib/modules/*/*.ko"],
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no file in") && stderr.contains("/lib/modules/*/*.ko"),
        "{stderr}"
    );

    let out = sign_image(&registry, &key, "kmod:unsigned", "kmod:signed", &[&glob], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Signing the signed image again is refused, and nothing is pushed ...
    let out = sign_image(&registry, &other, "kmod:signed", "kmod:resigned", &[&glob], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already signed") && stderr.contains("kmm_sign_test.ko"),
        "{stderr}"
    );
    let missing = output(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}/kmod:resigned", registry.host),
    ]));
    assert!(!missing.status.success(), "a refused image is not pushed");

    // ... unless replacing is asked for: then the new key's signature replaces the old one.
    let out = sign_image(
        &registry,
        &other,
        "kmod:signed",
        "kmod:resigned",
        &[&glob],
        &["--replace"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (rootfs, _) = unpack_pushed(&registry, dir, "kmod:resigned");
    let path = rootfs.join(module_path());
    assert_eq!(modinfo(&path, "signer"), other.common_name);
    let oracle = dir.join("oracle.ko");
    std::fs::write(&oracle, unsigned_module()).unwrap();
    sign_with_sign_file("sha256", &other.pkcs8_pem, &other.cert_der, &oracle);
    assert!(std::fs::read(&path).unwrap() == std::fs::read(&oracle).unwrap());

    // A bad key fails before anything is pulled or pushed.
    let out = sign_image(
        &registry,
        &TestKey {
            pkcs8_pem: other.pkcs8_pem.clone(),
            ..make_rsa_key(dir, "third", 2048, "third")
        },
        "kmod:unsigned",
        "kmod:bad",
        &[&glob],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match the certificate"));
}

#[test]
fn sign_image_pushes_over_tls_with_the_credentials_of_a_docker_config() {
    use base64::Engine;
    let plain = start_registry("sign-image-tls-source");
    let tmp = temp_dir("image-tls");
    let dir = tmp.path();
    push_module_image(&plain, dir, "kmod:unsigned");
    let secure = Registry::start_secure(&dir.join("secure-registry"), "robot", "s3cret").unwrap();
    let key = make_rsa_key(dir, "key", 2048, "kmm-fleet tls signer");
    let auth = base64::engine::general_purpose::STANDARD.encode("robot:s3cret");
    let docker_config = dir.join("config.json");
    std::fs::write(
        &docker_config,
        format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, secure.host),
    )
    .unwrap();
    let glob = format!("/opt/lib/modules/{KVER}/*.ko");
    let sign = |extra: &[&str]| {
        output(
            Command::new(env!("CARGO_BIN_EXE_kmm-hub"))
                .arg("sign-image")
                .args(["--unsigned-image", &format!("{}/kmod:unsigned", plain.host)])
                .args(["--image", &format!("{}/kmod:signed", secure.host)])
                .arg("--key")
                .arg(&key.pkcs8_pem)
                .arg("--cert")
                .arg(&key.cert_der)
                .args(["--file-to-sign", &glob, "--unsigned-image-insecure"])
                .args(extra),
        )
    };

    // The self-signed certificate is refused unless told to skip the verification ...
    let out = sign(&["--docker-config", docker_config.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&secure.host) && stderr.to_lowercase().contains("certificate"),
        "{stderr}"
    );

    // ... and without the credentials the registry refuses the push.
    let out = sign(&["--insecure-skip-tls-verify"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}/kmod:signed", secure.host)) && stderr.contains("401"),
        "{stderr}"
    );

    let out = sign(&[
        "--insecure-skip-tls-verify",
        "--docker-config",
        docker_config.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let inspect = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--creds",
        "robot:s3cret",
        &format!("docker://{}/kmod:signed", secure.host),
    ]));
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["Digest"].as_str().unwrap(), printed);
}

#[test]
fn sign_image_signs_the_files_hard_links_and_symlinks_unpack_to() {
    let registry = start_registry("sign-image-links");
    let tmp = temp_dir("image-links");
    let dir = tmp.path();
    let modules = format!("opt/lib/modules/{KVER}");
    push_layers(
        &registry,
        dir,
        "links:unsigned",
        &[
            &|rootfs| {
                let lib = rootfs.join("usr/lib/vendor");
                std::fs::create_dir_all(&lib).unwrap();
                std::fs::write(lib.join("real.ko"), unsigned_module()).unwrap();
            },
            &|rootfs| {
                let dir = rootfs.join(&modules);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("own.ko"), unsigned_module()).unwrap();
                // Hard links (umoci writes them as tar link entries): to a file of a lower
                // layer and to one of this layer.
                std::fs::hard_link(rootfs.join("usr/lib/vendor/real.ko"), dir.join("hard.ko")).unwrap();
                std::fs::hard_link(dir.join("own.ko"), dir.join("own-hard.ko")).unwrap();
                std::os::unix::fs::symlink("../../../../usr/lib/vendor/real.ko", dir.join("soft.ko"))
                    .unwrap();
            },
        ],
    );
    let key = make_rsa_key(dir, "key", 2048, "kmm-fleet link signer");
    let out = sign_image(
        &registry,
        &key,
        "links:unsigned",
        "links:signed",
        &[&format!("/{modules}/*.ko")],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Every selected name, read as a node will read it, is a signed module.
    let (rootfs, _) = unpack_pushed(&registry, dir, "links:signed");
    for name in ["own.ko", "own-hard.ko", "hard.ko", "soft.ko"] {
        let path = rootfs.join(&modules).join(name);
        assert_eq!(modinfo(&path, "signer"), key.common_name, "{name}");
    }
    assert!(
        std::fs::symlink_metadata(rootfs.join(&modules).join("soft.ko"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the symlink stays a symlink; the file it names is signed"
    );

    // A selected name that resolves to nothing fails the command, and nothing is pushed.
    let tmp = temp_dir("image-dangling");
    let dir = tmp.path();
    push_layers(
        &registry,
        dir,
        "dangling:unsigned",
        &[&|rootfs| {
            let dir = rootfs.join("m");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("a.ko"), unsigned_module()).unwrap();
            std::os::unix::fs::symlink("gone.ko", dir.join("b.ko")).unwrap();
        }],
    );
    let out = sign_image(
        &registry,
        &key,
        "dangling:unsigned",
        "dangling:signed",
        &["/m/*.ko"],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("/m/b.ko resolves to /m/gone.ko, which is not in the image"),
        "{stderr}"
    );
    let inspect = output(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}/dangling:signed", registry.host),
    ]));
    assert!(!inspect.status.success(), "nothing was pushed");
}
