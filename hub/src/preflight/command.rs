//! `kmm-hub preflight`: the verdict of every MCM for every coming kernel, offline (files in, real
//! registry lookups, no builds), as one table per MCM. Exit 0 only when all are ready, so CI can
//! gate a platform upgrade on it.

use std::{collections::BTreeMap, io::Write, path::PathBuf, sync::Arc};

use anyhow::{Context as _, bail};
use kmm_api::{
    ManagedClusterModule,
    kernel::{KernelVars, grammar::check_kernel},
    ocm::ManagedCluster,
};
use kube::ResourceExt;

use super::verdict::{self, Check};
use crate::{
    cli::RegistryArgs,
    mcm_controller::{desired::plan::Pin, observe},
    render::{documents, printable},
};

/// Flags of `kmm-hub preflight`.
#[derive(Clone, Debug, clap::Args)]
pub struct PreflightArgs {
    /// A kernel the fleet moves to, as `uname -r` prints it; repeat for several.
    #[arg(long = "kernel", required = true, value_name = "KERNEL")]
    pub kernels: Vec<String>,
    /// ManagedCluster objects (as for `render`): only MCMs selecting at least one of them are
    /// checked. Without it every MCM is.
    #[arg(long, value_name = "FILE")]
    pub clusters: Option<PathBuf>,
    /// ManagedClusterModule files (YAML, several documents or a List each).
    #[arg(short = 'f', long = "filename", required = true, num_args = 1.., value_name = "FILE")]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// The kernels as given, checked as the hub checks a claimed kernel; repeats dropped.
fn checked_kernels(kernels: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for k in kernels {
        check_kernel(k).map_err(|e| anyhow::anyhow!("--kernel {:?}: {e}", printable(k)))?;
        KernelVars::new(k).map_err(|e| anyhow::anyhow!("--kernel: {e}"))?;
        if !out.contains(k) {
            out.push(k.clone());
        }
    }
    Ok(out)
}

/// Every ManagedClusterModule of `files`, in order.
fn read_mcms(files: &[PathBuf]) -> anyhow::Result<Vec<ManagedClusterModule>> {
    let mut out = Vec::new();
    for file in files {
        let before = out.len();
        for (i, doc) in documents(file)?.into_iter().enumerate() {
            if doc["kind"] != "ManagedClusterModule" {
                continue;
            }
            let mcm: ManagedClusterModule = serde_json::from_value(doc).with_context(|| {
                format!(
                    "{}: document {}: not a valid ManagedClusterModule",
                    file.display(),
                    i + 1
                )
            })?;
            out.push(mcm);
        }
        if out.len() == before {
            bail!("{} holds no ManagedClusterModule", file.display());
        }
    }
    Ok(out)
}

fn read_clusters(file: &PathBuf) -> anyhow::Result<Vec<Arc<ManagedCluster>>> {
    documents(file)?
        .into_iter()
        .filter(|d| d["kind"] == "ManagedCluster")
        .map(|d| serde_json::from_value(d).map(Arc::new))
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading the ManagedClusters of {}", file.display()))
}

/// Prints one table per MCM; returns whether every MCM is ready for every kernel.
pub async fn preflight(
    args: &PreflightArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<bool> {
    let kernels = checked_kernels(&args.kernels)?;
    let mut mcms = read_mcms(&args.files)?;
    let credentials = args.registry.credentials()?;
    if let Some(file) = &args.clusters {
        let clusters = read_clusters(file)?;
        mcms.retain(|mcm| {
            let selects = !observe::selected_clusters(mcm, &clusters).is_empty();
            if !selects {
                // Best effort: a failed write to stderr must not change the verdict.
                let _ = writeln!(
                    err,
                    "ManagedClusterModule {} selects none of the {} clusters; skipped",
                    printable(&mcm.name_any()),
                    clusters.len()
                );
            }
            selects
        });
    }
    // Two rounds, as the rollout: the images themselves, then what a sign step of a missing
    // one would read.
    let mut pins: BTreeMap<String, Pin> = BTreeMap::new();
    for _ in 0..2 {
        let images: Vec<_> = mcms
            .iter()
            .flat_map(|m| verdict::lookups(m, &kernels, &pins))
            .filter(|i| !pins.contains_key(&i.image))
            .collect();
        pins.extend(args.registry.resolve(images, &credentials).await);
    }
    let (mut ready, mut total) = (0, 0);
    for mcm in &mcms {
        let checks = verdict::check_all(mcm, &kernels, &pins);
        total += checks.len();
        ready += checks.iter().filter(|c| c.verdict.is_ready()).count();
        writeln!(out, "{}", table(&mcm.name_any(), &checks))?;
    }
    writeln!(
        err,
        "{} ManagedClusterModule(s), {} kernel(s): {ready} of {total} ready",
        mcms.len(),
        kernels.len()
    )?;
    Ok(ready == total)
}

/// The table of one MCM (pure): kernel, verdict, stage, digest, reason (last: it is long).
pub fn table(mcm: &str, checks: &[Check]) -> String {
    let mut rows = vec![["KERNEL", "VERDICT", "STAGE", "DIGEST", "REASON"].map(str::to_string)];
    for c in checks {
        let digest = match &c.verdict {
            verdict::Verdict::Ready { digest } => digest.clone(),
            _ => "-".to_string(),
        };
        rows.push(
            [
                c.kernel.clone(),
                c.verdict.as_str().to_string(),
                c.verdict.stage().as_str().to_string(),
                digest,
                c.reason.clone(),
            ]
            .map(|cell| printable(&cell)),
        );
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut text = format!("ManagedClusterModule {}\n", printable(mcm));
    for r in rows {
        let mut line = String::new();
        for (cell, width) in r.iter().zip(&widths) {
            line.push_str(&format!("{cell:width$}  "));
        }
        line.push_str(&r[4]);
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::verdict::Verdict;

    #[test]
    fn bad_kernels_are_refused_by_name_and_repeats_dropped() {
        let err = checked_kernels(&["6.1.0-1".into(), "6.1/../x".into()]).unwrap_err();
        assert!(err.to_string().starts_with("--kernel \"6.1/../x\""), "{err}");
        let err = checked_kernels(&["6.1".into()]).unwrap_err();
        assert!(err.to_string().contains("at least three components"), "{err}");
        assert_eq!(
            checked_kernels(&["6.1.0-2".into(), "6.1.0-1".into(), "6.1.0-2".into()]).unwrap(),
            ["6.1.0-2", "6.1.0-1"]
        );
    }

    #[test]
    fn the_table_has_a_row_per_kernel_with_digest_and_reason() {
        let checks = [
            Check {
                kernel: "6.1.0-1".into(),
                verdict: Verdict::Ready {
                    digest: "r/k@sha256:ab".into(),
                },
                reason: "image r/k:6.1.0-1 exists".into(),
            },
            Check {
                kernel: "6.1.0-22".into(),
                verdict: Verdict::NeedsBuild,
                reason: "image r/k:6.1.0-22 does not exist;\u{1b}[2J the hub would build it".into(),
            },
        ];
        let text = table("gpu", &checks);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ManagedClusterModule gpu");
        let cells = |l: &str| {
            l.split_whitespace()
                .take(4)
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(cells(lines[1]), ["KERNEL", "VERDICT", "STAGE", "DIGEST"]);
        assert_eq!(cells(lines[2]), ["6.1.0-1", "Ready", "Done", "r/k@sha256:ab"]);
        assert_eq!(cells(lines[3]), ["6.1.0-22", "NeedsBuild", "Build", "-"]);
        let reason_at = lines[1].find("REASON").unwrap();
        assert_eq!(
            &lines[3][reason_at..],
            "image r/k:6.1.0-22 does not exist;\\u{1b}[2J the hub would build it"
        );
    }
}
