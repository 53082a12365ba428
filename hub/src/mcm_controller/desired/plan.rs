//! Pure planning for one MCM: which clusters it selects, what kernels each runs, which images
//! they need pinned, and — once the digests are known — each cluster's ManifestWork or the reason
//! it cannot have one yet.
//!
//! Every cluster is rendered from the same unmodified MCM, so nothing leaks from one cluster's
//! rendering into the next, and `${MOD_NAMESPACE}` is `spec.spokeNamespace` everywhere.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kmm_api::{
    ManagedClusterModule, ModuleSpec,
    claims::{self, ClaimError},
    kernel::{KernelMapper, MappingError, normalize_kernel},
    module::TlsOptions,
    ocm::{KERNEL_VERSIONS_CLAIM, ManagedCluster, ManifestWork, ManifestWorkSpec},
    trim::{self, TrimError},
};
use kube::ResourceExt;

use super::manifestwork::work_spec;
use crate::mcm_controller::observe::{LookupError, SelectedCluster};
use crate::reason::Reason;

/// Why a selected cluster gets no (new) ManifestWork: a reason for status, Events and metric
/// labels, and a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    pub reason: Reason,
    pub message: String,
}

impl Blocker {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Does the MCM's label selector pick this cluster? `{}` picks every cluster.
pub fn selects(mcm: &ManagedClusterModule, cluster: &ManagedCluster) -> bool {
    let labels = cluster.labels();
    mcm.spec.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The kernel versions a cluster reports, trailing `+` trimmed, sorted and without repeats.
pub fn cluster_kernels(cluster: &ManagedCluster) -> Result<Vec<String>, Blocker> {
    checked_cluster_kernels(cluster).0
}

/// The usable kernels a cluster reports (or why none is), and what was refused of the rest: a
/// kernel outside the grammar, or past the per-cluster cap, is dropped and named, and the
/// cluster's other kernels still get their modules.
pub fn checked_cluster_kernels(cluster: &ManagedCluster) -> (Result<Vec<String>, Blocker>, Vec<String>) {
    let decoded = match claims::decode_kernels(|name| cluster.claim(name)) {
        Ok(d) => d,
        Err(ClaimError::Missing) => {
            return (
                Err(Blocker {
                    reason: Reason::NoKernelClaim,
                    message: format!(
                        "cluster reports no ClusterClaim {KERNEL_VERSIONS_CLAIM}; is kmm-spoke running there \
                         (rolled out by the kmm-spoke Policy) and is the ClusterClaim feature of the klusterlet on?"
                    ),
                }),
                Vec::new(),
            );
        }
        Err(other) => {
            return (
                Err(Blocker {
                    reason: Reason::MalformedKernelClaim,
                    message: other.to_string(),
                }),
                Vec::new(),
            );
        }
    };
    let refused = decoded.refused.iter().map(ToString::to_string).collect();
    (Ok(decoded.kernels), refused)
}

/// Refuses kernels that share an image-tag spelling ([`normalize_kernel`]) with a different
/// kernel reported by another (or the same) selected cluster: they would build onto one tag with
/// different inputs. The spelling's owner is the kernel already written that way (`a_b` owns
/// `a_b`, so an invented `a+b` cannot take a real `a_b`'s tag), else the smallest; every other
/// spelling is dropped from the clusters reporting it, with a message naming the owner's cluster.
/// Returns whether any kernel was dropped.
pub fn refuse_tag_collisions(clusters: &mut [SelectedCluster]) -> bool {
    let mut by_tag: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for c in clusters.iter() {
        let name = &c.name;
        for k in c.kernels.iter().flatten() {
            by_tag
                .entry(normalize_kernel(k))
                .or_default()
                .entry(k.clone())
                .or_insert_with(|| name.clone());
        }
    }
    let mut losers: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (tag, raws) in by_tag.into_iter().filter(|(_, r)| r.len() > 1) {
        let owner = raws
            .keys()
            .find(|r| **r == tag)
            .or_else(|| raws.keys().next())
            .cloned();
        let Some(owner) = owner else { continue };
        let owner_cluster = raws.get(&owner).cloned().unwrap_or_default();
        for raw in raws.into_keys().filter(|r| *r != owner) {
            losers.insert(raw, (owner.clone(), owner_cluster.clone()));
        }
    }
    if losers.is_empty() {
        return false;
    }
    for c in clusters.iter_mut() {
        let (kernels, refused) = (&mut c.kernels, &mut c.refused);
        let Ok(list) = kernels else { continue };
        list.retain(|k| match losers.get(k) {
            Some((owner, cluster)) => {
                refused.push(format!(
                    "kernel {k} is refused: its image tag spelling {} is already the kernel {owner} of cluster {cluster}",
                    normalize_kernel(k)
                ));
                false
            }
            None => true,
        });
        if list.is_empty() {
            *kernels = Err(Blocker::new(Reason::MalformedKernelClaim, refused.join("; ")));
        }
    }
    true
}

/// An image the spoke will pull, with how to reach its registry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImageRef {
    pub image: String,
    pub insecure: bool,
    pub insecure_skip_tls_verify: bool,
}

impl ImageRef {
    fn new(image: &str, tls: &TlsOptions) -> Self {
        Self {
            image: image.to_string(),
            insecure: tls.insecure,
            insecure_skip_tls_verify: tls.insecure_skip_tls_verify,
        }
    }

