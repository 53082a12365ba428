use rstest::rstest;

use super::*;
use crate::{
    fixtures::{BUILD, FINAL, K, SIGN, UNSIGNED, lookup_failed, mk_build_mcm, mk_mcm, pins},
    mcm_controller::desired::plan::images_for,
};

/// A second kernel, mapped only by [`literal_mcm`].
const OTHER: &str = "5.14.0-70.el9.x86_64";
/// `sign.unsignedImage` of the sign-only fixture, for [`K`].
const SOURCE: &str = "reg.example/kmod-unsigned:6.1.0-28-cloud-amd64";
const SIGN_FROM: &str = "            sign:\n              keySecret: {name: key}\n              certSecret: {name: cert}\n\
                         \x20             unsignedImage: reg.example/kmod-unsigned:${KERNEL_FULL_VERSION}\n\
                         \x20             filesToSign: ['/opt/lib/modules/${KERNEL_FULL_VERSION}/my_kmod.ko']\n";

/// An image pinned by digest: build+sign cannot name an unsigned intermediate for it.
const DIGEST_REF: &str = "reg.example/kmod@sha256:0123";

/// Which MCM a row is about: the build fixtures, and MCMs for the cases they do not cover.
#[derive(Clone, Copy, Debug)]
enum Mcm {
    Plain,
    Build,
    BuildSign,
    Sign,
    SignFrom,
    Literal,
    BadImageVar,
    BadSignVar,
    BadRegexp,
    DigestBuildSign,
}

fn literal_mcm(image: &str, regexp: &str, extra: &str) -> ManagedClusterModule {
    mk_mcm(&format!(
        "apiVersion: hub.kmm.sigs.x-k8s.io/v1beta1\nkind: ManagedClusterModule\nmetadata: {{name: lit}}\n\
         spec:\n  spokeNamespace: drivers\n  selector: {{}}\n  moduleSpec:\n    selector: {{}}\n    moduleLoader:\n\
         \x20     container:\n        modprobe: {{moduleName: my_kmod}}\n        kernelMappings:\n\
         \x20         - literal: {OTHER}\n            containerImage: '{image}'\n\
         \x20         - regexp: '{regexp}'\n            containerImage: 'reg.example/never:${{KERNEL_XYZ}}'\n{extra}"
    ))
}

fn mcm(which: Mcm) -> ManagedClusterModule {
    match which {
        Mcm::Plain => mk_build_mcm("m", ""),
        Mcm::Build => mk_build_mcm("m", BUILD),
        Mcm::BuildSign => mk_build_mcm("m", &format!("{BUILD}{SIGN}")),
        Mcm::Sign => mk_build_mcm("m", SIGN),
        Mcm::SignFrom => mk_build_mcm("m", SIGN_FROM),
        Mcm::Literal => literal_mcm("reg.example/lit:${KERNEL_FULL_VERSION}", "^4\\.", ""),
        Mcm::BadImageVar => {
            let mut m = mk_build_mcm("m", BUILD);
            let loader = m.spec.module_spec.module_loader.as_mut().unwrap();
            loader.container.kernel_mappings[0].container_image =
                Some("reg.example/kmod:${KERNEL_FULLVERSION}".into());
            m
        }
        Mcm::BadSignVar => mk_build_mcm("m", &SIGN.replace("${KERNEL_FULL_VERSION}", "${MOD_NAME}")),
        Mcm::BadRegexp => literal_mcm("reg.example/lit:1", "([", ""),
        Mcm::DigestBuildSign => {
            let mut m = mk_build_mcm("m", &format!("{BUILD}{SIGN}"));
            let loader = m.spec.module_spec.module_loader.as_mut().unwrap();
            loader.container.kernel_mappings[0].container_image = Some(DIGEST_REF.into());
            m
        }
    }
}

fn pinned(image: &str) -> Pin {
    Pin::Pinned(format!("{image}@sha256:1"))
}

