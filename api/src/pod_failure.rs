//! Why a pod failed, as a kubelet reports it: the main container's terminated state, or else
//! the first init container that ended in failure (a real kubelet never starts the main
//! containers then, so `containerStatuses` only says they waited).

use k8s_openapi::{
    api::core::v1::{ContainerStateTerminated, ContainerStatus, Pod},
    jiff::Timestamp,
};

/// When the failing container ended and its one-line reason: the termination message it wrote,
/// else the container's reason, else its exit code. Init containers are named in the reason.
/// `main` is the container to prefer among the regular ones (else the first).
pub fn termination(pod: &Pod, main: &str) -> Option<(Option<Timestamp>, String)> {
    let status = pod.status.as_ref()?;
    let reason = |t: &ContainerStateTerminated| {
        t.message
            .clone()
            .filter(|m| !m.trim().is_empty())
            .or_else(|| t.reason.clone())
            .unwrap_or_else(|| format!("exit code {}", t.exit_code))
    };
    let terminated = |c: &ContainerStatus| c.state.as_ref()?.terminated.clone();
    let containers = status.container_statuses.as_deref().unwrap_or_default();
    let main = containers
        .iter()
        .find(|c| c.name == main)
        .or(containers.first())
        .and_then(terminated);
    if let Some(t) = main {
        return Some((t.finished_at.as_ref().map(|f| f.0), reason(&t)));
    }
    status
        .init_container_statuses
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find_map(|c| {
            let t = terminated(c).filter(|t| t.exit_code != 0)?;
            Some((
                t.finished_at.as_ref().map(|f| f.0),
                format!("init container {}: {}", c.name, reason(&t)),
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap_or_default()
    }

    #[test]
    fn the_main_container_first_then_a_failed_init_container() {
        let main = pod(serde_json::json!({"status": {"containerStatuses": [
            {"name": "worker", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": 1, "message": "modprobe failed"}}}]}}));
        assert_eq!(
            termination(&main, "worker").map(|t| t.1).as_deref(),
            Some("modprobe failed")
        );

        let init = pod(serde_json::json!({"status": {
            "initContainerStatuses": [
                {"name": "image-extractor", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": "cp: no such file"}}}],
            "containerStatuses": [
                {"name": "worker", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "PodInitializing"}}}]}}));
        assert_eq!(
            termination(&init, "worker").map(|t| t.1).as_deref(),
            Some("init container image-extractor: cp: no such file")
        );
        assert_eq!(termination(&pod(serde_json::json!({})), "worker"), None);
    }
}
