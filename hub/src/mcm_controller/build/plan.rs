//! Which build and sign Jobs one MCM needs (pure): the kernels whose image is missing and whose
//! mapping says how to make it, the unsigned intermediates to look up first, and the step to run
//! for each kernel once those are known.

use std::collections::{BTreeMap, BTreeSet};

use kmm_api::{
    ManagedClusterModule,
    kernel::{KernelMapper, ResolvedMapping},
};
use kube::ResourceExt;

use crate::mcm_controller::desired::{
    job::{self, Step},
    plan::{ImageRef, Pin},
};

/// One Job to have, and the image whose clusters wait for it.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedStep {
    /// The Job's name (a hash of what it produces).
    pub job: String,
    pub step: Step,
    /// The image the clusters pull: the signed one when the Job builds its unsigned source.
    pub waits: String,
}

/// The mappings of `kernels` whose image the registry reported missing and that have `build`
/// or `sign`; images not looked up, present or unreachable need no Job.
pub fn missing<'a>(
    mcm: &ManagedClusterModule,
    kernels: impl IntoIterator<Item = &'a String>,
    pins: &BTreeMap<String, Pin>,
) -> Vec<ResolvedMapping> {
    let kernels: BTreeSet<&String> = kernels.into_iter().collect();
    // Regexps compiled once for all kernels, not once per kernel.
    let name = mcm.name_any();
    let Ok(mapper) = KernelMapper::new(&mcm.spec.module_spec, &name, &mcm.spec.spoke_namespace) else {
        return Vec::new();
    };
    kernels
        .into_iter()
        .filter_map(|k| mapper.resolve_trimmed(k).ok())
        .filter(|r| matches!(pins.get(&r.container_image), Some(Pin::Missing)))
        .filter(|r| r.build.is_some() || r.sign.is_some())
        .collect()
}

/// The unsigned images of build+sign mappings: whether they exist decides build or sign.
pub fn intermediates(mcm: &ManagedClusterModule, missing: &[ResolvedMapping]) -> BTreeSet<ImageRef> {
    missing
        .iter()
        .filter_map(|r| {
            job::intermediate_image(mcm, r).map(|image| ImageRef {
                image,
                insecure: r.registry_tls.insecure,
                insecure_skip_tls_verify: r.registry_tls.insecure_skip_tls_verify,
            })
        })
        .collect()
}

/// The Jobs to have, one per name; `pins` includes the intermediates' lookups.
pub fn steps(
    mcm: &ManagedClusterModule,
    missing: &[ResolvedMapping],
    pins: &BTreeMap<String, Pin>,
) -> Vec<PlannedStep> {
    let trigger = mcm.spec.module_spec.image_rebuild_trigger_generation;
    let by_name: BTreeMap<String, PlannedStep> = missing
        .iter()
        .filter_map(|r| {
            let step = job::step_for(mcm, r, pins)?;
            let job = step.job_name(trigger);
            let planned = PlannedStep {
                job: job.clone(),
                step,
                waits: r.container_image.clone(),
            };
            Some((job, planned))
        })
        .collect();
    by_name.into_values().collect()
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;
    use crate::{
        fixtures::{BUILD, FINAL, K, SIGN, UNSIGNED, lookup_failed, mk_build_mcm, pins},
        mcm_controller::desired::job::StepKind,
    };

    /// What the kernel's mapping says about making its image.
    #[derive(Clone, Copy)]
    enum Makes {
        Nothing,
        Build,
        BuildSign,
    }

    fn mcm(makes: Makes) -> ManagedClusterModule {
        let mapping = match makes {
            Makes::Nothing => String::new(),
            Makes::Build => BUILD.to_string(),
            Makes::BuildSign => format!("{BUILD}{SIGN}"),
        };
        mk_build_mcm("m", &mapping)
    }

    fn missing_pin() -> Option<Pin> {
        Some(Pin::Missing)
    }

    fn pinned() -> Option<Pin> {
        Some(Pin::Pinned("x@sha256:1".into()))
    }

    fn failed() -> Option<Pin> {
        Some(lookup_failed("registry down"))
    }

    /// The whole plan for one kernel, the intermediate looked up only when asked for:
    /// (kind, target, image waiting) of the step, if any.
    fn plan(
        makes: Makes,
        final_pin: Option<Pin>,
        unsigned_pin: Option<Pin>,
    ) -> Option<(StepKind, String, String)> {
        let mcm = mcm(makes);
        let mut known: Vec<(&str, Pin)> = final_pin.map(|p| (FINAL, p)).into_iter().collect();
        let kernels = [K.to_string()];
        let missing = missing(&mcm, &kernels, &pins(&known));
        let asked = intermediates(&mcm, &missing)
            .into_iter()
            .any(|i| i.image == UNSIGNED);
        known.extend(unsigned_pin.filter(|_| asked).map(|p| (UNSIGNED, p)));
        let steps = steps(&mcm, &missing, &pins(&known));
        assert!(steps.len() <= 1, "{steps:?}");
        steps
            .into_iter()
            .next()
            .map(|s| (s.step.kind(), s.step.target().to_string(), s.waits))
    }

    #[rstest]
    #[case::present_image_needs_nothing(Makes::Build, pinned(), None, None)]
    #[case::unknown_image_waits_for_the_registry(Makes::Build, failed(), None, None)]
    #[case::not_looked_up_needs_nothing(Makes::Build, None, None, None)]
    #[case::no_build_or_sign_needs_nothing(Makes::Nothing, missing_pin(), None, None)]
    #[case::build_makes_the_final_image(Makes::Build, missing_pin(), None, Some((StepKind::Build, FINAL)))]
    #[case::build_sign_builds_the_unsigned_first(Makes::BuildSign, missing_pin(), missing_pin(), Some((StepKind::Build, UNSIGNED)))]
    #[case::build_sign_signs_once_unsigned_exists(Makes::BuildSign, missing_pin(), pinned(), Some((StepKind::Sign, FINAL)))]
    #[case::build_sign_builds_when_unsigned_unknown(Makes::BuildSign, missing_pin(), failed(), Some((StepKind::Build, UNSIGNED)))]
    fn one_step_per_missing_image(
        #[case] makes: Makes,
        #[case] final_pin: Option<Pin>,
        #[case] unsigned_pin: Option<Pin>,
        #[case] want: Option<(StepKind, &str)>,
    ) {
        let want = want.map(|(kind, target)| (kind, target.to_string(), FINAL.to_string()));
        assert_eq!(plan(makes, final_pin, unsigned_pin), want);
    }

    #[test]
    fn only_build_sign_mappings_have_an_intermediate_to_look_up() {
        let kernels = [K.to_string()];
        let p = pins(&[(FINAL, Pin::Missing)]);
        let both = mcm(Makes::BuildSign);
        let found = intermediates(&both, &missing(&both, &kernels, &p));
        assert_eq!(found.into_iter().map(|i| i.image).collect::<Vec<_>>(), [UNSIGNED]);
        let build = mcm(Makes::Build);
        assert!(intermediates(&build, &missing(&build, &kernels, &p)).is_empty());
    }

    #[test]
    fn kernels_asked_twice_get_one_job() {
        let mcm = mcm(Makes::Build);
        let kernels = [K.to_string(), K.to_string()];
        let p = pins(&[(FINAL, Pin::Missing)]);
        let steps = steps(&mcm, &missing(&mcm, &kernels, &p), &p);
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].job, steps[0].step.job_name(None));
    }
}
