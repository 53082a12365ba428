//! Observe: everything reconcile needs from the API and the registry, gathered before any
//! decision. Clusters and ManifestWorks come from the shared reflector stores (one watch each for
//! the whole fleet, never a list per reconcile); digests from the cached [`DigestResolver`].

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kmm_api::{
    ManagedClusterModule,
    labels::MCM_NAME_LABEL,
    ocm::{ManagedCluster, ManifestWork},
};
use kube::{Api, ResourceExt, runtime::reflector::ObjectRef};
use oci_client::secrets::RegistryAuth;
use thiserror::Error;

use super::{
    Context,
    desired::plan::{self, Blocker, ImageRef, Pin},
    trust,
};
use crate::{
    pull_secret::{Credentials, PullSecretError},
    registry::{DigestResolver, RegistryError},
};

/// Registry lookups in flight at once for one reconcile.
const LOOKUP_CONCURRENCY: usize = 8;

/// One selected cluster and what it reports.
pub struct SelectedCluster {
    pub name: String,
    pub kernels: Result<Vec<String>, Blocker>,
    /// Kernels it reports that the hub refused, and why (the others still count).
    pub refused: Vec<String>,
    /// Why the hub cannot hear from it now (its `ManagedClusterConditionAvailable` is Unknown
    /// or False): what its ManifestWork reports is then old news.
    pub unreachable: Option<String>,
}

/// A cluster's ManagedCluster labels from the fleet cache, by key (none when it is gone): the
/// rollout reads them per cluster, so a scan of the store here would make a round O(clusters²).
pub fn cluster_labels(ctx: &Context, cluster: &str) -> BTreeMap<String, String> {
    ctx.clusters
        .get(&ObjectRef::new(cluster))
        .map(|c| c.labels().clone())
        .unwrap_or_default()
}

/// `Some(why)` when the cluster's `ManagedClusterConditionAvailable` condition is not True. A
/// cluster that has none yet (still joining) is not called unreachable.
pub fn unreachable(cluster: &ManagedCluster) -> Option<String> {
    let available = cluster
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "ManagedClusterConditionAvailable")?;
    if available.status == "True" {
        return None;
    }
    let since = available.last_transition_time.0;
    let detail = if available.message.is_empty() {
        available.reason.clone()
    } else {
        available.message.clone()
    };
    Some(format!(
        "the cluster is unreachable (ManagedClusterConditionAvailable {} since {since}: {detail}); its last reported state may be out of date",
        available.status
    ))
}

/// The world as one MCM's reconcile sees it.
pub struct Observed {
    pub clusters: Vec<SelectedCluster>,
    /// This MCM's ManifestWorks, by cluster namespace.
    pub works: BTreeMap<String, Arc<ManifestWork>>,
    /// Every image any selected cluster needs, looked up.
    pub pins: BTreeMap<String, Pin>,
    /// A spec error that blocks every cluster (bad regexp, unknown variable, ...).
    pub spec_error: Option<Blocker>,
}

impl Observed {
    /// The same world with `pins` laid over the registry's answers (images a Job is making).
    pub fn with_pins(mut self, pins: BTreeMap<String, Pin>) -> Self {
        self.pins.extend(pins);
        self
    }
}

/// The clusters an MCM selects, sorted by name.
pub fn selected_clusters(
    mcm: &ManagedClusterModule,
    clusters: &[Arc<ManagedCluster>],
) -> Vec<SelectedCluster> {
    selected_clusters_checked(mcm, clusters).0
}

