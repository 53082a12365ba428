//! Build and sign steps (pure): what must run on the hub before a missing image exists. Names are
//! a stable hash of what is produced, so many clusters and many MCMs needing one image share one
//! Job, and a hub restart finds the Job it already started.

use std::collections::BTreeMap;

use kmm_api::{
    ManagedClusterModule,
    kernel::{KernelMapper, ResolvedMapping, normalize_kernel},
    module::{Build, Sign, TlsOptions},
};
use kube::ResourceExt;

use super::plan::Pin;

/// What a [`Step`] does; its name is the Job's `job-type` label and part of the Job's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    Build,
    Sign,
}

impl StepKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            StepKind::Build => "build",
            StepKind::Sign => "sign",
        }
    }
}

impl std::fmt::Display for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step the hub must run for a missing image.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Build {
        kernel: String,
        target: String,
        build: Build,
        push_tls: TlsOptions,
        auth: Option<String>,
    },
    Sign {
        kernel: String,
        source: String,
        target: String,
        sign: Sign,
        push_tls: TlsOptions,
        auth: Option<String>,
    },
}

impl Step {
    /// TLS of the registry the step pushes to.
    pub fn push_tls(&self) -> &TlsOptions {
        match self {
            Step::Build { push_tls, .. } | Step::Sign { push_tls, .. } => push_tls,
        }
    }

    pub fn target(&self) -> &str {
        match self {
            Step::Build { target, .. } | Step::Sign { target, .. } => target,
        }
    }

    pub fn kind(&self) -> StepKind {
        match self {
            Step::Build { .. } => StepKind::Build,
            Step::Sign { .. } => StepKind::Sign,
        }
    }

    pub fn kernel(&self) -> &str {
        match self {
            Step::Build { kernel, .. } | Step::Sign { kernel, .. } => kernel,
        }
    }

    /// `kmm-build-<hash>` / `kmm-sign-<hash>`: a hash of what the step produces.
    pub fn job_name(&self, trigger: Option<i64>) -> String {
        let key = format!(
            "{}\n{}\n{}\n{}",
            self.kind(),
            self.target(),
            self.kernel(),
            trigger.unwrap_or(0)
        );
        format!("kmm-{}-{:016x}", self.kind(), fnv1a(key.as_bytes()))
    }
}

/// FNV-1a, 64 bits: tiny and stable across Rust releases (std's hasher is not guaranteed to be).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The images a missing one depends on, to look up before deciding ([`step_for`]): the unsigned
/// intermediate of a build+sign mapping.
pub fn intermediate_image(mcm: &ManagedClusterModule, resolved: &ResolvedMapping) -> Option<String> {
    let name = mcm.name_any();
    match (&resolved.build, &resolved.sign) {
        (Some(_), Some(_)) => resolved
            .build_target(&name, &mcm.spec.spoke_namespace)
            .ok()
            .flatten(),
        _ => None,
    }
}

/// What to run for `kernel`'s image, when it is missing and the mapping says how to make it.
pub fn step_for(
    mcm: &ManagedClusterModule,
    resolved: &ResolvedMapping,
    pins: &BTreeMap<String, Pin>,
) -> Option<Step> {
    if !matches!(pins.get(&resolved.container_image), Some(Pin::Missing)) {
        return None;
    }
    let name = mcm.name_any();
    let ns = &mcm.spec.spoke_namespace;
    let auth = mcm
        .spec
        .module_spec
        .image_repo_secret
        .as_ref()
        .map(|s| s.name.clone());
    // One spelling of the kernel for the tag, the build arguments and the Job name: a raw
    // kernel the tag cannot hold must not reach the build as something else.
    let kernel = normalize_kernel(&resolved.kernel);
    match (&resolved.build, &resolved.sign) {
        (Some(build), None) => Some(Step::Build {
            kernel,
            target: resolved.container_image.clone(),
            build: build.clone(),
            push_tls: resolved.registry_tls.clone(),
            auth,
        }),
        (Some(build), Some(sign)) => {
            let intermediate = resolved.build_target(&name, ns).ok().flatten()?;
            if matches!(pins.get(&intermediate), Some(Pin::Pinned(_))) {
                Some(Step::Sign {
                    kernel,
                    source: intermediate,
                    target: resolved.container_image.clone(),
                    sign: sign.clone(),
                    push_tls: resolved.registry_tls.clone(),
                    auth,
                })
            } else {
                Some(Step::Build {
                    kernel,
                    target: intermediate,
                    build: build.clone(),
                    push_tls: resolved.registry_tls.clone(),
                    auth,
                })
            }
        }
        (None, Some(sign)) => Some(Step::Sign {
            kernel,
            source: resolved.sign_source(&name, ns).ok().flatten()?,
            target: resolved.container_image.clone(),
            sign: sign.clone(),
            push_tls: resolved.registry_tls.clone(),
            auth,
        }),
        (None, None) => None,
    }
}

