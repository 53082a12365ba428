//! What one MCM may reach beyond itself (pure): the hub-namespace Secrets it names must grant it,
//! and the namespace and service accounts its workers run as must pass the hub's rule. See
//! docs/security.md for the model.

use std::collections::BTreeMap;

use kmm_api::{ManagedClusterModule, ModuleSpec, module::Build, module::Sign};

use super::desired::plan::Blocker;
use crate::reason::Reason;

/// Annotation on a hub-namespace Secret naming the MCMs that may use it: a comma-separated list
/// of MCM names, or `*` for every MCM.
pub const ALLOWED_MODULES_ANNOTATION: &str = "hub.kmm.sigs.x-k8s.io/allowed-modules";

/// Namespaces no MCM may put its workers in, unless `--forbidden-spoke-namespaces` says
/// otherwise: the clusters' own system namespaces.
pub const DEFAULT_FORBIDDEN_NAMESPACES: &str = "kube-*,openshift-*,default";

/// Every Secret the spec names, with the first field naming it.
pub fn named_secrets(spec: &ModuleSpec) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut add = |name: &str, field: String| {
        if !name.is_empty() {
            out.entry(name.to_owned()).or_insert(field);
        }
    };
    if let Some(s) = &spec.image_repo_secret {
        add(&s.name, "imageRepoSecret".into());
    }
    let Some(loader) = &spec.module_loader else {
        return out;
    };
    let c = &loader.container;
    let mut build_sign = |at: &str, build: Option<&Build>, sign: Option<&Sign>| {
        for s in build.and_then(|b| b.secrets.as_deref()).unwrap_or_default() {
            add(&s.name, format!("{at}.build.secrets"));
        }
        if let Some(sign) = sign {
            add(&sign.key_secret.name, format!("{at}.sign.keySecret"));
            add(&sign.cert_secret.name, format!("{at}.sign.certSecret"));
        }
    };
    build_sign("moduleLoader.container", c.build.as_ref(), c.sign.as_ref());
    for (i, m) in c.kernel_mappings.iter().enumerate() {
        build_sign(
            &format!("moduleLoader.container.kernelMappings[{i}]"),
            m.build.as_ref(),
            m.sign.as_ref(),
        );
    }
    out
}

/// Does the annotation value grant the MCM `mcm`?
pub fn grants(annotation: Option<&str>, mcm: &str) -> bool {
    annotation
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|n| n == "*" || n == mcm)
}

/// The blocker for the first named Secret (that exists) not granting `mcm`; `annotations(name)`
/// gives an existing Secret's annotation value (`Some(None)` when it has none), `None` when the
/// Secret does not exist (that is reported where the Secret is used).
pub fn ungranted<'a>(
    mcm: &str,
    namespace: &str,
    named: &BTreeMap<String, String>,
    annotation: impl Fn(&str) -> Option<Option<&'a str>>,
) -> Option<Blocker> {
    named.iter().find_map(|(secret, field)| {
        let value = annotation(secret)?;
        (!grants(value, mcm)).then(|| {
            Blocker::new(
                Reason::SecretNotGranted,
                format!(
                    "spec.moduleSpec.{field} names Secret {namespace}/{secret}, which does not grant this MCM: \
                     its owner adds {mcm} (or *) to its annotation {ALLOWED_MODULES_ANNOTATION}"
                ),
            )
        })
    })
}

/// Does `name` match one of `patterns` (exact, or a prefix followed by `*`)?
pub fn matches_any(name: &str, patterns: &[String]) -> bool {
    patterns
        .iter()
        .map(|p| p.trim())
        .any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => !p.is_empty() && p == name,
        })
}

