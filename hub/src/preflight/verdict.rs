//! The preflight verdict of one (MCM, kernel) pair (pure): would the rollout find the image this
//! kernel needs, or what would it have to do first. It resolves the kernel with the rollout's own
//! [`KernelMapper`] (so the same mapping wins and the same `${VAR}` rules expand the image), and
//! decides build or sign with the rollout's own [`step_for`], from registry answers passed in as
//! [`Pin`]s. Looking images up is the caller's job: [`lookups`] names the images to ask about.

use std::collections::{BTreeMap, BTreeSet};

use kmm_api::{
    ManagedClusterModule,
    kernel::{KernelMapper, MappingError, ResolvedMapping},
};

use crate::mcm_controller::{
    desired::{
        job::{Step, step_for},
        plan::{ImageRef, Pin},
    },
    observe::LookupError,
};

/// What a kernel upgrade would meet for one MCM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The image exists; the rollout pins it to this digest reference.
    Ready { digest: String },
    /// The image is missing and the mapping's `build` would make it.
    NeedsBuild,
    /// The image is missing, the image to sign exists, and the mapping's `sign` would make it.
    NeedsSign,
    /// No kernel mapping matches the kernel: this MCM loads nothing there.
    NoMapping,
    /// A `${VAR}` of the mapping does not expand (unknown name, bad syntax).
    BadVariable,
    /// The image is missing and nothing configured would make it.
    ImageMissing,
    /// The mapping cannot be used for another reason (bad regexp, no image, ...).
    InvalidSpec,
    /// The registry could not answer; nothing is known about the image.
    RegistryError,
}

impl Verdict {
    pub const fn as_str(&self) -> &'static str {
        match self {
            Verdict::Ready { .. } => "Ready",
            Verdict::NeedsBuild => "NeedsBuild",
            Verdict::NeedsSign => "NeedsSign",
            Verdict::NoMapping => "NoMapping",
            Verdict::BadVariable => "BadVariable",
            Verdict::ImageMissing => "ImageMissing",
            Verdict::InvalidSpec => "InvalidSpec",
            Verdict::RegistryError => "RegistryError",
        }
    }

    /// How far the kernel got (upstream PreflightValidation's `verificationStage`, with the
    /// hub's own Build and Sign steps between Image and Done).
    pub const fn stage(&self) -> Stage {
        match self {
            Verdict::Ready { .. } => Stage::Done,
            Verdict::NeedsBuild => Stage::Build,
            Verdict::NeedsSign => Stage::Sign,
            _ => Stage::Image,
        }
    }

    pub const fn is_ready(&self) -> bool {
        matches!(self, Verdict::Ready { .. })
    }
}

/// Where a kernel's image stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Image,
    Build,
    Sign,
    Done,
}

impl Stage {
    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::Image => "Image",
            Stage::Build => "Build",
            Stage::Sign => "Sign",
            Stage::Done => "Done",
        }
    }
}

/// A verdict with the sentence that explains it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub kernel: String,
    pub verdict: Verdict,
    pub reason: String,
}

/// The MCM's mappings, compiled once for all kernels (as the rollout does).
fn mapper(mcm: &ManagedClusterModule) -> Result<KernelMapper<'_>, MappingError> {
    KernelMapper::new(&mcm.spec.module_spec, name(mcm), &mcm.spec.spoke_namespace)
}

/// The MCM's name as a `&str` borrowed from the object (the mapper borrows it).
fn name(mcm: &ManagedClusterModule) -> &str {
    mcm.metadata.name.as_deref().unwrap_or_default()
}

/// The images to look up before [`check`] can decide `kernels`: each kernel's image, and, once
/// `known` says it is missing, the image its `sign` step would read.
pub fn lookups(
    mcm: &ManagedClusterModule,
    kernels: &[String],
    known: &BTreeMap<String, Pin>,
) -> BTreeSet<ImageRef> {
    let Ok(mapper) = mapper(mcm) else {
        return BTreeSet::new();
    };
    let (name, ns) = (name(mcm), mcm.spec.spoke_namespace.as_str());
    let mut out = BTreeSet::new();
    for r in kernels.iter().filter_map(|k| mapper.resolve(k).ok()) {
        let tls = |image: String| ImageRef {
            image,
            insecure: r.registry_tls.insecure,
            insecure_skip_tls_verify: r.registry_tls.insecure_skip_tls_verify,
        };
        match known.get(&r.container_image) {
            None => {
                out.insert(tls(r.container_image.clone()));
            }
            Some(Pin::Missing) => {
                if let Ok(Some(source)) = r.sign_source(name, ns) {
                    out.insert(tls(source));
                }
            }
            Some(_) => {}
        }
    }
    out
}

