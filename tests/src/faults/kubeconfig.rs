//! Kubeconfigs that point a client at a [`super::FaultProxy`] instead of its apiserver.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

/// Writes a copy of the kubeconfig at `original` to `out` whose every cluster's server is
/// `server` (the proxy, plain http) with no CA: the proxy holds the TLS session to the real
/// apiserver, the client keeps its credentials (the ServiceAccount bearer token is forwarded).
pub fn rewrite_kubeconfig(original: &Path, server: &str, out: &Path) -> anyhow::Result<PathBuf> {
    let text =
        std::fs::read_to_string(original).with_context(|| format!("reading {}", original.display()))?;
    let mut doc: Value = serde_saphyr::from_str(&text).context("parsing the kubeconfig")?;
    point_at(&mut doc, server);
    // JSON is YAML: kube reads it as a kubeconfig.
    std::fs::write(out, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(out.to_path_buf())
}

/// Every cluster of `doc` at `server`, without CA or TLS settings.
pub fn point_at(doc: &mut Value, server: &str) {
    let Some(clusters) = doc.get_mut("clusters").and_then(Value::as_array_mut) else {
        return;
    };
    for entry in clusters {
        if let Some(cluster) = entry.get_mut("cluster").and_then(Value::as_object_mut) {
            cluster.insert("server".into(), Value::String(server.to_owned()));
            for key in [
                "certificate-authority",
                "certificate-authority-data",
                "insecure-skip-tls-verify",
                "tls-server-name",
            ] {
                cluster.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn clusters_point_at_the_proxy_and_users_are_kept() {
        let mut doc = json!({
            "clusters": [{"name": "hub", "cluster": {"server": "https://127.0.0.1:6443", "certificate-authority": "/ca.crt"}}],
            "users": [{"name": "sa", "user": {"token": "t"}}],
        });
        super::point_at(&mut doc, "http://127.0.0.1:9");
        assert_eq!(
            doc["clusters"][0]["cluster"],
            json!({"server": "http://127.0.0.1:9"})
        );
        assert_eq!(doc["users"][0]["user"]["token"], "t");
    }
}
