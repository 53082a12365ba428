//! What a build or sign Job reads from the hub's namespace (pure): a Job started without its
//! Dockerfile ConfigMap, build Secrets or signing key would only sit with a pod that cannot start,
//! so the MCM reports the missing input instead.

use std::fmt;

use crate::mcm_controller::desired::job::{DOCKERFILE_KEY, Step};

/// Kind of an input object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    ConfigMap,
    Secret,
}

impl fmt::Display for InputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InputKind::ConfigMap => "ConfigMap",
            InputKind::Secret => "Secret",
        })
    }
}

/// One object a Job mounts, in the hub's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    pub kind: InputKind,
    pub name: String,
    /// The MCM field naming it, for the message.
    pub field: &'static str,
    /// The key the Job reads, when it reads one.
    pub key: Option<&'static str>,
}

/// Why an input is unusable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MissingInput {
    Absent(Input),
    NoKey(Input, &'static str),
}

impl MissingInput {
    /// The message for the MCM status; `namespace` is the hub's.
    pub fn message(&self, namespace: &str) -> String {
        match self {
            MissingInput::Absent(i) => format!(
                "{} {namespace}/{} (spec.moduleSpec...{}) does not exist; create it in the hub's namespace",
                i.kind, i.name, i.field
            ),
            MissingInput::NoKey(i, key) => format!(
                "{} {namespace}/{} (spec.moduleSpec...{}) has no key {key:?}",
                i.kind, i.name, i.field
            ),
        }
    }
}

/// The objects `step` mounts, in the order they are checked.
pub fn inputs(step: &Step) -> Vec<Input> {
    let input = |kind, name: &str, field, key| Input {
        kind,
        name: name.to_string(),
        field,
        key,
    };
    match step {
        Step::Build { build, .. } => std::iter::once(input(
            InputKind::ConfigMap,
            &build.dockerfile_config_map.name,
            "build.dockerfileConfigMap",
            Some(DOCKERFILE_KEY),
        ))
        .chain(
            build
                .secrets
                .iter()
                .flatten()
                .map(|s| input(InputKind::Secret, &s.name, "build.secrets", None)),
        )
        .collect(),
        Step::Sign { sign, .. } => vec![
            input(
                InputKind::Secret,
                &sign.key_secret.name,
                "sign.keySecret",
                Some("key"),
            ),
            input(
                InputKind::Secret,
                &sign.cert_secret.name,
                "sign.certSecret",
                Some("cert"),
            ),
        ],
    }
}

/// Checks one input against the keys its object holds (`None`: the object does not exist).
pub fn check(input: &Input, keys: Option<&[String]>) -> Option<MissingInput> {
    match (keys, input.key) {
        (None, _) => Some(MissingInput::Absent(input.clone())),
        (Some(keys), Some(key)) if !keys.iter().any(|k| k == key) => {
            Some(MissingInput::NoKey(input.clone(), key))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;
    use crate::{
        fixtures::{BUILD, FINAL, K, SIGN, UNSIGNED, mk_build_mcm, pins},
        mcm_controller::desired::{
            job::{resolve, step_for},
            plan::Pin,
        },
    };

    fn build_step() -> Step {
        let mcm = mk_build_mcm("m", BUILD);
        step_for(&mcm, &resolve(&mcm, K).unwrap(), &pins(&[(FINAL, Pin::Missing)])).unwrap()
    }

    fn sign_step() -> Step {
        let mcm = mk_build_mcm("m", &format!("{BUILD}{SIGN}"));
        let p = pins(&[
            (FINAL, Pin::Missing),
            (UNSIGNED, Pin::Pinned("u@sha256:2".into())),
        ]);
        step_for(&mcm, &resolve(&mcm, K).unwrap(), &p).unwrap()
    }

    #[test]
    fn a_build_needs_its_dockerfile_and_secrets_a_sign_its_key_and_cert() {
        let names = |s: &Step| -> Vec<(InputKind, String, Option<&str>)> {
            inputs(s).into_iter().map(|i| (i.kind, i.name, i.key)).collect()
        };
        assert_eq!(
            names(&build_step()),
            [
                (InputKind::ConfigMap, "df".to_string(), Some(DOCKERFILE_KEY)),
                (InputKind::Secret, "token".to_string(), None),
            ]
        );
        assert_eq!(
            names(&sign_step()),
            [
                (InputKind::Secret, "key".to_string(), Some("key")),
                (InputKind::Secret, "cert".to_string(), Some("cert")),
            ]
        );
    }

    #[rstest]
    #[case::absent(
        None,
        Some(
            "ConfigMap kmm-hub/df (spec.moduleSpec...build.dockerfileConfigMap) does not exist; create it in the hub's namespace"
        )
    )]
    #[case::without_the_key(Some(vec!["Dockerfile".to_string()]), Some("ConfigMap kmm-hub/df (spec.moduleSpec...build.dockerfileConfigMap) has no key \"dockerfile\""))]
    #[case::with_the_key(Some(vec!["dockerfile".to_string()]), None)]
    fn the_dockerfile_config_map(#[case] keys: Option<Vec<String>>, #[case] want: Option<&str>) {
        let dockerfile = &inputs(&build_step())[0];
        let got = check(dockerfile, keys.as_deref()).map(|m| m.message("kmm-hub"));
        assert_eq!(got.as_deref(), want);
    }

    #[rstest]
    #[case::absent(None, true)]
    #[case::any_keys_do(Some(vec![]), false)]
    fn build_secrets_only_need_to_exist(#[case] keys: Option<Vec<String>>, #[case] missing: bool) {
        let token = &inputs(&build_step())[1];
        assert_eq!(check(token, keys.as_deref()).is_some(), missing);
    }
}