/// Resolves `kernel` with the MCM's mappings (spoke namespace as `MOD_NAMESPACE`).
pub fn resolve(mcm: &ManagedClusterModule, kernel: &str) -> Option<ResolvedMapping> {
    let name = mcm.name_any();
    KernelMapper::new(&mcm.spec.module_spec, &name, &mcm.spec.spoke_namespace)
        .ok()?
        .resolve_trimmed(kernel)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{BUILD, FINAL, K, SIGN, UNSIGNED, lookup_failed, mk_build_mcm, pins};

    #[test]
    fn a_missing_image_with_build_gets_a_build_of_the_final_image() {
        let mcm = mk_build_mcm("m", BUILD);
        let r = resolve(&mcm, K).unwrap();
        let step = step_for(&mcm, &r, &pins(&[(FINAL, Pin::Missing)])).unwrap();
        assert!(matches!(&step, Step::Build { target, .. } if target == FINAL));
        assert_eq!(
            step_for(&mcm, &r, &pins(&[(FINAL, Pin::Pinned("x@sha256:1".into()))])),
            None,
            "present: nothing to do"
        );
        assert_eq!(
            step_for(&mcm, &r, &pins(&[(FINAL, lookup_failed("down"))])),
            None,
            "unknown: wait"
        );
    }

    #[test]
    fn build_and_sign_builds_the_unsigned_image_first_then_signs_it() {
        let mcm = mk_build_mcm("m", &format!("{BUILD}{SIGN}"));
        let r = resolve(&mcm, K).unwrap();
        assert_eq!(intermediate_image(&mcm, &r).as_deref(), Some(UNSIGNED));
        let build = step_for(
            &mcm,
            &r,
            &pins(&[(FINAL, Pin::Missing), (UNSIGNED, Pin::Missing)]),
        )
        .unwrap();
        assert!(
            matches!(&build, Step::Build { target, .. } if target == UNSIGNED),
            "{build:?}"
        );
        let sign = step_for(
            &mcm,
            &r,
            &pins(&[
                (FINAL, Pin::Missing),
                (UNSIGNED, Pin::Pinned("u@sha256:2".into())),
            ]),
        )
        .unwrap();
        assert!(
            matches!(&sign, Step::Sign { source, target, .. } if source == UNSIGNED && target == FINAL),
            "{sign:?}"
        );
    }

    #[test]
    fn job_names_depend_on_what_is_produced_not_on_who_asks() {
        let a = mk_build_mcm("a", BUILD);
        let b = mk_build_mcm("b", BUILD);
        let p = pins(&[(FINAL, Pin::Missing)]);
        let sa = step_for(&a, &resolve(&a, K).unwrap(), &p).unwrap();
        let sb = step_for(&b, &resolve(&b, K).unwrap(), &p).unwrap();
        assert_eq!(
            sa.job_name(None),
            sb.job_name(None),
            "two MCMs needing one image share the Job"
        );
        assert_ne!(
            sa.job_name(None),
            sa.job_name(Some(2)),
            "imageRebuildTriggerGeneration gives a new Job"
        );
        assert!(sa.job_name(None).starts_with("kmm-build-") && sa.job_name(None).len() <= 63);
        assert_eq!(sa.job_name(None), sa.job_name(None));
    }

    #[test]
    fn kernels_spelled_alike_in_the_tag_build_the_same_job_with_the_same_args() {
        let mcm = mk_build_mcm("m", BUILD);
        let plus = format!("{K}+debug");
        let underscore = format!("{K}_debug");
        let (Some(a), Some(b)) = (resolve(&mcm, &plus), resolve(&mcm, &underscore)) else {
            panic!("both resolve");
        };
        assert_eq!(a.container_image, b.container_image, "one tag");
        let p = pins(&[(a.container_image.as_str(), Pin::Missing)]);
        let (sa, sb) = (step_for(&mcm, &a, &p).unwrap(), step_for(&mcm, &b, &p).unwrap());
        assert_eq!(sa.kernel(), underscore, "the build gets the tag's spelling");
        assert_eq!(sa, sb);
        assert_eq!(sa.job_name(None), sb.job_name(None));
    }
}
