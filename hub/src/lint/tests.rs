//! One failing input per validation rule, each a small merge patch over a valid object.

use proptest::prelude::*;
use rstest::rstest;
use serde_json::{Value, json};

use super::*;

fn valid_module() -> Value {
    json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
        "kind": "Module",
        "metadata": {"name": "my-kmod", "namespace": "my-namespace"},
        "spec": {
            "selector": {"node-role.kubernetes.io/worker": ""},
            "moduleLoader": {"container": {
                "modprobe": {"moduleName": "my_kmod"},
                "kernelMappings": [
                    {"regexp": "^.+\\.x86_64$", "containerImage": "reg.example/org/my-kmod:${KERNEL_FULL_VERSION}"}
                ]
            }}
        }
    })
}

fn valid_mcm() -> Value {
    json!({
        "apiVersion": "hub.kmm.sigs.x-k8s.io/v1beta1",
        "kind": "ManagedClusterModule",
        "metadata": {"name": "my-kmod"},
        "spec": {
            "spokeNamespace": "kmm-spoke",
            "selector": {"env": "prod"},
            "moduleSpec": valid_module()["spec"].clone()
        }
    })
}

/// RFC 7386 merge patch: objects merge, `null` deletes, anything else replaces.
fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

fn lint_value(doc: &Value) -> Vec<String> {
    let yaml = serde_json::to_string(doc).expect("serializable");
    let reports = lint_str(&yaml).expect("parses");
    assert_eq!(reports.len(), 1);
    reports[0].problems.iter().map(ToString::to_string).collect()
}

fn container_patch(patch: Value) -> Value {
    json!({"spec": {"moduleLoader": {"container": patch}}})
}

#[test]
fn valid_objects_have_no_problems() {
    assert_eq!(lint_value(&valid_module()), Vec::<String>::new());
    assert_eq!(lint_value(&valid_mcm()), Vec::<String>::new());
}

#[rstest]
#[case::no_kernel_mappings(container_patch(json!({"kernelMappings": []})),
    "spec.moduleLoader.container.kernelMappings: must have at least 1 item")]
#[case::literal_and_regexp(container_patch(json!({"kernelMappings": [{"literal": "5.14.0-1", "regexp": ".*", "containerImage": "r/x:1"}]})),
    "spec.moduleLoader.container.kernelMappings[0]: set exactly one of literal and regexp")]
#[case::neither_literal_nor_regexp(container_patch(json!({"kernelMappings": [{"containerImage": "r/x:1"}]})),
    "spec.moduleLoader.container.kernelMappings[0]: set exactly one of literal and regexp")]
#[case::no_module_name(container_patch(json!({"modprobe": {"moduleName": null}})),
    "spec.moduleLoader.container.modprobe: set moduleName, or rawArgs with both load and unload (not both)")]
#[case::raw_args_without_unload(container_patch(json!({"modprobe": {"moduleName": null, "rawArgs": {"load": ["x"]}}})),
    "spec.moduleLoader.container.modprobe: set moduleName, or rawArgs with both load and unload (not both)")]
#[case::module_name_and_raw_args(container_patch(json!({"modprobe": {"rawArgs": {"load": ["x"], "unload": ["y"]}}})),
    "spec.moduleLoader.container.modprobe: set moduleName, or rawArgs with both load and unload (not both)")]
#[case::loading_order_not_starting_with_module(container_patch(json!({"modprobe": {"modulesLoadingOrder": ["other", "my_kmod"]}})),
    "spec.moduleLoader.container.modprobe: modulesLoadingOrder needs at least two modules and must start with moduleName")]
#[case::loading_order_of_one(container_patch(json!({"modprobe": {"modulesLoadingOrder": ["my_kmod"]}})),
    "spec.moduleLoader.container.modprobe: modulesLoadingOrder needs at least two modules and must start with moduleName")]
#[case::loading_order_duplicates(container_patch(json!({"modprobe": {"modulesLoadingOrder": ["my_kmod", "b", "b"]}})),
    "spec.moduleLoader.container.modprobe.modulesLoadingOrder[2]: duplicate value \"b\"")]
