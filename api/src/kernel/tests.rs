use k8s_openapi::api::core::v1::LocalObjectReference;
use proptest::prelude::*;
use rstest::rstest;

use super::*;
use crate::module::{BuildArg, ModprobeSpec, ModuleLoaderSpec};

fn local(name: &str) -> LocalObjectReference {
    LocalObjectReference {
        name: name.to_owned(),
    }
}

fn mk_literal(kernel: &str, image: &str) -> KernelMapping {
    KernelMapping {
        literal: Some(kernel.into()),
        container_image: Some(image.into()),
        ..Default::default()
    }
}

fn mk_regexp(re: &str, image: &str) -> KernelMapping {
    KernelMapping {
        regexp: Some(re.into()),
        container_image: Some(image.into()),
        ..Default::default()
    }
}

fn mk_spec(mappings: Vec<KernelMapping>) -> ModuleSpec {
    ModuleSpec {
        module_loader: Some(ModuleLoaderSpec {
            container: ModuleLoaderContainerSpec {
                modprobe: ModprobeSpec {
                    module_name: Some("kmm_ci_a".into()),
                    ..Default::default()
                },
                kernel_mappings: mappings,
                ..Default::default()
            },
            service_account_name: None,
        }),
        ..Default::default()
    }
}

fn container(spec: &mut ModuleSpec) -> &mut ModuleLoaderContainerSpec {
    &mut spec
        .module_loader
        .as_mut()
        .expect("test spec has a module loader")
        .container
}

fn mk_build(dockerfile: &str, args: &[(&str, &str)], secrets: &[&str]) -> Build {
    Build {
        dockerfile_config_map: local(dockerfile),
        build_args: Some(
            args.iter()
                .map(|(n, v)| BuildArg {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
        ),
        secrets: Some(secrets.iter().map(|s| local(s)).collect()),
        ..Default::default()
    }
}

fn mk_sign(unsigned: Option<&str>, key: &str, cert: &str, files: &[&str]) -> Sign {
    Sign {
        unsigned_image: unsigned.map(Into::into),
        key_secret: local(key),
        cert_secret: local(cert),
        files_to_sign: Some(files.iter().map(|f| (*f).into()).collect()),
        ..Default::default()
    }
}

#[rstest]
#[case("5.14.0-70.el9.x86_64+", "5.14.0-70.el9.x86_64")]
#[case("5.14.0-70.el9.x86_64", "5.14.0-70.el9.x86_64")]
#[case("6.1.0+cos++", "6.1.0+cos+")]
fn trims_one_trailing_plus(#[case] kernel: &str, #[case] want: &str) {
    assert_eq!(trim_kernel(kernel), want);
}

#[rstest]
#[case(
    "5.14.0-70.13.1.el9_0.x86_64",
    "5.14.0-70.13.1.el9_0.x86_64",
    "5.14.0",
    "5",
    "14",
    "0"
)]
#[case("6.1.0-18-cloud-amd64", "6.1.0-18-cloud-amd64", "6.1.0", "6", "1", "0")]
#[case("5.15.0+rt,x", "5.15.0_rt_x", "5.15.0_rt_x", "5", "15", "0_rt_x")]
#[case(
    "4.18.0-305.rt7.72.el8.x86_64",
    "4.18.0-305.rt7.72.el8.x86_64",
    "4.18.0",
    "4",
    "18",
    "0"
)]
fn computes_kernel_variables(
    #[case] kernel: &str,
    #[case] full: &str,
    #[case] xyz: &str,
    #[case] x: &str,
    #[case] y: &str,
    #[case] z: &str,
) {
    let vars = KernelVars::new(kernel).expect("valid kernel");
    assert_eq!((vars.full.as_str(), vars.xyz.as_str()), (full, xyz));
    assert_eq!((vars.x.as_str(), vars.y.as_str(), vars.z.as_str()), (x, y, z));
}

#[rstest]
#[case("5.14")]
#[case("5")]
#[case("")]
fn refuses_kernels_with_fewer_than_three_components(#[case] kernel: &str) {
    assert_eq!(
        KernelVars::new(kernel),
        Err(MappingError::KernelFormat {
            kernel: kernel.into()
        })
    );
}

