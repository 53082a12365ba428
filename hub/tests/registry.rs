//! Digest pinning against a real CNCF distribution registry (Debian `docker-registry`), with
//! skopeo as the independent oracle for what the digest must be.

use std::{
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use kmm_api::module::TlsOptions;
use kmm_hub::registry::{DigestResolver, RegistryError};
use oci_client::secrets::RegistryAuth;

/// A registry process on a free loopback port, killed on drop.
struct Registry {
    child: Child,
    host: String,
    dir: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run `just deps`)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn start_registry(name: &str) -> Registry {
    let dir = std::env::temp_dir().join(format!("kmm-registry-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let port = free_port();
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        ),
    )
    .expect("config");
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry starts (run `just deps`)");
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "registry did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Registry {
        child,
        host: format!("127.0.0.1:{port}"),
        dir,
    }
}

/// Builds a small OCI image with umoci and pushes it with skopeo; returns skopeo's digest.
fn push_image(registry: &Registry, repo_tag: &str) -> String {
    let layout = registry
        .dir
        .join(format!("layout-{}", repo_tag.replace(['/', ':'], "-")));
    let layout = layout.display().to_string();
    run(Command::new("umoci").args(["init", "--layout", &layout]));
    run(Command::new("umoci").args(["new", "--image", &format!("{layout}:v")]));
    // A label that differs per image, so different tags get different digests.
    run(Command::new("umoci").args([
        "config",
        "--image",
        &format!("{layout}:v"),
        "--config.label",
        &format!("tag={repo_tag}"),
    ]));
    let dest = format!("docker://{}/{repo_tag}", registry.host);
    run(Command::new("skopeo").args([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{layout}:v"),
        &dest,
    ]));
    let inspect = run(Command::new("skopeo").args(["inspect", "--tls-verify=false", &dest]));
    let json: serde_json::Value = serde_json::from_str(&inspect).expect("skopeo json");
    json["Digest"].as_str().expect("Digest").to_owned()
}

const INSECURE: TlsOptions = TlsOptions {
    insecure: true,
    insecure_skip_tls_verify: false,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_tags_to_the_digest_skopeo_reports_and_caches_them() {
    let registry = start_registry("pin");
    let digest = push_image(&registry, "kmm/kmod:5.14.0");
    let resolver = DigestResolver::new(Duration::from_secs(600));
    let image = format!("{}/kmm/kmod:5.14.0", registry.host);

    let pinned = resolver
        .pin(&image, &INSECURE, &RegistryAuth::Anonymous)
        .await
        .unwrap();
    assert_eq!(pinned, format!("{}/kmm/kmod@{digest}", registry.host));
    assert_eq!(resolver.lookups(), 1);

    let again = resolver
        .pin(&image, &INSECURE, &RegistryAuth::Anonymous)
        .await
        .unwrap();
    assert_eq!(again, pinned);
    assert_eq!(resolver.lookups(), 1, "the second ask is served from the cache");

    assert_eq!(
        resolver
            .pin(&pinned, &INSECURE, &RegistryAuth::Anonymous)
            .await
            .unwrap(),
        pinned
    );
    assert_eq!(resolver.lookups(), 1, "a digest reference needs no lookup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_callers_share_one_lookup() {
    let registry = start_registry("concurrent");
    let digest = push_image(&registry, "kmm/kmod:6.1.0");
    let resolver = Arc::new(DigestResolver::new(Duration::from_secs(600)));
    let image = format!("{}/kmm/kmod:6.1.0", registry.host);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (resolver, image) = (resolver.clone(), image.clone());
            tokio::spawn(async move { resolver.pin(&image, &INSECURE, &RegistryAuth::Anonymous).await })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().unwrap().ends_with(&digest));
    }
    assert_eq!(
        resolver.lookups(),
        1,
        "200 clusters asking for one image cost one registry request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entries_are_looked_up_again() {
    let registry = start_registry("ttl");
    push_image(&registry, "kmm/kmod:v1");
    let resolver = DigestResolver::new(Duration::ZERO);
    let image = format!("{}/kmm/kmod:v1", registry.host);
    resolver
        .pin(&image, &INSECURE, &RegistryAuth::Anonymous)
        .await
        .unwrap();
    resolver
        .pin(&image, &INSECURE, &RegistryAuth::Anonymous)
        .await
        .unwrap();
    assert_eq!(resolver.lookups(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_images_and_unreachable_registries_are_told_apart() {
    let registry = start_registry("errors");
    push_image(&registry, "kmm/kmod:v1");
    let resolver = DigestResolver::new(Duration::from_secs(600));

    let missing = format!("{}/kmm/kmod:not-built-yet", registry.host);
    let err = resolver
        .pin(&missing, &INSECURE, &RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        RegistryError::NotFound {
            image: missing.clone()
        }
    );
    assert!(!err.is_transient());

    let closed = format!("127.0.0.1:{}/kmm/kmod:v1", free_port());
    let err = resolver
        .pin(&closed, &INSECURE, &RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Lookup { .. }), "{err:?}");
    assert!(err.is_transient());

    let err = resolver
        .pin("Not A Reference", &INSECURE, &RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::InvalidReference { .. }), "{err:?}");
}