/// One row: MCM, kernel, registry answers, expected verdict, words the reason must hold.
#[rstest]
// Every fixture MCM with its image present is ready, digest reported.
#[case::plain_present(Mcm::Plain, K, &[(FINAL, pinned(FINAL))], Verdict::Ready { digest: pinned(FINAL).digest() }, "exists")]
#[case::build_present(Mcm::Build, K, &[(FINAL, pinned(FINAL))], Verdict::Ready { digest: pinned(FINAL).digest() }, "exists")]
#[case::build_sign_present(Mcm::BuildSign, K, &[(FINAL, pinned(FINAL))], Verdict::Ready { digest: pinned(FINAL).digest() }, "exists")]
#[case::sign_present(Mcm::Sign, K, &[(FINAL, pinned(FINAL))], Verdict::Ready { digest: pinned(FINAL).digest() }, "exists")]
#[case::trailing_plus_is_the_same_kernel(Mcm::Build, "6.1.0-28-cloud-amd64+", &[(FINAL, pinned(FINAL))], Verdict::Ready { digest: pinned(FINAL).digest() }, FINAL)]
// Missing images: what the rollout would do.
#[case::plain_missing(Mcm::Plain, K, &[(FINAL, Pin::Missing)], Verdict::ImageMissing, "no build or sign; push it")]
#[case::build_missing(Mcm::Build, K, &[(FINAL, Pin::Missing)], Verdict::NeedsBuild, "the hub would build it")]
#[case::build_sign_builds_first(Mcm::BuildSign, K, &[(FINAL, Pin::Missing), (UNSIGNED, Pin::Missing)], Verdict::NeedsBuild, UNSIGNED)]
#[case::build_sign_unsigned_unknown_builds(Mcm::BuildSign, K, &[(FINAL, Pin::Missing)], Verdict::NeedsBuild, "then sign it into")]
#[case::build_sign_signs_the_built(Mcm::BuildSign, K, &[(FINAL, Pin::Missing), (UNSIGNED, pinned(UNSIGNED))], Verdict::NeedsSign, UNSIGNED)]
#[case::sign_without_source(Mcm::Sign, K, &[(FINAL, Pin::Missing)], Verdict::ImageMissing, "no unsignedImage")]
#[case::sign_from_present_source(Mcm::SignFrom, K, &[(FINAL, Pin::Missing), (SOURCE, pinned(SOURCE))], Verdict::NeedsSign, SOURCE)]
#[case::sign_from_missing_source(Mcm::SignFrom, K, &[(FINAL, Pin::Missing), (SOURCE, Pin::Missing)], Verdict::ImageMissing, "push reg.example/kmod-unsigned")]
#[case::sign_from_unknown_source(Mcm::SignFrom, K, &[(FINAL, Pin::Missing), (SOURCE, lookup_failed("down"))], Verdict::RegistryError, "down")]
// The registry did not answer.
#[case::registry_down(Mcm::Build, K, &[(FINAL, lookup_failed("connection refused"))], Verdict::RegistryError, "connection refused")]
#[case::not_looked_up(Mcm::Build, K, &[], Verdict::RegistryError, "not looked up")]
// Mappings: the literal wins for its kernel, nothing matches another.
#[case::literal_matches(Mcm::Literal, OTHER, &[("reg.example/lit:5.14.0-70.el9.x86_64", pinned("r"))], Verdict::Ready { digest: pinned("r").digest() }, "reg.example/lit:5.14.0-70")]
#[case::no_mapping(Mcm::Literal, K, &[], Verdict::NoMapping, "no kernelMappings entry matches kernel 6.1.0-28-cloud-amd64")]
// Bad `${VAR}` and other spec errors, whatever the registry says.
#[case::bad_image_variable(Mcm::BadImageVar, K, &[(FINAL, pinned(FINAL))], Verdict::BadVariable, "unknown variable ${KERNEL_FULLVERSION}")]
#[case::bad_sign_variable(Mcm::BadSignVar, K, &[(FINAL, Pin::Missing)], Verdict::BadVariable, "sign.filesToSign: unknown variable ${MOD_NAME}")]
#[case::digest_image_present_ships(Mcm::DigestBuildSign, K, &[(DIGEST_REF, pinned("d"))], Verdict::Ready { digest: pinned("d").digest() }, "exists")]
#[case::digest_image_missing_cannot_build_sign(Mcm::DigestBuildSign, K, &[(DIGEST_REF, Pin::Missing)], Verdict::InvalidSpec, "pinned by digest")]
#[case::bad_regexp(Mcm::BadRegexp, OTHER, &[], Verdict::InvalidSpec, "not a valid regular expression")]
fn verdicts(
    #[case] which: Mcm,
    #[case] kernel: &str,
    #[case] answers: &[(&str, Pin)],
    #[case] want: Verdict,
    #[case] says: &str,
) {
    let mcm = mcm(which);
    let got = check_all(&mcm, &[kernel.to_string()], &pins(answers));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].kernel, kernel);
    assert_eq!(got[0].verdict, want, "{which:?}: {}", got[0].reason);
    assert!(got[0].reason.contains(says), "{which:?}: {}", got[0].reason);
}

