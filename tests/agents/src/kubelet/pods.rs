//! The exec runner: a pod's first container run on this machine, with its ConfigMap and Secret
//! volumes written out and its termination message file stood in for.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::ResourceExt;

use super::script::Outcome;
pub use super::status::{MAX_TERMINATION_MESSAGE, tail};
use super::status::{log_tail, termination_message};

/// What running a pod's first container on this machine produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// stdout followed by stderr.
    pub output: String,
    /// The final outcome: `Succeeded` for exit 0, else `Failed` with the output's tail.
    pub outcome: Outcome,
}

/// A container's argv: its command followed by its args (the image's entrypoint is not known
/// here, so a container without a command has none).
pub fn argv(c: &Container) -> Vec<String> {
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .cloned()
        .collect()
}

/// The argv and literal env of the pod's first container.
pub fn exec_command(pod: &Pod) -> Result<(Vec<String>, BTreeMap<String, String>), String> {
    let c = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .ok_or_else(|| format!("pod {} has no container", pod.name_any()))?;
    let argv = argv(c);
    if argv.is_empty() {
        return Err(format!("container {} has no command to run", c.name));
    }
    let env = c
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    Ok((argv, env))
}

/// Writes the ConfigMap and Secret volumes the pod's first container mounts under
/// `root/<pod uid>/<mount path>`; returns `(mount path, host path)` pairs, longest first.
pub async fn materialize_volumes(
    client: &kube::Client,
    pod: &Pod,
    root: &std::path::Path,
) -> Result<Vec<(String, String)>, String> {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let ns = pod.namespace().unwrap_or_default();
    let spec = pod.spec.as_ref().ok_or("pod without spec")?;
    let Some(container) = spec.containers.first() else {
        return Ok(Vec::new());
    };
    let dir = root.join(pod.uid().unwrap_or_else(|| pod.name_any()));
    let mut pairs = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let Some(vol) = spec.volumes.iter().flatten().find(|v| v.name == m.name) else {
            continue;
        };
        let host = dir.join(m.mount_path.trim_start_matches('/'));
        std::fs::create_dir_all(&host).map_err(|e| format!("creating {}: {e}", host.display()))?;
        let files: Vec<(String, Vec<u8>)> = if let Some(cm) = &vol.config_map {
            let got = kube::Api::<ConfigMap>::namespaced(client.clone(), &ns)
                .get(&cm.name)
                .await
                .map_err(|e| format!("configmap {}: {e}", cm.name))?;
            got.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect()
        } else if let Some(sec) = &vol.secret {
            let name = sec.secret_name.clone().unwrap_or_default();
            let got = kube::Api::<Secret>::namespaced(client.clone(), &ns)
                .get(&name)
                .await
                .map_err(|e| format!("secret {name}: {e}"))?;
            got.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        } else {
            continue;
        };
        let items = vol
            .config_map
            .as_ref()
            .and_then(|c| c.items.clone())
            .or_else(|| vol.secret.as_ref().and_then(|s| s.items.clone()));
        for (key, bytes) in files {
            let path = match &items {
                Some(items) => match items.iter().find(|i| i.key == key) {
                    Some(i) => i.path.clone(),
                    None => continue,
                },
                None => key.clone(),
            };
            let file = host.join(&path);
            std::fs::write(&file, bytes).map_err(|e| format!("writing {}: {e}", file.display()))?;
        }
        pairs.push((m.mount_path.clone(), host.display().to_string()));
    }
    pairs.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
    Ok(pairs)
}