#[case::sign_without_key(container_patch(json!({"build": {"dockerfileConfigMap": {"name": "df"}},
        "sign": {"certSecret": {"name": "c"}, "filesToSign": ["/opt/x.ko"]}})),
    "spec.moduleLoader.container.sign.keySecret: required field is missing")]
#[case::sign_without_cert(container_patch(json!({"build": {"dockerfileConfigMap": {"name": "df"}},
        "sign": {"keySecret": {"name": "k"}, "filesToSign": ["/opt/x.ko"]}})),
    "spec.moduleLoader.container.sign.certSecret: required field is missing")]
#[case::sign_without_image(container_patch(json!({"sign": {"keySecret": {"name": "k"}, "certSecret": {"name": "c"}, "filesToSign": ["/opt/x.ko"]}})),
    "spec.moduleLoader.container: sign needs an image to sign: set build (the built image is signed) or sign.unsignedImage")]
#[case::sign_without_files(container_patch(json!({"sign": {"keySecret": {"name": "k"}, "certSecret": {"name": "c"}, "unsignedImage": "r/u:1"}})),
    "spec.moduleLoader.container.kernelMappings[0].sign.filesToSign: sign needs filesToSign: the paths of the .ko files to sign, under modprobe.dirName")]
#[case::sign_file_outside_dir(container_patch(json!({"sign": {"keySecret": {"name": "k"}, "certSecret": {"name": "c"}, "unsignedImage": "r/u:1", "filesToSign": ["/lib/modules/x.ko"]}})),
    "spec.moduleLoader.container.sign.filesToSign[0]: \"/lib/modules/x.ko\" is not under modprobe.dirName \"/opt\"; only files under it are signed")]
#[case::mod_name_in_sign(container_patch(json!({"sign": {"keySecret": {"name": "k"}, "certSecret": {"name": "c"}, "unsignedImage": "r/${MOD_NAME}:1", "filesToSign": ["/opt/x.ko"]}})),
    "spec.moduleLoader.container.sign.unsignedImage: unknown variable ${MOD_NAME}; MOD_NAME and MOD_NAMESPACE are only substituted in containerImage")]
#[case::image_without_tag(container_patch(json!({"kernelMappings": [{"regexp": ".*", "containerImage": "reg.example/org/my-kmod"}]})),
    "spec.moduleLoader.container.kernelMappings[0].containerImage: containerImage must carry a tag (':') or a digest ('@')")]
#[case::mapping_without_any_image(container_patch(json!({"kernelMappings": [{"regexp": ".*"}]})),
    "spec.moduleLoader.container: every kernel mapping needs a containerImage when the container-level containerImage is not set")]
#[case::invalid_regexp(container_patch(json!({"kernelMappings": [{"regexp": "5.14.(", "containerImage": "r/x:1"}]})),
    "spec.moduleLoader.container.kernelMappings[0].regexp: not a valid regular expression: error: unclosed group")]
#[case::unknown_variable(container_patch(json!({"kernelMappings": [{"regexp": ".*", "containerImage": "r/x:${KERNEL_FULLVERSION}"}]})),
    "spec.moduleLoader.container.kernelMappings[0].containerImage: unknown variable ${KERNEL_FULLVERSION}; known: KERNEL_FULL_VERSION")]
#[case::unterminated_variable(container_patch(json!({"kernelMappings": [{"regexp": ".*", "containerImage": "r/x:${KERNEL_FULL_VERSION"}]})),
    "spec.moduleLoader.container.kernelMappings[0].containerImage: unterminated ${ at byte 4")]
#[case::both_in_tree_fields(container_patch(json!({"inTreeModulesToRemove": ["a"], "inTreeModuleToRemove": "b"})),
    "spec.moduleLoader.container: inTreeModuleToRemove is deprecated and cannot be combined with inTreeModulesToRemove")]
#[case::in_tree_fields_across_levels(container_patch(json!({"inTreeModuleToRemove": "b",
        "kernelMappings": [{"regexp": ".*", "containerImage": "r/x:1", "inTreeModulesToRemove": ["a"]}]})),
    "spec.moduleLoader.container: do not combine the deprecated inTreeModuleToRemove with inTreeModulesToRemove across the container and a kernel mapping")]