#[test]
fn first_matching_mapping_wins_in_list_order() {
    let spec = mk_spec(vec![
        mk_regexp(r"^5\.14", "regexp:first"),
        mk_literal("5.14.0-70.el9.x86_64", "literal:second"),
        mk_regexp(r".*", "catch:all"),
    ]);
    let mapper = KernelMapper::new(&spec, "m", "ns").expect("valid spec");
    assert_eq!(
        mapper
            .resolve("5.14.0-70.el9.x86_64")
            .expect("match")
            .container_image,
        "regexp:first"
    );
    assert_eq!(
        mapper
            .resolve("6.1.0-18-cloud-amd64")
            .expect("match")
            .mapping_index,
        2
    );
}

#[test]
fn regexps_search_unanchored_and_literals_match_exactly() {
    let spec = mk_spec(vec![mk_literal("5.14.0-70", "lit:1"), mk_regexp(r"el9", "re:1")]);
    let mapper = KernelMapper::new(&spec, "m", "ns").expect("valid spec");
    assert_eq!(mapper.find("5.14.0-70"), Some(0));
    assert_eq!(mapper.find("5.14.0-70.x"), None, "literal is not a prefix match");
    assert_eq!(
        mapper.find("5.14.0-71.el9.x86_64"),
        Some(1),
        "regexp matches a substring"
    );
}

#[test]
fn trailing_plus_is_trimmed_before_matching() {
    let spec = mk_spec(vec![mk_literal("6.1.0-cos", "img:${KERNEL_FULL_VERSION}")]);
    let resolved = resolve(&spec, "m", "ns", "6.1.0-cos+").expect("match after trimming");
    assert_eq!(resolved.kernel, "6.1.0-cos");
    assert_eq!(resolved.container_image, "img:6.1.0-cos");
}

#[test]
fn no_mapping_is_its_own_error() {
    let spec = mk_spec(vec![mk_literal("5.14.0-70.el9.x86_64", "a:b")]);
    let err = resolve(&spec, "m", "ns", "6.1.0-18-cloud-amd64").unwrap_err();
    assert!(err.is_no_mapping());
    assert_eq!(
        err.to_string(),
        "no kernel mapping matches kernel 6.1.0-18-cloud-amd64"
    );
}

