//! Pod status as the kubelet writes it through `pods/status`, and termination messages.
//!
//! What is written passes the real apiserver's `pods/status` validation: conditions with
//! `True`/`False` statuses (transition times kept while a condition does not change), host and pod
//! IPs in both their singular and list forms, container statuses (and init container statuses
//! when the pod has init containers) with ids, image ids and one state each.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::images::InitFailure;
use super::script::Outcome;
use crate::util::fnv1a;

/// Longest termination message read from the container's file (the kubelet's
/// `MaxContainerTerminationMessageLength`).
pub const MAX_TERMINATION_MESSAGE: usize = 4096;
/// Longest termination message taken from the log (`FallbackToLogsOnError`), and how many of
/// the log's last lines it may hold (`MaxContainerTerminationMessageLogLength`, `...LogLines`).
pub const MAX_TERMINATION_LOG_BYTES: usize = 2048;
pub const MAX_TERMINATION_LOG_LINES: usize = 80;

/// The last `max` bytes of `text`, cut at a character boundary.
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// What the kubelet reports from a log for `FallbackToLogsOnError`: its last 80 lines, at most
/// their last 2048 bytes.
pub fn log_tail(log: &str) -> &str {
    let mut start = log.len();
    let body = log.strip_suffix('\n').unwrap_or(log);
    let mut lines = 0;
    for (i, _) in body.rmatch_indices('\n') {
        lines += 1;
        if lines == MAX_TERMINATION_LOG_LINES {
            start = i + 1;
            break;
        }
    }
    if lines < MAX_TERMINATION_LOG_LINES {
        start = 0;
    }
    tail(&log[start..], MAX_TERMINATION_LOG_BYTES)
}

/// A container's termination message as the kubelet computes it: what it wrote to its
/// termination message file (the last 4096 bytes), else, when `fallback_to_logs`
/// (`terminationMessagePolicy: FallbackToLogsOnError`) and it failed, the tail of its log.
pub fn termination_message(written: &[u8], fallback_to_logs: bool, exit_code: i32, log: &str) -> String {
    let written = String::from_utf8_lossy(written);
    if !written.is_empty() {
        return tail(&written, MAX_TERMINATION_MESSAGE).to_owned();
    }
    if fallback_to_logs && exit_code != 0 {
        return log_tail(log).to_owned();
    }
    String::new()
}

/// Whether the container asks for its log when its termination message file is empty.
pub fn falls_back_to_logs(container: &Container) -> bool {
    container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
}

/// Where a pod runs: its node's IP and its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNet {
    pub host_ip: String,
    pub pod_ip: String,
}

/// The `n`-th pod IP of a kubelet: `10.244.x.y`, unique for the first 64 516 pods.
pub fn nth_pod_ip(n: u32) -> String {
    let n = n % (254 * 254);
    format!("10.244.{}.{}", n / 254 + 1, n % 254 + 1)
}

fn time(t: Timestamp) -> Value {
    serde_json::to_value(Time(t)).unwrap_or(Value::Null)
}

/// 64 hex digits derived from `seed` (a stand-in container id or image digest).
fn hex64(seed: &str) -> String {
    (0..4u8)
        .map(|i| format!("{:016x}", fnv1a(format!("{i}/{seed}").as_bytes())))
        .collect()
}

/// The image id a runtime reports: the image pinned by digest.
pub fn image_id(image: &str) -> String {
    if image.contains("@sha256:") {
        return image.to_owned();
    }
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    let repo = match image[slash..].rfind(':') {
        Some(colon) => &image[..slash + colon],
        None => image,
    };
    format!("{repo}@sha256:{}", hex64(image))
}

/// One container's state.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Waiting(&'static str),
    Running,
    Terminated {
        exit_code: i32,
        reason: String,
        message: String,
    },
}

impl State {
    fn completed() -> Self {
        State::Terminated {
            exit_code: 0,
            reason: "Completed".into(),
            message: String::new(),
        }
    }
}