#[case::bad_pull_policy(container_patch(json!({"imagePullPolicy": "Sometimes"})),
    "spec.moduleLoader.container.imagePullPolicy: \"Sometimes\" is not one of \"Always\", \"IfNotPresent\", \"Never\"")]
#[case::version_not_a_label_value(container_patch(json!({"version": "v1 beta"})),
    "spec.moduleLoader.container.version: \"v1 beta\" does not match the pattern")]
#[case::device_plugin_and_dra(json!({"spec": {"devicePlugin": {"container": {"image": "r/p:1"}},
        "dra": {"container": {"image": "r/d:1"}, "driverName": "d.example.com"}}}),
    "spec: spec.dra and spec.devicePlugin are mutually exclusive")]
#[case::host_path_outside_allowed(json!({"spec": {"devicePlugin": {"container": {"image": "r/p:1"},
        "volumes": [{"name": "etc", "hostPath": {"path": "/var/../etc"}}]}}}),
    "spec.devicePlugin.volumes[0].hostPath.path: \"/var/../etc\" is outside the host paths a plugin may mount")]
#[case::toleration_exists_with_value(json!({"spec": {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}}),
    "spec.tolerations[0]: operator Exists takes no value (got \"v\")")]
#[case::toleration_seconds_without_no_execute(json!({"spec": {"tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5}]}}),
    "spec.tolerations[0]: tolerationSeconds only applies to effect NoExecute")]
#[case::unknown_field_lower_case(json!({"spec": {"imageReposecret": {"name": "pull"}}}),
    "spec.imageReposecret: unknown field \"imageReposecret\"; did you mean imageRepoSecret?")]
#[case::missing_selector(json!({"spec": {"selector": null}}),
    "spec.selector: required field is missing")]
#[case::name_too_long(json!({"metadata": {"name": "a-module-name-that-is-long", "namespace": "a-long-namespace"}}),
    "metadata.name: namespace and name together are 42 characters, 1 too many: at most 41 fit")]
#[case::name_not_dns(json!({"metadata": {"name": "My_Module"}}),
    "metadata.name: \"My_Module\" must be a lowercase DNS subdomain")]
#[case::wrong_api_version(json!({"apiVersion": "kmm.sigs.x-k8s.io/v1"}),
    "apiVersion: Module needs apiVersion kmm.sigs.x-k8s.io/v1beta1, not \"kmm.sigs.x-k8s.io/v1\"")]
fn module_rule_rejects(#[case] patch: Value, #[case] expected: &str) {
    let mut doc = valid_module();
    merge(&mut doc, &patch);
    let problems = lint_value(&doc);
    assert!(
        problems.iter().any(|p| p.starts_with(expected)),
        "expected a problem starting with\n  {expected}\ngot\n  {problems:#?}"
    );
}

#[rstest]
#[case::no_spoke_namespace(json!({"spec": {"spokeNamespace": null}}), "spec.spokeNamespace: required field is missing")]
#[case::no_selector(json!({"spec": {"selector": null}}), "spec.selector: required field is missing")]
#[case::bad_spoke_namespace(json!({"spec": {"spokeNamespace": "Not_A_Namespace"}}),
    "spec.spokeNamespace: \"Not_A_Namespace\" does not match the pattern")]
#[case::name_and_spoke_namespace_too_long(json!({"metadata": {"name": "a-module-name-that-is-long"}, "spec": {"spokeNamespace": "a-long-namespace"}}),
    "metadata.name and spec.spokeNamespace together must be at most 41 characters (they are 42)")]
#[case::namespaced(json!({"metadata": {"namespace": "default"}}),
    "metadata.namespace: ManagedClusterModule is cluster-scoped")]
#[case::module_rules_apply_to_the_module_spec(json!({"spec": {"moduleSpec": {"moduleLoader": {"container": {"kernelMappings": []}}}}}),
    "spec.moduleSpec.moduleLoader.container.kernelMappings: must have at least 1 item")]