#[test]
fn invalid_regexp_is_reported_even_behind_a_match() {
    let spec = mk_spec(vec![mk_literal("5.14.0-70", "a:b"), mk_regexp("5.14.(", "c:d")]);
    let err = KernelMapper::new(&spec, "m", "ns").unwrap_err();
    assert!(
        matches!(err, MappingError::InvalidRegexp { index: 1, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("kernelMappings[1].regexp \"5.14.(\" is not a valid regular expression")
    );
}

#[test]
fn missing_module_loader_is_an_error_not_a_panic() {
    let spec = ModuleSpec::default();
    assert_eq!(
        resolve(&spec, "m", "ns", "5.14.0-1").unwrap_err(),
        MappingError::NoModuleLoader
    );
}

#[test]
fn image_falls_back_to_the_container_and_expands_every_variable() {
    let mut spec = mk_spec(vec![KernelMapping {
        regexp: Some(".*".into()),
        ..Default::default()
    }]);
    container(&mut spec).container_image = Some(
        "reg/${MOD_NAMESPACE}/${MOD_NAME}:${KERNEL_FULL_VERSION}-${KERNEL_VERSION}-${KERNEL_XYZ}-$KERNEL_X.$KERNEL_Y.$KERNEL_Z"
            .into(),
    );
    let resolved = resolve(&spec, "my-kmod", "spoke-ns", "5.14.0-70.el9.x86_64+").expect("resolves");
    assert_eq!(
        resolved.container_image,
        "reg/spoke-ns/my-kmod:5.14.0-70.el9.x86_64-5.14.0-70.el9.x86_64-5.14.0-5.14.0"
    );
}

#[test]
fn mapping_without_any_image_is_an_error() {
    let spec = mk_spec(vec![KernelMapping {
        regexp: Some(".*".into()),
        ..Default::default()
    }]);
    assert_eq!(
        resolve(&spec, "m", "ns", "5.14.0-1").unwrap_err(),
        MappingError::NoImage { index: 0 }
    );
}

#[test]
fn unknown_image_variable_names_the_field() {
    let spec = mk_spec(vec![mk_regexp(".*", "reg/x:${KERNEL_FULLVERSION}")]);
    let err = resolve(&spec, "m", "ns", "5.14.0-1").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("kernelMappings[0]: containerImage: unknown variable ${KERNEL_FULLVERSION}"),
        "{err}"
    );
}

#[test]
fn builds_merge_dockerfile_args_and_secrets() {
    let mut spec = mk_spec(vec![KernelMapping {
        build: Some(mk_build(
            "mapping-df",
            &[("B", "mapped"), ("Z", "z"), ("C", "c")],
            &["s2"],
        )),
        ..mk_regexp(".*", "a:b")
    }]);
    let mut container_build = mk_build("container-df", &[("A", "a"), ("B", "b")], &["s1"]);
    container_build.selector = Some([("k".to_owned(), "v".to_owned())].into());
    container(&mut spec).build = Some(container_build);
    let build = resolve(&spec, "m", "ns", "5.14.0-1")
        .expect("resolves")
        .build
        .expect("build");
    assert_eq!(build.dockerfile_config_map.name, "mapping-df");
    let args: Vec<_> = build
        .build_args
        .iter()
        .flatten()
        .map(|a| format!("{}={}", a.name, a.value))
        .collect();
    assert_eq!(
        args,
        ["A=a", "B=mapped", "C=c", "Z=z"],
        "same name in place, new ones sorted after"
    );
    let secrets: Vec<_> = build.secrets.iter().flatten().map(|s| s.name.as_str()).collect();
    assert_eq!(secrets, ["s1", "s2"]);
    assert!(
        build.selector.is_some(),
        "selector comes from the container build"
    );
}

#[rstest]
#[case(true, false, "container-df")]
#[case(false, true, "mapping-df")]
fn a_single_build_is_used_as_is(#[case] at_container: bool, #[case] at_mapping: bool, #[case] want: &str) {
    let mut spec = mk_spec(vec![KernelMapping {
        build: at_mapping.then(|| mk_build("mapping-df", &[], &[])),
        ..mk_regexp(".*", "a:b")
    }]);
    container(&mut spec).build = at_container.then(|| mk_build("container-df", &[], &[]));
    let build = resolve(&spec, "m", "ns", "5.14.0-1")
        .expect("resolves")
        .build
        .expect("build");
    assert_eq!(build.dockerfile_config_map.name, want);
}

#[test]
fn signs_merge_and_expand_kernel_variables_only() {
    let mut spec = mk_spec(vec![KernelMapping {
        sign: Some(mk_sign(
            Some("reg/u:${KERNEL_XYZ}"),
            "",
            "mapping-cert",
            &["/opt/lib/modules/${KERNEL_FULL_VERSION}/b.ko"],
        )),
        ..mk_regexp(".*", "a:b")
    }]);
    container(&mut spec).sign = Some(mk_sign(Some("reg/c:1"), "key", "cert", &["/opt/a.ko"]));
    let sign = resolve(&spec, "m", "ns", "5.14.0-70.el9")
        .expect("resolves")
        .sign
        .expect("sign");
    assert_eq!(sign.unsigned_image.as_deref(), Some("reg/u:5.14.0"));
    assert_eq!(
        sign.key_secret.name, "key",
        "empty mapping key keeps the container's"
    );
    assert_eq!(sign.cert_secret.name, "mapping-cert");
    assert_eq!(
        sign.files_to_sign.as_deref(),
        Some(
            &[
                "/opt/a.ko".to_owned(),
                "/opt/lib/modules/5.14.0-70.el9/b.ko".to_owned()
            ][..]
        )
    );

    let mut with_mod_name = spec.clone();
    with_mod_name
        .module_loader
        .as_mut()
        .expect("loader")
        .container
        .kernel_mappings[0]
        .sign = Some(mk_sign(Some("reg/${MOD_NAME}:1"), "k", "c", &[]));
    let err = resolve(&with_mod_name, "m", "ns", "5.14.0-70.el9").unwrap_err();
    assert!(
        err.to_string()
            .contains("sign.unsignedImage: unknown variable ${MOD_NAME}"),
        "{err}"
    );
}

#[rstest]
#[case(None, None, TlsOptions::default())]
#[case(Some(true), None, TlsOptions { insecure: true, insecure_skip_tls_verify: false })]
#[case(Some(true), Some(false), TlsOptions { insecure: false, insecure_skip_tls_verify: true })]
fn registry_tls_comes_from_the_mapping_else_the_container(
    #[case] container_insecure: Option<bool>,
    #[case] mapping_insecure: Option<bool>,
    #[case] want: TlsOptions,
) {
    let mut spec = mk_spec(vec![KernelMapping {
        registry_tls: mapping_insecure.map(|i| TlsOptions {
            insecure: i,
            insecure_skip_tls_verify: !i,
        }),
        ..mk_regexp(".*", "a:b")
    }]);
    container(&mut spec).registry_tls = container_insecure.map(|i| TlsOptions {
        insecure: i,
        ..Default::default()
    });
    assert_eq!(
        resolve(&spec, "m", "ns", "5.14.0-1")
            .expect("resolves")
            .registry_tls,
        want
    );
}

#[rstest]
#[case(Some(&["c1", "c2"][..]), None, None, None, &["c1", "c2"][..])]
#[case(Some(&["c1"][..]), Some(&["m1"][..]), None, None, &["m1"][..])]
#[case(Some(&["c1"][..]), Some(&[][..]), None, None, &[][..])]
#[case(Some(&["c1"][..]), None, Some("old"), None, &["old"][..])]
#[case(None, Some(&["m1"][..]), Some("old-c"), Some("old-m"), &["old-m"][..])]
fn in_tree_removals(
    #[case] container_list: Option<&[&str]>,
    #[case] mapping_list: Option<&[&str]>,
    #[case] container_single: Option<&str>,
    #[case] mapping_single: Option<&str>,
    #[case] want: &[&str],
) {
    let to_vec = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let mut spec = mk_spec(vec![KernelMapping {
        in_tree_modules_to_remove: mapping_list.map(to_vec),
        in_tree_module_to_remove: mapping_single.map(Into::into),
        ..mk_regexp(".*", "a:b")
    }]);
    container(&mut spec).in_tree_modules_to_remove = container_list.map(to_vec);
    container(&mut spec).in_tree_module_to_remove = container_single.map(Into::into);
    assert_eq!(
        resolve(&spec, "m", "ns", "5.14.0-1")
            .expect("resolves")
            .in_tree_modules_to_remove,
        to_vec(want)
    );
}

#[rstest]
#[case(
    "example.org/repository/minimal-driver:final",
    "default",
    "example-module",
    "example.org/repository/minimal-driver:final-default_example-module_kmm_unsigned"
)]
#[case(
    "registry:5000/org/driver",
    "ns",
    "m",
    "registry:5000/org/driver:ns_m_kmm_unsigned"
)]
#[case(
    "registry:5000/org/driver:5.14.0",
    "ns",
    "m",
    "registry:5000/org/driver:5.14.0-ns_m_kmm_unsigned"
)]
fn unsigned_image_names_follow_the_documented_rule(
    #[case] image: &str,
    #[case] namespace: &str,
    #[case] name: &str,
    #[case] want: &str,
) {
    assert_eq!(unsigned_image_name(image, namespace, name).as_deref(), Ok(want));
}

