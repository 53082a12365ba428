//! Small pieces of command-line plumbing, kept out of `main.rs` so they can be tested.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use k8s_openapi::{
    api::core::v1::Secret, apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kmm_api::crds;

use crate::{
    lint::{self, DocumentReport},
    mcm_controller::{
        desired::plan::{ImageRef, Pin},
        observe,
    },
    pull_secret::Credentials,
    registry::DigestResolver,
};

/// How the offline commands (`render`, `preflight`) reach registries: the controller's lookups,
/// with credentials from a file instead of the hub's Secret.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RegistryArgs {
    /// Reach every registry over plain HTTP (for a local test registry).
    #[arg(long)]
    pub registry_insecure: bool,
    /// Registry credentials, as the MCM's imageRepoSecret gives them to the hub: that Secret's
    /// manifest (YAML or JSON, `data` or `stringData`) or a Docker config.json.
    #[arg(long, value_name = "FILE")]
    pub pull_secret: Option<PathBuf>,
}

impl RegistryArgs {
    /// The credentials of `--pull-secret`, if given.
    pub fn credentials(&self) -> anyhow::Result<Option<Credentials>> {
        self.pull_secret.as_deref().map(read_pull_secret).transpose()
    }

    /// Looks every image up as the controller does (absent images come back [`Pin::Missing`]).
    pub async fn resolve(
        &self,
        images: impl IntoIterator<Item = ImageRef>,
        credentials: &Option<Credentials>,
    ) -> BTreeMap<String, Pin> {
        let resolver = DigestResolver::new(Duration::from_secs(60));
        let images = images
            .into_iter()
            .map(|i| ImageRef {
                insecure: i.insecure || self.registry_insecure,
                ..i
            })
            .collect();
        observe::resolve(&resolver, images, &Ok(credentials.clone())).await
    }
}

/// Credentials from a Secret manifest or a bare Docker config. Errors name the file and what is
/// wrong, never its content (parser messages quote it), as the hub does for imageRepoSecret.
pub fn read_pull_secret(path: &Path) -> anyhow::Result<Credentials> {
    let text =
        fs::read_to_string(path).with_context(|| format!("reading --pull-secret {}", path.display()))?;
    let doc: serde_json::Value = serde_saphyr::from_str(&text)
        .map_err(|_| anyhow::anyhow!("--pull-secret {}: not valid YAML or JSON", path.display()))?;
    let data: BTreeMap<String, Vec<u8>> = if doc.get("kind").and_then(|k| k.as_str()) == Some("Secret") {
        let secret: Secret = serde_json::from_value(doc).map_err(|_| {
            anyhow::anyhow!(
                "--pull-secret {}: a Secret whose data is not base64 or whose fields have the wrong shape",
                path.display()
            )
        })?;
        let string_data = secret
            .string_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()));
        let data = secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0));
        data.chain(string_data).collect()
    } else {
        BTreeMap::from([(".dockerconfigjson".to_string(), text.into_bytes())])
    };
    Credentials::from_secret_data(&data).with_context(|| format!("--pull-secret {}", path.display()))
}

/// Writes CRDs as one YAML stream to `out`, or one file each into `dir`.
pub fn write_crds(
    list: &[CustomResourceDefinition],
    dir: Option<&Path>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match dir {
        None => out.write_all(crds::to_yaml_stream(list)?.as_bytes())?,
        Some(dir) => {
            fs::create_dir_all(dir)?;
            for (name, yaml) in crds::files(list)? {
                let path = dir.join(name);
                fs::write(&path, yaml)?;
                writeln!(out, "wrote {}", path.display())?;
            }
        }
    }
    Ok(())
}

/// Lints every file (`-` is standard input); prints one line per problem to `out` and a summary
/// to `err`. Returns whether everything was valid.
pub fn lint_files(files: &[String], out: &mut dyn Write, err: &mut dyn Write) -> io::Result<bool> {
    let (mut documents, mut problems, mut skipped) = (0, 0, 0);
    let mut valid = true;
    for file in files {
        let text = if file == "-" {
            io::read_to_string(io::stdin())
        } else {
            fs::read_to_string(file)
        };
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                writeln!(out, "{file}: cannot read: {e}")?;
                valid = false;
                continue;
            }
        };
        let reports = match lint::lint_str(&text) {
            Ok(r) => r,
            Err(e) => {
                writeln!(out, "{file}: {e}")?;
                valid = false;
                continue;
            }
        };
        for DocumentReport {
            index,
            object,
            checked,
            problems: found,
        } in reports
        {
            if !checked {
                skipped += 1;
                continue;
            }
            documents += 1;
            problems += found.len();
            valid &= found.is_empty();
            for p in found {
                writeln!(out, "{file}: document {index} ({object}): {p}")?;
            }
        }
    }
    writeln!(
        err,
        "{documents} document(s) checked, {problems} problem(s){}",
        if skipped > 0 {
            format!(", {skipped} document(s) of other kinds skipped")
        } else {
            String::new()
        }
    )?;
    Ok(valid)
}

/// Prints where a bundle went and how many entries failed (its manifest.yaml lists them). A
/// partial bundle is still a success: it is what there was to collect.
pub fn report_gather((dir, failed): (std::path::PathBuf, usize), out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "wrote {} ({failed} entries could not be collected; see manifest.yaml)",
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use base64::{Engine, engine::general_purpose::STANDARD};
    use oci_client::secrets::RegistryAuth;

    use super::*;

    const CONFIG: &str = r#"{"auths": {"reg.example:5000": {"username": "robot", "password": "s3cret"}}}"#;

    fn read(content: &str) -> anyhow::Result<Credentials> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        fs::write(&path, content).unwrap();
        read_pull_secret(&path)
    }

    fn robot() -> RegistryAuth {
        RegistryAuth::Basic("robot".into(), "s3cret".into())
    }

    #[test]
    fn pull_secrets_are_read_as_manifests_or_bare_docker_configs() {
        let data = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: pull}}\ntype: kubernetes.io/dockerconfigjson\n\
             data: {{.dockerconfigjson: {}}}\n",
            STANDARD.encode(CONFIG)
        );
        let string_data = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: pull}}\nstringData:\n  .dockerconfigjson: '{CONFIG}'\n"
        );
        for content in [data.as_str(), string_data.as_str(), CONFIG] {
            let creds = read(content).unwrap();
            assert_eq!(creds.for_image("reg.example:5000/kmod:1"), robot(), "{content}");
            assert_eq!(creds.for_image("other.example/kmod:1"), RegistryAuth::Anonymous);
        }
    }

    #[test]
    fn unusable_pull_secrets_are_refused_without_quoting_them() {
        for content in [
            "kind: Secret\ndata: {.dockerconfigjson: not-base64-s3cret}\n",
            "kind: Secret\ndata: {other: czNjcmV0}\n",
            "{\"auths\": [\"s3cret\"]}",
            "[s3cret",
        ] {
            let err = format!("{:#}", read(content).unwrap_err());
            assert!(err.contains("--pull-secret"), "{err}");
            assert!(!err.contains("s3cret") && !err.contains("czNjcmV0"), "{err}");
        }
    }
}