#[case::semantic_rules_apply_to_the_module_spec(json!({"spec": {"moduleSpec": {"moduleLoader": {"container": {"kernelMappings": [{"regexp": "(", "containerImage": "r/x:1"}]}}}}}),
    "spec.moduleSpec.moduleLoader.container.kernelMappings[0].regexp: not a valid regular expression")]
fn mcm_rule_rejects(#[case] patch: Value, #[case] expected: &str) {
    let mut doc = valid_mcm();
    merge(&mut doc, &patch);
    let problems = lint_value(&doc);
    assert!(
        problems.iter().any(|p| p.contains(expected)),
        "expected a problem containing\n  {expected}\ngot\n  {problems:#?}"
    );
}

#[test]
fn upstream_acronym_field_names_are_accepted() {
    let mut doc = valid_module();
    merge(
        &mut doc,
        &container_patch(json!({
            "registryTLS": {"insecure": true, "insecureSkipTLSVerify": true},
            "build": {"dockerfileConfigMap": {"name": "df"}, "baseImageRegistryTLS": {"insecure": true}},
            "sign": {"keySecret": {"name": "k"}, "certSecret": {"name": "c"}, "unsignedImageRegistryTLS": {"insecure": true},
                     "filesToSign": ["/opt/lib/modules/x.ko"]}
        })),
    );
    assert_eq!(lint_value(&doc), Vec::<String>::new());
}

#[test]
fn other_kinds_are_skipped_and_documents_are_numbered() {
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n".to_owned()
        + &serde_json::to_string(&valid_module()).expect("json");
    let reports = lint_str(&yaml).expect("parses");
    assert_eq!(reports.len(), 2);
    assert!(!reports[0].checked);
    assert_eq!(
        (reports[1].index, reports[1].object.as_str()),
        (2, "Module my-namespace/my-kmod")
    );
}

#[test]
fn broken_yaml_is_an_error_not_a_panic() {
    let err = lint_str("spec: [unclosed").unwrap_err();
    assert!(err.to_string().starts_with("not valid YAML"), "{err}");
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::from), // printable: YAML refuses raw control characters
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// Any text gives a report or a parse error, never a panic.
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,200}") {
        let _ = lint_str(&text);
    }

    /// Any value anywhere in an otherwise valid Module gives problems, never a panic.
    #[test]
    fn arbitrary_values_in_a_module_never_panic(
        field in prop_oneof![
            Just("spec"), Just("moduleLoader"), Just("container"), Just("modprobe"),
            Just("kernelMappings"), Just("sign"), Just("selector"), Just("metadata"),
        ],
        value in arbitrary_json(),
    ) {
        let mut doc = valid_module();
        let patch = match field {
            "spec" | "metadata" => json!({ field: value }),
            "moduleLoader" | "selector" => json!({"spec": { field: value }}),
            "container" => json!({"spec": {"moduleLoader": {"container": value}}}),
            other => container_patch(json!({ other: value })),
        };
        merge(&mut doc, &patch);
        let _ = lint_value(&doc);
    }
}

#[rstest]
#[case::pull_policy(container_patch(json!({"imagePullPolicy": "Sometimes"})), "the pod API accepts only Always")]
#[case::version(container_patch(json!({"version": "v1 beta"})), "label value")]
#[case::image_length(container_patch(json!({"containerImage": format!("r/x:{}", "a".repeat(9000))})), "far more than any image reference")]
fn a_rule_stricter_than_upstream_says_so_and_why(#[case] patch: Value, #[case] why: &str) {
    let mut doc = valid_module();
    merge(&mut doc, &patch);
    let problems = lint_value(&doc);
    assert!(
        problems.iter().any(
            |p| p.contains("upstream KMM accepts this; kmm-fleet refuses it on purpose") && p.contains(why)
        ),
        "{problems:#?}"
    );
}

#[test]
fn a_problem_upstream_also_has_gets_no_upstream_note() {
    let mut doc = valid_module();
    merge(&mut doc, &json!({"spec": {"selector": null}}));
    let problems = lint_value(&doc);
    assert!(!problems.is_empty());
    assert!(
        problems.iter().all(|p| !p.contains("upstream KMM")),
        "{problems:#?}"
    );
}