impl Pin {
    /// The pinned reference of a `Pinned` test answer.
    fn digest(&self) -> String {
        match self {
            Pin::Pinned(p) => p.clone(),
            other => panic!("not pinned: {other:?}"),
        }
    }
}

#[test]
fn stages_follow_the_verdict() {
    let stage = |v: Verdict| v.stage();
    assert_eq!(stage(Verdict::Ready { digest: "d".into() }), Stage::Done);
    assert_eq!(stage(Verdict::NeedsBuild), Stage::Build);
    assert_eq!(stage(Verdict::NeedsSign), Stage::Sign);
    for v in [
        Verdict::NoMapping,
        Verdict::BadVariable,
        Verdict::ImageMissing,
        Verdict::InvalidSpec,
        Verdict::RegistryError,
    ] {
        assert_eq!(v.stage(), Stage::Image, "{v:?}");
        assert!(!v.is_ready());
    }
}

#[test]
fn the_image_asked_about_is_the_one_the_rollout_pins() {
    let kernels = [K.to_string(), OTHER.to_string(), "4.18.0-1".to_string()];
    for which in [
        Mcm::Plain,
        Mcm::Build,
        Mcm::BuildSign,
        Mcm::Sign,
        Mcm::SignFrom,
        Mcm::Literal,
    ] {
        let mcm = mcm(which);
        let asked: Vec<ImageRef> = lookups(&mcm, &kernels, &BTreeMap::new()).into_iter().collect();
        let rollout = images_for(&mcm, &kernels).unwrap();
        assert_eq!(asked, rollout, "{which:?}");
        assert!(!asked.is_empty(), "{which:?}");
    }
}

#[test]
fn the_image_to_sign_is_asked_about_once_the_final_one_is_missing() {
    let kernels = [K.to_string()];
    let images = |which, known: &[(&str, Pin)]| -> Vec<String> {
        lookups(&mcm(which), &kernels, &pins(known))
            .into_iter()
            .map(|i| i.image)
            .collect()
    };
    assert_eq!(images(Mcm::BuildSign, &[(FINAL, Pin::Missing)]), [UNSIGNED]);
    assert_eq!(images(Mcm::SignFrom, &[(FINAL, Pin::Missing)]), [SOURCE]);
    assert!(
        images(Mcm::Build, &[(FINAL, Pin::Missing)]).is_empty(),
        "a build reads no image"
    );
    assert!(
        images(Mcm::BuildSign, &[(FINAL, pinned(FINAL))]).is_empty(),
        "present: done"
    );
    assert!(
        images(Mcm::BadImageVar, &[]).is_empty(),
        "nothing to ask about a bad template"
    );
    assert!(images(Mcm::BadRegexp, &[]).is_empty());
}

#[test]
fn several_kernels_keep_their_order_and_each_its_verdict() {
    let mcm = mcm(Mcm::Build);
    let k2 = "6.1.0-29-cloud-amd64";
    let final2 = "reg.example/kmod:6.1.0-29-cloud-amd64";
    let got = check_all(
        &mcm,
        &[k2.to_string(), K.to_string()],
        &pins(&[(FINAL, pinned(FINAL)), (final2, Pin::Missing)]),
    );
    let verdicts: Vec<(&str, &Verdict)> = got.iter().map(|c| (c.kernel.as_str(), &c.verdict)).collect();
    assert_eq!(
        verdicts,
        [
            (k2, &Verdict::NeedsBuild),
            (
                K,
                &Verdict::Ready {
                    digest: pinned(FINAL).digest()
                }
            )
        ]
    );
}

#[test]
fn a_lookup_error_names_the_image_once() {
    let naming = Pin::Failed(
        crate::registry::RegistryError::Lookup {
            image: FINAL.into(),
            reason: "refused".into(),
        }
        .into(),
    );
    let reason = &check_all(&mcm(Mcm::Build), &[K.to_string()], &pins(&[(FINAL, naming)]))[0].reason;
    assert_eq!(reason.matches(FINAL).count(), 1, "{reason}");
    let other = &check_all(
        &mcm(Mcm::Build),
        &[K.to_string()],
        &pins(&[(FINAL, lookup_failed("down"))]),
    )[0]
    .reason;
    assert!(other.starts_with(&format!("cannot look up {FINAL}: ")), "{other}");
}