    pub fn tls(&self) -> TlsOptions {
        TlsOptions {
            insecure: self.insecure,
            insecure_skip_tls_verify: self.insecure_skip_tls_verify,
        }
    }
}

/// The images a cluster running `kernels` will pull (kernels without a mapping are skipped;
/// [`render`] reports them when no kernel at all matches).
pub fn images_for(mcm: &ManagedClusterModule, kernels: &[String]) -> Result<Vec<ImageRef>, Blocker> {
    let name = mcm.name_any();
    let spec = &mcm.spec.module_spec;
    let mut out = BTreeSet::new();
    if let Some(plugin) = &spec.device_plugin {
        out.insert(ImageRef::new(&plugin.container.image, &TlsOptions::default()));
        if let Some(init) = &plugin.init_container {
            out.insert(ImageRef::new(&init.image, &TlsOptions::default()));
        }
    }
    if let Some(dra) = &spec.dra {
        out.insert(ImageRef::new(&dra.container.image, &TlsOptions::default()));
        if let Some(init) = &dra.init_container {
            out.insert(ImageRef::new(&init.image, &TlsOptions::default()));
        }
    }
    if spec.module_loader.is_some() {
        let mapper = KernelMapper::new(spec, &name, &mcm.spec.spoke_namespace).map_err(invalid_spec)?;
        for kernel in kernels {
            match mapper.resolve_trimmed(kernel) {
                Ok(r) => {
                    out.insert(ImageRef::new(&r.container_image, &r.registry_tls));
                }
                Err(e) if e.is_no_mapping() => {}
                Err(e) => return Err(invalid_spec(e)),
            }
        }
    }
    Ok(out.into_iter().collect())
}

fn invalid_spec(e: MappingError) -> Blocker {
    let reason = match e {
        MappingError::RegexpBudget { .. } => Reason::RegexpBudgetExceeded,
        _ => Reason::InvalidSpec,
    };
    Blocker {
        reason,
        message: format!("spec.moduleSpec: {e}"),
    }
}

/// The outcome of looking an image up in its registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// `repo@sha256:...`
    Pinned(String),
    /// The registry says the image does not exist (yet).
    Missing,
    /// The registry could not be asked, or refused, or the credentials are unusable.
    Failed(LookupError),
    /// Missing, and a build or sign Job is making it, failed to, or cannot start: why the
    /// clusters needing it wait.
    Blocked(Blocker),
}

/// The kernel each summary line is about, with its image as shipped (pinned when known).
pub type KernelImages = BTreeMap<String, String>;