/// [`selected_clusters`], and whether two kernels shared an image tag spelling (then a change on
/// one cluster can change what another keeps, so no cluster is reconciled alone).
pub fn selected_clusters_checked(
    mcm: &ManagedClusterModule,
    clusters: &[Arc<ManagedCluster>],
) -> (Vec<SelectedCluster>, bool) {
    let mut out: Vec<SelectedCluster> = clusters
        .iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none() && plan::selects(mcm, c))
        .map(|c| {
            let (kernels, refused) = plan::checked_cluster_kernels(c);
            SelectedCluster {
                name: c.name_any(),
                kernels,
                refused,
                unreachable: unreachable(c),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    let collisions = plan::refuse_tag_collisions(&mut out);
    (out, collisions)
}

/// This MCM's ManifestWorks (by the MCM-name label), by namespace.
pub fn own_works(
    mcm: &ManagedClusterModule,
    works: &[Arc<ManifestWork>],
) -> BTreeMap<String, Arc<ManifestWork>> {
    let name = mcm.name_any();
    works
        .iter()
        .filter(|w| w.labels().get(MCM_NAME_LABEL) == Some(&name) && w.name_any() == name)
        .map(|w| (w.namespace().unwrap_or_default(), w.clone()))
        .collect()
}

/// The images the kernels of the selected clusters need.
pub fn images_needed(
    mcm: &ManagedClusterModule,
    clusters: &[SelectedCluster],
) -> Result<BTreeSet<ImageRef>, Blocker> {
    // Each kernel maps on its own, so the union of all kernels needs the same images as every
    // set does, and the mappings are compiled once.
    let kernels: BTreeSet<&String> = clusters
        .iter()
        .filter_map(|c| c.kernels.as_ref().ok())
        .flatten()
        .collect();
    let kernels: Vec<String> = kernels.into_iter().cloned().collect();
    Ok(plan::images_for(mcm, &kernels)?.into_iter().collect())
}

/// Gathers the state one reconcile of `mcm` needs.
pub async fn observe(mcm: &ManagedClusterModule, ctx: &Context) -> Observed {
    observe_checked(mcm, ctx).await.0
}

/// [`observe`], and whether kernels' tag spellings collided (see [`selected_clusters_checked`]).
pub async fn observe_checked(mcm: &ManagedClusterModule, ctx: &Context) -> (Observed, bool) {
    let t = std::time::Instant::now();
    let (clusters, collisions) = selected_clusters_checked(mcm, &ctx.clusters.state());
    let works = ctx
        .recent_writes
        .overlay(&mcm.name_any(), own_works(mcm, &ctx.works.state()));
    let (images, spec_error) = match trust_blocker(mcm, ctx).await {
        Some(b) => (BTreeSet::new(), Some(b)),
        None => match images_needed(mcm, &clusters) {
            Ok(images) => (images, None),
            Err(b) => (BTreeSet::new(), Some(b)),
        },
    };
    let selected_in = t.elapsed();
    let auth = pull_auth(mcm, ctx).await;
    let pins = resolve(&ctx.resolver, images, &auth).await;
    tracing::debug!(?selected_in, resolved_in = ?t.elapsed(), "observe");
    (
        Observed {
            clusters,
            works,
            pins,
            spec_error,
        },
        collisions,
    )
}

/// Why the MCM may not have what it names (see [`trust`]): a forbidden namespace or service
/// account, or a hub-namespace Secret that does not grant it. Reads Secret metadata only.
async fn trust_blocker(mcm: &ManagedClusterModule, ctx: &Context) -> Option<Blocker> {
    let config = &ctx.config;
    if let Err(b) = trust::check_worker_identity(
        mcm,
        &config.forbidden_namespaces,
        &config.forbidden_service_accounts,
    ) {
        return Some(b);
    }
    let named = trust::named_secrets(&mcm.spec.module_spec);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &config.namespace);
    let mut found: BTreeMap<String, Option<String>> = BTreeMap::new();
    for name in named.keys() {
        match api.get_metadata_opt(name).await {
            Ok(Some(s)) => {
                found.insert(
                    name.clone(),
                    s.annotations().get(trust::ALLOWED_MODULES_ANNOTATION).cloned(),
                );
            }
            Ok(None) => {}
            Err(e) => {
                return Some(Blocker::new(
                    crate::reason::Reason::RegistryError,
                    format!(
                        "cannot read Secret {}/{name} to check that it grants this MCM: {e}",
                        config.namespace
                    ),
                ));
            }
        }
    }
    trust::ungranted(&mcm.name_any(), &config.namespace, &named, |s| {
        found.get(s).map(Option::as_deref)
    })
}

/// Why `imageRepoSecret` gives no credentials (every lookup of the MCM then reports it).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PullAuthError {
    #[error("imageRepoSecret {secret} not found in the hub namespace {namespace}")]
    NotFound { namespace: String, secret: String },
    #[error("imageRepoSecret {namespace}/{secret}: {source}")]
    Unusable {
        namespace: String,
        secret: String,
        #[source]
        source: PullSecretError,
    },
    /// The API server did not answer (kept as text: a kube error cannot be cloned into pins).
    #[error("reading imageRepoSecret {namespace}/{secret}: {reason}")]
    Read {
        namespace: String,
        secret: String,
        reason: String,
    },
}

/// Why an image could not be pinned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LookupError {
    #[error(transparent)]
    Auth(#[from] PullAuthError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Credentials from `imageRepoSecret`, read from the hub's namespace.
pub async fn pull_auth(
    mcm: &ManagedClusterModule,
    ctx: &Context,
) -> Result<Option<Credentials>, PullAuthError> {
    let Some(secret) = mcm
        .spec
        .module_spec
        .image_repo_secret
        .as_ref()
        .map(|s| s.name.clone())
    else {
        return Ok(None);
    };
    let namespace = ctx.config.namespace.clone();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    match api.get_opt(&secret).await {
        Ok(Some(s)) => {
            let data: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            Credentials::from_secret_data(&data)
                .map(Some)
                .map_err(|source| PullAuthError::Unusable {
                    namespace,
                    secret,
                    source,
                })
        }
        Ok(None) => Err(PullAuthError::NotFound { namespace, secret }),
        Err(e) => Err(PullAuthError::Read {
            namespace,
            secret,
            reason: e.to_string(),
        }),
    }
}

/// Looks every image up, a few at a time; the resolver caches and de-duplicates across MCMs.
pub async fn resolve(
    resolver: &DigestResolver,
    images: BTreeSet<ImageRef>,
    auth: &Result<Option<Credentials>, PullAuthError>,
) -> BTreeMap<String, Pin> {
    stream::iter(images)
        .map(|image| async move {
            let pin = match auth {
                Err(why) => Pin::Failed(why.clone().into()),
                Ok(creds) => {
                    let auth = creds
                        .as_ref()
                        .map_or(RegistryAuth::Anonymous, |c| c.for_image(&image.image));
                    match resolver.pin(&image.image, &image.tls(), &auth).await {
                        Ok(pinned) => Pin::Pinned(pinned),
                        Err(RegistryError::NotFound { .. }) => Pin::Missing,
                        Err(e) => Pin::Failed(e.into()),
                    }
                }
            };
            (image.image, pin)
        })
        .buffer_unordered(LOOKUP_CONCURRENCY)
        .collect()
        .await
}