/// Points every mount path at its materialized folder, in one pass (a replaced path is never
/// rewritten again), longest mount path first. A mount path is only recognised as a whole path:
/// at the start of the text or after a character that cannot end a path (`=`, `:`, `-`, a
/// space...), and followed by the end, `/` or such a character (`/tmp` is not rewritten inside
/// `/work/target/tmp` nor in `/tmpfs`).
pub(super) fn rewrite(text: &str, mounts: &[(String, String)]) -> String {
    let in_path = |c: char| c.is_alphanumeric() || matches!(c, '/' | '.' | '-' | '_');
    // `-` may end a shell operator before a path (`${VAR:-/workspace}`).
    let ends_path = |c: char| c.is_alphanumeric() || matches!(c, '/' | '.' | '_');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut previous: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        let at_boundary = previous.is_none_or(|p| !ends_path(p));
        let whole = |from: &str| {
            rest.starts_with(from)
                && rest[from.len()..]
                    .chars()
                    .next()
                    .is_none_or(|n| n == '/' || !in_path(n))
        };
        previous = Some(c);
        match mounts.iter().find(|(from, _)| at_boundary && whole(from)) {
            Some((from, to)) => {
                out.push_str(to);
                rest = &rest[from.len()..];
            }
            None => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    out
}

/// The first container's termination message path (default `/dev/termination-log`) and the
/// empty file under `pod_dir` standing in for it, as the kubelet mounts one per container.
pub fn termination_file(pod: &Pod, pod_dir: &std::path::Path) -> Option<(String, std::path::PathBuf)> {
    let container = pod.spec.as_ref()?.containers.first()?;
    let path = container
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".to_owned());
    let file = pod_dir.join("termination-log");
    std::fs::create_dir_all(pod_dir).ok()?;
    std::fs::write(&file, b"").ok()?;
    Some((path, file))
}

/// A failed run's termination message as the kubelet reports it (see
/// [`termination_message`]): what the container wrote to `file`, else, with
/// `fallback_to_logs`, its output's tail. Failures to start or to finish in time keep their own
/// message, as the runtime's reason.
pub fn with_termination_message(
    mut result: ExecResult,
    file: &std::path::Path,
    fallback_to_logs: bool,
) -> ExecResult {
    let written = std::fs::read(file).unwrap_or_default();
    if let Outcome::Failed {
        exit_code,
        message,
        reason,
    } = &mut result.outcome
        && reason == "Error"
    {
        *message = termination_message(&written, fallback_to_logs, *exit_code, &result.output);
    }
    result
}

/// Runs the pod's first container command; never panics, every problem becomes a failure.
pub async fn run_exec(pod: &Pod, timeout: Duration) -> ExecResult {
    run_exec_with(pod, timeout, &[], &BTreeMap::new()).await
}

/// [`run_exec`] with mount paths rewritten (see [`materialize_volumes`]) and extra environment.
pub async fn run_exec_with(
    pod: &Pod,
    timeout: Duration,
    mounts: &[(String, String)],
    extra_env: &BTreeMap<String, String>,
) -> ExecResult {
    let (argv, env) = match exec_command(pod) {
        Ok((argv, env)) => (
            argv.iter().map(|a| rewrite(a, mounts)).collect::<Vec<_>>(),
            env.into_iter()
                .map(|(k, v)| (k, rewrite(&v, mounts)))
                .chain(extra_env.clone())
                .collect::<BTreeMap<_, _>>(),
        ),
        Err(e) => {
            return ExecResult {
                output: e.clone(),
                outcome: Outcome::failed(127, e),
            };
        }
    };
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]).envs(env);
    run_to_result(cmd, &argv[0], timeout).await
}

/// Runs `cmd` (stdin closed, output captured, killed after `timeout`) to an [`ExecResult`]:
/// `Succeeded` for exit 0, else `Failed` with the kubelet's reasons (`StartError`,
/// `DeadlineExceeded`, `Error`). `program` names it in messages.
pub async fn run_to_result(mut cmd: tokio::process::Command, program: &str, timeout: Duration) -> ExecResult {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("failed to start {program:?}: {e}");
            return ExecResult {
                output: msg.clone(),
                outcome: Outcome::Failed {
                    exit_code: 128,
                    message: msg,
                    reason: "StartError".into(),
                },
            };
        }
    };
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => {
            let msg = format!("{program:?} did not finish within {timeout:?}");
            ExecResult {
                output: msg.clone(),
                outcome: Outcome::Failed {
                    exit_code: 137,
                    message: msg,
                    reason: "DeadlineExceeded".into(),
                },
            }
        }
        Ok(Err(e)) => {
            let msg = format!("waiting for {program:?} failed: {e}");
            ExecResult {
                output: msg.clone(),
                outcome: Outcome::failed(128, msg),
            }
        }
        Ok(Ok(out)) => {
            let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
            output.push_str(&String::from_utf8_lossy(&out.stderr));
            // Killed by a signal: report it like the kubelet does (128 + signal), 137 when unknown.
            let code = out.status.code().unwrap_or(137);
            let outcome = if code == 0 {
                Outcome::Succeeded
            } else {
                // No termination message file here: the log's tail stands in for it.
                Outcome::failed(code, log_tail(&output))
            };
            ExecResult { output, outcome }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EnvVar, PodSpec};

    fn pod_with(command: &[&str], args: &[&str], env: &[(&str, &str)]) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some("img".into()),
                    command: Some(command.iter().map(|s| s.to_string()).collect()),
                    args: Some(args.iter().map(|s| s.to_string()).collect()),
                    env: Some(
                        env.iter()
                            .map(|(k, v)| EnvVar {
                                name: k.to_string(),
                                value: Some(v.to_string()),
                                value_from: None,
                            })
                            .collect(),
                    ),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn exec_runs_the_command_with_env_and_exit_code_decides() {
        let ok = pod_with(
            &["sh", "-c"],
            &["echo hello $WHO; echo oops >&2"],
            &[("WHO", "kmm")],
        );
        let r = run_exec(&ok, Duration::from_secs(10)).await;
        assert_eq!(r.outcome, Outcome::Succeeded);
        assert_eq!(r.output, "hello kmm\noops\n");

        let bad = pod_with(&["sh", "-c", "echo insmod failed; exit 4"], &[], &[]);
        let r = run_exec(&bad, Duration::from_secs(10)).await;
        assert_eq!(r.outcome, Outcome::failed(4, "insmod failed\n"));

        let missing = pod_with(&["/nonexistent/binary"], &[], &[]);
        assert!(matches!(
            run_exec(&missing, Duration::from_secs(10)).await.outcome,
            Outcome::Failed { .. }
        ));

        let slow = pod_with(&["sleep", "5"], &[], &[]);
        let r = run_exec(&slow, Duration::from_millis(100)).await;
        assert!(matches!(r.outcome, Outcome::Failed { exit_code: 137, .. }));
    }
}

