//! A CNCF distribution registry (Debian `docker-registry`) on a free loopback port, and images
//! pushed to it with umoci and skopeo.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use kmm_test_kit::KilledOnDrop;

/// A registry process, killed on drop.
pub struct Registry {
    child: KilledOnDrop,
    /// `127.0.0.1:<port>`.
    pub host: String,
    /// Its config, data, log, and the layouts of the images pushed.
    pub dir: PathBuf,
    log: PathBuf,
}

impl Registry {
    /// Starts a registry storing its data under `dir`.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_at(dir, crate::free_port()?)
    }

    /// [`Self::start`] on `port` (e.g. one a test kept free while the registry was "down").
    pub fn start_at(dir: &Path, port: u16) -> anyhow::Result<Self> {
        Self::serve(dir, port, "", "")
    }

    /// [`Self::start`] with TLS (a self-signed certificate for 127.0.0.1) and htpasswd
    /// authentication of `user` with `password`.
    pub fn start_secure(dir: &Path, user: &str, password: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (cert, key, htpasswd) = (dir.join("tls.crt"), dir.join("tls.key"), dir.join("htpasswd"));
        crate::run(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-new", "-nodes", "-batch", "-days", "2", "-newkey", "rsa:2048",
                ])
                .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        )?;
        // bcrypt, as the registry requires (apache2-utils).
        let entry = crate::run(Command::new("htpasswd").args(["-nbB", "-C", "4", user, password]))?;
        std::fs::write(&htpasswd, format!("{}\n", entry.trim()))?;
        Self::serve(
            dir,
            crate::free_port()?,
            &format!(
                "auth:\n  htpasswd:\n    realm: kmm-test\n    path: {}\n",
                htpasswd.display()
            ),
            &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ),
        )
    }

    /// Serves `dir` on `port`, with `auth` (a top-level config section) and `tls` (under `http`).
    fn serve(dir: &Path, port: u16, auth: &str, tls: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n{auth}http:\n  addr: 127.0.0.1:{port}\n{tls}",
                dir.join("data").display()
            ),
        )?;
        let log = dir.join("registry.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting docker-registry (run `just deps`)")?;
        let mut registry = Self {
            child: KilledOnDrop::new(child),
            host: format!("127.0.0.1:{port}"),
            dir: dir.to_path_buf(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || registry.child.try_wait()?.is_some() {
                bail!(
                    "the registry did not listen on {port}; see {}",
                    registry.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }

    /// Manifest requests (GET or HEAD) answered for `repo`, from the access log.
    pub fn manifest_requests(&self, repo: &str) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let uri = format!("/v2/{repo}/manifests/");
        log.lines()
            .filter(|l| l.contains("response completed") && l.contains(&uri))
            .count()
    }

    /// Manifest requests (GET or HEAD) answered for one tag or digest of `repo`.
    pub fn manifest_requests_of(&self, repo: &str, reference: &str) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let uri = format!("/v2/{repo}/manifests/{reference}");
        log.lines()
            .filter(|l| l.contains("response completed") && l.contains(&uri))
            .count()
    }

    /// Manifests pushed (PUT) to `repo`, from the access log: one per image written.
    pub fn manifest_pushes(&self, repo: &str) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let uri = format!("/v2/{repo}/manifests/");
        log.lines()
            .filter(|l| {
                l.contains("response completed") && l.contains(&uri) && l.contains("http.request.method=PUT")
            })
            .count()
    }

    /// The digest of `repo:tag` per skopeo, if it exists.
    pub fn digest(&self, repo_tag: &str) -> Option<String> {
        let out = crate::run(Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{}/{repo_tag}", self.host),
        ]))
        .ok()?;
        let json: serde_json::Value = serde_json::from_str(&out).ok()?;
        json["Digest"].as_str().map(str::to_owned)
    }

    /// Pushes the folder `root` as a one-layer image `repo_tag`; its digest (per skopeo).
    pub fn push_dir(&self, repo_tag: &str, root: &Path) -> anyhow::Result<String> {
        let image = self.new_layout(repo_tag)?;
        for entry in std::fs::read_dir(root)? {
            let entry = entry?.path();
            let name = entry.file_name().context("an entry has a name")?;
            crate::run(
                Command::new("umoci")
                    .args(["insert", "--rootless", "--image", &image])
                    .arg(&entry)
                    .arg(Path::new("/").join(name)),
            )?;
        }
        self.copy_in(&image, repo_tag)
    }

    /// Pushes an image without layers, labelled with `repo_tag` (so every tag has its own
    /// digest); its digest.
    pub fn push_labelled(&self, repo_tag: &str) -> anyhow::Result<String> {
        let image = self.new_layout(repo_tag)?;
        crate::run(Command::new("umoci").args([
            "config",
            "--image",
            &image,
            "--config.label",
            &format!("tag={repo_tag}"),
        ]))?;
        self.copy_in(&image, repo_tag)
    }

    /// A fresh OCI layout with an empty image `<layout>:v` for `repo_tag`; that image's name.
    fn new_layout(&self, repo_tag: &str) -> anyhow::Result<String> {
        let layout =
            crate::fresh_dir(&self.dir.join("layouts"), &repo_tag.replace(['/', ':'], "-"))?.join("oci");
        let image = format!("{}:v", layout.display());
        crate::run(Command::new("umoci").args(["init", "--layout"]).arg(&layout))?;
        crate::run(Command::new("umoci").args(["new", "--image", &image]))?;
        Ok(image)
    }

    /// Copies the layout image `image` to `repo_tag` here; its digest.
    fn copy_in(&self, image: &str, repo_tag: &str) -> anyhow::Result<String> {
        crate::run(
            Command::new("skopeo")
                .args(["copy", "--dest-tls-verify=false"])
                .arg(format!("oci:{image}"))
                .arg(format!("docker://{}/{repo_tag}", self.host)),
        )?;
        self.digest(repo_tag)
            .with_context(|| format!("{repo_tag} was pushed but cannot be inspected"))
    }
}
