//! Test support shared by the hub's integration tests: a real CNCF distribution registry
//! (Debian `docker-registry`) on a free loopback port, and images pushed to it with umoci/skopeo.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod fleet;
pub mod kmod;

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A registry process on a free loopback port, killed on drop.
pub struct Registry {
    child: Child,
    pub host: String,
    pub dir: PathBuf,
    log: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// [`kmm_test_kit::run`]; a failure fails the test.
pub fn run(cmd: &mut Command) -> String {
    kmm_test_kit::run(cmd).unwrap()
}

pub fn start_registry(name: &str) -> Registry {
    start_registry_at(name, kmm_test_kit::free_port().unwrap())
}

/// A registry on the given port (e.g. one a test kept free to simulate the registry being down).
pub fn start_registry_at(name: &str, port: u16) -> Registry {
    let dir = std::env::temp_dir().join(format!("kmm-registry-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        ),
    )
    .expect("config");
    let log = dir.join("registry.log");
    let log_file = std::fs::File::create(&log).expect("registry log");
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log_file)
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
        log,
    }
}

impl Registry {
    /// Manifest requests (GET or HEAD) the registry has answered for `repo`, from its access log.
    pub fn manifest_requests(&self, repo: &str) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let uri = format!("/v2/{repo}/manifests/");
        log.lines()
            .filter(|l| l.contains("response completed") && l.contains(&uri))
            .count()
    }
}

/// Builds a small OCI image with umoci and pushes it with skopeo; returns skopeo's digest.
pub fn push_image(registry: &Registry, repo_tag: &str) -> String {
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
