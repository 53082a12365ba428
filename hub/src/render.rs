//! `kmm-hub render` (offline: the ManifestWorks the controller would write, from files) and
//! `kmm-hub status` (online: every selected cluster of the hub's MCMs, one line each).
//! Both use the controller's own pure steps, so what they show is what it does.

use std::{collections::BTreeMap, io::Write, path::PathBuf, sync::Arc};

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::ControllerRevision;
use kmm_api::{
    ManagedClusterModule,
    labels::MCM_NAME_LABEL,
    ocm::{ManagedCluster, ManifestWork},
};
use kube::{Api, Client, ResourceExt, api::ListParams};
use serde_json::Value;

use crate::{
    cli::RegistryArgs,
    mcm_controller::{
        desired::plan::{self, KERNELS_ANNOTATION, Pin},
        observe,
        work_outcome::work_outcome,
    },
    rollout::revision::REVISION_ANNOTATION,
};

/// Flags of `kmm-hub render`.
#[derive(Clone, Debug, clap::Args)]
pub struct RenderArgs {
    /// The ManagedClusterModule (YAML).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// ManagedCluster objects (multi-document YAML, or a List), with their status.clusterClaims.
    #[arg(long)]
    pub clusters: PathBuf,
    /// Keep image references as written instead of pinning them to digests.
    #[arg(long)]
    pub no_resolve: bool,
    /// Render the MCM's module as it was at a revision: `target`, `previous` (both from the
    /// MCM's status.rollout) or a revision hash; see docs/rollout.md.
    #[arg(long)]
    pub revision: Option<String>,
    /// The hub's ControllerRevisions, where older revisions are kept
    /// (`kubectl get controllerrevisions -n <hub namespace> -o yaml`).
    #[arg(long, requires = "revision")]
    pub revisions: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// The documents of a YAML file (several, or a `...List`'s items), empty ones dropped.
pub fn documents(path: &PathBuf) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).with_context(|| format!("parsing {} as YAML", path.display()))?;
    let mut out = Vec::new();
    for d in docs.into_iter().filter(|d| !d.is_null()) {
        match d.get("items").and_then(Value::as_array) {
            Some(items)
                if d.get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.ends_with("List")) =>
            {
                out.extend(items.iter().cloned())
            }
            _ => out.push(d),
        }
    }
    Ok(out)
}

/// Renders; returns false when a selected cluster is blocked (reported on `err`).
pub async fn render(args: &RenderArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<bool> {
    let mut mcms = documents(&args.file)?
        .into_iter()
        .filter(|d| d["kind"] == "ManagedClusterModule");
    let Some(mcm) = mcms.next() else {
        bail!("{} holds no ManagedClusterModule", args.file.display())
    };
    let mcm: ManagedClusterModule =
        serde_json::from_value(mcm).context("reading the ManagedClusterModule")?;
    let mcm = match &args.revision {
        Some(wanted) => at_revision(&mcm, wanted, args.revisions.as_ref())?,
        None => mcm,
    };
    let credentials = args.registry.credentials()?;
    let clusters: Vec<Arc<ManagedCluster>> = documents(&args.clusters)?
        .into_iter()
        .filter(|d| d["kind"] == "ManagedCluster")
        .map(|d| serde_json::from_value(d).map(Arc::new))
        .collect::<Result<_, _>>()
        .context("reading the ManagedClusters")?;
    let selected = observe::selected_clusters(&mcm, &clusters);
    let images = match observe::images_needed(&mcm, &selected) {
        Ok(images) => images,
        Err(b) => {
            writeln!(err, "{}: {}", b.reason, b.message)?;
            return Ok(false);
        }
    };
    let pins: BTreeMap<String, Pin> = if args.no_resolve {
        images
            .into_iter()
            .map(|i| (i.image.clone(), Pin::Pinned(i.image)))
            .collect()
    } else {
        args.registry.resolve(images, &credentials).await
    };
    let mut ok = true;
    for cluster in &selected {
        let work = cluster
            .kernels
            .clone()
            .and_then(|k| plan::render(&mcm, &cluster.name, &k, &pins));
        match work {
            Ok(work) => {
                let mut v = serde_json::to_value(&work)?;
                if let Some(o) = v.as_object_mut() {
                    o.remove("status");
                }
                writeln!(out, "---\n{}", serde_saphyr::to_string(&v)?.trim_end())?;
            }
            Err(b) => {
                ok = false;
                writeln!(
                    err,
                    "cluster {}: {}: {}",
                    printable(&cluster.name),
                    b.reason,
                    printable(&b.message)
                )?;
            }
        }
    }
    writeln!(err, "{} clusters selected of {}", selected.len(), clusters.len())?;
    Ok(ok)
}

/// `mcm` at revision `wanted`, older revisions read from the ControllerRevisions in `file`.
fn at_revision(
    mcm: &ManagedClusterModule,
    wanted: &str,
    file: Option<&PathBuf>,
) -> anyhow::Result<ManagedClusterModule> {
    let stored: Vec<ControllerRevision> = match file {
        Some(path) => documents(path)?
            .into_iter()
            .filter(|d| d["kind"] == "ControllerRevision")
            .map(serde_json::from_value)
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading the ControllerRevisions of {}", path.display()))?,
        None => Vec::new(),
    };
    crate::rollout::pick::at_revision(mcm, wanted, &stored).map_err(anyhow::Error::msg)
}

/// One line per selected cluster of each MCM: state, kernels, node counts, the revision its
/// ManifestWork carries, reason; and where the MCM's rollout stands.
pub async fn status(only: Option<&str>, out: &mut dyn Write) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the hub (KUBECONFIG or in-cluster)")?;
    let mcms: Vec<ManagedClusterModule> = match only {
        Some(name) => vec![Api::<ManagedClusterModule>::all(client.clone()).get(name).await?],
        None => {
            Api::<ManagedClusterModule>::all(client.clone())
                .list(&ListParams::default())
                .await?
                .items
        }
    };
    let clusters: Vec<Arc<ManagedCluster>> = Api::<ManagedCluster>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(Arc::new)
        .collect();
    let works: Vec<Arc<ManifestWork>> = Api::<ManifestWork>::all(client)
        .list(&ListParams::default().labels(MCM_NAME_LABEL))
        .await?
        .items
        .into_iter()
        .map(Arc::new)
        .collect();
    for mcm in &mcms {
        writeln!(out, "{}", status_table(mcm, &clusters, &works))?;
    }
    Ok(())
}