/// The verdict of every kernel, in the order given.
pub fn check_all(mcm: &ManagedClusterModule, kernels: &[String], pins: &BTreeMap<String, Pin>) -> Vec<Check> {
    match mapper(mcm) {
        Ok(mapper) => kernels.iter().map(|k| check(mcm, &mapper, k, pins)).collect(),
        Err(e) => kernels.iter().map(|k| unusable(k, &e)).collect(),
    }
}

fn unusable(kernel: &str, e: &MappingError) -> Check {
    let verdict = match e {
        MappingError::NoMapping { .. } => Verdict::NoMapping,
        MappingError::NoModuleLoader => Verdict::NoMapping,
        MappingError::Template { .. } => Verdict::BadVariable,
        _ => Verdict::InvalidSpec,
    };
    let reason = match e {
        MappingError::NoMapping { .. } => {
            format!("no kernelMappings entry matches kernel {kernel}; add a literal or regexp mapping for it")
        }
        _ => format!("spec.moduleSpec: {e}"),
    };
    Check {
        kernel: kernel.to_string(),
        verdict,
        reason,
    }
}

/// The verdict of one kernel (as a node reports it) given the registry's answers.
pub fn check(
    mcm: &ManagedClusterModule,
    mapper: &KernelMapper<'_>,
    kernel: &str,
    pins: &BTreeMap<String, Pin>,
) -> Check {
    let r = match mapper.resolve(kernel) {
        Ok(r) => r,
        Err(e) => return unusable(kernel, &e),
    };
    let (verdict, reason) = decide(mcm, &r, pins);
    Check {
        kernel: kernel.to_string(),
        verdict,
        reason,
    }
}

fn decide(
    mcm: &ManagedClusterModule,
    r: &ResolvedMapping,
    pins: &BTreeMap<String, Pin>,
) -> (Verdict, String) {
    let image = &r.container_image;
    match pins.get(image) {
        Some(Pin::Pinned(digest)) => (
            Verdict::Ready {
                digest: digest.clone(),
            },
            format!("image {image} exists"),
        ),
        Some(Pin::Failed(why)) => (Verdict::RegistryError, lookup_failed(image, why)),
        None => (Verdict::RegistryError, format!("image {image} was not looked up")),
        Some(Pin::Missing | Pin::Blocked(_)) => missing(mcm, r, pins),
    }
}

/// Why `image` could not be looked up, naming it once (registry errors already do).
fn lookup_failed(image: &str, why: &LookupError) -> String {
    let why = why.to_string();
    if why.contains(image) {
        why
    } else {
        format!("cannot look up {image}: {why}")
    }
}

/// The image is missing: what the rollout's build/sign planning would run for it.
fn missing(
    mcm: &ManagedClusterModule,
    r: &ResolvedMapping,
    pins: &BTreeMap<String, Pin>,
) -> (Verdict, String) {
    let image = &r.container_image;
    // An intermediate name the image cannot carry stops build+sign (a present image is shipped).
    if let Err(e) = r.sign_source(name(mcm), &mcm.spec.spoke_namespace) {
        return (Verdict::InvalidSpec, format!("spec.moduleSpec: {e}"));
    }
    // step_for plans from a plain miss; a Job's state (Blocked) does not change what is needed.
    let mut as_missing = pins.clone();
    as_missing.insert(image.clone(), Pin::Missing);
    match step_for(mcm, r, &as_missing) {
        Some(Step::Build { target, .. }) if target == *image => (
            Verdict::NeedsBuild,
            format!("image {image} does not exist; the hub would build it"),
        ),
        Some(Step::Build { target, .. }) => (
            Verdict::NeedsBuild,
            format!("image {image} does not exist; the hub would build {target}, then sign it into {image}"),
        ),
        Some(Step::Sign { source, .. }) => match (r.build.is_some(), pins.get(&source)) {
            (false, Some(Pin::Missing)) => (
                Verdict::ImageMissing,
                format!(
                    "image {image} does not exist, nor does sign.unsignedImage {source} it would be signed from; push {source} or add build"
                ),
            ),
            (false, Some(Pin::Failed(why))) => (Verdict::RegistryError, lookup_failed(&source, why)),
            _ => (
                Verdict::NeedsSign,
                format!("image {image} does not exist; the hub would sign it from {source}"),
            ),
        },
        None if r.sign.is_some() => (
            Verdict::ImageMissing,
            format!("image {image} does not exist and sign has no unsignedImage to sign it from"),
        ),
        None => (
            Verdict::ImageMissing,
            format!(
                "image {image} does not exist and the mapping has no build or sign; push it, or add build/sign"
            ),
        ),
    }
}

#[cfg(test)]
#[path = "verdict_tests.rs"]
mod tests;