#[test]
fn unsigned_image_name_refuses_digests_and_overlong_tags() {
    assert!(
        unsigned_image_name("r/x@sha256:abc", "ns", "m")
            .unwrap_err()
            .contains("pinned by digest")
    );
    let long = format!("r/x:{}", "t".repeat(112));
    assert!(
        unsigned_image_name(&long, "ns", "m")
            .unwrap_err()
            .contains("OCI tags hold at most 128")
    );
}

#[test]
fn build_and_sign_route_through_the_unsigned_image() {
    let mut spec = mk_spec(vec![mk_regexp(".*", "reg/drv:${KERNEL_FULL_VERSION}")]);
    container(&mut spec).build = Some(mk_build("df", &[], &[]));
    container(&mut spec).sign = Some(mk_sign(Some("ignored:1"), "k", "c", &["/opt/x.ko"]));
    let resolved = resolve(&spec, "m", "ns", "5.14.0-1").expect("resolves");
    let intermediate = "reg/drv:5.14.0-1-ns_m_kmm_unsigned";
    assert_eq!(
        resolved.build_target("m", "ns").expect("ok").as_deref(),
        Some(intermediate)
    );
    assert_eq!(
        resolved.sign_source("m", "ns").expect("ok").as_deref(),
        Some(intermediate)
    );

    container(&mut spec).build = None;
    let sign_only = resolve(&spec, "m", "ns", "5.14.0-1").expect("resolves");
    assert_eq!(sign_only.build_target("m", "ns").expect("ok"), None);
    assert_eq!(
        sign_only.sign_source("m", "ns").expect("ok").as_deref(),
        Some("ignored:1")
    );
}