fn container_status(pod: &Pod, c: &Container, state: &State, start: &Value, now: &Value) -> Value {
    let image = c.image.clone().unwrap_or_default();
    let id = format!(
        "stand-in://{}",
        hex64(&format!("{}/{}", pod.uid().unwrap_or_default(), c.name))
    );
    let (state, ready, started, ran) = match state {
        State::Waiting(reason) => (json!({"waiting": {"reason": reason}}), false, false, false),
        State::Running => (json!({"running": {"startedAt": start}}), true, true, true),
        State::Terminated {
            exit_code,
            reason,
            message,
        } => {
            let mut t = json!({"exitCode": exit_code, "reason": reason, "startedAt": start,
                               "finishedAt": now, "containerID": id});
            if !message.is_empty() {
                t["message"] = json!(message);
            }
            (json!({ "terminated": t }), false, false, true)
        }
    };
    let mut s = json!({"name": c.name, "image": image, "imageID": "", "ready": ready,
                       "restartCount": 0, "started": started, "state": state, "lastState": {}});
    if ran {
        s["imageID"] = json!(image_id(&image));
        s["containerID"] = json!(id);
    }
    s
}

/// A condition; its `lastTransitionTime` is kept from `old` when its status did not change.
fn condition(
    old: &BTreeMap<String, (String, Value)>,
    type_: &str,
    status: bool,
    reason: Option<&str>,
    message: Option<String>,
    now: &Value,
) -> Value {
    let status = if status { "True" } else { "False" };
    let since = match old.get(type_) {
        Some((s, t)) if s == status && !t.is_null() => t.clone(),
        _ => now.clone(),
    };
    let mut c = json!({"type": type_, "status": status, "lastTransitionTime": since});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    if let Some(m) = message {
        c["message"] = json!(m);
    }
    c
}

/// The `status` the kubelet writes for `outcome` (for `Exec`, the running state). `failed_init`:
/// an init container that failed (the pod then failed before its containers started).
pub fn pod_status(
    pod: &Pod,
    outcome: &Outcome,
    failed_init: Option<&InitFailure>,
    net: &PodNet,
    now: Timestamp,
) -> Value {
    let now = time(now);
    let current = pod.status.as_ref();
    let start = current
        .and_then(|s| s.start_time.as_ref())
        .map(|t| time(t.0))
        .unwrap_or_else(|| now.clone());
    let old: BTreeMap<String, (String, Value)> = current
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .map(|c| {
            let t = c.last_transition_time.as_ref().map_or(Value::Null, |t| time(t.0));
            (c.type_.clone(), (c.status.clone(), t))
        })
        .collect();
    let spec = pod.spec.clone().unwrap_or_default();
    let inits = spec.init_containers.clone().unwrap_or_default();
    let sidecar = |c: &Container| c.restart_policy.as_deref() == Some("Always");

    // Each init container's and container's state, and the pod's phase.
    let main_failure = match outcome {
        Outcome::Failed {
            exit_code,
            message,
            reason,
        } => Some(State::Terminated {
            exit_code: *exit_code,
            reason: reason.clone(),
            message: tail(message, MAX_TERMINATION_MESSAGE).to_owned(),
        }),
        _ => None,
    };
    let (phase, init_states, main_state): (&str, Vec<State>, State) = match (outcome, failed_init) {
        (Outcome::Failed { .. }, Some(f)) => {
            let at = inits.iter().position(|c| c.name == f.container);
            let states = inits
                .iter()
                .enumerate()
                .map(|(i, _)| match at {
                    Some(at) if i < at => State::completed(),
                    Some(at) if i == at => State::Terminated {
                        exit_code: f.exit_code,
                        reason: "Error".into(),
                        message: tail(&f.message, MAX_TERMINATION_MESSAGE).to_owned(),
                    },
                    _ => State::Waiting("PodInitializing"),
                })
                .collect();
            ("Failed", states, State::Waiting("PodInitializing"))
        }
        (Outcome::Pending, _) => {
            let waiting = if inits.is_empty() {
                "ContainerCreating"
            } else {
                "PodInitializing"
            };
            (
                "Pending",
                inits.iter().map(|_| State::Waiting("PodInitializing")).collect(),
                State::Waiting(waiting),
            )
        }
        (Outcome::Running | Outcome::Exec, _) => (
            "Running",
            inits
                .iter()
                .map(|c| {
                    if sidecar(c) {
                        State::Running
                    } else {
                        State::completed()
                    }
                })
                .collect(),
            State::Running,
        ),
        (Outcome::Succeeded, _) => (
            "Succeeded",
            inits.iter().map(|_| State::completed()).collect(),
            State::completed(),
        ),
        (Outcome::Failed { .. }, None) => (
            "Failed",
            inits.iter().map(|_| State::completed()).collect(),
            main_failure.unwrap_or_else(State::completed),
        ),
    };

    let terminal = matches!(phase, "Succeeded" | "Failed");
    let names = |cs: &[Container], states: &[State], pick: &dyn Fn(&State) -> bool| -> Option<String> {
        let list: Vec<&str> = cs
            .iter()
            .zip(states)
            .filter(|(_, s)| pick(s))
            .map(|(c, _)| c.name.as_str())
            .collect();
        (!list.is_empty()).then(|| format!("[{}]", list.join(" ")))
    };
    let main_states: Vec<State> = spec.containers.iter().map(|_| main_state.clone()).collect();
    let init_incomplete = names(&inits, &init_states, &|s| {
        !matches!(s, State::Running | State::Terminated { exit_code: 0, .. })
    });
    let initialized = init_incomplete.is_none();
    let ready = main_state == State::Running;
    let (ready_reason, ready_message) = if ready {
        (None, None)
    } else if terminal {
        (Some("PodCompleted"), None)
    } else {
        (
            Some("ContainersNotReady"),
            names(&spec.containers, &main_states, &|s| *s != State::Running)
                .map(|n| format!("containers with unready status: {n}")),
        )
    };
    let conditions = json!([
        condition(&old, "PodReadyToStartContainers", !terminal, None, None, &now),
        condition(
            &old,
            "Initialized",
            initialized,
            if initialized {
                terminal.then_some("PodCompleted")
            } else {
                Some("ContainersNotInitialized")
            },
            init_incomplete.map(|n| format!("containers with incomplete status: {n}")),
            &now
        ),
        condition(&old, "Ready", ready, ready_reason, ready_message.clone(), &now),
        condition(&old, "ContainersReady", ready, ready_reason, ready_message, &now),
        condition(&old, "PodScheduled", true, None, None, &now),
    ]);

    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": net.host_ip,
        "hostIPs": [{"ip": net.host_ip}],
        "podIP": net.pod_ip,
        "podIPs": [{"ip": net.pod_ip}],
        "startTime": start,
        "containerStatuses": spec.containers.iter().zip(&main_states)
            .map(|(c, s)| container_status(pod, c, s, &start, &now)).collect::<Vec<_>>(),
    });
    if !inits.is_empty() {
        status["initContainerStatuses"] = inits
            .iter()
            .zip(&init_states)
            .map(|(c, s)| container_status(pod, c, s, &start, &now))
            .collect();
    }
    status
}