/// `text` safe to print on a terminal: what spokes write (claims, feedback, condition messages)
/// reaches the table, so control characters (ANSI escapes start with ESC), line breaks and the
/// bidirectional overrides that reorder what is shown (U+202E and friends) become `\u{..}`.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// The per-cluster table of one MCM (pure, so it is tested without a cluster).
pub fn status_table(
    mcm: &ManagedClusterModule,
    clusters: &[Arc<ManagedCluster>],
    works: &[Arc<ManifestWork>],
) -> String {
    let own = observe::own_works(mcm, works);
    let problems: BTreeMap<&str, (&str, &str)> = mcm
        .status
        .iter()
        .flat_map(|s| {
            s.problems
                .iter()
                .map(|p| (p.cluster.as_str(), (p.reason.as_str(), p.message.as_str())))
        })
        .collect();
    let mut rows = vec![["CLUSTER", "STATE", "KERNELS", "NODES", "REVISION", "REASON"].map(str::to_string)];
    for c in observe::selected_clusters(mcm, clusters) {
        let work = own.get(&c.name);
        let kernels = work
            .and_then(|w| w.annotations().get(KERNELS_ANNOTATION).cloned())
            .or_else(|| c.kernels.as_ref().ok().map(|k| k.join(",")))
            .unwrap_or_default();
        let (state, nodes, mut reason) = match work.map(|w| work_outcome(w)) {
            Some(o) if o.failure.is_some() => {
                let (r, m) = o.failure.unwrap_or_default();
                (
                    "Degraded",
                    format!("{}/{}", o.nodes_loaded, o.nodes_desired),
                    format!("{r}: {m}"),
                )
            }
            Some(o) if o.applied => (
                "Applied",
                format!("{}/{}", o.nodes_loaded, o.nodes_desired),
                String::new(),
            ),
            Some(_) => (
                "Pending",
                "-".to_string(),
                "waiting for the work agent".to_string(),
            ),
            None => match &c.kernels {
                Err(b) => ("Blocked", "-".to_string(), format!("{}: {}", b.reason, b.message)),
                Ok(_) => ("Blocked", "-".to_string(), String::new()),
            },
        };
        if let (true, Some((r, m))) = (reason.is_empty(), problems.get(c.name.as_str())) {
            reason = format!("{r}: {m}");
        }
        let revision = work
            .and_then(|w| w.annotations().get(REVISION_ANNOTATION).cloned())
            .unwrap_or_else(|| "-".to_string());
        rows.push(
            [
                c.name.clone(),
                state.to_string(),
                kernels,
                nodes,
                revision,
                reason,
            ]
            .map(|cell| printable(&cell)),
        );
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut text = format!("ManagedClusterModule {}", printable(&mcm.name_any()));
    if let Some(r) = mcm.status.as_ref().and_then(|s| s.rollout.as_ref()) {
        text.push_str(&printable(&format!(
            " (rollout to {}: {}, wave {}; updated {}, in progress {}, failed {}, pending {})",
            r.target_revision, r.phase, r.wave, r.updated, r.in_progress, r.failed, r.pending
        )));
    }
    text.push('\n');
    for r in rows {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {:w4$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4]
        );
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use kmm_api::{ClusterProblem, ManagedClusterModuleStatus};

    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn status_table_shows_every_selected_cluster_with_its_state_and_reason() {
        let mut mcm: ManagedClusterModule = parse(
            "apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1\nkind: ManagedClusterModule\nmetadata: {name: gpu}\n\
             spec: {spokeNamespace: d, selector: {env: prod}, moduleSpec: {selector: {}}}\n",
        );
        mcm.status = Some(ManagedClusterModuleStatus {
            problems: vec![ClusterProblem {
                cluster: "c".into(),
                state: "Blocked".into(),
                reason: "ImageNotFound".into(),
                message: "push it".into(),
            }],
            rollout: Some(kmm_api::mcm::RolloutStatus {
                target_revision: "0123abcdef".into(),
                phase: "Progressing".into(),
                wave: 2,
                ..Default::default()
            }),
            ..Default::default()
        });
        let claim = |k: &str| {
            format!(
                "status: {{clusterClaims: [{{name: kernel-versions.kmm.node.kubernetes.io, value: '{k}'}}]}}"
            )
        };
        let cluster = |name: &str, env: &str, extra: &str| -> Arc<ManagedCluster> {
            Arc::new(parse(&format!(
                "apiVersion: cluster.open-cluster-management.io/v1\nkind: ManagedCluster\n\
                 metadata: {{name: {name}, labels: {{env: {env}}}}}\nspec: {{}}\n{extra}\n"
            )))
        };
        let clusters = vec![
            cluster("a", "prod", &claim("6.1.0-1")),
            cluster("b", "prod", ""),
            cluster("c", "prod", &claim("6.1.0-2")),
            cluster("z", "dev", &claim("6.1.0-1")),
        ];
        let work: Arc<ManifestWork> = Arc::new(parse(
            "apiVersion: work.open-cluster-management.io/v1\nkind: ManifestWork\n\
             metadata: {name: gpu, namespace: a, generation: 2, labels: {kmm.node.kubernetes.io/managedclustermodule.name: gpu},\n\
               annotations: {hub.kmm.sigs.x-k8s.io/kernels: 6.1.0-1, hub.kmm.sigs.x-k8s.io/revision: 0123abcdef}}\n\
             spec: {workload: {manifests: []}}\n\
             status:\n  conditions: [{type: Applied, status: 'True', reason: R, message: m, observedGeneration: 2,\n\
               lastTransitionTime: '2026-01-01T00:00:00Z'}]\n  resourceStatus: {manifests: [{resourceMeta: {ordinal: 0}, conditions: [],\n\
               statusFeedback: {values: [{name: moduleLoader.availableNumber, fieldValue: {type: Integer, integer: 3}},\n\
                                         {name: moduleLoader.desiredNumber, fieldValue: {type: Integer, integer: 4}}]}}]}\n",
        ));
        let table = status_table(&mcm, &clusters, &[work]);
        let lines: Vec<Vec<&str>> = table
            .lines()
            .skip(2)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[0][..5], ["a", "Applied", "6.1.0-1", "3/4", "0123abcdef"]);
        assert_eq!(lines[1][..4], ["b", "Blocked", "-", "-"]);
        assert!(
            table.starts_with("ManagedClusterModule gpu (rollout to 0123abcdef: Progressing, wave 2;"),
            "{table}"
        );
        assert!(table.lines().nth(3).unwrap().contains("NoKernelClaim"), "{table}");
        assert_eq!(lines[2][..4], ["c", "Blocked", "6.1.0-2", "-"]);
        assert!(table.contains("ImageNotFound: push it"), "{table}");
        assert!(
            !table.contains("\nz "),
            "unselected clusters are not listed: {table}"
        );
    }

    #[test]
    fn spoke_text_cannot_steer_the_terminal() {
        let shown = printable("ok\u{1b}[31mred\u{202e}txt.exe\nsecond line\u{7}");
        assert!(
            !shown.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{shown}"
        );
        assert!(shown.contains("\\u{1b}[31mred\\u{202e}txt.exe"), "{shown}");
        assert_eq!(
            printable("5.14.0-70.el9.x86_64 ünïcode"),
            "5.14.0-70.el9.x86_64 ünïcode"
        );
    }
}