/// Refuses an MCM whose workers would run in a forbidden namespace, or as a forbidden service
/// account (`name` or `namespace:name` patterns).
pub fn check_worker_identity(
    mcm: &ManagedClusterModule,
    forbidden_namespaces: &[String],
    forbidden_service_accounts: &[String],
) -> Result<(), Blocker> {
    let ns = &mcm.spec.spoke_namespace;
    if matches_any(ns, forbidden_namespaces) {
        return Err(Blocker::new(
            Reason::NamespaceNotAllowed,
            format!(
                "spec.spokeNamespace {ns} is forbidden by the hub (--forbidden-spoke-namespaces {}); choose a namespace of your own",
                forbidden_namespaces.join(",")
            ),
        ));
    }
    let spec = &mcm.spec.module_spec;
    let accounts = [
        (
            "moduleLoader.serviceAccountName",
            spec.module_loader
                .as_ref()
                .and_then(|l| l.service_account_name.as_deref()),
        ),
        (
            "devicePlugin.serviceAccountName",
            spec.device_plugin
                .as_ref()
                .and_then(|d| d.service_account_name.as_deref()),
        ),
        (
            "dra.serviceAccountName",
            spec.dra.as_ref().and_then(|d| d.service_account_name.as_deref()),
        ),
    ];
    for (field, sa) in accounts {
        let Some(sa) = sa.filter(|s| !s.is_empty()) else {
            continue;
        };
        if matches_any(sa, forbidden_service_accounts)
            || matches_any(&format!("{ns}:{sa}"), forbidden_service_accounts)
        {
            return Err(Blocker::new(
                Reason::ServiceAccountNotAllowed,
                format!(
                    "spec.moduleSpec.{field} {sa} is forbidden by the hub (--forbidden-service-accounts {})",
                    forbidden_service_accounts.join(",")
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{BUILD, SIGN, mk_build_mcm};

    #[test]
    fn grants_name_the_mcm_or_everyone() {
        assert!(grants(Some("a, m ,b"), "m"));
        assert!(grants(Some("*"), "m"));
        assert!(!grants(Some("a,b"), "m"));
        assert!(!grants(Some(""), "m"));
        assert!(!grants(None, "m"));
        assert!(!grants(Some("mm"), "m"));
    }

    #[test]
    fn a_secret_without_a_grant_blocks_with_its_name_and_the_annotation() {
        let mcm = mk_build_mcm("m", &format!("{BUILD}{SIGN}"));
        let named = named_secrets(&mcm.spec.module_spec);
        assert_eq!(named.len(), 4, "{named:?}");
        let granted = |_: &str| Some(Some("m"));
        assert_eq!(ungranted("m", "kmm-hub", &named, granted), None);
        let absent = |_: &str| None;
        assert_eq!(
            ungranted("m", "kmm-hub", &named, absent),
            None,
            "missing Secrets are reported elsewhere"
        );
        let other_team = |_: &str| Some(Some("other"));
        let b = ungranted("m", "kmm-hub", &named, other_team).unwrap();
        assert!(b.message.contains(ALLOWED_MODULES_ANNOTATION), "{}", b.message);
        assert!(b.message.contains("kmm-hub/"), "{}", b.message);
        assert_eq!(b.reason, Reason::SecretNotGranted);
    }

    #[test]
    fn workers_stay_out_of_system_namespaces() {
        let forbidden: Vec<String> = DEFAULT_FORBIDDEN_NAMESPACES
            .split(',')
            .map(String::from)
            .collect();
        let mut mcm = mk_build_mcm("m", BUILD);
        mcm.spec.spoke_namespace = "kube-system".into();
        let b = check_worker_identity(&mcm, &forbidden, &[]).unwrap_err();
        assert!(b.message.contains("kube-system"), "{}", b.message);
        assert_eq!(b.reason, Reason::NamespaceNotAllowed);
        mcm.spec.spoke_namespace = "drivers".into();
        assert_eq!(check_worker_identity(&mcm, &forbidden, &[]), Ok(()));
        if let Some(l) = mcm.spec.module_spec.module_loader.as_mut() {
            l.service_account_name = Some("kmm-operator".into());
        }
        let sa = ["drivers:kmm-*".to_string()];
        assert_eq!(
            check_worker_identity(&mcm, &forbidden, &sa).map_err(|b| b.reason),
            Err(Reason::ServiceAccountNotAllowed)
        );
    }
}