/// The Module spec a cluster running `kernels` receives, or why it cannot have one.
pub fn render_spec(
    mcm: &ManagedClusterModule,
    kernels: &[String],
    pins: &BTreeMap<String, Pin>,
) -> Result<ModuleSpec, Blocker> {
    let lookup = |image: &str| match pins.get(image) {
        Some(Pin::Pinned(p)) => Some(p.clone()),
        _ => None,
    };
    trim::spoke_module_spec(&mcm.spec.module_spec, &mcm.name_any(), &mcm.spec.spoke_namespace, kernels, lookup)
        .map_err(|e| match e {
            TrimError::Mapping(m) => invalid_spec(m),
            TrimError::NoKernelMatches { kernels } => Blocker {
                reason: Reason::NoKernelMapping,
                message: format!(
                    "no kernelMappings entry matches the cluster's kernels ({}); add a literal or regexp mapping for them",
                    kernels.join(", ")
                ),
            },
            TrimError::NotPinned { image } => match pins.get(&image) {
                Some(Pin::Failed(why)) => Blocker {
                    reason: Reason::RegistryError,
                    message: format!("cannot look up {image}: {why}"),
                },
                Some(Pin::Blocked(blocker)) => blocker.clone(),
                _ => Blocker {
                    reason: Reason::ImageNotFound,
                    message: format!(
                        "image {image} does not exist in its registry; push it, or add build/sign so the hub builds it"
                    ),
                },
            },
        })
}

/// The ManifestWork carrying `spec` to `cluster`, annotated with the kernels it was rendered for.
pub fn work_for(
    mcm: &ManagedClusterModule,
    cluster: &str,
    kernels: &[String],
    spec: ModuleSpec,
) -> Result<ManifestWork, Blocker> {
    Ok(ManifestWork {
        metadata: work_metadata_for(mcm, cluster, kernels),
        spec: work_spec_for(mcm, spec)?,
        status: None,
    })
}

/// [`work_spec`] for a rendered Module, a failure to serialize it as a `RenderError` blocker.
pub fn work_spec_for(mcm: &ManagedClusterModule, spec: ModuleSpec) -> Result<ManifestWorkSpec, Blocker> {
    work_spec(mcm, spec).map_err(|e| Blocker {
        reason: Reason::RenderError,
        message: e.to_string(),
    })
}

/// The metadata of the work for `cluster`: [`super::manifestwork::work_metadata`] and the
/// kernels its Module was rendered for.
pub fn work_metadata_for(mcm: &ManagedClusterModule, cluster: &str, kernels: &[String]) -> ObjectMeta {
    let mut metadata = super::manifestwork::work_metadata(mcm, cluster);
    metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(KERNELS_ANNOTATION.to_string(), kernels.join(","));
    metadata
}

/// The ManifestWork for one cluster, or why there is none.
pub fn render(
    mcm: &ManagedClusterModule,
    cluster: &str,
    kernels: &[String],
    pins: &BTreeMap<String, Pin>,
) -> Result<ManifestWork, Blocker> {
    work_for(mcm, cluster, kernels, render_spec(mcm, kernels, pins)?)
}

/// Annotation on each ManifestWork: the kernels its Module was rendered for.
pub const KERNELS_ANNOTATION: &str = "hub.kmm.sigs.x-k8s.io/kernels";

/// For the status summary: each kernel's image as shipped, pinned when known.
pub fn kernel_images(
    mcm: &ManagedClusterModule,
    kernels: &BTreeSet<String>,
    pins: &BTreeMap<String, Pin>,
) -> KernelImages {
    let name = mcm.name_any();
    let Ok(mapper) = KernelMapper::new(&mcm.spec.module_spec, &name, &mcm.spec.spoke_namespace) else {
        return KernelImages::new();
    };
    kernels
        .iter()
        .map(|k| {
            let image = match mapper.resolve_trimmed(k) {
                Ok(r) => match pins.get(&r.container_image) {
                    Some(Pin::Pinned(p)) => p.clone(),
                    _ => String::new(),
                },
                Err(_) => String::new(),
            };
            (k.clone(), image)
        })
        .collect()
}

#[cfg(test)]
mod tests;