#[cfg(test)]
mod termination_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_written_termination_message_wins_over_the_output_tail() {
        let dir = tempfile::tempdir().unwrap();
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "worker"}]}}))
        .unwrap();
        let (path, file) = termination_file(&pod, dir.path()).unwrap();
        assert_eq!(path, "/dev/termination-log");
        let failed = || ExecResult {
            output: "line 1\nline 2".into(),
            outcome: Outcome::failed(1, "line 1\nline 2"),
        };
        let fallback = with_termination_message(failed(), &file, true);
        assert!(matches!(&fallback.outcome, Outcome::Failed { message, .. } if message == "line 1\nline 2"));
        let file_policy = with_termination_message(failed(), &file, false);
        assert!(matches!(&file_policy.outcome, Outcome::Failed { message, .. } if message.is_empty()));
        std::fs::write(&file, "loading m: Required key not available\n").unwrap();
        let written = with_termination_message(failed(), &file, true);
        assert!(
            matches!(&written.outcome, Outcome::Failed { message, .. } if message == "loading m: Required key not available\n")
        );
        let start_error = ExecResult {
            output: "failed to start".into(),
            outcome: Outcome::Failed {
                exit_code: 128,
                message: "failed to start".into(),
                reason: "StartError".into(),
            },
        };
        let kept = with_termination_message(start_error.clone(), &file, true);
        assert_eq!(kept, start_error);
    }
}

#[cfg(test)]
mod rewrite_tests {
    #[test]
    fn mount_paths_are_rewritten_longest_first() {
        let mounts = vec![
            (
                "/run/kmm/signing-key".to_string(),
                "/tmp/p/run/kmm/signing-key".to_string(),
            ),
            ("/run/kmm".to_string(), "/tmp/p/run/kmm".to_string()),
        ];
        assert_eq!(
            super::rewrite("--key=/run/kmm/signing-key/key", &mounts),
            "--key=/tmp/p/run/kmm/signing-key/key"
        );
        assert_eq!(super::rewrite("/run/kmm/auth", &mounts), "/tmp/p/run/kmm/auth");
        assert_eq!(super::rewrite("/elsewhere", &mounts), "/elsewhere");
        let tmp = vec![("/tmp".to_string(), "/x/pod/tmp".to_string())];
        assert_eq!(
            super::rewrite("--shared-root=/tmp", &tmp),
            "--shared-root=/x/pod/tmp"
        );
        assert_eq!(super::rewrite("/tmp/opt", &tmp), "/x/pod/tmp/opt");
        assert_eq!(
            super::rewrite("--log=/work/target/tmp/a/log", &tmp),
            "--log=/work/target/tmp/a/log"
        );
        assert_eq!(super::rewrite("/tmpfs", &tmp), "/tmpfs");
        assert_eq!(super::rewrite("ws=${W:-/tmp}", &tmp), "ws=${W:-/x/pod/tmp}");
    }
}