proptest! {
    /// Whatever the spec strings and the kernel, resolution returns a value or an error.
    #[test]
    fn resolution_never_panics(
        kernel in ".{0,40}",
        literal in proptest::option::of(".{0,20}"),
        regexp in proptest::option::of(".{0,20}"),
        image in proptest::option::of("[a-z/:$%{}#+=_.-]{0,30}"),
        files in proptest::collection::vec("[a-z/${}_#:.-]{0,20}", 0..3),
    ) {
        let mut spec = mk_spec(vec![KernelMapping {
            literal, regexp, container_image: image,
            sign: Some(mk_sign(Some("${KERNEL_X}"), "k", "c", &files.iter().map(String::as_str).collect::<Vec<_>>())),
            ..Default::default()
        }]);
        container(&mut spec).build = Some(mk_build("df", &[], &[]));
        if let Ok(mapper) = KernelMapper::new(&spec, "m", "ns")
            && let Ok(resolved) = mapper.resolve(&kernel)
        {
            let _ = resolved.build_target("m", "ns");
            let _ = resolved.sign_source("m", "ns");
        }
        let _ = template::expand(&kernel, &[("A", "b")]);
        let _ = template::referenced(&kernel);
    }
}

#[test]
fn offered_variable_lists_match_what_expansion_provides() {
    let vars = KernelVars::new("5.14.0-1").expect("valid kernel");
    assert_eq!(vars.kernel_vars().map(|(n, _)| n), SIGN_VARIABLES);
    assert_eq!(vars.image_vars("m", "ns").map(|(n, _)| n), IMAGE_VARIABLES);
}

#[rstest]
#[case::quoted_dots(r"^\Q5.14.0-70.el9\E\.x86_64$", "5.14.0-70.el9.x86_64", true)]
#[case::quoted_dots_are_literal(r"^\Q5.14.0\E", "5x14y0", false)]
#[case::quote_to_the_end(r"\Q1.2.3+", "1.2.3+", true)]
#[case::quote_to_the_end_is_literal(r"^\Q1.2.3+$", "1.2.3", false)]
#[case::escaped_backslash_is_not_a_quote(r"^a\\Qb$", r"a\Qb", true)]
#[case::plain_escapes_survive(r"^\d+\.\d+$", "6.1", true)]
fn re2_quoting_is_accepted_like_upstream(#[case] regexp: &str, #[case] kernel: &str, #[case] matches: bool) {
    let spec = mk_spec(vec![KernelMapping {
        regexp: Some(regexp.to_owned()),
        container_image: Some("r/x:1".to_owned()),
        ..Default::default()
    }]);
    let mapper = KernelMapper::new(&spec, "m", "ns").expect("a \\Q...\\E regexp compiles");
    assert_eq!(mapper.find(kernel).is_some(), matches, "{regexp} on {kernel}");
}

#[test]
fn one_module_cannot_make_the_hub_compile_unbounded_regexps() {
    use crate::module::{KernelMapping, ModuleLoaderSpec};
    let mut spec = ModuleSpec::default();
    let big = format!(
        "^({})$",
        (0..200)
            .map(|i| format!("5\\.{i}\\.[0-9]+-.*"))
            .collect::<Vec<_>>()
            .join("|")
    );
    let mut loader = ModuleLoaderSpec::default();
    loader.container.container_image = Some("img".into());
    loader.container.kernel_mappings = (0..500)
        .map(|_| KernelMapping {
            regexp: Some(big.clone()),
            ..Default::default()
        })
        .collect();
    spec.module_loader = Some(loader);
    let started = std::time::Instant::now();
    let err = KernelMapper::new(&spec, "m", "ns").unwrap_err();
    assert!(
        matches!(err, MappingError::RegexpBudget { count: 500, .. }),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    // One regexp whose program alone is too large is refused by its own limit.
    let huge = r"\w{2000}".to_string();
    if let Some(l) = spec.module_loader.as_mut() {
        l.container.kernel_mappings.truncate(1);
        l.container.kernel_mappings[0].regexp = Some(huge);
    }
    let err = KernelMapper::new(&spec, "m", "ns").unwrap_err();
    assert!(matches!(err, MappingError::InvalidRegexp { .. }), "{err}");
}
