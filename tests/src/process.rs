//! `kmm-hub run` and `kmm-spoke run` as child processes, each with its kubeconfig, a log file
//! and its metrics/health port; killed on drop.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use kmm_test_kit::{KilledOnDrop, Wait};

/// A running product binary.
pub struct Process {
    child: KilledOnDrop,
    /// Port of `/metrics`, `/healthz`, `/readyz`.
    pub port: u16,
    /// Its stderr (the log).
    pub log: PathBuf,
    name: String,
}

/// How to start one.
pub struct Launch<'a> {
    /// `kmm-hub` or `kmm-spoke`.
    pub binary: &'a str,
    pub args: Vec<String>,
    pub kubeconfig: &'a Path,
    /// Folder of the log file.
    pub dir: &'a Path,
    /// Log file name (without `.log`).
    pub name: &'a str,
    pub env: Vec<(String, String)>,
}

impl Process {
    pub fn start(launch: Launch<'_>) -> anyhow::Result<Self> {
        let port = crate::free_port()?;
        let log = launch.dir.join(format!("{}.log", launch.name));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(crate::workspace_bin(launch.binary)?)
            .args(&launch.args)
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", launch.kubeconfig)
            .env("KMM_LOG_FORMAT", "text")
            .env(
                "RUST_LOG",
                std::env::var("KMM_E2E_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
            )
            .envs(launch.env)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", launch.binary))?;
        Ok(Self {
            child: KilledOnDrop::new(child),
            port,
            log,
            name: launch.name.to_owned(),
        })
    }

    /// Kills it at once (SIGKILL), as a crashed or evicted pod.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `within` for the exit; its exit code, if it exited.
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Freezes it (SIGSTOP): its connections stay open but nothing is read or sent.
    pub fn pause(&self) -> anyhow::Result<()> {
        crate::run(Command::new("kill").args(["-STOP", &self.child.id().to_string()])).map(drop)
    }

    /// Ends [`Self::pause`] (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        crate::run(Command::new("kill").args(["-CONT", &self.child.id().to_string()])).map(drop)
    }

    /// The last `lines` lines of its log, titled.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_titled(&self.name, &self.log, lines)
    }

    /// The body of a 200 answer to `GET path`.
    pub async fn http_get(&self, path: &str) -> Option<String> {
        http_get(self.port, path).await
    }

    /// The value of the first metric sample whose line starts with `series`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.http_get("/metrics").await?;
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    pub async fn ready(&self) -> bool {
        self.http_get("/readyz").await.is_some()
    }

    /// Waits (up to 2 minutes) until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let name = format!("{} ready", self.name);
        self.wait(&name, Duration::from_secs(120))
            .eventually(|| self.ready())
            .await;
    }

    /// Process id, e.g. to read its peak memory from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A wait whose failure carries the tail of this log.
    pub fn wait(&self, what: &str, timeout: Duration) -> Wait<'_> {
        Wait::new(what, timeout).context(|| self.log_tail(40))
    }
}

/// `GET http://127.0.0.1:<port><path>`: the body when the answer is 200.
pub async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut buf))
        .await
        .ok()?
        .ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// How a rendered Deployment runs its binary: the first container's command, args and
/// environment (as the kubelet sets it for one pod), its metrics address on a free loopback port.
pub struct Deployed {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Port of `/metrics`, `/healthz`, `/readyz`.
    pub port: u16,
}

impl Deployed {
    /// The Deployment `name` of the kustomization in `dir`, for pod `pod`, its metrics address
    /// (the variable `metrics_env`) moved to a free port.
    pub fn render(dir: &Path, name: &str, pod: &str, metrics_env: &str) -> anyhow::Result<Self> {
        let docs = crate::manifests::kustomize(dir)?;
        let deployment = crate::manifests::find(&docs, "Deployment", name)?;
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let strings = |v: &serde_json::Value| -> anyhow::Result<Vec<String>> {
            v.as_array()
                .context("a list")?
                .iter()
                .map(|a| a.as_str().map(str::to_owned).context("strings"))
                .collect()
        };
        let mut env = crate::manifests::container_env(&docs, deployment, pod)?;
        let port = crate::free_port()?;
        env.insert(metrics_env.to_owned(), format!("127.0.0.1:{port}"));
        Ok(Self {
            command: strings(&container["command"])?.join(" "),
            args: strings(&container["args"])?,
            env,
            port,
        })
    }

    /// Starts `binary` as deployed (only its environment, and `KUBECONFIG`), its output in
    /// `log`, and waits (up to 20 s) until it answers 200 on `/healthz` and `/readyz`, then kills
    /// it; its log, or why not (it exited, or never got ready, with the log).
    pub async fn run_until_ready(
        &self,
        binary: &Path,
        kubeconfig: &Path,
        log: &Path,
    ) -> anyhow::Result<String> {
        let mut child = Command::new(binary)
            .args(&self.args)
            .env_clear()
            .envs(&self.env)
            .env("KUBECONFIG", kubeconfig)
            .stdout(std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?)
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let text = || std::fs::read_to_string(log).unwrap_or_default();
        let mut ready = false;
        for _ in 0..200 {
            if let Ok(Some(status)) = child.try_wait() {
                anyhow::bail!("exited ({status}):\n{}", text());
            }
            if http_get(self.port, "/healthz").await.is_some()
                && http_get(self.port, "/readyz").await.is_some()
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        anyhow::ensure!(ready, "never healthy and ready:\n{}", text());
        Ok(text())
    }
}

/// Any other long-running child process (the control planes' OCM agents): its arguments, a
/// log file with stdout and stderr, killed on drop.
pub struct Daemon {
    child: KilledOnDrop,
    pub log: PathBuf,
    name: String,
}

impl Daemon {
    /// Starts `binary args...` with its output appended to `<dir>/<name>.log`.
    pub fn start(binary: &Path, args: &[String], dir: &Path, name: &str) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(binary)
            .args(args)
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {} {}", binary.display(), args.join(" ")))?;
        Ok(Self {
            child: KilledOnDrop::new(child),
            log,
            name: name.to_owned(),
        })
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last `lines` lines of its log, titled.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_titled(&self.name, &self.log, lines)
    }
}

/// The last `lines` lines of the file at `path`, under a title naming `name` and the file.
pub fn tail_titled(name: &str, path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!("--- {name} ({}) ---\n{}", path.display(), all[start..].join("\n"))
}