/// Whether the pod's Ready condition is True on the server.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The first container's terminated state on the server: exit code, reason and message.
pub fn terminated(pod: &Pod) -> Option<(i32, String, String)> {
    let t = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .clone()?;
    Some((
        t.exit_code,
        t.reason.unwrap_or_default(),
        t.message.unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> PodNet {
        PodNet {
            host_ip: "127.0.0.1".into(),
            pod_ip: nth_pod_ip(0),
        }
    }

    fn pod(spec: Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u-1"}, "spec": spec}),
        )
        .unwrap()
    }

    fn find<'a>(s: &'a Value, type_: &str) -> &'a Value {
        s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap()
    }

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("abc", 5), "abc");
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("xaé", 2), "é");
    }

    #[test]
    fn log_tail_is_the_last_80_lines_then_the_last_2048_bytes() {
        let log: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = log_tail(&log);
        assert!(t.starts_with("line 20\n"), "{t}");
        assert!(t.ends_with("line 99\n"));
        let long = format!("start\n{}\nend", "x".repeat(5000));
        assert_eq!(log_tail(&long).len(), 2048);
        assert!(log_tail(&long).ends_with("x\nend"));
        assert_eq!(log_tail("one line"), "one line");
    }

    #[test]
    fn termination_message_prefers_the_file_then_the_log_on_error() {
        let big = format!("é{}", "m".repeat(5000));
        let m = termination_message(big.as_bytes(), false, 1, "log");
        assert_eq!(m.len(), 4096);
        assert!(big.ends_with(&m));
        assert_eq!(termination_message(b"loaded\n", false, 0, "log"), "loaded\n");
        assert_eq!(termination_message(b"", true, 3, "oops\n"), "oops\n");
        assert_eq!(termination_message(b"", true, 0, "fine\n"), "");
        assert_eq!(termination_message(b"", false, 3, "oops\n"), "");
    }

    #[test]
    fn image_ids_pin_the_repository_by_digest() {
        assert!(image_id("busybox:1.36").starts_with("busybox@sha256:"));
        assert!(image_id("localhost:5000/kmm/m:6.1").starts_with("localhost:5000/kmm/m@sha256:"));
        assert!(image_id("localhost:5000/kmm/m").starts_with("localhost:5000/kmm/m@sha256:"));
        assert_eq!(image_id("r/m@sha256:ab"), "r/m@sha256:ab");
        assert_eq!(image_id("busybox").len(), "busybox@sha256:".len() + 64);
    }

    #[test]
    fn failed_status_carries_exit_code_reason_and_the_message_tail() {
        let p = pod(json!({"containers": [{"name": "c", "image": "img"}]}));
        let msg = format!("{}END", "x".repeat(5000));
        let s = pod_status(&p, &Outcome::failed(3, msg), None, &net(), Timestamp::now());
        assert_eq!(s["phase"], "Failed");
        let t = &s["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(t["exitCode"], 3);
        assert_eq!(t["reason"], "Error");
        assert_eq!(t["message"].as_str().unwrap().len(), 4096);
        assert!(t["message"].as_str().unwrap().ends_with("xEND"));
        assert!(t["containerID"].as_str().unwrap().starts_with("stand-in://"));
        assert_eq!(find(&s, "Ready")["reason"], "PodCompleted");
        assert_eq!(s["podIPs"][0]["ip"], s["podIP"]);
        assert_eq!(s["hostIPs"][0]["ip"], "127.0.0.1");
        assert!(s.get("initContainerStatuses").is_none());
    }

    #[test]
    fn running_keeps_transition_times_and_start_time() {
        let p = pod(json!({"containers": [{"name": "a", "image": "img"}, {"name": "b", "image": "img"}]}));
        let t0: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2025-01-01T00:01:00Z".parse().unwrap();
        let pending = pod_status(&p, &Outcome::Pending, None, &net(), t0);
        assert_eq!(pending["phase"], "Pending");
        assert_eq!(
            find(&pending, "Ready")["message"],
            "containers with unready status: [a b]"
        );
        assert_eq!(
            pending["containerStatuses"][1]["state"]["waiting"]["reason"],
            "ContainerCreating"
        );
        assert!(pending["containerStatuses"][0].get("containerID").is_none());
        let mut p2 = p.clone();
        p2.status = Some(serde_json::from_value(pending).unwrap());
        let running = pod_status(&p2, &Outcome::Running, None, &net(), t1);
        assert_eq!(running["startTime"], "2025-01-01T00:00:00Z");
        assert_eq!(find(&running, "Ready")["status"], "True");
        assert_eq!(
            find(&running, "Ready")["lastTransitionTime"],
            "2025-01-01T00:01:00Z"
        );
        assert_eq!(
            find(&running, "PodScheduled")["lastTransitionTime"],
            "2025-01-01T00:00:00Z"
        );
        assert_eq!(
            running["containerStatuses"][0]["state"]["running"]["startedAt"],
            "2025-01-01T00:00:00Z"
        );
        assert_eq!(running["containerStatuses"][0]["ready"], true);
    }

    #[test]
    fn init_containers_complete_or_fail_before_the_containers() {
        let p = pod(
            json!({"initContainers": [{"name": "pull", "image": "i"}, {"name": "copy", "image": "i"}],
                           "containers": [{"name": "worker", "image": "w"}]}),
        );
        let ok = pod_status(&p, &Outcome::Succeeded, None, &net(), Timestamp::now());
        assert_eq!(
            ok["initContainerStatuses"][1]["state"]["terminated"]["reason"],
            "Completed"
        );
        assert_eq!(find(&ok, "Initialized")["status"], "True");
        let f = InitFailure {
            container: "pull".into(),
            exit_code: 2,
            message: "no such image".into(),
        };
        let bad = pod_status(&p, &Outcome::failed(2, "x"), Some(&f), &net(), Timestamp::now());
        assert_eq!(bad["phase"], "Failed");
        assert_eq!(
            bad["initContainerStatuses"][0]["state"]["terminated"]["exitCode"],
            2
        );
        assert_eq!(
            bad["initContainerStatuses"][0]["state"]["terminated"]["message"],
            "no such image"
        );
        assert_eq!(
            bad["initContainerStatuses"][1]["state"]["waiting"]["reason"],
            "PodInitializing"
        );
        assert_eq!(
            bad["containerStatuses"][0]["state"]["waiting"]["reason"],
            "PodInitializing"
        );
        assert_eq!(
            find(&bad, "Initialized")["message"],
            "containers with incomplete status: [pull copy]"
        );
    }

    #[test]
    fn pod_ips_are_distinct() {
        let ips: std::collections::BTreeSet<String> = (0..1000).map(nth_pod_ip).collect();
        assert_eq!(ips.len(), 1000);
        assert_eq!(nth_pod_ip(0), "10.244.1.1");
    }
}
