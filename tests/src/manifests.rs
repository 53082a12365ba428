//! The install manifests as `kubectl kustomize` renders them, for the tests that check them
//! (hub and spoke): objects by kind and name, and a container's environment as the kubelet
//! would set it.

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{Context, bail};
use serde_json::Value;

/// Every object `kubectl kustomize <dir>` renders (the kubectl of the test control plane's
/// Kubernetes release, which scripts/controlplane-build builds).
pub fn kustomize(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let out = Command::new(crate::controlplane::kubectl()?)
        .arg("kustomize")
        .arg(dir)
        .output()
        .context("running kubectl kustomize")?;
    if !out.status.success() {
        bail!(
            "kubectl kustomize {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    crate::controlplane::documents(&String::from_utf8(out.stdout)?)
}

/// The object of `kind` named `name`.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("{kind} {name} is not in the kustomization"))
}

/// The object without `metadata.labels` (kustomize adds its common labels).
pub fn without_labels(mut v: Value) -> Value {
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("labels");
    }
    v
}

/// The first container's environment as the kubelet sets it: `envFrom` ConfigMaps (which must be
/// in the Deployment's namespace) first, then `env`, with the downward API's namespace and pod
/// name resolved for a pod `pod_name`.
pub fn container_env(
    docs: &[Value],
    deployment: &Value,
    pod_name: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let ns = deployment["metadata"]["namespace"]
        .as_str()
        .context("the Deployment has a namespace")?;
    let c = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut env = BTreeMap::new();
    for from in c["envFrom"].as_array().into_iter().flatten() {
        let name = from["configMapRef"]["name"]
            .as_str()
            .context("only ConfigMap envFrom is expected")?;
        let cm = find(docs, "ConfigMap", name)?;
        if cm["metadata"]["namespace"] != ns {
            bail!("ConfigMap {name} is not in the pod's namespace {ns}");
        }
        for (k, v) in cm["data"].as_object().into_iter().flatten() {
            let v = v.as_str().context("ConfigMap values are strings")?;
            env.insert(k.clone(), v.to_owned());
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().context("an env entry has a name")?.to_owned();
        let value = match (
            e["value"].as_str(),
            e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        ) {
            (Some(v), _) => v.to_owned(),
            (None, Some("metadata.namespace")) => ns.to_owned(),
            (None, Some("metadata.name")) => pod_name.to_owned(),
            other => bail!("unexpected env source for {name}: {other:?}"),
        };
        env.insert(name, value);
    }
    Ok(env)
}
