//! What the kubelet makes of each pod: ordered rules, each with a sequence of outcomes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

/// What happens to a pod once it is on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Runs and becomes Ready, forever.
    Running,
    /// Every container exits 0.
    Succeeded,
    /// Every container exits with `exit_code`; `message` is the termination message and `reason`
    /// the container state's reason (the kubelet writes `Error` for a non-zero exit).
    Failed {
        exit_code: i32,
        message: String,
        reason: String,
    },
    /// Stays Pending (as if the image could never be pulled).
    Pending,
    /// Runs the first container's `command` + `args` on this machine; its exit code decides.
    Exec,
}

impl Outcome {
    /// A failure with reason `Error`.
    pub fn failed(exit_code: i32, message: impl Into<String>) -> Self {
        Outcome::Failed {
            exit_code,
            message: message.into(),
            reason: "Error".into(),
        }
    }
}

/// Which pods a rule is for; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMatcher {
    pub namespace: Option<String>,
    pub name_prefix: Option<String>,
    /// Equality selector: the pod must carry every one of these labels.
    pub labels: BTreeMap<String, String>,
    pub node_name: Option<String>,
}

impl PodMatcher {
    /// Matches every pod.
    pub fn any() -> Self {
        Self::default()
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.to_string());
        self
    }

    pub fn name_prefix(mut self, prefix: &str) -> Self {
        self.name_prefix = Some(prefix.to_string());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    pub fn node(mut self, node: &str) -> Self {
        self.node_name = Some(node.to_string());
        self
    }

    pub fn matches(&self, pod: &Pod) -> bool {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        self.namespace
            .as_deref()
            .is_none_or(|ns| pod.namespace().as_deref() == Some(ns))
            && self
                .name_prefix
                .as_deref()
                .is_none_or(|p| pod.name_any().starts_with(p))
            && self.node_name.as_deref().is_none_or(|n| node == Some(n))
            && self.labels.iter().all(|(k, v)| pod.labels().get(k) == Some(v))
    }
}

/// A rule: the first rule whose matcher fits a pod decides its outcome. The n-th pod the rule
/// decides gets `outcomes[n]`; once the list is used up its last entry repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptRule {
    pub matcher: PodMatcher,
    pub outcomes: Vec<Outcome>,
}

/// The kubelet's script. Pods no rule matches get the default: `restartPolicy` Never or
/// OnFailure pods succeed, Always (the default policy) pods run and become Ready.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeletScript {
    pub rules: Vec<ScriptRule>,
}

impl KubeletScript {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule after the existing ones. A rule without outcomes is ignored.
    pub fn rule(mut self, matcher: PodMatcher, outcomes: impl IntoIterator<Item = Outcome>) -> Self {
        self.rules.push(ScriptRule {
            matcher,
            outcomes: outcomes.into_iter().collect(),
        });
        self
    }
}

/// A script with its per-rule counters.
#[derive(Debug, Clone)]
pub(crate) struct ScriptState {
    script: KubeletScript,
    used: Vec<usize>,
}

impl ScriptState {
    pub(crate) fn new(script: KubeletScript) -> Self {
        let used = vec![0; script.rules.len()];
        Self { script, used }
    }

    /// The outcome for a pod seen for the first time (call once per pod).
    pub(crate) fn decide(&mut self, pod: &Pod) -> Outcome {
        for (i, rule) in self.script.rules.iter().enumerate() {
            if rule.outcomes.is_empty() || !rule.matcher.matches(pod) {
                continue;
            }
            let n = self.used[i].min(rule.outcomes.len() - 1);
            self.used[i] += 1;
            return rule.outcomes[n].clone();
        }
        default_outcome(pod)
    }
}

pub(crate) fn default_outcome(pod: &Pod) -> Outcome {
    match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
        Some("Never" | "OnFailure") => Outcome::Succeeded,
        _ => Outcome::Running,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(ns: &str, name: &str, node: &str, labels: &[(&str, &str)], restart: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                restart_policy: restart.map(str::to_string),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn matcher_checks_every_set_field() {
        let p = pod("kmm", "worker-abc", "node-3", &[("role", "worker")], None);
        assert!(PodMatcher::any().matches(&p));
        assert!(
            PodMatcher::any()
                .namespace("kmm")
                .name_prefix("worker-")
                .node("node-3")
                .label("role", "worker")
                .matches(&p)
        );
        assert!(!PodMatcher::any().namespace("other").matches(&p));
        assert!(!PodMatcher::any().name_prefix("pull-").matches(&p));
        assert!(!PodMatcher::any().node("node-1").matches(&p));
        assert!(!PodMatcher::any().label("role", "pull").matches(&p));
        assert!(!PodMatcher::any().label("missing", "x").matches(&p));
    }

    #[test]
    fn outcomes_are_used_in_order_then_the_last_repeats() {
        let script = KubeletScript::new()
            .rule(
                PodMatcher::any().node("node-3").label("role", "worker"),
                [Outcome::failed(2, "boom"), Outcome::Succeeded],
            )
            .rule(PodMatcher::any().name_prefix("stuck"), [Outcome::Pending]);
        let mut st = ScriptState::new(script);
        let w3 = pod("kmm", "w", "node-3", &[("role", "worker")], Some("Never"));
        let w1 = pod("kmm", "w", "node-1", &[("role", "worker")], Some("Never"));
        assert_eq!(st.decide(&w3), Outcome::failed(2, "boom"));
        // Pods on other nodes do not use up the rule.
        assert_eq!(st.decide(&w1), Outcome::Succeeded);
        assert_eq!(st.decide(&w3), Outcome::Succeeded);
        assert_eq!(st.decide(&w3), Outcome::Succeeded);
        assert_eq!(st.decide(&pod("a", "stuck-1", "n", &[], None)), Outcome::Pending);
        assert_eq!(st.decide(&pod("a", "web", "n", &[], None)), Outcome::Running);
        assert_eq!(
            st.decide(&pod("a", "web", "n", &[], Some("Always"))),
            Outcome::Running
        );
        assert_eq!(
            st.decide(&pod("a", "batch", "n", &[], Some("OnFailure"))),
            Outcome::Succeeded
        );
    }

    #[test]
    fn empty_rules_are_skipped() {
        let mut st = ScriptState::new(
            KubeletScript::new()
                .rule(PodMatcher::any(), [])
                .rule(PodMatcher::any(), [Outcome::Exec]),
        );
        assert_eq!(st.decide(&pod("a", "b", "n", &[], None)), Outcome::Exec);
    }
}
