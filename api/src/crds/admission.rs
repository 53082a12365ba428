//! A ValidatingAdmissionPolicy for what a CRD rule cannot check: a Module's namespace plus name
//! must fit the node label keys (see [`crate::labels`]). CRD CEL rules see `metadata.name` but not
//! `metadata.namespace`; an admission policy sees both, and needs no webhook server.

use k8s_openapi::api::admissionregistration::v1::{
    MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    ValidatingAdmissionPolicyBindingSpec, ValidatingAdmissionPolicySpec, Validation,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::labels::MAX_NAMESPACE_AND_NAME_LEN;

/// Name of the policy and of its binding.
pub const MODULE_NAME_LENGTH_POLICY: &str = "kmm-module-name-length";

/// The CEL expression the policy evaluates against each Module. `namespace` is a reserved word in
/// CEL, so the namespace is read from the request rather than from `object.metadata`.
pub fn module_name_length_expression() -> String {
    format!("size(request.namespace) + size(object.metadata.name) <= {MAX_NAMESPACE_AND_NAME_LEN}")
}

/// The message expression shown to the user when a Module is refused.
pub fn module_name_length_message() -> String {
    format!(
        "'metadata.namespace and metadata.name together must be at most {MAX_NAMESPACE_AND_NAME_LEN} characters \
         (they are ' + string(size(request.namespace) + size(object.metadata.name)) + \
         '), so that the node label keys kmm writes fit'"
    )
}

/// The policy: refuse Modules whose namespace and name are too long.
pub fn module_name_length_policy() -> ValidatingAdmissionPolicy {
    ValidatingAdmissionPolicy {
        metadata: ObjectMeta {
            name: Some(MODULE_NAME_LENGTH_POLICY.into()),
            ..Default::default()
        },
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![NamedRuleWithOperations {
                    api_groups: Some(vec!["kmm.sigs.x-k8s.io".into()]),
                    api_versions: Some(vec!["v1beta1".into()]),
                    operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                    resources: Some(vec!["modules".into()]),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            validations: Some(vec![Validation {
                expression: module_name_length_expression(),
                message_expression: Some(module_name_length_message()),
                reason: Some("Invalid".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The binding that puts the policy in force for every namespace.
pub fn module_name_length_binding() -> ValidatingAdmissionPolicyBinding {
    ValidatingAdmissionPolicyBinding {
        metadata: ObjectMeta {
            name: Some(MODULE_NAME_LENGTH_POLICY.into()),
            ..Default::default()
        },
        spec: Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: Some(MODULE_NAME_LENGTH_POLICY.into()),
            validation_actions: Some(vec!["Deny".into()]),
            ..Default::default()
        }),
    }
}

/// Policy and binding as one YAML stream, with the generated-file header.
pub fn to_yaml() -> Result<String, serde_saphyr::SerializeError> {
    Ok(format!("{}{}", super::GENERATED_HEADER, documents()?))
}

/// Policy and binding as YAML documents (each after `---`), to append to another stream.
pub fn documents() -> Result<String, serde_saphyr::SerializeError> {
    Ok(format!(
        "---\n{}---\n{}",
        serde_saphyr::to_string(&module_name_length_policy())?,
        serde_saphyr::to_string(&module_name_length_binding())?,
    ))
}

/// File name under `manifests/crds/`.
pub const FILE_NAME: &str = "kmm-module-name-length.admission-policy.yaml";

#[cfg(test)]
mod tests {
    use kube_cel::{AdmissionRequest, VapEvaluator, VapExpression};
    use serde_json::json;

    use super::*;

    fn admit(namespace: &str, name: &str) -> (bool, Option<String>) {
        let policy = module_name_length_policy();
        let validation = &policy
            .spec
            .as_ref()
            .and_then(|s| s.validations.as_ref())
            .expect("validations")[0];
        let evaluator = VapEvaluator::builder()
            .object(json!({"metadata": {"name": name, "namespace": namespace}, "spec": {}}))
            .request(AdmissionRequest {
                operation: "CREATE".into(),
                namespace: namespace.into(),
                ..Default::default()
            })
            .build();
        let result = evaluator.evaluate(&[VapExpression {
            expression: validation.expression.clone(),
            message: None,
            message_expression: validation.message_expression.clone(),
        }]);
        (result[0].passed, result[0].message.clone())
    }

    #[test]
    fn admits_up_to_the_limit_and_refuses_one_more() {
        let ns = "n".repeat(20);
        assert_eq!(admit(&ns, &"m".repeat(21)), (true, None));
        let (passed, message) = admit(&ns, &"m".repeat(22));
        assert!(!passed);
        assert_eq!(
            message.as_deref(),
            Some(
                "metadata.namespace and metadata.name together must be at most 41 characters (they are 42), \
                 so that the node label keys kmm writes fit"
            )
        );
    }

    #[test]
    fn binds_to_modules_only() {
        let policy = module_name_length_policy();
        let rules = policy
            .spec
            .and_then(|s| s.match_constraints)
            .and_then(|m| m.resource_rules)
            .expect("rules");
        assert_eq!(rules[0].resources.as_deref(), Some(&["modules".to_owned()][..]));
        assert_eq!(
            module_name_length_binding()
                .spec
                .and_then(|s| s.policy_name)
                .as_deref(),
            Some(MODULE_NAME_LENGTH_POLICY)
        );
    }

    #[test]
    fn committed_policy_matches_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../manifests/crds")
            .join(FILE_NAME);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == to_yaml().expect("renders"),
            "{} is stale: run `just gen`",
            path.display()
        );
    }
}
